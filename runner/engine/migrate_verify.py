"""`migrate --verify` (and `replay --verify`): verify's full check in the same pass as the copy,
without reading the source's metric histories twice (issue 18: between two Azure ML workspaces the
cost is requests, and verify after migrate re-read the source run by run).

- While a run is written, the source's metric points stream through `TeeSource.metrics`, before
  the target's caps fitting: each key's Digest (runner.engine.metric_digest) is built on the way,
  exactly what the checker's `compare_metrics` builds as `wanted` from its own read.
- Right after the run is finished (completion tag written), it is checked as verify checks it
  (`Checker.compare`) with those digests; then they are dropped. Memory: the digests of the runs in
  flight only (a count and a 256-bit sum per key), and the ids of the runs seen (as verify keeps).
- Files: a target that remembers what its copy of a run read of the source (runner.mlflow.target
  `remember_copied_files`: each file's size and MD5) lets the checker compare the target's files
  with that instead of listing the source again (runner.mlflow.check `compare_artifacts`).
- Runs the copy skipped (complete from an earlier migration), or whose stream did not end, have
  no digest and are checked the ordinary way (the source read again): every selected run is checked.
- Runs with model inputs are checked after the logged-model pass, which writes those inputs.
- Children are checked with their siblings: held until the parent's last child is done, then read
  from the target with one search, not one runs/get each (runner.engine.child_groups). The copy
  tells which children a parent has (`queued`, as the source's stream gives them); parents and
  standalone runs are read alone, right away.
- Then what else verify compares: experiments (and their logged models), registry models, traces.
The report, table and exit code are verify's (runner.engine.verify).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from runner.core.records import JobRecord, MetricPoint
from runner.engine.child_groups import ChildGroups
from runner.engine.ledger import Ledger, TargetRun
from runner.engine.mapping import Mapping
from runner.engine.metric_digest import Digest, add_point
from runner.engine.verify import Difference, VerifyReport, has_filters


class TeeSource:
    """The source as the copy reads it, with each run's metric stream digested on the way.

    Everything but `metrics` is the source's own (the copy also reads its files through it). A
    stream read to its end leaves its digests with the check; one cut short leaves none.
    """

    def __init__(self, source, check: "RunCheck"):
        self._source, self._check = source, check

    def __getattr__(self, name: str):
        return getattr(self._source, name)

    def metrics(self, job: JobRecord) -> Iterator[MetricPoint]:
        digests: dict[str, Digest] = {}
        for point in self._source.metrics(job):
            add_point(digests, point)
            yield point
        self._check.streamed(job.source_id, digests)


class RunCheck:
    """Verify, run by run, inside a copy (runner.engine.replay.Copier calls `source_view`,
    `start`, `queued`, `run_done` and `run_failed`), then the rest in `finish`."""

    def __init__(self, source, target, mapping: Mapping | None = None, parallel: int = 8, logged_models: bool = True):
        self.source, self.target, self.parallel = source, target, parallel
        self.mapping = mapping or Mapping()
        self.logged_models = logged_models
        self.report = VerifyReport(source=source.describe(), target=target.describe())
        self.ledger = Ledger(runs={})
        self.checker = None
        self._lock = threading.Lock()
        self._digests: dict[str, dict[str, Digest]] = {}  # source run id -> its digests, until checked
        self._seen: set[str] = set()  # every source run the copy took, checked or failed (verify's "seen")
        self._failed: dict[str, str] = {}  # source run id -> name, of runs whose copy failed (a retry may succeed)
        self._later: list[tuple[JobRecord, dict[str, Digest] | None]] = []  # runs with model inputs
        self.source_view = TeeSource(source, self)
        self.groups: ChildGroups | None = None
        self._pool: ThreadPoolExecutor | None = None  # the checks of children read with their siblings

    def start(self, ledger: Ledger) -> None:
        """The copy's ledger (orphans removed): what the target held before, as verify would read it."""
        self.ledger = Ledger(runs=dict(ledger.runs), duplicates=ledger.duplicates, orphans=list(ledger.orphans))
        if hasattr(self.target, "remember_copied_files"):  # each run's files are compared with what its copy read
            self.target.remember_copied_files = True
        self.checker = self.target.checker(self.source, self.ledger, self.mapping)
        if hasattr(self.checker, "logged_models"):
            self.checker.logged_models = self.logged_models
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="check")
        self.groups = ChildGroups(self.checker, lambda job, wanted, run: self._pool.submit(self._check, job, wanted, run))

    def queued(self, job: JobRecord) -> None:
        """The copy took `job` from the source's stream (before copying it): its parent's group counts it."""
        self.groups.queued(job)

    def streamed(self, source_id: str, digests: dict[str, Digest]) -> None:
        with self._lock:
            self._digests[source_id] = digests

    def run_done(self, job: JobRecord, action: str, run_id: str) -> None:
        """Check a run the copy just finished (or skipped). A skipped run's source was not read: no
        digest, so its histories are read for the check."""
        with self._lock:
            wanted = self._digests.pop(job.source_id, None) if action != "skip" else None
            self._seen.add(job.source_id)
            self._failed.pop(job.source_id, None)
            if action != "skip":  # now complete in the target; the checker still reads its completion tag
                self.ledger.runs[job.source_id] = TargetRun(run_id, "", job.fingerprint(), job.lifecycle_stage)
            later = bool(job.model_inputs and self.logged_models)
            if later:  # written by the logged-model pass, after the runs
                self._later.append((job, wanted))
        if later:
            self.groups.settle(job)
        elif not self.groups.done(job, wanted):  # held: checked with its siblings, from one search
            self._check(job, wanted)

    def run_failed(self, job: JobRecord) -> None:
        with self._lock:
            self._digests.pop(job.source_id, None)
            self._seen.add(job.source_id)
            self._failed[job.source_id] = job.name
        self.groups.settle(job)

    def _check(self, job: JobRecord, wanted: dict[str, Digest] | None, run=None) -> None:
        found = self.checker.compare(job, wanted, run)
        with self._lock:
            self.report.compared += 1
            self.report.equal += not found
            self.report.differences += found

    def finish(self, failures: list[tuple[str, str]], models: list[str] | None = None, traces: bool = True) -> VerifyReport:
        """After the copy (and the registry's, with `models`): the runs it could not copy, the runs
        waiting for model inputs, then what verify compares besides runs."""
        report = self.report
        self.groups.finish()  # the groups a failed child kept open
        self._pool.shutdown(wait=True)
        for source_id, reason in failures:
            report.compared += 1
            report.differences.append(Difference(source_id, self._failed.get(source_id, ""), "run", "copied", f"failed: {reason}"))
        for job, wanted in self._later:
            self._check(job, wanted)
        self._later = []
        if self.ledger.duplicates:
            report.differences.append(Difference("", "", "duplicates", "0", str(self.ledger.duplicates)))
        if self.ledger.orphans:
            report.differences.append(Difference("", "", "orphans", "0", str(len(self.ledger.orphans))))
        report.differences += self.checker.compare_experiments(self.source.experiments(), self.mapping)
        if not has_filters(self.source):
            for original_id, run in self.ledger.runs.items():
                if original_id not in self._seen and run.lifecycle_stage == "active":
                    report.differences.append(Difference(original_id, "", "target_only", "", run.run_id))
        if models:
            report.models, found = self.target.compare_models(self.source, self.ledger, models, self.checker.scratch)
            report.differences += found
        if traces and hasattr(self.target, "compare_traces"):
            report.traces, found = self.target.compare_traces(self.source, self.ledger, self.mapping, self.parallel)
            report.differences += found
        self.checker.close()
        return report
