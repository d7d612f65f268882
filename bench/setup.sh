#!/usr/bin/env bash
# Creates .venv-bench with mlflow-export-import for `make bench`; does nothing when it is
# already installed from the same pins. A separate venv so the bench-only baseline and its
# loose dependencies (pytest, pytest-html, ...) never touch the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-bench
PYTHON=${PYTHON:-python3}
REQS=bench/requirements-bench.txt
STAMP=$VENV/.installed
want=$(cat "$REQS" constraints.txt 2>/dev/null | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && $(cat "$STAMP") == "$want" && -x $VENV/bin/export-experiments ]]; then
    exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
constraints=()
[[ -f constraints.txt ]] && constraints=(-c constraints.txt)
echo "bench/setup.sh: installing mlflow-export-import into $VENV (about a minute, once)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" "${constraints[@]}"
# Its --help also opens the default tracking store: point it at a throwaway one.
MLFLOW_TRACKING_URI="sqlite:///$(mktemp -d)/check.db" "$VENV/bin/export-experiments" --help >/dev/null
echo "$want" > "$STAMP"
