"""`make bench`, registry part: replayer against mlflow-export-import's export-models/import-models.

One source mlflow server is seeded with MODELS registered models x VERSIONS live versions. Every
version is backed by its own run (10 params, 5 tags, 2 metrics x 50 steps, and its model folder
as run artifacts: an MLmodel naming the run + a 16 KB model.pkl) and registered the way
`mlflow.register_model("runs:/RUN/model")` does it (source = the run's artifact URI + /model).
Versions carry a description and tags, every third one a stage; every model has a description,
tags and two aliases; every fifth model lost a version (deleted: a gap in its numbers). Each
contender copies runs *and* models into a FRESH, empty target server, as a separate process
timed from launch to exit.

The baseline needs a setup it can work in, and gets it: mlflow-export-import 1.2.0 (latest)
  - cannot export versions with an mlflow 3 client (ModelVersion.deployment_job_state is not JSON
    serializable, issue #212): it runs on the last mlflow 2 client (.venv-bench-mlflow2, made by
    bench/setup_registry.sh) against the same mlflow 3.15 servers;
  - finds a version's model path after the first "artifacts" in its source URI, so a source with
    served artifacts (`mlflow-artifacts:/...`, mlflow server's default) yields a wrong path: the
    source keeps artifacts in a local folder (`--no-serve-artifacts`, root `mlruns`);
  - creates a version only if its new source exists on this machine's disk (os.path.exists), so
    its target keeps artifacts in a local folder too.
Each of those three failures is also run on 2 models (single-threaded, so the reason is logged;
with threads import-models drops the exception and exits 0) and reported. Contenders timed:

  export-import  export-models --models all, then import-models --use-threads True; both phases.
  replayer       python -m runner migrate --models all --parallel N: the runs, then the registry;
                 into the same kind of target as export-import, and into a served-artifacts one.
                 Then once more (a rerun must create nothing) and `replayer verify --models all`.

Each target is checked outside the timing: every model and version present once, descriptions,
tags, stages, aliases, version numbers, the run link (pairs by run name), and the files (md5) of
a sample of versions. Known losses of a contender are reported as such, not as failures.
Results: a table on stdout and bench-results/registry.json.

    python bench/bench_registry.py [--models 50] [--versions 5] [--parallel 8] [--skip export-import,served]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_migrate import BENCH_VENV, RESULTS, run_process, server_cpu, versions  # noqa: E402
from servers import MlflowServer  # noqa: E402

PARAMS, TAGS, METRICS, STEPS = 10, 5, 2, 50
SAMPLE = 25  # versions whose files are compared per target
# mlflow-export-import 1.2.0 cannot export a model version with an mlflow 3 client (its ModelVersion
# carries a deployment_job_state that json.dump refuses: issue #212), so the baseline's numbers
# come from the same tool on the last mlflow 2 client (bench/setup_registry.sh), against the same
# mlflow 3.15 servers; the mlflow 3 client is run too, on 2 models, to show the failure.
MLFLOW2_VENV = ROOT / ".venv-bench-mlflow2"
OWN = ("original_", "replay.", "mlflow_exim.")  # bookkeeping tags of the tools, not the user's


class LocalArtifactServer(MlflowServer):
    """`mlflow server` whose artifact store is a folder of this machine, written by clients directly.

    The folder is `mlruns`, not `artifacts`: export-import finds a version's model path by the
    first "artifacts" in its source URI (import_model._extract_model_path), so any "artifacts"
    before the run's own (the `mlflow-artifacts:` scheme, a root folder of that name) breaks it.
    """

    def artifact_args(self) -> list[str]:
        return ["--default-artifact-root", str(self.folder / "mlruns"), "--no-serve-artifacts"]


# -- seeding ---------------------------------------------------------------------------------


def seed(uri: str, models: int, versions_per_model: int, threads: int = 8) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(uri)
    experiment = client.create_experiment("registry-bench", tags={"mlflow.note.content": "runs behind the registry bench"})
    scratch = Path(tempfile.mkdtemp(prefix="bench-registry-seed-"))
    rng = random.Random(11)
    base = 1_700_000_000_000

    def one_model(m: int) -> int:
        name = f"model-{m:03d}"
        client.create_registered_model(name, tags={"team": f"team-{m % 4}", "domain": "bench"}, description=f"registry bench model {m}")
        gap = m % 5 == 0  # every fifth model loses a version: one more is made, then deleted
        count = versions_per_model + (1 if gap else 0)
        for v in range(1, count + 1):
            start = base + (m * 10 + v) * 60_000
            run = client.create_run(experiment, start_time=start, run_name=f"{name}-v{v}", tags={f"tag_{k}": f"{m}-{v}-{k}" for k in range(TAGS)})
            run_id = run.info.run_id
            values = [rng.random() for _ in range(METRICS * STEPS)]
            client.log_batch(
                run_id,
                params=[Param(f"param_{k}", str(k * v)) for k in range(PARAMS)],
                metrics=[Metric(f"metric_{k}", values[k * STEPS + s], start + s * 100, s) for k in range(METRICS) for s in range(STEPS)],
            )
            folder = scratch / run_id / "model"
            folder.mkdir(parents=True)
            (folder / "MLmodel").write_text(f"artifact_path: model\nflavors:\n  python_function: {{}}\nrun_id: {run_id}\n")
            (folder / "model.pkl").write_bytes(rng.randbytes(16 * 1024))
            client.log_artifacts(run_id, str(folder), "model")
            client.set_terminated(run_id, "FINISHED", end_time=start + 10_000)
            client.create_model_version(
                name, f"{run.info.artifact_uri}/model", run_id, tags={"quality": f"q{v}", "trained_on": f"2024-0{1 + v % 9}"},
                description=f"{name} version {v}", await_creation_for=0,
            )
            if v % 3 == 0:
                client.transition_model_version_stage(name, str(v), "Production" if v % 2 else "Staging")
        if gap:
            client.delete_model_version(name, "3")
        live = [str(v) for v in range(1, count + 1) if not (gap and v == 3)]
        client.set_registered_model_alias(name, "champion", live[-1])
        client.set_registered_model_alias(name, "baseline", live[0])
        return len(live)

    with ThreadPoolExecutor(threads) as pool:
        live = sum(pool.map(one_model, range(models)))
    shutil.rmtree(scratch, ignore_errors=True)
    gaps = len(range(0, models, 5))
    return {"models": models, "versions": live, "runs": live + gaps, "gaps": gaps}


# -- contenders ------------------------------------------------------------------------------


def contender_export_import(source: MlflowServer, target: MlflowServer, work: Path, logs: Path, tag: str, models: str = "all",
                            venv: Path = BENCH_VENV, threads: bool = True) -> dict:
    """export-models then import-models. With threads, import-models drops a failed model's
    exception (ThreadPoolExecutor futures never read) and exits 0; the 2-model demonstrations
    run without, so the reason reaches the log."""
    bin_dir = venv / "bin"
    dump = work / f"export-models-{tag}"
    exported = run_process(
        [str(bin_dir / "export-models"), "--models", models, "--output-dir", str(dump), "--use-threads", str(threads)],
        logs / f"export-models-{tag}.log", {"MLFLOW_TRACKING_URI": source.uri},
    )
    imported = run_process(
        [str(bin_dir / "import-models"), "--input-dir", str(dump), "--use-threads", str(threads)],
        logs / f"import-models-{tag}.log", {"MLFLOW_TRACKING_URI": target.uri},
    )
    shutil.rmtree(dump, ignore_errors=True)
    errors = []
    for phase in ("export", "import"):
        log = (logs / f"{phase}-models-{tag}.log").read_text(errors="replace")
        found = re.findall(r"(?:^ERROR: |MlflowExportImportException: )([^\n]{0,200})", log, re.M)
        errors += [f"{phase}-models: {e}" for e in dict.fromkeys(found)]
    return {
        "seconds": exported["seconds"] + imported["seconds"],
        "exit": exported["exit"] or imported["exit"],
        "rss_mb": max(exported["rss_mb"], imported["rss_mb"]),
        "cpu_s": exported["cpu_s"] + imported["cpu_s"],
        "phases": {"export": exported, "import": imported},
        "errors_in_log": errors[:3],
    }


def contender_replayer(source: MlflowServer, target: MlflowServer, logs: Path, parallel: int, tag: str) -> dict:
    report = logs / f"replayer-{tag}.json"
    result = run_process(
        [sys.executable, "-m", "runner", "migrate", "--source", source.uri, "--target", target.uri, "--models", "all",
         "--parallel", str(parallel), "--report", str(report)],
        logs / f"replayer-{tag}.log", {"REPLAYER_LOG_DIR": str(logs / "replayer")},
    )
    if report.is_file():
        summary = json.loads(report.read_text())
        result["phases"] = {"runs_s": round(summary["seconds"], 1), "models_s": round(summary["models"]["seconds"], 1)}
        result["summary"] = {"runs_created": summary["created"], "versions_created": summary["models"]["versions_created"]}
    return result


def replayer_again(source: MlflowServer, target: MlflowServer, logs: Path, parallel: int) -> dict:
    """The rerun: nothing may be created, and how long an up-to-date check takes."""
    result = contender_replayer(source, target, logs, parallel, "rerun")
    created = result.get("summary", {})
    result["ok"] = result["exit"] == 0 and created.get("runs_created") == 0 and created.get("versions_created") == 0
    return {k: result[k] for k in ("seconds", "exit", "ok", "summary") if k in result}


def replayer_verify(source: MlflowServer, target: MlflowServer, logs: Path) -> dict:
    report = logs / "verify-registry.json"
    result = run_process(
        [sys.executable, "-m", "runner", "verify", "--source", source.uri, "--target", target.uri, "--models", "all", "--report", str(report)],
        logs / "replayer-verify.log", {"REPLAYER_LOG_DIR": str(logs / "replayer")},
    )
    models = json.loads(report.read_text())["summary"].get("models") if report.is_file() else None
    return {"exit": result["exit"], "seconds": round(result["seconds"], 1), "ok": result["exit"] == 0, "models_compared": models}


# -- checking a target -----------------------------------------------------------------------


def check(source_uri: str, target_uri: str, known_gaps: tuple[str, ...] = (), scratch: Path | None = None) -> dict:
    """Every model and version present once and equal; files of a sample compared by md5.

    Versions pair by their run's name (each version has its own run), so a contender that
    renumbers versions is still compared field by field; the numbers are checked on their own.
    """
    from mlflow import MlflowClient

    src, dst = MlflowClient(source_uri), MlflowClient(target_uri)
    problems: list[str] = []
    notes: list[str] = []

    def report(kind: str, text: str) -> None:
        (notes if kind in known_gaps else problems).append(f"{kind}: {text}")

    run_names = {}
    for client, uri in ((src, source_uri), (dst, target_uri)):
        ids = [e.experiment_id for e in client.search_experiments() if e.name == "registry-bench"]
        names, token = {}, None
        while ids:
            page = client.search_runs(ids, "", max_results=1000, page_token=token)
            names.update({r.info.run_id: r.info.run_name for r in page})
            token = page.token
            if not token:
                break
        run_names[uri] = names
    want_models = {m.name: m for m in all_models(src)}
    have_models = {m.name: m for m in all_models(dst)}
    if set(want_models) != set(have_models):
        problems.append(f"models: {len(have_models)} in the target, {len(want_models)} in the source")
    compared = []
    versions_seen = 0
    for name, model in sorted(want_models.items()):
        copy = have_models.get(name)
        if copy is None:
            continue
        if (copy.description, user(copy.tags)) != (model.description, user(model.tags)):
            report("model fields", name)
        want_v = {run_names[source_uri].get(v.run_id): v for v in all_versions(src, name)}
        have_list = all_versions(dst, name)
        versions_seen += len(have_list)
        have_v = {run_names[target_uri].get(v.run_id): v for v in have_list}
        if len(have_list) != len(want_v) or set(have_v) != set(want_v):
            problems.append(f"versions of {name}: {len(have_list)} in the target, {len(want_v)} in the source")
        for run_name, v in want_v.items():
            c = have_v.get(run_name)
            if c is None:
                continue
            if (c.description, user(c.tags), c.current_stage) != (v.description, user(v.tags), v.current_stage):
                report("version fields", f"{name} v{v.version}")
            if c.version != v.version:
                report("version numbers", f"{name} v{v.version} became v{c.version}")
            compared.append((name, v, c))
        mapped = {v.version: have_v[n].version for n, v in want_v.items() if n in have_v}
        if {a: mapped.get(n) for a, n in model.aliases.items()} != dict(copy.aliases):
            report("aliases", f"{name}: {dict(copy.aliases)} for {dict(model.aliases)}")
    scratch = scratch or Path(tempfile.mkdtemp(prefix="bench-registry-check-"))
    for name, v, c in random.Random(3).sample(compared, min(SAMPLE, len(compared))):
        a = tree_md5(src, name, v.version, source_uri, scratch)
        b = tree_md5(dst, name, c.version, target_uri, scratch)
        if {k: x for k, x in a.items() if k != "MLmodel"} != {k: x for k, x in b.items() if k != "MLmodel"}:
            problems.append(f"files of {name} v{v.version} differ: {sorted(b)} vs {sorted(a)}")
        elif a.get("MLmodel") != b.get("MLmodel"):
            report("MLmodel rewritten", f"{name} v{v.version}")
    gaps = sorted({n.split(":")[0] for n in notes})
    return {
        "models_in_target": len(have_models), "versions_in_target": versions_seen, "files_sampled": min(SAMPLE, len(compared)),
        "problems": problems[:20], "known_gaps_seen": gaps, "notes": notes[:10], "ok": not problems,
    }


def user(tags: dict) -> dict:
    return {k: v for k, v in (tags or {}).items() if not k.startswith(OWN)}


def all_models(client) -> list:
    found, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        found += page
        token = page.token
        if not token:
            return found


def all_versions(client, name: str) -> list:
    return sorted(client.search_model_versions(f"name='{name}'", max_results=1000), key=lambda v: int(v.version))


def tree_md5(client, name: str, version: str, tracking_uri: str, scratch: Path) -> dict[str, str]:
    import mlflow

    uri = client.get_model_version_download_uri(name, version)
    folder = Path(tempfile.mkdtemp(dir=scratch))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder), tracking_uri=tracking_uri))
    return {p.relative_to(local).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in local.rglob("*") if p.is_file()}


# -- the whole bench -------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="replayer vs mlflow-export-import on the model registry")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--versions", type=int, default=5, help="live versions per model")
    parser.add_argument("--parallel", type=int, default=8, help="replayer --parallel")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per mlflow server")
    parser.add_argument("--skip", default="", help="contenders to leave out: export-import,served")
    parser.add_argument("--out", default=str(RESULTS / "registry.json"))
    parser.add_argument("--keep", action="store_true", help="keep the servers' folders")
    args = parser.parse_args()
    os.environ.update({
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
    })
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if "export-import" not in skip and not (BENCH_VENV / "bin" / "export-models").exists():
        sys.exit(f"{BENCH_VENV}/bin/export-models is missing: run `bash bench/setup.sh` first (or --skip export-import)")
    if "export-import" not in skip and not MLFLOW2_VENV.exists():
        print(f"note: {MLFLOW2_VENV} is missing (bash bench/setup_registry.sh): export-import runs only with the mlflow 3 client, "
              "whose model export fails (mlflow-export-import issue #212)", flush=True)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # stages, used while seeding

    RESULTS.mkdir(exist_ok=True)
    logs = RESULTS / "logs-registry"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="replayer-bench-registry-"))
    servers: list[MlflowServer] = []
    results: dict[str, dict] = {}
    started_all = time.monotonic()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        # The source keeps artifacts in a local folder: the only kind export-import can read
        # versions from (LocalArtifactServer says why); replayer reads either kind.
        source = LocalArtifactServer(work / "source", workers=args.workers).start()
        servers.append(source)
        lazy: list[MlflowServer] = []

        def served_source() -> MlflowServer:
            """A small second source with served artifacts (mlflow server's default), for a demonstration."""
            if not lazy:
                lazy.append(MlflowServer(work / "served-source", workers=args.workers).start())
                servers.append(lazy[0])
                seed(lazy[0].uri, 2, args.versions)
            return lazy[0]
        t = time.monotonic()
        seeded = seed(source.uri, args.models, args.versions)
        seeded["seconds"] = round(time.monotonic() - t, 1)
        print(f"seeded {seeded['models']} models, {seeded['versions']} versions, {seeded['runs']} runs in {seeded['seconds']}s", flush=True)

        plan = []  # (name, target server class, run it, a 2-model demonstration?)
        demo = "model-000,model-001"
        m2 = MLFLOW2_VENV if MLFLOW2_VENV.exists() else BENCH_VENV
        if "export-import" not in skip and MLFLOW2_VENV.exists():
            plan.append((f"export-import ({client_version(m2)})", LocalArtifactServer,
                         lambda t: contender_export_import(source, t, work, logs, "mlflow2", venv=m2), False))
        plan.append((f"replayer (p{args.parallel})", LocalArtifactServer, lambda t: contender_replayer(source, t, logs, args.parallel, "local"), False))
        if "served" not in skip:
            plan.append((f"replayer (p{args.parallel}, served-artifacts target)", MlflowServer,
                         lambda t: contender_replayer(source, t, logs, args.parallel, "served"), False))
        if "export-import" not in skip:  # what the baseline does elsewhere, on 2 models each
            plan.append((f"export-import ({client_version(BENCH_VENV)}), 2 models", LocalArtifactServer,
                         lambda t: contender_export_import(source, t, work, logs, "mlflow3", demo, threads=False), True))
            if "served" not in skip:
                plan.append((f"export-import ({client_version(m2)}, served-artifacts target), 2 models", MlflowServer,
                             lambda t: contender_export_import(source, t, work, logs, "served-target", demo, venv=m2, threads=False), True))
                plan.append((f"export-import ({client_version(m2)}, served-artifacts source), 2 models", LocalArtifactServer,
                             lambda t: contender_export_import(served_source(), t, work, logs, "served-source", demo, venv=m2, threads=False), True))
        for index, (name, kind, go, is_demo) in enumerate(plan):
            target = kind(work / f"target-{index}", workers=args.workers).start()
            servers.append(target)
            before = server_cpu(source), server_cpu(target)
            result = go(target)
            result["server_cpu_s"] = {"source": server_cpu(source) - before[0], "target": server_cpu(target) - before[1]}
            result["versions_per_s"] = None if is_demo else seeded["versions"] / result["seconds"]
            if is_demo:  # what lands in the target: models and versions of the 2 asked for
                result["check"] = demo_check(target.uri)
            else:
                gaps = ("aliases", "version numbers", "MLmodel rewritten") if name.startswith("export-import") else ()
                result["check"] = check(source.uri, target.uri, gaps, work)
            if name.startswith("replayer") and "served" not in name:
                result["rerun"] = replayer_again(source, target, logs, args.parallel)
                result["verify"] = replayer_verify(source, target, logs)
            results[name] = result
            print(f"{name}: {result['seconds']:.1f}s, exit {result['exit']}, check {cell(result)}"
                  + (f", rerun {result['rerun']['seconds']:.1f}s {'ok' if result['rerun']['ok'] else 'CREATED SOMETHING'}"
                     f", verify {'ok' if result['verify']['ok'] else 'DIFFERENCES'} ({result['verify']['seconds']}s)" if "rerun" in result else ""),
                  flush=True)
            target.stop()
    finally:
        for server in servers:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    base = next((r for n, r in results.items() if n.startswith("export-import") and r.get("versions_per_s") and r["check"]["ok"]), {})
    for r in results.values():
        r["vs_export_import"] = base["seconds"] / r["seconds"] if base.get("seconds") and r.get("versions_per_s") else None
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_at_start": load_at_start, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions(),
        "data": {**seeded, "params": PARAMS, "tags": TAGS, "metrics": METRICS, "steps": STEPS, "model_files": ["MLmodel", "model.pkl (16 KB)"]},
        "results": results,
        "bench_seconds": round(time.monotonic() - started_all, 1),
    }
    Path(args.out).write_text(json.dumps(document, indent=2, default=str) + "\n")
    print_table(results)
    print(f"\nresults written to {args.out}; logs in {logs}; whole bench {document['bench_seconds']}s")
    # The bench fails on replayer's failures; the baseline's are results, reported above.
    mine = {n: r for n, r in results.items() if n.startswith("replayer")}
    failed = [n for n, r in mine.items() if r["exit"] != 0 or not r["check"]["ok"]]
    failed += [n for n, r in mine.items() if not r.get("rerun", {}).get("ok", True) or not r.get("verify", {}).get("ok", True)]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def client_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import mlflow; print(mlflow.__version__)"], capture_output=True, text=True)
    return f"mlflow {out.stdout.strip() or '?'} client"


def demo_check(target_uri: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(target_uri)
    models = all_models(client)
    count = sum(len(all_versions(client, m.name)) for m in models)
    return {"models_in_target": len(models), "versions_in_target": count, "ok": count > 0, "problems": [], "known_gaps_seen": []}


def cell(r: dict) -> str:
    c = r["check"]
    if "versions_in_target" in c and r.get("versions_per_s") is None:
        return f"{c['models_in_target']} models, {c['versions_in_target']} versions landed" + (f"; {r['errors_in_log'][0]}" if r.get("errors_in_log") else "")
    if r["exit"] != 0 or not c["ok"]:
        return "FAIL " + "; ".join(c["problems"][:2])
    gaps = c.get("known_gaps_seen")
    return f"ok, loses {' + '.join(gaps)}" if gaps else "ok"


def print_table(results: dict) -> None:
    rows = [("contender", "seconds", "versions/s", "vs export-import", "peak RSS MB", "check")]
    for name, r in results.items():
        ratio = f"{r['vs_export_import']:.2f}x" if r.get("vs_export_import") else "-"
        rate = f"{r['versions_per_s']:.1f}" if r.get("versions_per_s") else "-"
        rows.append((name, f"{r['seconds']:.1f}", rate, ratio, f"{r['rss_mb']:.0f}", cell(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    print()
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row[:-1], widths))) + "  " + row[-1])
        if i == 0:
            print("  ".join("-" * w for w in widths) + "  -----")
    print("(seconds: runs + registry, launch to exit; export-import = export-models + import-models)")


if __name__ == "__main__":
    sys.exit(main())
