"""Extraction from an AzureML workspace at scale: `replayer extract` against the fake control plane.

The workspace is the test fixture (tests/fakes/azureml_seed.py: standalone jobs, nested pipelines,
sweeps, AutoML; 38 jobs and 3,208 metric points per copy) cloned until it holds --jobs jobs. The
fake answers azure-ai-ml over HTTPS and forwards MLflow calls to a real `mlflow server` (sqlite,
default single uvicorn worker), as in tests/test_azureml_source.py. For each --parallel value,
`python -m runner extract --parallel N` runs as its own process, timed from launch to exit; the
extraction time is read from its own log line. The manifests of all runs must be identical.

Peak RSS is the extract process's own high-water mark (VmHWM in /proc/PID/status, polled until it
exits). Not ru_maxrss from wait4: a child forked from this process starts with ru_maxrss = this
process's RSS at the fork, and this process holds the whole fake workspace, so that number grew with
the job count whatever the extractor did (it was the "351 MB for 2,014 jobs" of the first runs).
Results: a table on stdout and bench-results/azureml_extract.json.

    python bench/bench_azureml_extract.py [--jobs 2000] [--parallel 1,8]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from servers import MlflowServer  # noqa: E402

RESULTS = ROOT / "bench-results"
SUB, RG, WS = "2f1e0c4d-0000-4000-8000-00000000be4c", "rg-bench", "ws-bench"
URI = f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}"


def run_extract(out: Path, parallel: int, env: dict, cwd: Path) -> dict:
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "extract", "--source", URI, "--out", str(out), "--parallel", str(parallel), "--credential", "cli"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    streams: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=n, f=f: streams.__setitem__(n, f.read())) for n, f in (("out", process.stdout), ("err", process.stderr))]
    peak = {"kb": 0}
    readers.append(threading.Thread(target=watch_peak, args=(process.pid, peak), daemon=True))
    for reader in readers:
        reader.start()
    _, status, _ = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    for reader in readers[:2]:
        reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = streams.get("err", "")
    rss_mb = round(peak["kb"] / 1024, 1)  # the child's own peak (see the docstring), not the servers' nor ours
    if process.returncode != 0:
        raise SystemExit(f"extract --parallel {parallel} failed ({process.returncode}):\n{stderr[-3000:]}")
    match = re.search(r"extracted (\{.*\}) in ([0-9.]+)s", stderr)
    counts = json.loads(match.group(1).replace("'", '"')) if match else {}
    return {"parallel": parallel, "wall_s": round(wall, 1), "extract_s": float(match.group(2)) if match else None, "counts": counts, "rss_mb": rss_mb}


def watch_peak(pid: int, peak: dict, every: float = 0.05) -> None:
    """Keep the process's VmHWM (its resident high-water mark, which only grows) until it exits."""
    path = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = path.read_text()
        except (FileNotFoundError, ProcessLookupError):
            return
        match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
        if not match:  # a zombie: it has exited
            return
        peak["kb"] = max(peak["kb"], int(match.group(1)))
        time.sleep(every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--parallel", default="1,8")
    parser.add_argument("--keep", action="store_true", help="keep the seeded store and manifests (printed path)")
    args = parser.parse_args()
    levels = [int(p) for p in str(args.parallel).split(",")]

    from fakes import azureml_seed as seed
    from fakes.azureml_control_plane import FakeControlPlane, FakeWorkspace, write_fake_az

    base = Path(tempfile.mkdtemp(prefix="bench-azureml-"))
    specs, builders = seed.build_specs()
    specs, builders = seed.clone_specs(specs, builders, math.ceil(args.jobs / len(specs)))
    points = sum(len(rows) for s in specs for rows in s.metrics.values())
    print(f"seeding {len(specs)} jobs, {points} metric points into {base} ...", flush=True)
    started = time.monotonic()
    seed.seed_mlflow(base / "mlflow", specs)
    server = MlflowServer(base / "mlflow").start()
    fake = FakeControlPlane(base / "fake", server.uri, list_page=100, children_page=50).start()
    ws = fake.add(FakeWorkspace(SUB, RG, WS))
    seed.install(ws, specs, builders)
    print(f"seeded in {time.monotonic() - started:.0f}s", flush=True)
    az = write_fake_az(base / "az", sys.executable)
    env = {**os.environ, **fake.environ(), "PATH": f"{az}{os.pathsep}{os.environ['PATH']}", "REPLAYER_LOG_DIR": str(base / "logs")}
    rows = []
    try:
        for parallel in levels:
            before = dict(fake.requests)
            row = run_extract(base / f"manifest-p{parallel}", parallel, env, base)
            row["requests"] = {k: v - before.get(k, 0) for k, v in fake.requests.items() if v - before.get(k, 0)}
            row["jobs_per_s"] = round(len(specs) / row["extract_s"], 1) if row["extract_s"] else None
            rows.append(row)
            print(f"--parallel {parallel}: extract {row['extract_s']}s ({row['jobs_per_s']} jobs/s), wall {row['wall_s']}s, requests {row['requests']}", flush=True)
    finally:
        fake.stop()
        server.stop()
    manifests = {(base / f"manifest-p{p}" / "jobs.jsonl").read_text() for p in levels}
    assert len(manifests) == 1, "manifests differ between --parallel values"
    for row in rows:
        assert row["counts"].get("jobs") == len(specs) and row["counts"].get("metric_points") == points, row
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "jobs": len(specs), "metric_points": points, "runs": rows,
        "note": "fake control plane over HTTPS + real mlflow server (1 uvicorn worker) on loopback; wall includes process start (~8 s of imports)",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "azureml_extract.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'parallel':>8} {'extract s':>10} {'jobs/s':>8} {'wall s':>8} {'peak RSS MB':>12}")
    for row in rows:
        print(f"{row['parallel']:>8} {row['extract_s']:>10} {row['jobs_per_s']:>8} {row['wall_s']:>8} {row['rss_mb']:>12}")
    print(f"results in {RESULTS / 'azureml_extract.json'}")
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
