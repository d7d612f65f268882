"""`replayer step`: the body of the `replay_step` component, one original job replayed into one run.

Pipeline replay (runner/targets/pipeline.py) turns every original job into a step of a real Azure
ML job, and every such step runs this: it finds its record in the manifest (by original job id),
then writes the original's history into the step's own MLflow run:

- params; tags (the original's user tags, then lineage: `original_job_id`, `original_parent_job_id`,
  `original_parent_pipeline_id`, `original_pipeline_depth`, `original_experiment`,
  `original_workspace`, `original_status`, `original_start_time`, `original_end_time`,
  `original_step_name`, plus the `automl_*` tags the pipeline target passes for expanded trials);
- full metric histories with their original steps and timestamps, batched as the direct target
  batches them (runner/mlflow/batching.py: at most 250 rows of one metric name and 1,000 in all per
  `log_batch`, falling back to 250 in all if the service refuses that); a retried step adds only
  the points its run lacks;
- the run's limits (runner/limits.py, as the direct target: 50 tags and 50 metric names on
  AzureML, `--max-tags` / `--max-metric-keys` to choose, param and tag value lengths): the excess
  goes to `replay/overflow.json` on the run with a `replay.overflow` tag, which verify reads back;
- with `--logs` / `--artifacts`: the original's files, logs (`azureml-logs/`, `logs/`,
  `user_logs/`, `system_logs/`) under `<logs>/<family>/...`, everything else under `<artifacts>/`,
  md5-checked;
- `replay.complete` last, as in the direct target.

Which run: inside an Azure ML job the job's own run (`MLFLOW_RUN_ID`, tracking URI from
`MLFLOW_TRACKING_URI`, both set by Azure ML, which also owns its status and times); locally
`--target URI` with `--run-id RUN`, or a new run in the original's experiment, whose original
start/end time and status the step sets itself.

Status (`--mirror-status`, on by default): a step whose original failed or was canceled exits
with code 3 after everything is written, so Azure ML marks it Failed; unless an ancestor of the
original finished successfully anyway (a sweep that completed with a failed trial), where failing
would turn the replayed ancestor Failed too: that step completes, `original_status` tells.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from loguru import logger

from runner.engine import limits as caps
from runner.mlflow import uris
from runner.mlflow.batching import RowCaps
from runner.core.errors import ReplayerError, UsageError
from runner.core.filters import Filters
from runner.engine.ledger import COMPLETE, PARENT_TAG, is_own_tag, lineage_tags
from runner.engine.manifest import ManifestSource
from runner.core.records import TERMINAL_STATUSES, JobRecord, MetricPoint

EXIT_MIRRORED = 3  # the replay worked; the original job had failed (or was canceled)
ROWS_PER_METRIC_PER_BATCH = caps.AZUREML_LIMITS.rows_per_metric_per_batch  # the step is made for Azure ML: its caps everywhere
PARAMS_TAGS_PER_BATCH = 100  # MLflow's own limit
MARKER = "replayed_from.json"

ORIGINAL_PARENT_PIPELINE = "original_parent_pipeline_id"
ORIGINAL_STATUS = "original_status"
ORIGINAL_START = "original_start_time"
ORIGINAL_END = "original_end_time"
ORIGINAL_STEP = "original_step_name"
FAILED_STATUSES = ("FAILED", "KILLED")


@dataclass
class StepResult:
    run_id: str
    params: int = 0
    tags: int = 0
    metric_points: int = 0
    artifacts: int = 0
    logs: int = 0
    mirrored_failure: bool = False
    overflow: dict[str, int] = field(default_factory=dict)  # what went to replay/overflow.json, by kind

    def line(self) -> str:
        spilled = f"; over the run's limits, in {caps.OVERFLOW_PATH}: {self.overflow}" if self.overflow else ""
        return (
            f"run {self.run_id}: {self.params} params, {self.tags} tags, {self.metric_points} metric points, "
            f"{self.artifacts} artifacts, {self.logs} log files{spilled}"
        )


def mirrors_failure(status: str, ancestor_statuses: list[str]) -> bool:
    """Whether the replayed step should end failed (see the module docstring).

    Azure ML propagates a failed step to every enclosing pipeline, so a failure is mirrored only
    where no original ancestor finished successfully.
    """
    return status in FAILED_STATUSES and "FINISHED" not in ancestor_statuses


def step_tags(job: JobRecord, workspace: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Tags of the replayed run: the original's user tags, lineage, then the caller's extras."""
    tags = {k: v for k, v in job.tags.items() if k != PARENT_TAG and not is_own_tag(k)}
    tags.update(lineage_tags(job, workspace))
    tags[ORIGINAL_STATUS] = job.source_status or job.status
    if job.depth:
        tags[ORIGINAL_PARENT_PIPELINE] = job.root_id
    if job.start_time is not None:
        tags[ORIGINAL_START] = str(job.start_time)
    if job.end_time is not None:
        tags[ORIGINAL_END] = str(job.end_time)
    if job.step_name:
        tags[ORIGINAL_STEP] = job.step_name
    tags.update({str(k): str(v) for k, v in (extra or {}).items()})
    return tags


def parse_tags(value) -> dict[str, str]:
    """`--tags`: a JSON object (python-fire may already have turned it into a dict)."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    try:
        data = json.loads(str(value))
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise UsageError(f"--tags {str(value)[:80]!r}: expected a JSON object of tag names to values")
    return {str(k): str(v) for k, v in data.items()}


def find(manifest: str | Path, job_id: str) -> tuple[ManifestSource, JobRecord, list[str]]:
    """The manifest, the job's record and its ancestors' statuses (nearest first)."""
    if not Path(manifest).is_dir():
        raise UsageError(f"--manifest {manifest}: no such folder; give the manifest folder written by `replayer extract`")
    source = ManifestSource(manifest, Filters(include_deleted=True))
    seen: dict[str, tuple[str | None, str]] = {}  # id -> (parent id, status); parents come first
    for job in source.jobs():
        if job.source_id == job_id:
            ancestors, parent = [], job.parent_id
            while parent in seen:
                parent, status = seen[parent]
                ancestors.append(status)
            return source, job, ancestors
        seen[job.source_id] = (job.parent_id, job.status)
    raise UsageError(f"--job-id {job_id}: no such job in manifest {manifest}")


def run_step(
    manifest: str | Path,
    job_id: str,
    *,
    target: str | None = None,
    run_id: str | None = None,
    logs: str | Path | None = None,
    artifacts: str | Path | None = None,
    mark_outputs: Iterable[str] = (),
    extra_tags: dict[str, str] | None = None,
    mirror_status: bool = True,
    max_tags: int | None = None,
    max_metric_keys: int | None = None,
) -> StepResult:
    """Replay one job's history into one run; see the module docstring."""
    source, job, ancestors = find(manifest, job_id)
    client, run_id, own = open_run(job, target, run_id)
    limits = caps.limits_for(uris.tracking_uri(target) if target else os.environ.get("MLFLOW_TRACKING_URI", ""), max_tags, max_metric_keys)
    result = StepResult(run_id, mirrored_failure=mirror_status and mirrors_failure(job.status, ancestors))
    run = client.get_run(run_id)
    wanted = step_tags(job, source.workspace, extra_tags)
    # Tags already on the run that the step does not write (Azure ML's own) take room too.
    taken = sum(1 for k in run.data.tags if k not in wanted and not is_own_tag(k))
    fitted, spilled = caps.fit_tags(limits, wanted, taken)
    overflow = caps.new_overflow(spilled)
    params = missing_params(run.data.params, caps.fit_params(limits, job.params, overflow), run_id)
    tags = {k: v for k, v in fitted.items() if run.data.tags.get(k) != v}
    entries = [("param", k, v) for k, v in params.items()] + [("tag", k, v) for k, v in tags.items()]
    for start in range(0, len(entries), PARAMS_TAGS_PER_BATCH):
        log_keyed(client, run_id, entries[start : start + PARAMS_TAGS_PER_BATCH])
    result.params, result.tags = len(params), len(tags)
    points = caps.fit_metrics(limits, job, source.metrics(job), overflow)
    result.metric_points = log_metrics(client, run_id, new_points(client, run_id, set(run.data.metrics), points), limits)
    if logs or artifacts:
        result.artifacts, result.logs = copy_files(source, job, Path(artifacts) if artifacts else None, Path(logs) if logs else None)
    for folder in mark_outputs:
        mark(Path(folder), job)
    with tempfile.TemporaryDirectory(prefix="replayer-step-") as scratch:
        result.overflow = caps.write(client, run_id, overflow, Path(scratch))
    if own and job.status in TERMINAL_STATUSES:
        client.set_terminated(run_id, job.status, end_time=job.end_time)
    client.set_tag(run_id, COMPLETE, job.fingerprint())
    return result


def open_run(job: JobRecord, target: str | None, run_id: str | None):
    """(client, run id, whether the step owns the run's status): see "Which run" above."""
    from mlflow import MlflowClient

    if target:
        client = uris.open_client(target, create=True)
        if run_id:
            return client, str(run_id), True
        found = client.get_experiment_by_name(job.experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(job.experiment)
        run = client.create_run(experiment_id, start_time=job.start_time, run_name=job.name or None)
        return client, run.info.run_id, True
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if not env_run:
        raise UsageError("no run to write into: inside an Azure ML job MLFLOW_RUN_ID is set; elsewhere give --target URI [--run-id RUN]")
    if run_id and run_id != env_run:
        raise UsageError(f"--run-id {run_id} differs from this job's own run {env_run}; give --target too to write elsewhere")
    return MlflowClient(), env_run, False


def missing_params(have: dict[str, str], want: dict[str, str], run_id: str) -> dict[str, str]:
    for key, value in want.items():
        if key in have and have[key] != value:
            raise ReplayerError(f"run {run_id}: param {key!r} is already {have[key]!r}, the original has {value!r}; params cannot change")
    return {k: v for k, v in want.items() if k not in have}


def log_keyed(client, run_id: str, entries: list[tuple[str, str, str]]) -> None:
    from mlflow.entities import Param, RunTag

    params = [Param(k, v) for kind, k, v in entries if kind == "param"]
    tags = [RunTag(k, v) for kind, k, v in entries if kind == "tag"]
    client.log_batch(run_id, metrics=[], params=params, tags=tags)


def new_points(client, run_id: str, logged_keys: set[str], points: Iterable[MetricPoint]) -> Iterator[MetricPoint]:
    """The points the run lacks: all of them for a fresh run; for a retried step, the rest."""
    have: Counter = Counter()
    for key in logged_keys:
        have.update(MetricPoint(m.key, m.value, m.timestamp, m.step).identity() for m in client.get_metric_history(run_id, key))
    for point in points:
        identity = point.identity()
        if have[identity] > 0:
            have[identity] -= 1
        else:
            yield point


def log_metrics(client, run_id: str, points: Iterable[MetricPoint], limits: caps.Limits = caps.AZUREML_LIMITS) -> int:
    """The points in log_batch requests as the direct target sends them (runner.mlflow.batching),
    never more than Azure ML's rows per metric name whatever the target; returns the rows written."""
    per_metric = min(limits.rows_per_metric_per_batch, ROWS_PER_METRIC_PER_BATCH)
    row_caps = RowCaps(replace(limits, rows_per_metric_per_batch=per_metric), f"run {run_id}'s tracking server")
    return sum(row_caps.send(client, run_id, *batch) for batch in row_caps.batches({}, {}, points))


def copy_files(source: ManifestSource, job: JobRecord, artifacts: Path | None, logs: Path | None) -> tuple[int, int]:
    """Artifacts into `artifacts/`, logs into `logs/<family>/`; returns (artifacts, logs) copied.

    The shared copy engine: parallel, resumable (a retried step skips files already there) and
    md5-checked against the manifest; paths that would leave a folder are refused.
    """
    from runner.files.copier import copy_to_folders
    from runner.files.options import log_family
    from runner.files.roots import source_store

    refs = list(source.artifacts(job))
    with tempfile.TemporaryDirectory(prefix="replayer-step-") as scratch:
        stats = copy_to_folders(source_store(source, job, scratch), refs, artifacts, logs)
    if stats.failed:
        path, reason = stats.failed[0]
        raise ReplayerError(f"{len(stats.failed)} files of {job.source_id} not copied (first: {path}: {reason})")
    log_count = sum(1 for r in refs if log_family(r.path)) if logs is not None else 0
    other = sum(1 for r in refs if not log_family(r.path)) if artifacts is not None else 0
    return other, log_count


def mark(folder: Path, job: JobRecord) -> None:
    """A small file in an edge output, so the step downstream mounts a folder that exists."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"original_job_id": job.source_id, "step": job.step_name}) + "\n", encoding="utf-8")


def summary(result: StepResult, job_id: str) -> None:
    logger.info("replayed {} into {}", job_id, result.line())
    if result.mirrored_failure:
        logger.warning("the original job {} did not succeed: exiting {} so Azure ML marks this step failed too (--mirror-status)", job_id, EXIT_MIRRORED)
