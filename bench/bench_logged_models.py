"""MLflow 3 kinds against plain runs: how fast `replayer migrate` copies each, on two real servers.

Two fresh `mlflow server` processes (sqlite, served artifacts) on this machine. One function per
kind seeds the source and times `python -m runner migrate` (a separate process, from launch to
exit) into the target; each returns items per second:

  plain_runs     RUNS runs (5 params, 5 tags, 3 metrics x 20 steps, one small file): runs/s.
  logged_models  MODELS runs, each logging one model (2 params, 2 tags, two small files, a model
                 metric on a dataset, its run output) and one evaluator run with a model input
                 per model. Migrated twice under two workspace names: with --skip-logged-models
                 (the runs) and without (runs, then models and model inputs); the models' time is
                 the difference: models/s.

Both share the machine's cores with the servers, so the figures move with other load; the JSON
keeps the load average. Results on stdout and in bench-results/logged_models.json.

    python bench/bench_logged_models.py [--runs 200] [--models 100] [--parallel 8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from servers import MlflowServer  # noqa: E402

RESULTS = ROOT / "bench-results"
T0 = 1_700_000_000_000


def migrate(source: str, target: str, experiment: str, workspace: str, parallel: int, *extra: str) -> float:
    """Seconds `replayer migrate` takes, launch to exit; fails loudly on a non-zero exit."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runner", "migrate", "--source", source, "--target", target,
                           "--experiments", experiment, "--workspace", workspace, "--parallel", str(parallel), *extra],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "REPLAYER_LOG_DIR": tempfile.mkdtemp()})
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"migrate {experiment} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def verify(source: str, target: str, experiment: str, workspace: str) -> None:
    done = subprocess.run([sys.executable, "-m", "runner", "verify", "--source", source, "--target", target,
                           "--experiments", experiment, "--workspace", workspace], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "REPLAYER_LOG_DIR": tempfile.mkdtemp()})
    if done.returncode != 0:
        raise SystemExit(f"verify {experiment} found differences: {done.stdout[-2000:]}")


def plain_runs(source: str, target: str, runs: int, parallel: int) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(source)
    experiment = client.create_experiment("bench-plain")
    scratch = Path(tempfile.mkdtemp()) / "summary.json"
    scratch.write_text('{"ok": true}\n')
    for i in range(runs):
        run_id = client.create_run(experiment, start_time=T0 + i, run_name=f"run-{i}").info.run_id
        client.log_batch(run_id, params=[Param(f"p{k}", str(k)) for k in range(5)], tags=[RunTag(f"t{k}", "v") for k in range(5)],
                         metrics=[Metric(f"m{k}", s / 10, T0 + s, s) for k in range(3) for s in range(20)])
        client.log_artifact(run_id, str(scratch))
        client.set_terminated(run_id, "FINISHED", end_time=T0 + i + 100)
    seconds = migrate(source, target, "bench-plain", "bench-plain", parallel)
    verify(source, target, "bench-plain", "bench-plain")
    return {"runs": runs, "seconds": round(seconds, 2), "runs_per_s": round(runs / seconds, 1)}


def logged_models(source: str, target: str, models: int, parallel: int) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelInput, LoggedModelOutput

    client = MlflowClient(source)
    experiment = client.create_experiment("bench-models")
    folder = Path(tempfile.mkdtemp())
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "model.pkl").write_bytes(bytes(range(256)) * 16)
    made = []
    for i in range(models):
        run_id = client.create_run(experiment, start_time=T0 + i, run_name=f"trial-{i}").info.run_id
        model = client.create_logged_model(experiment, name="model", source_run_id=run_id, params={"lr": "0.1", "depth": str(i)},
                                           tags={"trial": str(i), "team": "bench"}, model_type="sklearn")
        client.log_model_artifacts(model.model_id, str(folder))
        client.log_metric(run_id, "accuracy", 0.5 + i / (2 * models), T0 + i, 0, model_id=model.model_id, dataset_name="eval", dataset_digest="e1")
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
        client.finalize_logged_model(model.model_id, "READY")
        client.set_terminated(run_id, "FINISHED", end_time=T0 + i + 100)
        made.append(model.model_id)
    evaluator = client.create_run(experiment, start_time=T0 + models, run_name="evaluator").info.run_id
    client.log_inputs(evaluator, models=[LoggedModelInput(m) for m in made])
    client.set_terminated(evaluator, "FINISHED", end_time=T0 + models + 100)
    runs_only = migrate(source, target, "bench-models", "bench-runs-only", parallel, "--skip-logged-models")
    everything = migrate(source, target, "bench-models", "bench-models", parallel)
    verify(source, target, "bench-models", "bench-models")
    model_seconds = max(everything - runs_only, 1e-3)
    return {"models": models, "runs": models + 1, "runs_only_seconds": round(runs_only, 2), "runs_only_per_s": round((models + 1) / runs_only, 1),
            "with_models_seconds": round(everything, 2),
            "model_seconds": round(model_seconds, 2), "models_per_s": round(models / model_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-mlflow3-"))
    source, target = MlflowServer(base / "source").start(), MlflowServer(base / "target").start()
    try:
        results = {
            "plain_runs": plain_runs(source.uri, target.uri, args.runs, args.parallel),
            "logged_models": logged_models(source.uri, target.uri, args.models, args.parallel),
        }
    finally:
        source.stop()
        target.stop()
    results["load_average"] = os.getloadavg()
    results["parallel"] = args.parallel
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "logged_models.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
