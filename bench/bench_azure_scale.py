"""`make bench`, Azure-shaped: workspace to workspace with each request's latency and the service's throttling.

Every other figure is MLflow server to MLflow server on loopback, where a request costs well under a
millisecond. On Azure ML the cost is requests: tens to hundreds of milliseconds each, and 429 with
Retry-After past the service's rate. Here both workspaces live in the HTTPS fake of the control plane
(tests/fakes/) with tests/fakes/azureml_latency.py turned on: every request waits a latency drawn
from its route family's range and takes a token from its family's bucket (429 + Retry-After when
empty); blob requests go through a counting proxy in front of Azurite with a latency of their own.
Defaults and where they come from: that module's docstring (and the `recorded` block of the results,
`x-request-time` read from tests/recordings/*.json here).

Workload: the fixture workspace (tests/fakes/azureml_seed.py: standalone jobs, nested pipelines,
sweeps, AutoML, whose children come from run history) cloned to at least --jobs jobs, each job
given --metrics metrics x --steps steps and --files files of --min-kb to --max-kb (log-uniform).
The source's files are in its run history artifact store, the target's runs get theirs server-side
(both containers in one Azurite account). Then, each as its own timed process:

    replayer migrate --source azureml://subscriptions/S/resourcegroups/R/workspaces/SRC \\
                     --target azureml://HOST/mlflow/v2.0/<scope of DST> --parallel N --credential cli
    replayer verify  (same ends)

Results: requests by family per job and per file, counted by the fake (and the blob proxy), for
each command; 429s met and absorbed (the summary must say failed 0, verify all equal); and a
projection for --project jobs (default 100,000): requests x mean latency / --parallel, against
what each family's bucket lets through (shared by shards: the limits are the workspace's and the
subscription's, not the node's), on one node and on --shards nodes. Printed, and written to
bench-results/azure_scale.json.

    python bench/bench_azure_scale.py [--jobs 200] [--parallel 8] [--metrics 5] [--steps 200] [--files 3]
        [--min-kb 1] [--max-kb 1024] [--no-throttle] [--project 100000] [--shards 8]
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench-results"
SUB, RG = "5e2d7c1a-0000-4000-8000-00000000a7a7", "rg-scale"
FAMILIES = ("arm", "discovery", "history", "artifacts", "mlflow", "blob")
PER_FILE = ("artifacts", "blob")  # the families whose requests grow with files rather than jobs


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="at least this many jobs (whole copies of the 38-job fixture)")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--metrics", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--min-kb", type=int, default=1)
    parser.add_argument("--max-kb", type=int, default=1024)
    parser.add_argument("--no-throttle", action="store_true", help="latency only, no token buckets")
    parser.add_argument("--project", type=int, default=100_000, help="jobs in the projection")
    parser.add_argument("--shards", type=int, default=8)
    return parser.parse_args()


# -- the workload -------------------------------------------------------------------------------------------


def workload(args):
    """(specs, builders): whole copies of the fixture, each job with the bench's metrics and files."""
    from fakes import azureml_seed as seed

    specs, builders = seed.build_specs()
    specs, builders = seed.clone_specs(specs, builders, math.ceil(args.jobs / len(specs)))
    rng = random.Random(18)
    low, high = math.log(args.min_kb * 1024), math.log(args.max_kb * 1024)
    for spec in specs:
        start = spec.start or spec.created
        spec.metrics = {f"metric_{m}": seed.history(rng, start, args.steps, 1.0 - 0.1 * m, -0.001) for m in range(args.metrics)}
        spec.files = {f"outputs/file_{f}.bin": rng.randbytes(int(math.exp(rng.uniform(low, high)))) for f in range(args.files)}
        spec.unhashed = ()
    return specs, builders


def recorded_request_times() -> dict:
    """`x-request-time` (the service's own seconds) of the recorded real answers, by family, in ms."""
    found: dict[str, list[float]] = {}
    for path in sorted(glob.glob(str(ROOT / "tests" / "recordings" / "*.json"))):
        for entry in json.loads(Path(path).read_text()).get("entries", []):
            took = (entry.get("ResponseHeaders") or {}).get("x-request-time")
            uri, method = entry.get("RequestUri", ""), entry.get("RequestMethod", "")
            if took is None:
                continue
            kind = "discovery" if uri.endswith("/discovery") else "history" if "/history/" in uri else f"arm_{method.lower()}"
            found.setdefault(kind, []).append(round(float(took) * 1000))
    return {k: {"n": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)} for k, v in sorted(found.items())}


# -- the commands -------------------------------------------------------------------------------------------


def command(name: str, ends: tuple[str, str], args, env: dict, cwd: Path, fake) -> dict:
    """Run `replayer NAME` as its own process; its wall time, output tail and the requests it made by family."""
    before = dict(fake.requests)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runner", name, "--source", ends[0], "--target", ends[1], "--workspace", "bench",
                           "--credential", "cli", "--parallel", str(args.parallel)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=6 * 3600)
    wall = round(time.monotonic() - started, 1)
    made = {k: v - before.get(k, 0) for k, v in fake.requests.items() if v - before.get(k, 0)}
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}\n{done.stdout[-2000:]}")
    # Requests carried out (a 429 is counted apart: how many there are depends on the buckets, not the tool).
    return {"wall_s": wall, "requests": {f: made.get(f"family:{f}", 0) - made.get(f"throttled:{f}", 0) for f in FAMILIES},
            "throttled": {f: made.get(f"throttled:{f}", 0) for f in FAMILIES if made.get(f"throttled:{f}")},
            "routes": {k: v for k, v in made.items() if ":" not in k}, "stdout": done.stdout[-1500:], "stderr": done.stderr[-1500:]}


# -- the projection -----------------------------------------------------------------------------------------


def projection(row: dict, jobs: int, files: int, shape, args, nodes: int) -> dict:
    """Hours for --project jobs: the latency bound (every request's mean latency, --parallel in flight per
    node, nodes side by side) against the throttle bound (each family's bucket, the same for any number
    of nodes); the larger wins. The latency bound is a floor: requests within a job go one after the
    other and the node's CPU has its share, so `measured_scale_h` also scales this run's own wall time
    (its process start included) by jobs and nodes, never below the throttle bound."""
    scale = args.project / jobs
    latency_s = sum(row["requests"][f] * scale * shape.mean_ms(f) / 1000 for f in FAMILIES) / (args.parallel * nodes)
    throttle = {f: max(0.0, row["requests"][f] * scale - b.burst) / b.rate for f, b in shape.buckets.items()}
    worst = max(throttle, key=throttle.get) if throttle else None
    hours = max(latency_s, throttle.get(worst, 0.0)) / 3600
    measured = max(row["wall_s"] * scale / nodes, throttle.get(worst, 0.0)) / 3600
    return {"nodes": nodes, "latency_bound_h": round(latency_s / 3600, 2), "measured_scale_h": round(measured, 2),
            "throttle_bound_h": round(throttle[worst] / 3600, 2) if worst else 0.0, "throttle_family": worst, "hours": round(hours, 2)}


def modelled_seconds(row: dict, shape, args) -> float:
    """The same model for the bench's own workload, to set against its measured wall time."""
    latency_s = sum(row["requests"][f] * shape.mean_ms(f) / 1000 for f in FAMILIES) / args.parallel
    throttle = [max(0.0, row["requests"][f] - b.burst) / b.rate for f, b in shape.buckets.items()]
    return round(max([latency_s, *throttle]), 1)


def table(results: dict) -> None:
    jobs, files = results["data"]["jobs"], results["data"]["files"]
    print(f"\nrequests by family ({jobs} jobs, {files} files; per file only where they grow with files)")
    print(f"{'family':<10}" + "".join(f"{c + ' total':>16}{'per job':>9}{'per file':>9}" for c in results["commands"]))
    for family in FAMILIES:
        line = f"{family:<10}"
        for row in results["commands"].values():
            n = row["requests"][family]
            line += f"{n:>16}{n / jobs:>9.2f}" + (f"{n / files:>9.2f}" if family in PER_FILE else f"{'':>9}")
        print(line)
    for name, row in results["commands"].items():
        total = sum(row["requests"].values())
        print(f"{name}: {row['wall_s']}s wall (model {row['modelled_s']}s), {total} requests ({total / jobs:.1f} per job), "
              f"429s absorbed {row['throttled'] or 0}")
        for p in row["projection"]:
            print(f"  {results['data']['project']:,} jobs on {p['nodes']} node(s): {p['hours']} h "
                  f"(latency bound {p['latency_bound_h']} h, throttle bound {p['throttle_bound_h']} h on {p['throttle_family']}); "
                  f"this run's wall time scaled: {p['measured_scale_h']} h")


# -- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    args = arguments()
    from azurite import Azurite
    from fakes import azureml_artifacts, azureml_latency
    from fakes import azureml_seed as seed
    from fakes.azureml_control_plane import FakeControlPlane, FakeWorkspace, write_fake_az
    from servers import MlflowServer

    work = Path(tempfile.mkdtemp(prefix="bench-azure-scale-"))
    specs, builders = workload(args)
    files = sum(len(s.files) for s in specs)
    print(f"seeding {len(specs)} jobs, {sum(len(r) for s in specs for r in s.metrics.values())} metric points, "
          f"{files} files ({sum(len(d) for s in specs for d in s.files.values()) / 1e6:.0f} MB) ...", flush=True)
    seed.seed_mlflow(work / "source-mlflow", specs)
    source_mlflow, target_mlflow = MlflowServer(work / "source-mlflow").start(), MlflowServer(work / "target-mlflow").start()
    fake = FakeControlPlane(work / "fake", source_mlflow.uri, list_page=100, children_page=50).start()  # page sizes: not recorded
    azureml_artifacts.PAGE = 100  # paths per listing page (the tests keep 3, to exercise paging)
    azurite = Azurite(work / "azurite").start()
    counter = azureml_latency.BlobCounter(azurite.endpoint, fake).start()
    try:
        src = fake.add(FakeWorkspace(SUB, RG, "ws-scale-src"))
        seed.install(src, specs, builders)
        src_store = azureml_artifacts.attach(src, azurite, "acct1", container="src")
        seed.upload_files(src_store, specs)
        dst = fake.add(FakeWorkspace(SUB, RG, "ws-scale-dst", mlflow_uri=target_mlflow.uri))
        dst_store = azureml_artifacts.attach(dst, azurite, "acct1", container="dst")
        azureml_artifacts.serve_run_artifacts(dst)
        for store in (src_store, dst_store):  # the SAS URLs handed out name the counting proxy
            store.public = counter.account_url(store.account)
        ends = (f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{src.name}", f"azureml://127.0.0.1:{fake.port}/mlflow/v2.0{dst.scope}")
        az = write_fake_az(work / "az", sys.executable)
        env = {**os.environ, **fake.environ(), "PYTHONPATH": str(ROOT), "PATH": f"{az}{os.pathsep}{os.environ['PATH']}",
               "AZUREML_LOG_LEVEL": "ERROR", "REPLAYER_LOG_DIR": str(work / "logs")}
        shape = azureml_latency.turn_on(fake, buckets={} if args.no_throttle else None)
        results = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), "load": os.getloadavg()[0]},
            "data": {"jobs": len(specs), "files": files, "metrics": args.metrics, "steps": args.steps, "parallel": args.parallel,
                     "project": args.project, "shards": args.shards},
            "latency_ms": shape.latency, "buckets": {f: {"per_s": b.rate, "burst": b.burst} for f, b in shape.buckets.items()},
            "recorded": recorded_request_times(), "commands": {},
        }
        for name in ("migrate", "verify"):
            print(f"{name} ...", flush=True)
            row = results["commands"][name] = command(name, ends, args, env, work, fake)
            row["modelled_s"] = modelled_seconds(row, shape, args)
            row["projection"] = [projection(row, len(specs), files, shape, args, n) for n in (1, args.shards)]
    finally:
        azureml_latency.turn_off(fake)
        counter.stop()
        azurite.stop()
        fake.stop()
        target_mlflow.stop()
        source_mlflow.stop()
    migrate, verify = results["commands"]["migrate"], results["commands"]["verify"]
    results["summary"] = {
        "migrate_failed_0": bool(re.search(r"failed 0\b", migrate["stderr"])),
        "verify_all_equal": bool(re.search(rf"{len(specs)} runs compared, {len(specs)} equal", verify["stdout"])),
        "throttled_absorbed": sum(migrate["throttled"].values()) + sum(verify["throttled"].values()),
    }
    table(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "azure_scale.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"]))
    print(f"written to {RESULTS / 'azure_scale.json'}")
    shutil.rmtree(work, ignore_errors=True)
    if not (results["summary"]["migrate_failed_0"] and results["summary"]["verify_all_equal"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
