"""`make bench`: one metric with 1,000,000 points migrates with flat memory.

For each size (default 100,000 and 1,000,000 points) the source store gets one finished run
holding one metric of that many points (steps 0..N-1, distinct timestamps and values), written
straight into the source's sqlite database (an insert of N rows: seconds, where log_batch over
HTTP would take minutes). Two real `mlflow server` processes serve the source and an empty
target; `python -m runner migrate --experiments long-N` copies the run between them as a separate
process, whose peak RSS (VmHWM, polled from /proc) and wall time are measured; then
`python -m runner verify` compares the two runs, measured the same way.

The target's history is then checked exactly against the source's, read from both sqlite
databases: the point count and a SHA-256 over every (step, timestamp, value) in order.

Flat memory means the 1M-point migration peaks within a few MB of the 100k one: the history
streams page by page from the source (25,000 points a page) into 1,000-row log_batch requests,
and nothing holds a whole history. Verify is flat the same way: each side's history streams into
an order-independent digest (runner.engine.verify). Results: a table on stdout and
bench-results/long_metric.json.

    python bench/bench_long_metric.py [--points 100000,1000000] [--keep]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_migrate import run_process  # noqa: E402
from servers import MlflowServer  # noqa: E402

RESULTS = ROOT / "bench-results"
KEY = "loss"
T0 = 1_700_000_000_000
FLAT_MB = 25.0  # allowed growth of peak RSS from the smallest size to the largest


def value(i: int) -> float:
    return ((i * 7919) % 1_000_003) / 1_000_003.0


def seed(folder: Path, sizes: list[int]) -> dict[int, str]:
    """One experiment `long-N` with one finished run per size; returns size -> source run id."""
    from mlflow.entities import Metric, RunStatus
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{db}", (folder / "artifacts").as_uri())
    runs = {}
    for size in sizes:
        experiment = store.create_experiment(f"long-{size}")
        run = store.create_run(experiment, "bench", T0, [], f"long-{size}")
        runs[size] = run.info.run_id
        # The last point through the store, so latest_metrics is MLflow's own; the rest in bulk.
        store.log_batch(run.info.run_id, metrics=[Metric(KEY, value(size - 1), T0 + 10 * (size - 1), size - 1)], params=[], tags=[])
        with sqlite3.connect(db) as con:
            con.executemany(
                "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, 0)",
                ((KEY, value(i), T0 + 10 * i, run.info.run_id, i) for i in range(size - 1)),
            )
        store.update_run_info(run.info.run_id, RunStatus.FINISHED, T0 + 10 * size, None)
    store.engine.dispose()
    return runs


def history_digest(db: Path, run_id: str) -> tuple[int, str]:
    """(points, sha256 over step, timestamp, value in order) of the run's history, read from sqlite."""
    digest, count = hashlib.sha256(), 0
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT step, timestamp, value FROM metrics WHERE run_uuid = ? AND key = ? ORDER BY step, timestamp, value", (run_id, KEY))
        for step, timestamp, val in rows:
            digest.update(f"{step},{timestamp},{val!r}\n".encode())
            count += 1
    return count, digest.hexdigest()


def replayed_run(db: Path, source_run: str) -> str | None:
    with sqlite3.connect(db) as con:
        row = con.execute("SELECT run_uuid FROM tags WHERE key = 'original_job_id' AND value = ?", (source_run,)).fetchone()
    return row[0] if row else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="100000,1000000", help="comma-separated history sizes")
    parser.add_argument("--keep", action="store_true", help="keep the servers' folders")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.points.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-long-metric-"))
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    runs = seed(work / "source", sizes)
    print(f"seeded {', '.join(f'{n:,}' for n in sizes)} points in {time.monotonic() - started:.1f}s", flush=True)
    source, target = MlflowServer(work / "source"), MlflowServer(work / "target")
    results: dict[str, dict] = {}
    try:
        source.start()
        target.start()
        for size in sizes:
            argv = [sys.executable, "-m", "runner", "migrate", "--source", source.uri, "--target", target.uri, "--experiments", f"long-{size}"]
            env = {"REPLAYER_LOG_DIR": str(logs)}
            measured = run_process(argv, logs / f"long_metric_{size}.log", env=env, timeout=3600)
            argv = [sys.executable, "-m", "runner", "verify", "--source", source.uri, "--target", target.uri, "--experiments", f"long-{size}",
                    "--report", str(work / f"verify_{size}.json")]
            checked = run_process(argv, logs / f"long_metric_verify_{size}.log", env=env, timeout=3600)
            want = history_digest(source.folder / "mlflow.db", runs[size])
            copy = replayed_run(target.folder / "mlflow.db", runs[size])
            got = history_digest(target.folder / "mlflow.db", copy) if copy else (0, "")
            results[str(size)] = {
                **measured, "points": size, "points_per_s": size / measured["seconds"],
                "source": {"points": want[0], "sha256": want[1]}, "target": {"points": got[0], "sha256": got[1]},
                "exact": want == got and want[0] == size,
                "verify": {**checked, "points_per_s": 2 * size / checked["seconds"]},  # both sides read
            }
            r, v = results[str(size)], results[str(size)]["verify"]
            print(f"{size:>9,} points: {r['seconds']:.1f}s ({r['points_per_s']:,.0f} points/s), peak RSS {r['rss_mb']:.0f} MB, "
                  f"exit {r['exit']}, target {got[0]:,} points, {'exact' if r['exact'] else 'DIFFERENT'}; "
                  f"verify {v['seconds']:.1f}s, peak RSS {v['rss_mb']:.0f} MB, exit {v['exit']}", flush=True)
    finally:
        source.stop()
        target.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    small, large = results[str(sizes[0])], results[str(sizes[-1])]
    growth = large["rss_mb"] - small["rss_mb"]
    verify_growth = large["verify"]["rss_mb"] - small["verify"]["rss_mb"]
    ok = (all(r["exact"] and r["exit"] == 0 and r["verify"]["exit"] == 0 for r in results.values())
          and growth <= FLAT_MB and verify_growth <= FLAT_MB)
    summary = {"rss_growth_mb": growth, "verify_rss_growth_mb": verify_growth, "flat_limit_mb": FLAT_MB, "ok": ok}
    for what, key, grew in (("migrate", None, growth), ("verify", "verify", verify_growth)):
        first, last = (small[key] if key else small), (large[key] if key else large)
        print(f"{what} peak RSS {first['rss_mb']:.0f} MB at {sizes[0]:,} points, {last['rss_mb']:.0f} MB at {sizes[-1]:,}: "
              f"{grew:+.0f} MB ({'flat' if grew <= FLAT_MB else 'NOT flat'}, limit {FLAT_MB:.0f} MB)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "long_metric.json").write_text(json.dumps({
        "results": results, "summary": summary, "load_average": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version(),
    }, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
