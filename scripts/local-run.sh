#!/usr/bin/env bash
# The whole migration on the embedded default: a demo source store -> a manifest -> a local target
# store, verified; the same extract -> replay -> verify steps as migrate.yml on Azure ML.
# Uses docker when an engine answers (each step a container of this repository's image, the data
# folder mounted at /data), the project venv otherwise, and says which.
# Rerunning is safe: the second run skips every run already copied.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${LOCAL_RUN_DIR:-.local}
mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd)

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "local-run: docker engine found: building the image and running each step in a container"
  docker build --quiet -t replayer:local . >/dev/null
  R=(docker run --rm --user "$(id -u):$(id -g)" -v "$DATA:/data" -e REPLAYER_LOG_DIR=/data/logs replayer:local)
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
rm -rf "$DATA/manifest"  # extract writes a new manifest each time; the target's ledger makes replay incremental
# A fixed source name (the ledger key): the docker and venv paths see the store at different paths.
"${R[@]}" extract --source "$ROOT/source" --out "$ROOT/manifest" --workspace local-demo
"${R[@]}" replay --manifest "$ROOT/manifest" --target "$ROOT/target"
"${R[@]}" verify --source "$ROOT/source" --target "$ROOT/target" --workspace local-demo --report "$ROOT/verify-report.json"
echo "--- target run tree ---"
"${R[@]}" tree "$ROOT/target"
echo "local-run: done. Source $DATA/source, manifest $DATA/manifest, target $DATA/target, report $DATA/verify-report.json, logs $DATA/logs/"
