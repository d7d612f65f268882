"""The engine: march source jobs against the target ledger, then create, repair or skip each.

Jobs stream in parent-first order into a thread pool. A child waits for its parent's future
(the parent was submitted earlier to a FIFO pool, so it is running or done: no deadlock) and
uses the parent's new run id. A failed parent fails its subtree; everything else goes on.
"""
from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from runner.engine.ledger import Ledger, TargetRun, action_for
from runner.engine.mapping import Mapping, sync_deleted_experiments
from runner.core.records import Experiment, JobRecord
from runner.core.progress import Progress

SIGILS = {"create": "+", "repair": "*", "skip": "="}


@dataclass
class ReplayOptions:
    dry_run: bool = False
    parallel: int = 8
    retries: int = 2  # extra passes over runs that failed (the copy is idempotent)
    mapping: Mapping = field(default_factory=Mapping)  # experiment renames, source tags, source user


@dataclass
class Summary:
    created: int = 0
    repaired: int = 0
    skipped: int = 0
    failed: int = 0
    metric_points: int = 0
    overflowed: int = 0  # runs with replay/overflow.json (target caps exceeded)
    overflow: dict[str, int] = field(default_factory=dict)  # what those files hold, by kind (tags, params, metrics)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def count(self, action: str) -> None:
        name = {"create": "created", "repair": "repaired", "skip": "skipped"}[action]
        setattr(self, name, getattr(self, name) + 1)

    def add(self, other: "Summary") -> None:
        """Fold in a retry pass: its failures replace ours, its work adds to ours."""
        self.created += other.created
        self.repaired += other.repaired
        self.skipped += other.skipped
        self.metric_points += other.metric_points
        self.failed, self.failures = other.failed, other.failures

    def line(self, dry_run: bool = False) -> str:
        if dry_run:
            return f"dry run: would create {self.created}, repair {self.repaired}, skip {self.skipped}; nothing written"
        return (
            f"created {self.created}, repaired {self.repaired}, skipped {self.skipped}, failed {self.failed}, "
            f"metric points {self.metric_points}, {self.seconds:.1f}s"
            + (f", {self.overflowed} runs over the target's limits ({self.overflow_line()} in replay/overflow.json on them)" if self.overflowed else "")
        )


    def overflow_line(self) -> str:
        return ", ".join(f"{count} {kind}" for kind, count in sorted(self.overflow.items())) or "see"


class ParentFailed(Exception):
    pass


def replay(source, target, options: ReplayOptions) -> Summary:
    """Copy every selected source job into the target; safe to rerun at any point."""
    started = time.monotonic()
    ledger = target.ledger(source.workspace)
    if ledger.duplicates:
        logger.warning("target holds {} duplicate replayed runs for this source; verify will list them", ledger.duplicates)
    if options.dry_run:
        summary = plan(source, ledger)
        summary.seconds = time.monotonic() - started
        return summary
    ledger = remove_orphans(target, source.workspace, ledger)
    summary = Copier(source, target, ledger, options).run()
    for attempt in range(options.retries):
        ledger = remove_orphans(target, source.workspace, target.ledger(source.workspace))
        if not summary.failed:
            break
        logger.warning("retry pass {}/{} for {} failed runs", attempt + 1, options.retries, summary.failed)
        again = Copier(source, target, ledger, options)
        again.progress.total = summary.failed
        summary.add(again.run(only={job_id for job_id, _ in summary.failures}))
    sync_deleted_experiments(source, target, options.mapping)
    files = getattr(target, "artifact_stats", None)
    if files is not None and files.files:
        logger.info("artifacts: {}", files.line())  # how many went server-side, streamed, or were already there
    summary.overflowed = getattr(target, "overflowed", 0)
    summary.overflow = dict(getattr(target, "overflow_counts", {}))
    summary.seconds = time.monotonic() - started
    return summary


def remove_orphans(target, workspace: str, ledger: Ledger) -> Ledger:
    """Delete the empty extra runs a retried create_run can leave (see runner/retry.py)."""
    for run in ledger.orphans:
        logger.info("removing orphaned incomplete duplicate {} left by a retried create", run.run_id)
        target.delete_run(run.run_id)
    ledger.orphans = []
    return ledger


def plan(source, ledger: Ledger) -> Summary:
    """Dry run: the same decisions as a real run, printed as a tree; nothing is written."""
    summary = Summary()
    print("plan (+ create, * repair, = skip):")
    for job in source.jobs():
        action = action_for(job, ledger.find(job.source_id))
        summary.count(action)
        print(f"{SIGILS[action]} {'  ' * job.depth}{describe(job)}")
    return summary


def describe(job: JobRecord) -> str:
    where = f"{job.experiment} / " if job.depth == 0 else ""
    return f"{where}{job.name or job.source_id} [{job.status}] {job.source_id}"


class Copier:
    def __init__(self, source, target, ledger: Ledger, options: ReplayOptions):
        self.source, self.target, self.ledger, self.options = source, target, ledger, options
        self.experiments = {e.name: e for e in source.experiments()}
        self.summary = Summary()
        self.progress = Progress("replay", source.count())
        self._lock = threading.Lock()

    def run(self, only: set[str] | None = None) -> Summary:
        """One pass over the source; with `only`, just those jobs (a retry pass)."""
        futures: dict[str, Future] = {}
        window = threading.BoundedSemaphore(self.options.parallel * 4)  # bounded read-ahead
        with tempfile.TemporaryDirectory(prefix="replayer-") as scratch, ThreadPoolExecutor(
            self.options.parallel, thread_name_prefix="replay"
        ) as pool:
            for job in self.source.jobs():
                if only is not None and job.source_id not in only:
                    continue
                existing = self.ledger.find(job.source_id)
                action = action_for(job, existing)
                window.acquire()
                future = pool.submit(self.one, job, action, existing, futures.get(job.parent_id or ""), Path(scratch))
                future.add_done_callback(lambda _: window.release())
                futures[job.source_id] = future
        return self.summary

    def one(self, job: JobRecord, action: str, existing: TargetRun | None, parent: Future | None, scratch: Path) -> str:
        try:
            parent_run_id = self.parent_run_id(job, parent)
            run_id = self.apply(job, action, existing, parent_run_id, scratch)
        except ParentFailed:
            self.fail(job, "its parent run was not copied")
            raise
        except Exception as error:  # noqa: BLE001 - one run's failure must not stop the others
            self.fail(job, f"{type(error).__name__}: {error}")
            logger.opt(exception=error).debug("failure detail for {}", job.source_id)
            raise ParentFailed() from error
        with self._lock:
            self.summary.count(action)
        self.progress.tick()
        return run_id

    def parent_run_id(self, job: JobRecord, parent: Future | None) -> str | None:
        if not job.parent_id:
            return None
        if parent is not None:
            try:
                return parent.result()
            except Exception:
                raise ParentFailed() from None
        known = self.ledger.find(job.parent_id)  # parent outside this selection, copied before
        return known.run_id if known else None

    def apply(self, job: JobRecord, action: str, existing: TargetRun | None, parent_run_id: str | None, scratch: Path) -> str:
        if action == "skip":
            return existing.run_id
        target = self.target
        source_experiment = self.experiments.get(job.experiment) or Experiment(name=job.experiment)
        experiment_id = target.ensure_experiment(self.options.mapping.target_experiment(source_experiment))
        tags = self.options.mapping.run_tags(job, source_experiment, target.run_tags(job, self.source.workspace, parent_run_id))
        if action == "create":
            run_id = target.create_run(job, experiment_id, tags)
            points = target.write_new(run_id, job, self.source, scratch)
        else:
            run_id = existing.run_id
            logger.info("repairing {} ({})", describe(job), run_id)
            points = target.repair(run_id, job, tags, self.source, scratch)
        target.finish(run_id, job)
        with self._lock:
            self.summary.metric_points += points
        return run_id

    def fail(self, job: JobRecord, reason: str) -> None:
        logger.error("failed {}: {}", describe(job), reason)
        with self._lock:
            self.summary.failed += 1
            self.summary.failures.append((job.source_id, reason))
        self.progress.tick()
