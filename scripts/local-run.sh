#!/usr/bin/env bash
# The whole migration on the embedded default: a demo source store -> a local target store.
# Uses docker when an engine answers, the project venv otherwise, and says which.
# Rerunning is safe: the second run skips every run already copied.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=.local
mkdir -p "$DATA"

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "local-run: docker engine found: building the image and running each step in a container"
  docker build --quiet -t replayer:local . >/dev/null
  R=(docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/$DATA:/data" -e REPLAYER_LOG_DIR=/data/logs replayer:local)
  ROOT=/data
else
  echo "local-run: no docker engine answers; running the same entrypoints in the venv (.venv)"
  R=(.venv/bin/python -m runner)
  ROOT=$DATA
  export REPLAYER_LOG_DIR=$DATA/logs
fi

if [ ! -f "$DATA/source/mlflow.db" ]; then
  "${R[@]}" demo --out "$ROOT/source"
fi
"${R[@]}" migrate --source "$ROOT/source" --target "$ROOT/target"
"${R[@]}" verify --source "$ROOT/source" --target "$ROOT/target" --report "$ROOT/verify-report.json"
echo "--- target run tree ---"
"${R[@]}" tree "$ROOT/target"
echo "local-run: done. Source $DATA/source, target $DATA/target, report $DATA/verify-report.json, logs $DATA/logs/"
