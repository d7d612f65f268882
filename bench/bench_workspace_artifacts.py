"""`make bench`, workspace to workspace: a run's files between two Azure ML workspaces.

Two workspaces in the HTTPS fake of the control plane (tests/fakes/), their run history artifact
stores in one Azurite account (containers `src` and `dst`: Azurite copies server-side within an
account only). The source run holds SMALL files of 1-16 KB and LARGE files of 100 MiB (Content-MD5
set, as an upload in one piece leaves it). Each contender copies them into a fresh run of the
target workspace, as a separate process timed from launch to exit and around the copy call alone
(the goal is on the latter), its peak RSS its own (VmHWM):

  server-side     runner.azureml.run_history: each path registered in the target run (write SAS), its blob
                  pulls the bytes from the source blob's read SAS (Copy Blob here; Put Blob From
                  URL on Azure); no bytes through the tool
  streamed        the same store with server-side off: blocks of 4 MiB through the tool into the
                  write SAS, MD5 checked (the fallback across accounts that cannot reach each other)
  azureml-mlflow  what direct mode did before: each file downloaded to a scratch file, then
                  uploaded by azureml-mlflow's artifact repository (log_artifact)

Afterwards every target run is checked against the source (each file's bytes by MD5, read from
Azurite outside the timing), and the server-side copy is rerun into the same run (resume: every
file already there, nothing registered again). Results: a table and bench-results/workspace_artifacts.json.

    python bench/bench_workspace_artifacts.py [--small 500] [--large 5] [--large-mb 100] [--parallel 8]
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_artifacts import RESULTS, arguments, cpu_seconds, peak_rss_mb, publish, timed as timed_worker  # noqa: E402

MB = 1 << 20
SUB, RG = "7a1b2c3d-0000-4000-8000-0000000be4c4", "rg-bench"
CONTENDERS = ("server-side", "streamed", "azureml-mlflow")
GOALS = {"large_speedup_vs_azureml_mlflow": 5.0, "rss_growth_mb": 100.0}


# -- the worker: one contender, one data set, in its own process --------------------------------------------


def worker(mode: str, src_root: str, dst_root: str, parallel: int) -> None:
    from runner.files.copier import copy_artifacts
    from runner.files.options import ArtifactOptions
    from runner.files.roots import open_store
    from runner.mlflow.artifact_store import MlflowStore
    from runner.azureml import credentials
    from runner.mlflow import uris

    credentials.configure("cli")  # the fake `az` on PATH
    tracking = dst_root.split("/experiments/", 1)[0]
    uris.open_client(tracking, create=False)  # azureml-mlflow gets our credential for the target workspace
    src = open_store(src_root)
    dst = MlflowStore(dst_root, tracking) if mode == "azureml-mlflow" else open_store(dst_root)
    options = ArtifactOptions(parallel=parallel, server_side=mode == "server-side")
    started = time.monotonic()
    stats = copy_artifacts(src, dst, None, options)
    copy_seconds = round(time.monotonic() - started, 2)
    print(json.dumps({"files": stats.copied + stats.skipped_existing, "copied": stats.copied, "skipped": stats.skipped_existing,
                      "server_side": stats.server_side, "bytes": stats.bytes_copied, "bytes_through_tool": stats.bytes_streamed,
                      "failed": len(stats.failed), "first_failure": stats.failed[0] if stats.failed else None,
                      "copy_seconds": copy_seconds, "rss_mb": round(peak_rss_mb(), 1), "cpu_s": cpu_seconds()}))


def timed(mode: str, src: str, dst: str, parallel: int, env: dict) -> dict:
    return timed_worker(mode, src, dst, parallel, env, script=__file__)


# -- seeding and checking ----------------------------------------------------------------------------------


def seed(store, run: str, small: int, large: int, large_mb: int) -> dict[str, str]:
    """Upload the data set into the source run; returns path -> md5."""
    import random

    from azure.storage.blob import ContentSettings

    rng = random.Random(17)
    client = store.client()
    want = {}

    def put(path: str, data: bytes) -> None:
        digest = hashlib.md5(data)
        client.get_blob_client(store.prefix(run) + path).upload_blob(
            data, overwrite=True, max_concurrency=2, content_settings=ContentSettings(content_md5=digest.digest()))
        want[path] = digest.hexdigest()

    for i in range(small):
        put(f"outputs/small/group-{i % 40:02d}/file {i:05d}.json", rng.randbytes(rng.randint(1024, 16 * 1024)))
    block = bytearray(os.urandom(MB))
    for n in range(large):
        data = bytearray()
        for i in range(large_mb):
            block[:16] = n.to_bytes(8, "big") + i.to_bytes(8, "big")
            data += block
        put(f"outputs/large/shard-{n}.bin", bytes(data))
        del data
    return want


def held(store, run: str) -> dict[str, str]:
    """path -> md5 of the bytes a run's blobs hold (read and hashed, not the stored Content-MD5)."""
    client = store.client()
    prefix = store.prefix(run)
    out = {}
    for blob in client.list_blobs(name_starts_with=prefix):
        digest = hashlib.md5()
        for chunk in client.download_blob(blob.name, max_concurrency=1).chunks():
            digest.update(chunk)
        out[blob.name[len(prefix):]] = digest.hexdigest()
    return out


def main() -> None:
    args = arguments(__doc__, small=500)
    if args.worker:
        mode, src, dst, parallel = args.worker
        return worker(mode, src, dst, int(parallel))

    from azurite import Azurite
    from fakes import azureml_artifacts
    from fakes.azureml_control_plane import FakeControlPlane, FakeWorkspace, write_fake_az

    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ws-artifacts-"))
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load": os.getloadavg()[0]},
        "data": {"small_files": args.small, "large_files": args.large, "large_mb": args.large_mb, "parallel": args.parallel},
        "runs": {},
    }
    azureml_artifacts.PAGE = 100  # paths per listing page (the tests keep 3, to exercise paging)
    fake = FakeControlPlane(work / "fake", "http://127.0.0.1:9").start()  # run history only: no MLflow route is called
    try:
        with Azurite(work / "azurite") as azurite:
            src_ws, dst_ws = fake.add(FakeWorkspace(SUB, RG, "ws-bench-src")), fake.add(FakeWorkspace(SUB, RG, "ws-bench-dst"))
            src_store = azureml_artifacts.attach(src_ws, azurite, "acct1", container="src")
            dst_store = azureml_artifacts.attach(dst_ws, azurite, "acct1", container="dst")
            root = lambda ws, run: f"azureml://127.0.0.1:{fake.port}/mlflow/v2.0{ws.scope}/experiments/bench/runs/{run}/artifacts"  # noqa: E731
            az = write_fake_az(work / "az", sys.executable)
            env = {**os.environ, **fake.environ(), "PYTHONPATH": str(ROOT), "PATH": f"{az}{os.pathsep}{os.environ['PATH']}",
                   "AZUREML_LOG_LEVEL": "ERROR"}
            for name, small, large in (("small", args.small, 0), ("large", 0, args.large)):
                source_run = f"source-{name}"
                azureml_artifacts.mlflow_runs(src_ws).add(source_run)
                print(f"seeding {small} small files and {large} x {args.large_mb} MiB into the source run ...", flush=True)
                want = seed(src_store, source_run, small, large, args.large_mb)
                for mode in CONTENDERS:
                    run = f"{name}-{mode}"
                    azureml_artifacts.mlflow_runs(dst_ws).add(run)
                    before = fake.requests["artifact_create"]
                    row = timed(mode, root(src_ws, source_run), root(dst_ws, run), args.parallel, env)
                    row["registered"] = fake.requests["artifact_create"] - before
                    row["equal"] = held(dst_store, run) == want
                    results["runs"][f"{name}/{mode}"] = row
                    print(f"  {name:<6} {mode:<15} {row['seconds']:>7.2f}s (copy {row['copy_seconds']:>6.2f}s)  {row['bytes'] / 1e6:>8.1f} MB  through tool {row['bytes_through_tool'] / 1e6:>7.1f} MB"
                          f"  rss {row['rss_mb']:>6.1f} MB  cpu {row['cpu_s']:>5.1f}s  {'equal' if row['equal'] else 'DIFFERENT'}"
                          f"{'  failed ' + str(row['failed']) if row['failed'] else ''}", flush=True)
                before = fake.requests["artifact_create"]
                rerun = timed("server-side", root(src_ws, source_run), root(dst_ws, f"{name}-server-side"), args.parallel, env)
                rerun["registered"] = fake.requests["artifact_create"] - before
                results["runs"][f"{name}/server-side rerun"] = rerun
                print(f"  {name:<6} {'rerun (resume)':<15} {rerun['seconds']:>7.2f}s  {rerun['skipped']} skipped, {rerun['copied']} copied,"
                      f" {rerun['registered']} registered", flush=True)
    finally:
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)

    runs = results["runs"]
    # The copy itself (store opening, listing, copying, checking), timed inside each process: a
    # process's start-up (~3 s of imports) is paid once per migration, not per run.
    speed = {n: round(runs[f"{n}/azureml-mlflow"]["copy_seconds"] / max(runs[f"{n}/server-side"]["copy_seconds"], 1e-3), 1) for n in ("small", "large")}
    end_to_end = {n: round(runs[f"{n}/azureml-mlflow"]["seconds"] / max(runs[f"{n}/server-side"]["seconds"], 1e-3), 1) for n in ("small", "large")}
    growth = round(max(runs[f"large/{m}"]["rss_mb"] - runs[f"small/{m}"]["rss_mb"] for m in ("server-side", "streamed")), 1)
    results["summary"] = {
        "speedup_vs_azureml_mlflow": speed,
        "speedup_vs_azureml_mlflow_process_end_to_end": end_to_end,
        "rss_growth_mb_small_to_large": growth,
        "goals": GOALS,
        "met": {
            "large_speedup": speed["large"] >= GOALS["large_speedup_vs_azureml_mlflow"],
            "memory_flat": growth <= GOALS["rss_growth_mb"],
            "no_bytes_through_tool_server_side": all(runs[f"{n}/server-side"]["bytes_through_tool"] == 0 for n in ("small", "large")),
            "all_equal": all(r.get("equal", True) for r in runs.values()),
            "resume_copies_nothing": all(runs[f"{n}/server-side rerun"]["copied"] == 0 and runs[f"{n}/server-side rerun"]["registered"] == 0
                                         for n in ("small", "large")),
        },
    }
    publish(results, "workspace_artifacts.json")


if __name__ == "__main__":
    main()
