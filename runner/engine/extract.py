"""Extract: read a source into a manifest folder, job records in order, contents in parallel.

Files follow the same choices as replay (`--artifacts copy|list|none`, `--max-artifact-size`,
`--artifact-include/--artifact-exclude`): only the selected files are written and listed; `list`
lists them (path, size, md5 as the source knows it) without their bytes; `none` leaves them out.
manifest.json records the choice and what was left out, and replay refuses to copy files from a
manifest that never held them."""
from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loguru import logger

from runner.files.options import ArtifactOptions
from runner.files.stats import CopyStats
from runner.files.copier import select
from runner.files.hashing import write_hashed
from runner.core.errors import UsageError
from runner.engine.manifest import ManifestWriter
from runner.core.records import ArtifactRef, JobRecord
from runner.core.progress import Progress
from runner.engine.manifest_models import extract_models
from runner.engine.manifest_traces import extract_traces
from runner.engine.replay import describe, selects_whole_experiments
from runner.engine.selection import Selection


def extract(source, out: str, parallel: int = 8, dry_run: bool = False, artifacts: ArtifactOptions | None = None,
            models=None, traces=None) -> dict:
    """Write the selected jobs of `source` into a new manifest at `out`, then the MLflow 3 logged
    models `models` (a reader, runner.mlflow.logged_models.reader_for) holds for them, then the
    traces `traces` (a reader, runner.mlflow.trace_readers.reader_for) holds; returns its header."""
    started = time.monotonic()
    options = artifacts or ArtifactOptions()
    if dry_run:
        count = 0
        for job in source.jobs():
            print(f"+ {'  ' * job.depth}{describe(job)}")
            count += 1
        found = {"jobs": count}
        if traces is not None:
            found["traces"] = sum(1 for e in source.experiments() for _ in traces.infos(e))
        print(f"would extract {count} runs" + (f" and {found['traces']} traces" if traces is not None else "") + f" into {out}")
        return {"counts": found}
    experiments, total = source.experiments(), source.count()  # bad input fails before --out is touched
    writer = ManifestWriter(out)
    for experiment in experiments:
        writer.add_experiment(experiment)
    progress = Progress("extract", total)
    lock = threading.Lock()
    errors: list[str] = []
    fatal: list[UsageError] = []  # bad input met midway (a credential refused): stops the extract, said once
    left_out = CopyStats()  # filtered and too large, over all jobs
    selection = Selection(whole_experiments=selects_whole_experiments(source))  # what the logged models follow

    def one(job: JobRecord, scratch: Path) -> None:
        try:
            points = writer.write_metrics(job, source.metrics(job))
            stats = CopyStats()
            chosen = select(source.artifacts(job), options, stats) if options.mode != "none" else []
            refs = [copy_artifact(source, writer, job, ref, scratch) for ref in chosen] if options.mode == "copy" else chosen
            writer.write_artifacts(job, refs)
        except UsageError as error:
            with lock:
                fatal.append(error)
            return
        except Exception as error:  # noqa: BLE001 - reported, and the manifest is then not finished
            logger.error("failed to extract {}: {}: {}", describe(job), type(error).__name__, error)
            with lock:
                errors.append(job.source_id)
            return
        for skipped in stats.skipped_too_large:
            logger.info("artifact {} of {} is over --max-artifact-size {}: skipped", skipped, job.source_id, options.max_size)
        with lock:
            left_out.skipped_filtered += stats.skipped_filtered
            left_out.skipped_too_large += [f"{job.source_id}: {s}" for s in stats.skipped_too_large]
            writer.counts["metric_points"] += points
            writer.counts["artifacts"] += len(refs)
            writer.counts["artifact_bytes"] += sum(r.size for r in refs) if options.mode == "copy" else 0  # bytes the manifest holds
        progress.tick()

    # At most a few jobs per worker wait in the pool: records are not piled up in memory while
    # the (slower) metric and file reads catch up with the job listing.
    window = threading.BoundedSemaphore(4 * parallel)

    def bounded(job: JobRecord, scratch: Path) -> None:
        try:
            one(job, scratch)
        finally:
            window.release()

    with tempfile.TemporaryDirectory(prefix="replayer-") as scratch, ThreadPoolExecutor(parallel) as pool:
        for job in source.jobs():
            if fatal:
                break
            writer.add_job(job)
            selection.add(job)
            window.acquire()
            pool.submit(bounded, job, Path(scratch))
    if fatal:
        raise fatal[0]
    if errors:
        from runner.core.errors import ReplayerError

        error = ReplayerError(f"{len(errors)} runs could not be extracted (first: {errors[0]}); {out} is left unfinished, rerun extract into an empty folder")
        error.exit_code = 1
        raise error
    if models is not None:  # after the runs: a model follows its source run (runner.engine.selection)
        writer.counts["logged_models"] = extract_models(models, experiments, selection, Path(out), options)
    if traces is not None:  # last: a trace links runs and models, and records which selected runs it is linked to
        writer.counts["traces"] = extract_traces(traces.records(experiments, selection.runs, parallel), Path(out))
    chosen = {**options.describe(), "filtered": left_out.skipped_filtered, "too_large": left_out.skipped_too_large}
    header = writer.close(source.describe(), getattr(source, "filters", None) or _no_filters(), chosen)
    logger.info("extracted {} in {:.1f}s", header["counts"], time.monotonic() - started)
    return header


def _no_filters():
    from runner.core.filters import Filters

    return Filters()


def require_files(source, mode: str, command: str) -> None:
    """A manifest extracted with `--artifacts list` holds no bytes: copying from it cannot work."""
    if getattr(source, "artifact_mode", "copy") == "list" and mode == "copy":
        raise UsageError(
            f"manifest {getattr(source, 'folder', source)} was extracted with --artifacts list and holds no file bytes: "
            f"{command} it with --artifacts list (or none), or extract again with --artifacts copy"
        )


def copy_artifact(source, writer: ManifestWriter, job: JobRecord, ref: ArtifactRef, scratch: Path) -> ArtifactRef:
    """Stream one artifact into the manifest, measuring its real size and md5 on the way."""
    with source.fetch_artifact(job, ref, scratch) as local, open(local, "rb") as src:
        written = write_hashed(src, writer.artifact_path(job, ref))
    return ArtifactRef(path=ref.path, size=written.size, md5=written.md5)
