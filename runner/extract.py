"""Extract: read a source into a manifest folder, job records in order, contents in parallel."""
from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loguru import logger

from runner.artifacts import write_hashed
from runner.manifest import ManifestWriter
from runner.model import ArtifactRef, JobRecord
from runner.progress import Progress
from runner.replay import describe


def extract(source, out: str, parallel: int = 8, dry_run: bool = False) -> dict:
    """Write the selected jobs of `source` into a new manifest at `out`; returns its header."""
    started = time.monotonic()
    if dry_run:
        count = 0
        for job in source.jobs():
            print(f"+ {'  ' * job.depth}{describe(job)}")
            count += 1
        print(f"would extract {count} runs into {out}")
        return {"counts": {"jobs": count}}
    experiments, total = source.experiments(), source.count()  # bad input fails before --out is touched
    writer = ManifestWriter(out)
    for experiment in experiments:
        writer.add_experiment(experiment)
    progress = Progress("extract", total)
    lock = threading.Lock()
    errors: list[str] = []

    def one(job: JobRecord, scratch: Path) -> None:
        try:
            points = writer.write_metrics(job, source.metrics(job))
            refs = [copy_artifact(source, writer, job, ref, scratch) for ref in source.artifacts(job)]
            writer.write_artifacts(job, refs)
        except Exception as error:  # noqa: BLE001 - reported, and the manifest is then not finished
            logger.error("failed to extract {}: {}: {}", describe(job), type(error).__name__, error)
            with lock:
                errors.append(job.source_id)
            return
        with lock:
            writer.counts["metric_points"] += points
            writer.counts["artifacts"] += len(refs)
            writer.counts["artifact_bytes"] += sum(r.size for r in refs)
        progress.tick()

    with tempfile.TemporaryDirectory(prefix="replayer-") as scratch, ThreadPoolExecutor(parallel) as pool:
        for job in source.jobs():
            writer.add_job(job)
            pool.submit(one, job, Path(scratch))
    if errors:
        from runner.errors import ReplayerError

        error = ReplayerError(f"{len(errors)} runs could not be extracted (first: {errors[0]}); {out} is left unfinished, rerun extract into an empty folder")
        error.exit_code = 1
        raise error
    header = writer.close(source.describe(), getattr(source, "filters", None) or _no_filters())
    logger.info("extracted {} in {:.1f}s", header["counts"], time.monotonic() - started)
    return header


def _no_filters():
    from runner.filters import Filters

    return Filters()


def copy_artifact(source, writer: ManifestWriter, job: JobRecord, ref: ArtifactRef, scratch: Path) -> ArtifactRef:
    """Stream one artifact into the manifest, measuring its real size and md5 on the way."""
    with source.fetch_artifact(job, ref, scratch) as local, open(local, "rb") as src:
        written = write_hashed(src, writer.artifact_path(job, ref))
    return ArtifactRef(path=ref.path, size=written.size, md5=written.md5)
