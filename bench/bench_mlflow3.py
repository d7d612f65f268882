"""`make bench`, MLflow 3 part: what each kind beyond plain runs costs, per second, against plain runs.

One source mlflow 3.15 server holds one experiment per kind; each kind is migrated alone
(`--experiments KIND`) into a FRESH target server by `python -m runner migrate`, timed from launch
to exit, then migrated again (a rerun must create nothing) and verified (`replayer verify`, which
must exit 0). A function per kind seeds it and names its unit:

  runs     plain runs: 10 params, 10 tags, one metric of 20 steps (the baseline rate)
  traces   traces in an experiment without runs: 3 nested spans each (attributes, an event),
           request/response previews, a tag and metadata (`seed_traces`)

Results: a table on stdout and bench-results/mlflow3.json.

    python bench/bench_mlflow3.py [--count 200] [--parallel 8] [--kinds runs,traces]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_migrate import RESULTS, run_process  # noqa: E402
from servers import MlflowServer  # noqa: E402

T0 = 1_700_000_000_000


def seed_runs(uri: str, count: int) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(uri)
    experiment_id = client.create_experiment("runs")

    def one(i: int) -> None:
        run_id = client.create_run(experiment_id, start_time=T0 + i, tags={f"tag_{k}": f"v{i}-{k}" for k in range(10)},
                                   run_name=f"run-{i:05d}").info.run_id
        client.log_batch(run_id, metrics=[Metric("loss", 1 / (s + 1), T0 + s, s) for s in range(20)],
                         params=[Param(f"param_{k}", str(k * i)) for k in range(10)])
        client.set_terminated(run_id, "FINISHED", end_time=T0 + i + 1000)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def seed_traces(uri: str, count: int) -> None:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import SpanEvent

    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # written when the span closes
    mlflow.set_tracking_uri(uri)
    experiment_id = MlflowClient(uri).create_experiment("traces")
    mlflow.set_experiment(experiment_id=experiment_id)

    def one(i: int) -> None:
        with mlflow.start_span("agent", span_type="CHAIN") as root:
            root.set_inputs({"question": f"q{i}"})
            mlflow.update_current_trace(tags={"batch": str(i % 7)}, metadata={"request": str(i)})
            with mlflow.start_span("retrieve", span_type="RETRIEVER") as middle:
                middle.set_attributes({"k": 5, "index": "docs"})
                with mlflow.start_span("llm", span_type="LLM") as leaf:
                    leaf.add_event(SpanEvent("token", attributes={"n": i}))
                    leaf.set_outputs(f"answer {i}")
            root.set_outputs({"answer": f"a{i}"})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


KINDS = {"runs": seed_runs, "traces": seed_traces}


def migrate(source: MlflowServer, target: MlflowServer, kind: str, parallel: int, logs: Path, command: str = "migrate") -> dict:
    return run_process(
        [sys.executable, "-m", "runner", command, "--source", source.uri, "--target", target.uri, "--experiments", kind,
         "--workspace", "bench", "--parallel", str(parallel)],
        logs / f"{command}-{kind}-{time.monotonic_ns()}.log", {"REPLAYER_LOG_DIR": str(logs / "replayer")},
    )


def bench_kind(source: MlflowServer, kind: str, count: int, parallel: int, work: Path) -> dict:
    """One kind into a fresh target: the first copy, a rerun, a verify."""
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    with MlflowServer(work / f"target-{kind}") as target:
        first = migrate(source, target, kind, parallel, logs)
        rerun = migrate(source, target, kind, parallel, logs)
        checked = migrate(source, target, kind, parallel, logs, command="verify")
    return {"count": count, "per_second": count / first["seconds"], "first": first, "rerun": rerun, "verify": checked,
            "ok": first["exit"] == rerun["exit"] == checked["exit"] == 0}


def main() -> int:
    parser = argparse.ArgumentParser(description="MLflow 3 kinds per second against plain runs")
    parser.add_argument("--count", type=int, default=200, help="items of each kind")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", default=str(RESULTS / "mlflow3.json"))
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    work = Path(tempfile.mkdtemp(prefix="bench-mlflow3-"))
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "kinds": {}}
    with MlflowServer(work / "source") as source:
        for kind in kinds:
            KINDS[kind](source.uri, args.count)
        for kind in kinds:
            results["kinds"][kind] = bench_kind(source, kind, args.count, args.parallel, work)
    base = results["kinds"].get("runs", {}).get("per_second")
    print(f"{'kind':<8} {'count':>6} {'first s':>8} {'per s':>7} {'vs runs':>8} {'rerun s':>8} {'verify s':>9} {'peak MB':>8} ok")
    for kind, r in results["kinds"].items():
        r["vs_runs"] = r["per_second"] / base if base else None
        ratio = f"{r['vs_runs']:.2f}x" if base else "-"
        print(f"{kind:<8} {r['count']:>6} {r['first']['seconds']:>8.1f} {r['per_second']:>7.1f} {ratio:>8} "
              f"{r['rerun']['seconds']:>8.1f} {r['verify']['seconds']:>9.1f} {r['first']['rss_mb']:>8.0f} {r['ok']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results["kinds"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
