"""`make bench`: replayer migrate against mlflow-export-import and a raw client ceiling.

One source mlflow server is seeded with RUNS runs (10 params, 10 tags, 5 metrics x 100 steps,
one small artifact each; one run in ten FAILED) spread over 5 experiments. Every contender then
copies it into a FRESH, empty target mlflow server, as a separate process, timed from launch to
exit (Python start-up included for all):

  export-import  mlflow-export-import 1.2.0 (its own venv, .venv-bench; bench/setup.sh):
                 export-experiments to a local folder, then import-experiments; both timed.
  ceiling        bench/ceiling.py: plain MlflowClient, log_batch in 1000-row batches, 4 threads,
                 no checks.
  replayer       `python -m runner migrate --parallel N` for each N in --parallel.

Each target is checked afterwards, outside the timing: run count, a deep look at a sample of
runs (params, tags, status, times, full metric history, artifact), and for replayer the
completion and lineage tags on every run; `replayer verify` then runs on the fastest replayer
target. Also measured per contender: peak RSS of the tool's own process (VmHWM), CPU seconds of
the tool plus both servers, and the HTTP requests each server logged. Results: a table on stdout
and bench-results/migrate.json; each contender's output in bench-results/logs/.

Everything shares this machine's cores with both servers, so wall times move with any other load:
the JSON keeps the load average, and CPU ms/run is the steadier efficiency figure.

    python bench/bench_migrate.py [--runs 500] [--parallel 4,8,16] [--skip export-import,ceiling]
                                  [--no-verify] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from servers import MlflowServer  # noqa: E402

BENCH_VENV = ROOT / ".venv-bench"
RESULTS = ROOT / "bench-results"
EXPERIMENTS = 5
PARAMS, TAGS, METRICS, STEPS = 10, 10, 5, 100
ARTIFACT = "summary.json"
SAMPLE = 15  # runs deep-checked per target
ACCESS = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) ([^ ?"]+)[^"]*" \d{3}')
RUN_PATH = re.compile(r"/artifacts/\d+/[0-9a-f]{32}/.*$")  # one run's artifact file
GOALS = {"vs_export_import": 3.0, "vs_ceiling": 0.7, "rss_mb": 300.0}


# -- seeding ---------------------------------------------------------------------------------


def seed(uri: str, runs: int, threads: int = 8) -> dict:
    """RUNS finished runs over EXPERIMENTS experiments, written with log_batch on threads."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(uri)
    experiment_ids = [
        client.create_experiment(f"bench-{i}", tags={"mlflow.note.content": f"benchmark experiment {i}", "team": "bench"})
        for i in range(EXPERIMENTS)
    ]
    base = 1_700_000_000_000
    scratch = Path(tempfile.mkdtemp(prefix="bench-seed-"))
    rng = random.Random(7)
    values = [[[rng.random() for _ in range(STEPS)] for _ in range(METRICS)] for _ in range(runs)]

    def one(i: int) -> None:
        start = base + i * 60_000
        tags = {f"tag_{k}": f"value-{i}-{k}" for k in range(TAGS)}
        run = client.create_run(experiment_ids[i % EXPERIMENTS], start_time=start, tags=tags, run_name=f"run-{i:05d}")
        run_id = run.info.run_id
        params = [Param(f"param_{k}", f"{k * i}") for k in range(PARAMS)]
        metrics = [
            Metric(f"metric_{k}", values[i][k][step], start + step * 100, step) for k in range(METRICS) for step in range(STEPS)
        ]
        client.log_batch(run_id, metrics=metrics, params=params)
        folder = scratch / run_id
        folder.mkdir()
        (folder / ARTIFACT).write_text(json.dumps({"run": i, "score": values[i][0][-1], "notes": "x" * 200}))
        client.log_artifact(run_id, str(folder / ARTIFACT))
        client.set_terminated(run_id, "FINISHED" if i % 10 else "FAILED", end_time=start + STEPS * 100 + 1000)

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(one, i) for i in range(runs)]:
            future.result()
    shutil.rmtree(scratch, ignore_errors=True)
    return {"runs": runs, "experiments": EXPERIMENTS, "metric_points": runs * METRICS * STEPS}


# -- running one contender -------------------------------------------------------------------


def run_process(argv: list[str], log: Path, env: dict | None = None, timeout: float = 1800) -> dict:
    """Run a child to completion: wall time, exit code, CPU time and peak RSS of it alone.

    Peak RSS is the child's own VmHWM, polled from /proc. ru_maxrss from wait4 would not do:
    Linux carries the parent's RSS at fork/exec over into the child's maxrss, so every child of
    this (mlflow-importing, ~220 MB) process would report at least the parent's size.
    """
    with open(log, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        peak = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], vm_hwm_kb(proc.pid))
                done.wait(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            done.set()
            watcher.join()
        seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": seconds, "exit": proc.returncode, "rss_mb": peak[0] / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


def vm_hwm_kb(pid: int) -> int:
    """The process's peak resident set (kB) so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def log_size(server: MlflowServer) -> int:
    try:
        return (server.folder / "server.log").stat().st_size
    except OSError:
        return 0


def requests_since(server: MlflowServer, offset: int) -> dict[str, int]:
    """HTTP requests the server logged (uvicorn access log) since `offset`, by method and path."""
    counts: dict[str, int] = {}
    with open(server.folder / "server.log", "rb") as log:
        log.seek(offset)
        for line in log.read().decode(errors="replace").splitlines():
            match = ACCESS.search(line)
            if match:
                path = RUN_PATH.sub("/artifacts/<file>", match.group(2))
                key = f"{match.group(1)} {path}"
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def server_cpu(server: MlflowServer) -> float:
    """CPU seconds used so far by a server and its workers (uvicorn runs as a child)."""
    import psutil

    try:
        root = psutil.Process(server.process.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def fresh_target(work: Path, name: str, workers: int) -> MlflowServer:
    return MlflowServer(work / name, workers=workers).start()


def contender_export_import(source: MlflowServer, target: MlflowServer, work: Path, logs: Path) -> dict:
    bin_dir = BENCH_VENV / "bin"
    dump = work / "export-import-dump"
    exported = run_process(
        [str(bin_dir / "export-experiments"), "--experiments", "all", "--output-dir", str(dump), "--use-threads", "True"],
        logs / "export-experiments.log", {"MLFLOW_TRACKING_URI": source.uri},
    )
    imported = run_process(
        [str(bin_dir / "import-experiments"), "--input-dir", str(dump), "--use-threads", "True"],
        logs / "import-experiments.log", {"MLFLOW_TRACKING_URI": target.uri},
    )
    shutil.rmtree(dump, ignore_errors=True)
    return {
        "seconds": exported["seconds"] + imported["seconds"],
        "exit": exported["exit"] or imported["exit"],
        "rss_mb": max(exported["rss_mb"], imported["rss_mb"]),
        "cpu_s": exported["cpu_s"] + imported["cpu_s"],
        "phases": {"export": exported, "import": imported},
    }


def contender_ceiling(source: MlflowServer, target: MlflowServer, logs: Path, threads: int) -> dict:
    return run_process(
        [sys.executable, str(ROOT / "bench" / "ceiling.py"), "--source", source.uri, "--target", target.uri, "--threads", str(threads)],
        logs / "ceiling.log",
    )


def contender_replayer(source: MlflowServer, target: MlflowServer, logs: Path, parallel: int) -> dict:
    return run_process(
        [sys.executable, "-m", "runner", "migrate", "--source", source.uri, "--target", target.uri, "--parallel", str(parallel)],
        logs / f"replayer-p{parallel}.log", {"REPLAYER_LOG_DIR": str(logs / "replayer")},
    )


# -- checking a target -----------------------------------------------------------------------


def check(source_uri: str, target_uri: str, runs: int, known_gaps: tuple[str, ...] = (), replayer: bool = False) -> dict:
    """Cheap correctness: every run is there, and a sample is deep-equal on what we seeded.

    `known_gaps` are fidelity losses a contender is known for (export-import sets every run
    FINISHED at import time): reported as notes, not as failures.
    """
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    src, dst = MlflowClient(source_uri), MlflowClient(target_uri)
    problems: list[str] = []
    notes: list[str] = []
    by_name = {}
    for client, into in ((src, {}), (dst, by_name)):
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL) if e.name.startswith("bench-")]
        token = None
        while True:
            page = client.search_runs(ids, "", ViewType.ALL, max_results=1000, page_token=token)
            for run in page:
                if run.info.run_name in into:
                    problems.append(f"duplicate run {run.info.run_name}")
                into[run.info.run_name] = run
            token = page.token
            if not token:
                break
        if client is src:
            source_runs = into
    if len(by_name) != runs:
        problems.append(f"target holds {len(by_name)} runs, expected {runs}")
    if replayer:  # every run found again by the ledger and marked complete
        unmarked = [n for n, r in by_name.items() if "replay.complete" not in r.data.tags or "original_job_id" not in r.data.tags]
        if unmarked:
            problems.append(f"{len(unmarked)} runs lack replay.complete/original_job_id, e.g. {unmarked[0]}")
    for name in random.Random(1).sample(sorted(source_runs), min(SAMPLE, len(source_runs))):
        want, got = source_runs[name], by_name.get(name)
        if got is None:
            problems.append(f"{name}: missing")
            continue
        if got.data.params != want.data.params:
            problems.append(f"{name}: params differ")
        if any(got.data.tags.get(k) != v for k, v in want.data.tags.items() if not k.startswith("mlflow.")):
            problems.append(f"{name}: tags differ")
        if got.info.status != want.info.status:
            (notes if "status" in known_gaps else problems).append(f"{name}: status {got.info.status} != {want.info.status}")
        if (got.info.start_time, got.info.end_time) != (want.info.start_time, want.info.end_time):
            (notes if "times" in known_gaps else problems).append(f"{name}: start/end time not kept")
        for key in want.data.metrics:
            a = [(m.step, m.timestamp, m.value) for m in src.get_metric_history(want.info.run_id, key)]
            b = [(m.step, m.timestamp, m.value) for m in dst.get_metric_history(got.info.run_id, key)]
            if sorted(a) != sorted(b):
                problems.append(f"{name}: metric {key} history differs ({len(b)} vs {len(a)} points)")
        files = [f.path for f in dst.list_artifacts(got.info.run_id)]
        if ARTIFACT not in files:
            problems.append(f"{name}: artifact {ARTIFACT} missing (has {files})")
    gaps = sorted({n.split(": ", 1)[1].split(" ")[0] for n in notes})
    return {
        "runs_in_target": len(by_name), "sampled": min(SAMPLE, len(source_runs)),
        "problems": problems[:20], "known_gaps_seen": gaps, "notes": notes[:10], "ok": not problems,
    }


def replayer_verify(source: MlflowServer, target: MlflowServer, logs: Path) -> dict:
    report = logs / "verify-report.json"
    result = run_process(
        [sys.executable, "-m", "runner", "verify", "--source", source.uri, "--target", target.uri, "--report", str(report)],
        logs / "replayer-verify.log", {"REPLAYER_LOG_DIR": str(logs / "replayer")},
    )
    return {"exit": result["exit"], "seconds": round(result["seconds"], 1), "ok": result["exit"] == 0}


# -- the whole bench -------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="replayer vs mlflow-export-import vs a raw client ceiling")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--parallel", default="4,8,16", help="replayer --parallel values to time (comma separated)")
    parser.add_argument("--ceiling-threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per mlflow server")
    parser.add_argument("--skip", default="", help="contenders to leave out: export-import,ceiling")
    parser.add_argument("--out", default=str(RESULTS / "migrate.json"))
    parser.add_argument("--keep", action="store_true", help="keep the servers' folders")
    parser.add_argument("--no-verify", action="store_true", help="skip `replayer verify` on the fastest replayer target")
    args = parser.parse_args()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # the seeding's create_run
    # mlflow 3 servers also start a job runner and several huey consumers per server: CPU and
    # memory this bench's 2 cores need for the servers themselves. The tracking API needs none.
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # MLflow 3 telemetry: each process would try to reach its endpoint and wait up to ~1 s for
    # it at exit (no network here). Off for every contender and server alike.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    parallels = [int(p) for p in str(args.parallel).split(",") if p.strip()]
    if "export-import" not in skip and not (BENCH_VENV / "bin" / "export-experiments").exists():
        sys.exit(f"{BENCH_VENV}/bin/export-experiments is missing: run `bash bench/setup.sh` first (or --skip export-import)")

    RESULTS.mkdir(exist_ok=True)
    logs = RESULTS / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    work = Path(tempfile.mkdtemp(prefix="replayer-bench-"))
    servers: list[MlflowServer] = []
    results: dict[str, dict] = {}
    bench_started = time.monotonic()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        source = MlflowServer(work / "source", workers=args.workers).start()
        servers.append(source)
        started = time.monotonic()
        seeded = seed(source.uri, args.runs)
        seeded["seconds"] = round(time.monotonic() - started, 1)
        print(f"seeded {args.runs} runs in {seeded['seconds']}s", flush=True)

        plan = []
        if "export-import" not in skip:
            plan.append(("export-import", lambda t: contender_export_import(source, t, work, logs)))
        if "ceiling" not in skip:
            plan.append((f"ceiling (t{args.ceiling_threads})", lambda t: contender_ceiling(source, t, logs, args.ceiling_threads)))
        for p in parallels:
            plan.append((f"replayer (p{p})", lambda t, p=p: contender_replayer(source, t, logs, p)))

        targets = {}
        for index, (name, go) in enumerate(plan):
            target = fresh_target(work, f"target-{index}", args.workers)
            servers.append(target)
            before = server_cpu(source), server_cpu(target)
            logged = log_size(source), log_size(target)
            result = go(target)
            result["server_cpu_s"] = {"source": server_cpu(source) - before[0], "target": server_cpu(target) - before[1]}
            calls = {"source": requests_since(source, logged[0]), "target": requests_since(target, logged[1])}
            result["requests_per_run"] = {side: round(sum(c.values()) / args.runs, 2) for side, c in calls.items()}
            result["requests"] = calls
            result["total_cpu_ms_per_run"] = 1000 * (result["cpu_s"] + sum(result["server_cpu_s"].values())) / args.runs
            result["runs_per_s"] = args.runs / result["seconds"]
            gaps = ("status", "times") if name == "export-import" else ()
            result["check"] = check(source.uri, target.uri, args.runs, gaps, replayer=name.startswith("replayer"))
            results[name] = result
            targets[name] = target
            print(
                f"{name}: {result['seconds']:.1f}s, {result['runs_per_s']:.1f} runs/s, exit {result['exit']}, "
                f"peak RSS {result['rss_mb']:.0f} MB, requests/run {result['requests_per_run']}, check {check_cell(result) if result['check']['ok'] else result['check']['problems']}",
                flush=True,
            )
            target.stop()  # idle servers still hold memory; the fastest replayer's restarts for verify

        replayers = [n for n in results if n.startswith("replayer")]
        best = max(replayers, key=lambda n: results[n]["runs_per_s"]) if replayers else None
        if best and not args.no_verify:
            target = targets[best]
            target.start()
            results[best]["verify"] = replayer_verify(source, target, logs)
            print(f"replayer verify on {best}: {'ok' if results[best]['verify']['ok'] else 'DIFFERENCES'} ({results[best]['verify']['seconds']}s)")
            target.stop()
    finally:
        for server in servers:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    summary = summarize(results, best)
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            # Other work on the machine skews every number: compare these before trusting a run.
            "loadavg_at_start": load_at_start, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions(),
        "data": {**seeded, "params": PARAMS, "tags": TAGS, "metrics": METRICS, "steps": STEPS, "artifact": ARTIFACT},
        "server_workers": args.workers,
        "results": results,
        "summary": summary,
        "bench_seconds": round(time.monotonic() - bench_started, 1),
    }
    Path(args.out).write_text(json.dumps(document, indent=2, default=str) + "\n")
    print_table(results, summary)
    print(f"\nresults written to {args.out}; logs in {logs}; whole bench {document['bench_seconds']}s")
    failed = [n for n, r in results.items() if r["exit"] != 0 or not r["check"]["ok"]]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def summarize(results: dict, best: str | None) -> dict:
    base = results.get("export-import", {}).get("runs_per_s")
    ceiling = next((r["runs_per_s"] for n, r in results.items() if n.startswith("ceiling")), None)
    for r in results.values():
        r["vs_export_import"] = r["runs_per_s"] / base if base else None
        r["vs_ceiling"] = r["runs_per_s"] / ceiling if ceiling else None
    if not best:
        return {}
    r = results[best]
    goals = {  # None: that contender was skipped
        "vs_export_import": None if r["vs_export_import"] is None else r["vs_export_import"] >= GOALS["vs_export_import"],
        "vs_ceiling": None if r["vs_ceiling"] is None else r["vs_ceiling"] >= GOALS["vs_ceiling"],
        "rss_mb": max(results[n]["rss_mb"] for n in results if n.startswith("replayer")) < GOALS["rss_mb"],
    }
    return {"fastest_replayer": best, "goals": GOALS, "met": goals, "all_met": all(v is not False for v in goals.values())}


def versions() -> dict:
    from importlib.metadata import version

    found = {"mlflow": version("mlflow")}
    py = BENCH_VENV / "bin" / "python"
    if py.exists():
        out = subprocess.run(
            [str(py), "-c", "from importlib.metadata import version as v; print(v('mlflow-export-import'), v('mlflow'))"],
            capture_output=True, text=True,
        ).stdout.split()
        if len(out) == 2:
            found["mlflow-export-import"], found["mlflow (export-import venv)"] = out
    return found


def check_cell(r: dict) -> str:
    if r["exit"] != 0 or not r["check"]["ok"]:
        return "FAIL"
    gaps = r["check"].get("known_gaps_seen")
    return f"ok, loses {'+'.join(gaps)}" if gaps else "ok"


def print_table(results: dict, summary: dict) -> None:
    def ratio(x):
        return f"{x:.2f}x" if x is not None else "-"

    rows = [("contender", "seconds", "runs/s", "vs export-import", "vs ceiling", "peak RSS MB", "CPU ms/run", "check")]
    for name, r in results.items():
        rows.append((
            name, f"{r['seconds']:.1f}", f"{r['runs_per_s']:.1f}", ratio(r["vs_export_import"]), ratio(r["vs_ceiling"]),
            f"{r['rss_mb']:.0f}", f"{r['total_cpu_ms_per_run']:.0f}", check_cell(r),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("(CPU ms/run: the tool's process plus both servers, per run copied; steadier than wall time on a busy machine)")
    if summary:
        met = {k: "not measured" if v is None else "met" if v else "MISSED" for k, v in summary["met"].items()}
        print(
            f"\nfastest replayer: {summary['fastest_replayer']}; goals: >=3x export-import {met['vs_export_import']}, "
            f">=0.7 ceiling {met['vs_ceiling']}, peak RSS < 300 MB {met['rss_mb']}"
        )


if __name__ == "__main__":
    sys.exit(main())
