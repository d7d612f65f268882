#!/usr/bin/env bash
# Creates .venv-bench-mlflow2 for the registry part of `make bench`: mlflow-export-import on the
# last mlflow 2 client, the only client its export-models works with (bench/bench_registry.py says
# why). Does nothing when it is already installed from the same pins.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-bench-mlflow2
PYTHON=${PYTHON:-python3}
REQS=bench/requirements-bench-mlflow2.txt
STAMP=$VENV/.installed
want=$(sha256sum "$REQS" | cut -d' ' -f1)

if [[ -f $STAMP && $(cat "$STAMP") == "$want" && -x $VENV/bin/export-models ]]; then
    exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
echo "bench/setup_registry.sh: installing mlflow-export-import + mlflow 2 into $VENV (about a minute, once)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
MLFLOW_TRACKING_URI="sqlite:///$(mktemp -d)/check.db" "$VENV/bin/export-models" --help >/dev/null
echo "$want" > "$STAMP"
