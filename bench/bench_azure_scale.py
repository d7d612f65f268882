"""`make bench`, Azure-shaped: workspace to workspace with each request's latency and the service's throttling.

Every other figure is MLflow server to MLflow server on loopback, where a request costs well under a
millisecond. On Azure ML the cost is requests: tens to hundreds of milliseconds each, and 429 with
Retry-After past the service's rate. Here the workspaces live in the HTTPS fake of the control plane
(tests/fakes/) with tests/fakes/azureml_latency.py turned on: every request waits a latency drawn
from its route family's range and takes a token from its family's bucket (429 + Retry-After when
empty); blob requests go through a counting proxy in front of Azurite with a latency of their own.
Defaults and where they come from: that module's docstring (and the `recorded` block of the results,
`x-request-time` read from tests/recordings/*.json here).

Throttle scope (--bucket-scope): `workspace` (the default) gives every workspace its own bucket per
family (ARM one per subscription, as ARM documents its throttle: per principal and subscription,
learn.microsoft.com "Understand how Azure Resource Manager throttles requests"); `shared` gives all
the fake's workspaces one bucket per family (the bench's first model). Azure documents data-plane
limits per resource for Storage, Key Vault and Cosmos DB; for Azure ML it documents no data-plane
rate at all (MicrosoftDocs/azure-docs, articles/machine-learning/resource-limits-capacity.md lists
sizes), so per workspace is an assumption, as is the 20/s. The one public sign of a rate is
mlflow/mlflow#11462 (2024-03): one sequential client, roughly 10 MLflow requests/s, met persistent
429s after ~700 requests, scope unknown. The projection gives both scopes whichever was measured.

Workload (bench/azure_scale_workload.py, seeded straight into the stores): --jobs jobs, whole copies of
the fixture workspace (standalone jobs, pipelines with nested steps, sweeps and AutoML with trials),
each with --metrics metrics x --steps steps and --files files of --min-kb to --max-kb (log-uniform) in
the source's run history artifact store. Then, each as its own timed process, counted by route and
by workspace:

    replayer extract --source azureml://subscriptions/S/resourcegroups/R/workspaces/SRC --out DIR
    full checks, --checks inline (the default):
        replayer migrate --source (same) --target azureml://HOST/mlflow/v2.0/<scope of DST> --parallel N --credential cli --verify
      or --checks separate (also what inline falls back to where `replayer migrate --help` lists no --verify, saying so):
        replayer migrate (same ends, without --verify), then replayer verify (same ends)
    the peer: mlflow-export-import's export-experiments then import-experiments (.venv-bench, bench/setup.sh),
              MLFLOW_TRACKING_URI the source's and then a third workspace's azureml:// tracking URI, through
              azureml-mlflow, authenticated by the same fake `az` (AzureCliCredential in its chain)

Results: requests per job and per file by route for each command, requests per job in each workspace
(the source's reads against the target's writes), 429s met and absorbed (the summary must say failed
0, verify all equal), jobs/s of the tool with full checks and of the peer and their ratio, what the
peer copied, and the projection block (bench/azure_scale_report.py) for --project jobs (default
100,000) on one node and on --shards nodes, for each command and for full checks:
- latency floor: requests x mean latency / --parallel, per node;
- throttle bound under this run's scope and under the other: the busiest workspace's requests of a
  family (per workspace) or all of them (shared), less the burst, over the rate; shards share it;
- break-even: the rate per second a workspace's MLflow (run history, artifacts, ARM) bucket would
  have to allow for the projected jobs to fit in 1 hour on --shards nodes. Read it against what the
  service allows: at or above it, the throttle does not stop the hour; it is enough only where the
  latency floor on those nodes is under the hour too (the block says whether it is).
Printed, and written to bench-results/azure_scale.json (or --out).

    python bench/bench_azure_scale.py [--jobs 2000] [--parallel 8] [--metrics 5] [--steps 200] [--files 3]
        [--min-kb 1] [--max-kb 4096] [--no-throttle] [--no-latency] [--no-peer] [--project 100000] [--shards 8]
        [--bucket-scope workspace|shared] [--checks inline|separate]
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import azure_scale_report as report  # noqa: E402
import azure_scale_workload as workload  # noqa: E402

SUB, RG = "5e2d7c1a-0000-4000-8000-00000000a7a7", "rg-scale"
PEER_BIN = ROOT / ".venv-bench" / "bin"


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="at least this many jobs (whole copies of the 38-job fixture)")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--metrics", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--min-kb", type=int, default=1)
    parser.add_argument("--max-kb", type=int, default=4096)
    parser.add_argument("--no-throttle", action="store_true", help="latency only, no token buckets")
    parser.add_argument("--no-latency", action="store_true", help="count only: no latency, no buckets (tests/test_bench_azure_scale.py)")
    parser.add_argument("--no-peer", action="store_true", help="leave mlflow-export-import out")
    parser.add_argument("--project", type=int, default=100_000, help="jobs in the projection")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--bucket-scope", choices=latency_scopes(), default="workspace",
                        help="workspace: each workspace its own buckets (ARM: the subscription's); shared: one per family for all")
    parser.add_argument("--checks", choices=("inline", "separate"), default="inline",
                        help="full checks as `migrate --verify` (inline) or `migrate` then `verify` (separate); inline falls back "
                             "to separate where migrate has no --verify")
    parser.add_argument("--estimate-seconds", type=float, default=20,
                        help="`replayer estimate --probe-seconds` before the copy (its prediction set against the measured wall time); 0: no estimate")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "azure_scale.json")
    return parser.parse_args(argv)


def latency_scopes() -> tuple[str, ...]:
    from fakes.azureml_latency import SCOPES

    return SCOPES


def inline_checks_available() -> bool:
    """Whether this checkout's `replayer migrate` takes --verify (branch check18): its --help lists the flag."""
    done = subprocess.run([sys.executable, "-m", "runner", "migrate", "--help"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    return bool(re.search(r"^\s*--verify\b", done.stdout + done.stderr, re.MULTILINE))


def checks_mode(asked: str) -> str:
    """The --checks mode to run: inline only where migrate can check, else separate, said out loud."""
    if asked == "inline" and not inline_checks_available():
        print("note: `replayer migrate --help` lists no --verify here: full checks run as migrate then verify (--checks separate)",
              flush=True)
        return "separate"
    return asked


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


# -- the workspaces -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def workspaces(args, work: Path):
    """The fake with three workspaces (source, the tool's target, the peer's target), each over its own
    mlflow server and artifact container in one Azurite account; yields what the commands need."""
    from cloud_storage import CloudStorage
    from fakes import azureml_artifacts, azureml_latency
    from fakes import azureml_seed as seed
    from fakes.azureml_control_plane import FakeControlPlane, FakeWorkspace
    from servers import MlflowServer, start_all

    specs, builders = workload.jobs(args.jobs)
    plan = workload.files(specs, args.files, args.min_kb, args.max_kb)
    print(f"seeding {len(specs)} jobs, {len(specs) * args.metrics * args.steps} metric points, {len(plan)} files "
          f"({sum(f.size for f in plan) / 1e6:.0f} MB) ...", flush=True)
    started = time.monotonic()
    workload.seed_mlflow(work / "source-mlflow", specs, args.metrics, args.steps)
    stores = ("source-mlflow", "target-mlflow", "peer-mlflow")
    for name in stores:
        workload.plan_as_large(work / name)
    with contextlib.ExitStack() as stack:
        running = start_all(*(MlflowServer(work / name) for name in stores))
        for server in running:
            stack.callback(server.stop)
        source_uri, target_uri, peer_uri = (server.uri for server in running)
        # Page sizes: not recorded; the tests keep them small to exercise paging.
        fake = stack.enter_context(FakeControlPlane(work / "fake", source_uri, list_page=100, children_page=50))
        azureml_artifacts.PAGE = 100
        # Production blob URLs (https://acct1.blob.core.windows.net) in the SAS URLs handed out, reached
        # through the counting proxy: azureml-mlflow downloads from no other form.
        storage = stack.enter_context(CloudStorage(work / "storage", ca=fake.ca))
        counter = azureml_latency.BlobCounter(storage.azurite.endpoint, fake, tls=storage).start()
        stack.callback(counter.stop)
        src = fake.add(FakeWorkspace(SUB, RG, "ws-scale-src"))
        seed.install(src, specs, builders)
        stores = {"src": azureml_artifacts.attach(src, storage, "acct1", container="src")}
        workload.upload(stores["src"], plan)  # straight to Azurite, not through the counter
        targets = {}
        for name, uri in (("dst", target_uri), ("peer", peer_uri)):
            targets[name] = fake.add(FakeWorkspace(SUB, RG, f"ws-scale-{name}", mlflow_uri=uri))
            stores[name] = azureml_artifacts.attach(targets[name], storage, "acct1", container=name)
            azureml_artifacts.serve_run_artifacts(targets[name])
        azureml_artifacts.serve_run_artifacts(src)  # the peer reads the source's files through azureml-mlflow
        print(f"seeded in {time.monotonic() - started:.0f}s", flush=True)
        host = f"azureml://127.0.0.1:{fake.port}"
        yield SimpleNamespace(
            fake=fake, specs=specs, files=plan, env=environment(fake, counter, work), work=work,
            source=f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{src.name}",
            target=f"{host}/mlflow/v2.0{targets['dst'].scope}",
            tracking={"src": f"{host}/mlflow/v1.0{src.scope}", "peer": f"{host}/mlflow/v1.0{targets['peer'].scope}"},
            stores=stores,
        )
        azureml_latency.turn_off(fake)


def environment(fake, counter, work: Path) -> dict:
    """The commands' environment: the fake's CA and endpoints, a fake `az` first on PATH (`--credential
    cli`), blob hosts through the counting proxy, logs in the work folder."""
    from cloud_storage import NO_PROXY
    from fakes.azureml_control_plane import write_fake_az

    az = write_fake_az(work / "az", sys.executable)
    return {**os.environ, **fake.environ(), "PYTHONPATH": str(ROOT), "PATH": f"{az}{os.pathsep}{os.environ['PATH']}",
            "HTTPS_PROXY": counter.url, "https_proxy": counter.url, "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY,
            "AZUREML_LOG_LEVEL": "ERROR", "REPLAYER_LOG_DIR": str(work / "logs")}


# -- the commands -------------------------------------------------------------------------------------------


def timed(argv: list[str], env: dict, cwd: Path, log: Path) -> dict:
    """Run a process to completion: wall time, exit code, its own peak RSS (VmHWM, polled: a forked child's
    ru_maxrss would include this process's), output in `log`."""
    peak = [0]
    with open(log, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.2):
                with contextlib.suppress(OSError, StopIteration):
                    status = Path(f"/proc/{proc.pid}/status").read_text()
                    peak[0] = max(peak[0], int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            code = proc.wait(timeout=6 * 3600)
        finally:
            done.set()
            watcher.join()
    return {"wall_s": round(time.monotonic() - started, 1), "exit": code, "rss_mb": round(peak[0] / 1024), "log": str(log)}


def counted(name: str, argv: list[str], ends, env: dict | None = None) -> dict:
    """`argv` timed, with the requests it made (bench/azure_scale_report.py)."""
    print(f"{name} ...", flush=True)
    before = dict(ends.fake.requests)
    row = timed(argv, env or ends.env, ends.work, ends.work / "logs" / f"{name}.log")
    row.update(report.made(before, dict(ends.fake.requests)))
    tail = Path(row["log"]).read_text(errors="replace")[-3000:]
    row["tail"] = tail[-1500:]
    if row["exit"] != 0:
        raise SystemExit(f"{name} failed ({row['exit']}):\n{tail}")
    return row


def tool(command: str, ends, args, *more: str, name: str | None = None) -> dict:
    argv = [sys.executable, "-m", "runner", command, "--source", ends.source, *more, "--workspace", "bench",
            "--credential", "cli", "--parallel", str(args.parallel)]
    return counted((name or command).replace(" --", "-"), argv, ends)


# Azure ML refuses more than 250 rows of one metric name in one log-batch (the fake's reading of the
# documented limit, tests/fakes/azureml_limits.py; the docs also read as 250 rows in all);
# mlflow-export-import sends mlflow's MAX_METRICS_PER_BATCH, 1,000, so as released a metric of more
# than 250 points can be refused. It batches a run's points name after name, so with --steps 250 or
# fewer no name passes 250 in a request and it runs as released; with more it runs with 250 in all,
# which fits either reading (the one change it needs).
PEER_SHIM = """import mlflow.utils.validation as validation
validation.MAX_METRICS_PER_BATCH = 250
"""
# azureml-mlflow asks its credential chain for a token on every request and the CLI credential runs
# `az` each time (DESIGN, known traps); the tool caches its token. So the peer's `az` answers a token
# minted once, in a few ms, as cheap as a managed identity's cached token: the comparison is of the
# tools' requests, not of process starts on this machine.
PEER_AZ = """#!/bin/sh
cat {token}
"""


def peer_environment(ends, steps: int) -> dict:
    from fakes.azureml_control_plane import TENANT, make_token

    folder = ends.work / "peer-shim"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(PEER_SHIM if steps > 250 else "")
    token = folder / "token.json"
    token.write_text(json.dumps({"accessToken": make_token(TENANT, expires_in=12 * 3600), "expires_on": int(time.time()) + 12 * 3600,
                                 "tenant": TENANT, "tokenType": "Bearer"}))
    (folder / "az").write_text(PEER_AZ.format(token=token))
    (folder / "az").chmod(0o755)
    # AZURE_TOKEN_CREDENTIALS (azure-identity's selector) keeps azureml-mlflow's DefaultAzureCredential to
    # the CLI credential, as `--credential cli` does for the tool, instead of probing for a managed identity first.
    return {**ends.env, "AZURE_TOKEN_CREDENTIALS": "AzureCliCredential", "PYTHONPATH": str(folder),
            "PATH": f"{folder}{os.pathsep}{ends.env['PATH']}"}


def peer(ends, steps: int) -> dict:
    """mlflow-export-import from the source's MLflow endpoint to the peer workspace's, through azureml-mlflow;
    what it copied is read back from the peer workspace's stores."""
    dump = ends.work / "peer-dump"
    env = peer_environment(ends, steps)
    rows = {
        "export": counted("peer-export", [str(PEER_BIN / "export-experiments"), "--experiments", "all", "--output-dir", str(dump),
                                          "--use-threads", "True"], ends, {**env, "MLFLOW_TRACKING_URI": ends.tracking["src"]}),
        "import": counted("peer-import", [str(PEER_BIN / "import-experiments"), "--input-dir", str(dump), "--use-threads", "True"],
                          ends, {**env, "MLFLOW_TRACKING_URI": ends.tracking["peer"]}),
    }
    shutil.rmtree(dump, ignore_errors=True)
    return rows


def copied(ends, name: str) -> dict:
    """Runs, metric points and files in a target workspace (`dst`: the tool's, `peer`: the peer's)."""
    import sqlite3

    db = sqlite3.connect(Path(ends.work / f"{'target' if name == 'dst' else name}-mlflow" / "mlflow.db"))
    runs = [r for (r,) in db.execute("SELECT run_uuid FROM runs")]
    points = db.execute("SELECT count(*) FROM metrics").fetchone()[0]
    db.close()
    return {"runs": len(runs), "metric_points": points, "files": sum(len(ends.stores[name].paths(r)) for r in runs)}


# -- main ---------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    args = arguments(argv)
    from fakes import azureml_latency

    if not args.no_peer and not (PEER_BIN / "export-experiments").exists():
        sys.exit(f"{PEER_BIN}/export-experiments is missing: run `bash bench/setup.sh` first (or --no-peer)")
    args.checks = checks_mode(args.checks)
    work = Path(tempfile.mkdtemp(prefix="bench-azure-scale-"))
    (work / "logs").mkdir()
    try:
        with workspaces(args, work) as ends:
            shape = azureml_latency.turn_on(ends.fake, latency={} if args.no_latency else None,
                                            buckets={} if args.no_throttle or args.no_latency else None, scope=args.bucket_scope)
            results = run(args, ends, shape)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(summary_lines(results)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"]))
    print(f"written to {args.out}")
    if not (results["summary"]["migrate_failed_0"] and results["summary"]["verify_all_equal"]):
        sys.exit(1)


ROLES = {"ws-scale-src": "source", "ws-scale-dst": "target", "ws-scale-peer": "peer target"}
FULL = "tool, full checks"  # the `whole` row of a migration with full checks, however they run (--checks)


def run(args, ends, shape) -> dict:
    from fakes.azureml_latency import BUCKETS

    jobs, files = len(ends.specs), len(ends.files)
    latency_ms = {f: shape.mean_ms(f) for f in report.FAMILIES}
    buckets = dict(shape.rates)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), "load": os.getloadavg()[0]},
        "data": {"jobs": jobs, "files": files, "bytes": sum(f.size for f in ends.files), "metrics": args.metrics, "steps": args.steps,
                 "parallel": args.parallel, "project": args.project, "shards": args.shards, "checks": args.checks,
                 "bucket_scope": shape.scope, "workspaces": ROLES, "kinds": dict(sorted(_kinds(ends.specs).items()))},
        "latency_ms": shape.latency, "buckets": {f: {"per_s": r, "burst": b} for f, (r, b) in buckets.items()},
        "recorded": recorded_request_times(), "commands": {},
    }
    commands = results["commands"]
    if args.estimate_seconds:  # first, on the untouched workspaces a user would estimate; its 429s are the probe's aim
        results["estimate"] = predicted(ends, args)
    commands["extract"] = tool("extract", ends, args, "--out", str(ends.work / "manifest"))
    if args.checks == "inline":
        commands["migrate --verify"] = tool("migrate", ends, args, "--target", ends.target, "--verify", name="migrate --verify")
    else:
        commands["migrate"] = tool("migrate", ends, args, "--target", ends.target)
        commands["verify"] = tool("verify", ends, args, "--target", ends.target)
    checked = ["migrate --verify"] if args.checks == "inline" else ["migrate", "verify"]
    if not args.no_peer:
        rows = peer(ends, args.steps)
        commands["peer-export"], commands["peer-import"] = rows["export"], rows["import"]
        results["peer_copied"] = copied(ends, "peer")
    results["tool_copied"] = copied(ends, "dst")
    whole = {FULL: {**report.combined("tool", [commands[n] for n in checked]), "checks": args.checks, "commands": checked}}
    if not args.no_peer:
        whole["peer (export + import)"] = report.combined("peer", [commands["peer-export"], commands["peer-import"]])
    for name, row in [*commands.items(), *whole.items()]:
        row["modelled_s"] = report.modelled_seconds(row, latency_ms, buckets, args.parallel, shape.scope)
        # The break-even rates are priced for the default buckets' families even in a run without buckets:
        # how many requests a bucket takes does not depend on whether it throttled.
        row["projection"] = [report.projection(row, jobs, latency_ms, buckets, args.parallel, args.project, n, shape.scope,
                                               priced={**BUCKETS, **buckets}) for n in (1, args.shards)]
        if name in commands:
            row["per_unit"] = report.per_unit(row, jobs, files)
    for row in whole.values():
        row["jobs_per_s"] = round(jobs / row["wall_s"], 2) if row["wall_s"] else None
    results["whole"] = whole
    results["summary"] = summary(results, ends)
    return results


def predicted(ends, args) -> dict:
    """`replayer estimate` on this run's two workspaces, on one node: what it predicts for the copy with full
    checks (or without, with --checks separate it predicts migrate plus verify as migrate --verify's requests)."""
    out = ends.work / "estimate.json"
    row = tool("estimate", ends, args, "--target", ends.target, "--shards", "1", "--probe-seconds", f"{args.estimate_seconds:g}",
               "--report", str(out))
    estimated = json.loads(out.read_text())
    p = estimated["projection"]
    return {"predicted_s": p["seconds_1"], "bound": p["bound_1"], "wall_s": row["wall_s"], "requests": sum(row["requests"].values()),
            "throttled": row["throttled"], "rates": {k: v["describe"] for k, v in estimated["probes"].items()}}


def _kinds(specs) -> dict:
    out: dict[str, int] = {}
    for spec in specs:
        key = f"{spec.kind} step" if spec.parent and spec.step else f"{spec.kind} trial" if spec.parent else spec.kind
        out[key] = out.get(key, 0) + 1
    return out


def summary(results: dict, ends) -> dict:
    jobs = results["data"]["jobs"]
    commands, whole = results["commands"], results["whole"]
    tool_row = whole[FULL]
    migrate, check = commands[tool_row["commands"][0]], commands[tool_row["commands"][-1]]  # inline: one command does both
    eight = tool_row["projection"][-1]
    out = {
        "checks": tool_row["checks"],
        "bucket_scope": results["data"]["bucket_scope"],
        "migrate_failed_0": bool(re.search(r"failed 0\b", migrate["tail"])),
        "verify_all_equal": bool(re.search(rf"{jobs} runs compared, {jobs} equal", check["tail"])),
        "throttled_absorbed": sum(sum(r["throttled"].values()) for r in commands.values()),
        "tool_jobs_per_s": tool_row["jobs_per_s"],
        "projected_hours": {f"{p['nodes']} node(s)": p["hours"] for p in tool_row["projection"]},
        "break_even_per_workspace_per_s": {f: eight["break_even_per_s"]["workspace"].get(f) for f in ("mlflow", "history", "artifacts")},
    }
    if "estimate" in results:
        out["estimate_predicted_s"] = results["estimate"]["predicted_s"]
        out["estimate_vs_measured"] = round(results["estimate"]["predicted_s"] / tool_row["wall_s"], 2) if tool_row["wall_s"] else None
    if "peer (export + import)" in whole:
        # The peer checks nothing: the ratio with the checks included (full checks) and of migrate alone (separate).
        peer_s = whole["peer (export + import)"]["wall_s"]
        out["peer_jobs_per_s"] = whole["peer (export + import)"]["jobs_per_s"]
        out["ratio"] = round(peer_s / tool_row["wall_s"], 2)
        if tool_row["checks"] == "separate":
            out["ratio_migrate_only"] = round(peer_s / commands["migrate"]["wall_s"], 2)
    return out


def summary_lines(results: dict) -> list[str]:
    data, commands = results["data"], results["commands"]
    buckets = {f: (b["per_s"], b["burst"]) for f, b in results["buckets"].items()}
    lines = ["", *report.route_table(commands, data["jobs"], data["files"]), "",
             *report.workspace_table(commands, data["jobs"], data["workspaces"]), ""]
    for name, row in commands.items():
        lines.append(f"{name}: {row['wall_s']}s wall (model {row['modelled_s']}s), peak RSS {row['rss_mb']} MB, "
                     f"{sum(row['requests'].values())} requests, 429s absorbed {row['throttled'] or 0}")
    for name, row in results["whole"].items():
        lines.append(f"{name}: {row['wall_s']}s, {row['jobs_per_s']} jobs/s")
    rows = {name: row for name, row in commands.items() if not name.startswith("peer")}
    rows[f"full checks ({results['whole'][FULL]['checks']}: {' + '.join(results['whole'][FULL]['commands'])})"] = results["whole"][FULL]
    lines += ["", *report.projection_block(rows, data["jobs"], data, buckets, data["bucket_scope"]), ""]
    for name in ("migrate --verify", "migrate"):
        if name in commands:
            lines.append(f"{name}: " + report.formula_line(commands[name], data["jobs"], data["files"], data["metrics"], name != "migrate"))
    if "estimate" in results:
        e, full = results["estimate"], results["whole"][FULL]
        lines.append(f"replayer estimate (before the copy, {e['wall_s']}s, {e['requests']} requests): predicted {e['predicted_s']}s "
                     f"({e['bound']}), measured {full['wall_s']}s: {results['summary']['estimate_vs_measured']}x; rates {e['rates']}")
    lines.append(f"the tool copied: {results['tool_copied']}")
    if "peer_copied" in results:
        lines.append(f"the peer copied: {results['peer_copied']}")
    return lines


if __name__ == "__main__":
    main()
