"""The engine: march source jobs against the target ledger, then create, repair or skip each.

Jobs stream in parent-first order into a thread pool. A child waits for its parent's future
(the parent was submitted earlier to a FIFO pool, so it is running or done: no deadlock) and
uses the parent's new run id. A failed parent fails its subtree; everything else goes on.
"""
from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from runner.engine.ledger import Ledger, TargetRun, action_for
from runner.engine.mapping import Mapping, sync_deleted_experiments
from runner.core.records import Experiment, JobRecord
from runner.core.progress import Progress
from runner.engine.selection import Selection, kinds_line

if TYPE_CHECKING:  # the annotation only: a copy without --verify never loads the checks
    from runner.engine.migrate_verify import RunCheck

SIGILS = {"create": "+", "repair": "*", "skip": "="}


@dataclass
class ReplayOptions:
    dry_run: bool = False
    parallel: int = 8
    retries: int = 2  # extra passes over runs that failed (the copy is idempotent)
    mapping: Mapping = field(default_factory=Mapping)  # experiment renames, source tags, source user
    skip_traces: bool = False  # --skip-traces: MLflow 3 traces stay behind
    logged_models: bool = True  # False with --skip-logged-models: runs only (nor model inputs, which name models)
    check: RunCheck | None = None  # --verify: told of each run as it is finished (runner.engine.migrate_verify)


@dataclass
class Summary:
    created: int = 0
    repaired: int = 0
    skipped: int = 0
    failed: int = 0
    metric_points: int = 0
    overflowed: int = 0  # runs with replay/overflow.json (target caps exceeded)
    overflow: dict[str, int] = field(default_factory=dict)  # what those files hold, by kind (tags, params, metrics)
    left_out: dict[str, int] = field(default_factory=dict)  # kinds the target has no API for -> how many were not copied
    logged_models: str = ""  # the logged models' own line (runner.mlflow.logged_models), when the source has any
    traces: str = ""  # the traces' own line (runner.mlflow.traces), when the source has any
    kinds: dict[str, int] = field(default_factory=dict)  # dry run: what would be looked at, per kind
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
            return (f"dry run: would create {self.created}, repair {self.repaired}, skip {self.skipped}"
                    + (f"; {self.traces}" if self.traces else "") + "; nothing written"
                    + (f"; selected: {kinds_line(self.kinds)}" if self.kinds else ""))
        return (
            f"created {self.created}, repaired {self.repaired}, skipped {self.skipped}, failed {self.failed}, "
            f"metric points {self.metric_points}, {self.seconds:.1f}s"
            + (f", {self.overflowed} runs over the target's limits ({self.overflow_line()} in replay/overflow.json on them)" if self.overflowed else "")
            + (f"; {self.logged_models}" if self.logged_models else "")
            + (f"; {self.traces}" if self.traces else "")
            + "".join(f"; NOT copied, the target has no API for them: {left_out(kind, n)}" for kind, n in sorted(self.left_out.items()))
        )


    def overflow_line(self) -> str:
        return ", ".join(f"{count} {kind}" for kind, count in sorted(self.overflow.items())) or "see"


class ParentFailed(Exception):
    pass


@contextmanager
def stop_on_interrupt(in_flight):
    """While replaying, the first SIGINT sets the returned event (the march stops submitting and
    says so at once); a second one exits now, with 130. Outside the main thread (a library call)
    Python's own handling stays."""
    stopping = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return

    def handle(signum, frame):
        if stopping.is_set():
            logger.warning("stopping now; rerun the same command to resume")
            os._exit(130)
        stopping.set()
        logger.warning("stopping after {} runs in flight; rerun the same command to resume (Ctrl-C again to stop now)", in_flight())

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield stopping
    finally:
        signal.signal(signal.SIGINT, previous)


def replay(source, target, options: ReplayOptions) -> Summary:
    """Copy every selected source job into the target; safe to rerun at any point."""
    started = time.monotonic()
    ledger = target.ledger(source.workspace)
    if ledger.duplicates:
        logger.warning("target holds {} duplicate replayed runs for this source; verify will list them", ledger.duplicates)
    if options.dry_run:
        summary = plan(source, ledger, target, options)
        copy_traces(source, target, options, summary)
        summary.seconds = time.monotonic() - started
        return summary
    ledger = remove_orphans(target, source.workspace, ledger)
    if options.check is not None:
        options.check.start(ledger)
    first = Copier(source, target, ledger, options)
    summary = first.run()
    for attempt in range(options.retries):
        ledger = remove_orphans(target, source.workspace, target.ledger(source.workspace))
        if not summary.failed:
            break
        logger.warning("retry pass {}/{} for {} failed runs", attempt + 1, options.retries, summary.failed)
        again = Copier(source, target, ledger, options)
        again.progress.total = summary.failed
        summary.add(again.run(only={job_id for job_id, _ in summary.failures}))
    ensure_runless_experiments(source, target, options.mapping)
    if options.logged_models:
        copy_models(source, target, options, summary, first.selection)
    copy_traces(source, target, options, summary)
    sync_deleted_experiments(source, target, options.mapping)
    files = getattr(target, "artifact_stats", None)
    if files is not None and files.files:
        logger.info("artifacts: {}", files.line())  # how many went server-side, streamed, or were already there
    summary.overflowed = getattr(target, "overflowed", 0)
    summary.overflow = dict(getattr(target, "overflow_counts", {}))
    summary.left_out = target.left_out() if hasattr(target, "left_out") else {}
    summary.seconds = time.monotonic() - started
    return summary


def left_out(kind: str, count: int) -> str:
    return f"{count} {kind}" if kind in ("logged models", "model inputs", "traces") else f"{kind} of {count} runs"


def copy_models(source, target, options: ReplayOptions, summary: Summary, selection: Selection) -> None:
    """A target that copies more than runs (MLflow 3 logged models, then the runs' model inputs)
    does it once the runs are there, so each copy links its replayed run; a failed model counts as
    a failure of the command."""
    copy = getattr(target, "copy_logged_models", None)
    found = copy(source, options.mapping, selection, options.parallel) if copy is not None else None
    if found is None:
        return
    if found.copied or found.completed or found.updated or found.skipped or found.failures or found.inputs_added:
        summary.logged_models = found.line()
    summary.failed += len(found.failures)
    summary.failures += found.failures


def copy_traces(source, target, options: ReplayOptions, summary: Summary) -> None:
    """MLflow 3 traces, after the runs and logged models they link to (a dry run counts them);
    a failed trace counts as a failure of the command."""
    copy = getattr(target, "copy_traces", None)
    found = None if options.skip_traces or copy is None else copy(source, options.mapping, options.parallel, options.dry_run)
    if found is None:
        return
    if options.dry_run:
        summary.traces = f"traces: would copy {found.copied}, complete {found.completed}, skip {found.skipped}"
        return
    if found.copied or found.completed or found.skipped or found.failures:
        summary.traces = found.line()
    summary.failed += len(found.failures)
    summary.failures += found.failures


RUN_FILTERS = ("include", "since", "until", "status", "limit", "shard", "tags")  # they pick runs, not experiments


def selects_whole_experiments(source) -> bool:
    """Whether the selection is whole experiments (then one without runs comes over too); a run
    filter or an incremental window makes it a selection of runs, whose experiments follow them."""
    if any(getattr(getattr(source, "filters", None), key, None) for key in RUN_FILTERS):
        return False
    header = getattr(source, "header", None) or {}
    if (header.get("source") or {}).get("window") or getattr(source, "window", None):
        return False
    return not any((header.get("filters") or {}).get(key) for key in RUN_FILTERS)


def ensure_runless_experiments(source, target, mapping: Mapping) -> int:
    """Selected experiments without runs (a GenAI project, a placeholder) come over with their
    tags and description, as ones with runs do. Returns how many were looked at."""
    if not selects_whole_experiments(source) or not hasattr(target, "ensure_experiment"):
        return 0
    active = [e for e in source.experiments() if e.lifecycle_stage == "active"]
    for experiment in active:
        target.ensure_experiment(mapping.target_experiment(experiment))
    return len(active)


def remove_orphans(target, workspace: str, ledger: Ledger) -> Ledger:
    """Delete the empty extra runs a retried create_run can leave (see runner/retry.py)."""
    for run in ledger.orphans:
        logger.info("removing orphaned incomplete duplicate {} left by a retried create", run.run_id)
        target.delete_run(run.run_id)
    ledger.orphans = []
    return ledger


def plan(source, ledger: Ledger, target=None, options: ReplayOptions | None = None) -> Summary:
    """Dry run: the same decisions as a real run, printed as a tree, then what is selected per kind;
    nothing is written."""
    summary = Summary()
    selection = Selection(whole_experiments=selects_whole_experiments(source))
    print("plan (+ create, * repair, = skip):")
    for job in source.jobs():
        action = action_for(job, ledger.find(job.source_id))
        summary.count(action)
        selection.add(job)
        print(f"{SIGILS[action]} {'  ' * job.depth}{describe(job)}")
    summary.kinds = kinds(source, target, selection, options or ReplayOptions())
    print(f"selected: {kinds_line(summary.kinds)}")
    return summary


def kinds(source, target, selection: Selection, options: ReplayOptions) -> dict[str, int]:
    """Counts per kind for the dry run: runs and their dataset inputs, what the target would copy
    besides (logged models, model inputs) and the experiments without runs."""
    found = {"runs": len(selection.runs), "dataset inputs": selection.dataset_inputs}
    count = getattr(target, "count_logged_models", None)
    if options.logged_models and count is not None:
        found.update(count(source, selection))
    if selection.whole_experiments:
        found["runless experiments"] = sum(1 for e in source.experiments()
                                           if e.lifecycle_stage == "active" and e.name not in selection.experiments)
    return found


def describe(job: JobRecord) -> str:
    where = f"{job.experiment} / " if job.depth == 0 else ""
    return f"{where}{job.name or job.source_id} [{job.status}] {job.source_id}"


class Copier:
    def __init__(self, source, target, ledger: Ledger, options: ReplayOptions):
        self.source, self.target, self.ledger, self.options = source, target, ledger, options
        self.experiments = {e.name: e for e in source.experiments()}
        self.summary = Summary()
        self.selection = Selection(whole_experiments=selects_whole_experiments(source))  # what later passes follow
        self.progress = Progress("replay", source.count())
        self._lock = threading.Lock()
        self._running = 0  # runs being written now (what a Ctrl-C waits for)

    def run(self, only: set[str] | None = None) -> Summary:
        """One pass over the source; with `only`, just those jobs (a retry pass).

        Ctrl-C stops submitting, drops what is queued, lets the runs in flight finish (each is
        whole or resumable) and then raises KeyboardInterrupt; a second Ctrl-C stops at once."""
        futures: dict[str, Future] = {}
        window = threading.BoundedSemaphore(self.options.parallel * 4)  # bounded read-ahead
        if only is None and self.ledger.runs:
            logger.info("{} runs of this source are in the target already; they are skipped unless changed", len(self.ledger.runs))
        with tempfile.TemporaryDirectory(prefix="replayer-") as scratch, stop_on_interrupt(self.in_flight) as stopping:
            pool = ThreadPoolExecutor(self.options.parallel, thread_name_prefix="replay")
            try:
                for job in self.source.jobs():
                    if stopping.is_set():
                        break
                    if only is not None and job.source_id not in only:
                        continue
                    self.selection.add(job)
                    existing = self.ledger.find(job.source_id)
                    action = action_for(job, existing)
                    window.acquire()
                    if stopping.is_set():  # pressed while waiting for room
                        break
                    if self.options.check is not None:  # --verify: children are checked by parent (runner.engine.child_groups)
                        self.options.check.queued(job)
                    future = pool.submit(self.one, job, action, existing, futures.get(job.parent_id or ""), Path(scratch))
                    future.add_done_callback(lambda _: window.release())
                    futures[job.source_id] = future
            finally:
                pool.shutdown(wait=True, cancel_futures=stopping.is_set())
            if stopping.is_set():
                raise KeyboardInterrupt
        return self.summary

    def in_flight(self) -> int:
        return self._running

    def one(self, job: JobRecord, action: str, existing: TargetRun | None, parent: Future | None, scratch: Path) -> str:
        with self._lock:
            self._running += 1
        try:
            return self._one(job, action, existing, parent, scratch)
        finally:
            with self._lock:
                self._running -= 1

    def _one(self, job: JobRecord, action: str, existing: TargetRun | None, parent: Future | None, scratch: Path) -> str:
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
        if self.options.check is not None:  # --verify: checked right after its completion tag, in this worker
            self.options.check.run_done(job, action, run_id)
        self.progress.tick(skipped=action == "skip")
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
        # With --verify the metric stream is digested on its way to the target (runner.engine.migrate_verify).
        source = self.source if self.options.check is None else self.options.check.source_view
        if action == "create":
            run_id = target.create_run(job, experiment_id, tags)
            points = target.write_new(run_id, job, source, scratch)
        else:
            run_id = existing.run_id
            logger.info("repairing {} ({})", describe(job), run_id)
            points = target.repair(run_id, job, tags, source, scratch)
        target.finish(run_id, job)
        with self._lock:
            self.summary.metric_points += points
        return run_id

    def fail(self, job: JobRecord, reason: str) -> None:
        logger.error("failed {}: {}", describe(job), reason)
        if self.options.check is not None:
            self.options.check.run_failed(job)
        with self._lock:
            self.summary.failed += 1
            self.summary.failures.append((job.source_id, reason))
        self.progress.tick()
