"""`make bench`, artifacts: server-side blob copy against download-then-upload, on Azurite.

One Azurite (tests/azurite.py, two accounts) is seeded with two data sets in account acct1:
SMALL files of 1-16 KB in nested folders, and LARGE files of 100 MiB. Each contender copies each
set into a fresh prefix of account acct2, as a separate process, timed from launch to exit, its
peak RSS its own (VmHWM; the process alone, not Azurite):

  server-side      runner.files: start_copy_from_url with a read SAS per blob; no bytes here
  streamed         runner.files with server-side off: the fallback, blocks of 8 MiB through
                   this process (stage_block/commit_block_list), MD5 checked
  download-upload  the naive baseline (what copying through MLflow does): each blob downloaded to
                   a local file, then uploaded from it, on the same number of threads

Every destination is compared with the source afterwards (size and MD5 of each file, outside the
timing), and a rerun of the server-side copy shows the resume path (everything skipped).
Results: a table on stdout and bench-results/json.

    python bench/bench_artifacts.py [--small 2000] [--large 5] [--large-mb 100] [--parallel 8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from azurite import ACCOUNTS, Azurite  # noqa: E402

RESULTS = ROOT / "bench-results"
MB = 1 << 20
GOALS = {"large_speedup_vs_download_upload": 5.0, "rss_growth_mb": 100.0}
CONTENDERS = ("server-side", "streamed", "download-upload")


# -- the worker: one contender, one data set, in its own process --------------------------------


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 1)


def peak_rss_mb() -> float:
    """This process's own peak RSS (ru_maxrss of a child also counts the parent it was forked from)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def worker(mode: str, src: str, dst: str, parallel: int) -> None:
    import json
    from runner.files.checks import compare
    from runner.files.copier import copy_artifacts
    from runner.files.options import ArtifactOptions
    from runner.files.roots import open_store

    options = ArtifactOptions(parallel=parallel, server_side=mode == "server-side")  # keys from REPLAYER_STORAGE_KEYS
    if mode in ("server-side", "streamed"):
        stats = copy_artifacts(src, dst, None, options)
        print(json.dumps({"files": stats.copied + stats.skipped_existing, "copied": stats.copied, "skipped": stats.skipped_existing,
                          "server_side": stats.server_side, "bytes": stats.bytes_copied, "failed": len(stats.failed), "rss_mb": round(peak_rss_mb(), 1), "cpu_s": cpu_seconds()}))
        return
    # download-upload: whole files through a scratch folder, like MLflow download_artifacts + log_artifact.
    from concurrent.futures import ThreadPoolExecutor

    source, target = open_store(src, auth=options.auth), open_store(dst, auth=options.auth)
    target.ensure_container()
    refs = list(source.list())
    scratch = Path(tempfile.mkdtemp(prefix="bench-dl-"))

    def one(ref) -> int:
        local = scratch / f"{abs(hash(ref.path))}.bin"
        with open(local, "wb") as out:
            source.blob(ref.path).download_blob(max_concurrency=1).readinto(out)
        with open(local, "rb") as data:
            target.blob(ref.path).upload_blob(data, overwrite=True, max_concurrency=1)
        local.unlink()
        return ref.size

    with ThreadPoolExecutor(parallel) as pool:
        copied = sum(pool.map(one, refs))
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"files": len(refs), "copied": len(refs), "skipped": 0, "server_side": 0, "bytes": copied, "failed": 0, "rss_mb": round(peak_rss_mb(), 1), "cpu_s": cpu_seconds()}))


def timed(mode: str, src: str, dst: str, parallel: int, env: dict, script: str = __file__) -> dict:
    """One contender as `script --worker ...`, timed from launch to exit; its JSON line plus seconds."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, script, "--worker", mode, src, dst, str(parallel)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
    )
    out, err = process.communicate()
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"{mode} {src} -> {dst} failed:\n{err.decode()[-3000:]}")
    return {**json.loads(out.decode().strip().splitlines()[-1]), "seconds": round(seconds, 2)}


# -- seeding and checking ----------------------------------------------------------------------------


def seed(folder: Path, small: int, large: int, large_mb: int) -> None:
    """SMALL files of 1-16 KB under small/ (40 folders, 3 levels), LARGE incompressible files under large/."""
    import random

    rng = random.Random(11)
    for i in range(small):
        path = folder / "small" / f"group-{i % 40:02d}" / f"sub-{i % 7}" / f"file {i:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1024, 16 * 1024)))
    block = bytearray(os.urandom(MB))
    (folder / "large").mkdir(parents=True, exist_ok=True)
    for n in range(large):
        with open(folder / "large" / f"shard-{n}.bin", "wb") as out:
            for i in range(large_mb):
                block[:16] = n.to_bytes(8, "big") + i.to_bytes(8, "big")
                out.write(block)


def arguments(doc: str, small: int) -> argparse.Namespace:
    """--small N --large N --large-mb N --parallel N, and the hidden --worker MODE SRC DST PARALLEL."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--small", type=int, default=small)
    parser.add_argument("--large", type=int, default=5)
    parser.add_argument("--large-mb", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = arguments(__doc__, small=2000)
    if args.worker:
        mode, src, dst, parallel = args.worker
        return worker(mode, src, dst, int(parallel))

    import json
    from runner.files.checks import compare
    from runner.files.copier import copy_artifacts
    from runner.files.options import ArtifactOptions
    from runner.files.roots import open_store

    env = {**os.environ, "PYTHONPATH": str(ROOT), "REPLAYER_STORAGE_KEYS": ";".join(f"{k}:{v}" for k, v in ACCOUNTS.items())}
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "data": {"small_files": args.small, "large_files": args.large, "large_mb": args.large_mb, "parallel": args.parallel},
        "runs": {},
    }
    try:
        with Azurite(work / "azurite") as azurite:
            auth = azurite.auth()
            print(f"seeding {args.small} small files and {args.large} x {args.large_mb} MiB into Azurite ...", flush=True)
            local = work / "seed"
            seed(local, args.small, args.large, args.large_mb)
            started = time.monotonic()
            for name in ("small", "large"):
                stats = copy_artifacts(local / name, azurite.url("acct1", "src", name), None, ArtifactOptions(auth=auth, parallel=args.parallel))
                assert stats.ok and stats.copied, stats.line()
            results["seed_seconds"] = round(time.monotonic() - started, 1)
            shutil.rmtree(local)
            for name in ("small", "large"):
                src = azurite.url("acct1", "src", name)
                for mode in CONTENDERS:
                    dst = azurite.url("acct2", mode, name)
                    row = timed(mode, src, dst, args.parallel, env)
                    mismatches = compare(src, dst, options=ArtifactOptions(auth=auth))
                    row["equal"] = not mismatches
                    results["runs"][f"{name}/{mode}"] = row
                    print(f"  {name:<6} {mode:<16} {row['seconds']:>7.2f}s  {row['bytes'] / 1e6:>8.1f} MB  rss {row['rss_mb']:>6.1f} MB  cpu {row['cpu_s']:>5.1f}s"
                          f"  {'equal' if row['equal'] else f'{len(mismatches)} DIFFERENCES'}", flush=True)
                rerun = timed("server-side", src, azurite.url("acct2", "server-side", name), args.parallel, env)
                results["runs"][f"{name}/server-side rerun"] = rerun
                print(f"  {name:<6} {'rerun (resume)':<16} {rerun['seconds']:>7.2f}s  {rerun['skipped']} skipped, {rerun['copied']} copied", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    runs = results["runs"]
    speed = {name: round(runs[f"{name}/download-upload"]["seconds"] / max(runs[f"{name}/server-side"]["seconds"], 1e-3), 1) for name in ("small", "large")}
    growth = round(runs["large/server-side"]["rss_mb"] - runs["small/server-side"]["rss_mb"], 1)
    stream_growth = round(runs["large/streamed"]["rss_mb"] - runs["small/streamed"]["rss_mb"], 1)
    results["summary"] = {
        "speedup_vs_download_upload": speed,
        "server_side_rss_growth_mb_small_to_large": growth,
        "streamed_rss_growth_mb_small_to_large": stream_growth,
        "goals": GOALS,
        "met": {
            "large_speedup": speed["large"] >= GOALS["large_speedup_vs_download_upload"],
            "memory_flat": max(growth, stream_growth) <= GOALS["rss_growth_mb"],
            "all_equal": all(r.get("equal", True) for r in runs.values()),
            "resume_skips_all": all(runs[f"{n}/server-side rerun"]["copied"] == 0 for n in ("small", "large")),
        },
    }
    publish(results, "json")


def publish(results: dict, name: str) -> None:
    """Print the summary, write bench-results/NAME, and exit 1 when a goal is not met."""
    print(json.dumps(results["summary"], indent=2))
    (RESULTS / name).write_text(json.dumps(results, indent=2))
    print(f"written to {RESULTS / name}")
    if not all(results["summary"]["met"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
