"""What the target already holds, found again through the tags we write on every run.

The target itself is the ledger: no local state file can be lost or disagree with it.
- `original_job_id` + `original_workspace` find a replayed run again (run ids cannot be kept).
- `replay.complete` holds the source fingerprint at copy time and is complete once the run's
  last write is done: a run without it was interrupted and is repaired; a run whose fingerprint
  differs changed at the source since (new metric points, finished, re-tagged) and is brought up
  to date. The last write is the tag itself, or, for a run created on Azure ML whose source
  finished, its status: see `awaiting`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runner.core.records import JobRecord

ORIGINAL_JOB_ID = "original_job_id"
ORIGINAL_PARENT = "original_parent_job_id"
ORIGINAL_EXPERIMENT = "original_experiment"
ORIGINAL_WORKSPACE = "original_workspace"
ORIGINAL_DEPTH = "original_pipeline_depth"
ORIGINAL_ERROR = "original_error"
ORIGINAL_MODEL_ID = "original_model_id"  # on logged models copied into the target
# A run tag value holds at most 1,000 characters on Azure ML (resource-limits-capacity.md), and
# the tool's own tags are never cut or moved to overflow: the error message is cut here.
MAX_ERROR_TAG = 1000
COMPLETE = "replay.complete"
AWAITS = "@"  # "<fingerprint>@<STATUS>": complete once the run's status reads STATUS (`awaiting`)
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"

# Tags the tool owns; everything else on a run is the user's and is copied exactly.
OWN_PREFIXES = ("original_", "replay.")


def is_own_tag(key: str) -> bool:
    return key.startswith(OWN_PREFIXES)


def lineage_tags(job: JobRecord, workspace: str) -> dict[str, str]:
    tags = {
        ORIGINAL_JOB_ID: job.source_id,
        ORIGINAL_EXPERIMENT: job.experiment,
        ORIGINAL_WORKSPACE: workspace,
        ORIGINAL_DEPTH: str(job.depth),
    }
    if job.parent_id:
        tags[ORIGINAL_PARENT] = job.parent_id
    if job.error:
        tags[ORIGINAL_ERROR] = error_tag(job.error)
    return tags


def error_tag(error: str) -> str:
    """A failed job's error message as the target run's `original_error` tag holds it."""
    return error[:MAX_ERROR_TAG]


def awaiting(fingerprint: str, status: str) -> str:
    """The completion tag a new run carries from its create-run, when its last write will be its
    status: complete once the status reads `status` (a new run reads RUNNING until then).

    On Azure ML the completion tag cannot ride on the last log-batch (nothing says in which order
    that endpoint applies a batch: runner/mlflow/target.py `completes_in_batch`), so a run's
    status and its tag were two requests; this way the status update (one request, read back as
    written: verify compares it) is the mark, and each new run costs one MLflow request less, on
    the family that bounds a migration between workspaces (docs/performance.md)."""
    return f"{fingerprint}{AWAITS}{status}"


def fingerprint_of(tags: dict[str, str], status: str) -> str:
    """The source fingerprint a target run is complete for; "" while it is incomplete (no tag, or
    a tag still awaiting a status the run does not read yet)."""
    fingerprint, sep, wanted = tags.get(COMPLETE, "").partition(AWAITS)
    return "" if sep and status != wanted else fingerprint


@dataclass
class TargetRun:
    run_id: str
    experiment_id: str
    fingerprint: str  # "" while incomplete
    lifecycle_stage: str = "active"

    @property
    def complete(self) -> bool:
        return bool(self.fingerprint)


@dataclass
class Ledger:
    """original_job_id -> the target run that holds it, for one source workspace."""

    runs: dict[str, TargetRun]
    duplicates: int = 0  # complete target runs claiming an already-seen original id
    # Incomplete extra copies: what a retried create_run leaves when its first response was
    # lost. Nothing else ever writes to them, so they are safe to delete.
    orphans: list[TargetRun] = field(default_factory=list)

    def find(self, source_id: str) -> TargetRun | None:
        return self.runs.get(source_id)

    def add(self, source_id: str, run: TargetRun) -> None:
        known = self.runs.get(source_id)
        if known is None:
            self.runs[source_id] = run
            return
        if run.complete and not known.complete:  # keep the one that finished
            self.runs[source_id], run = run, known
        if run.complete:
            self.duplicates += 1
        else:
            self.orphans.append(run)


def action_for(job: JobRecord, existing: TargetRun | None) -> str:
    """The march: one decision shared by dry-run, replay and the summary.

    create: source only; repair: in the target but interrupted or changed since; skip: equal.
    """
    if existing is None:
        return "create"
    if existing.fingerprint != job.fingerprint():
        return "repair"
    if existing.lifecycle_stage != job.lifecycle_stage:
        return "repair"
    return "skip"
