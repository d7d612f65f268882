"""A parent's children checked together: held until every one is done, then read from the target
with one search instead of one `runs/get` each (issue 18: between Azure ML workspaces the target's
MLflow bucket is what a full check spends, and most jobs are children: pipeline steps, sweep and
AutoML trials).

How a group knows it is whole: sources yield each tree whole, parents first (runner.engine.protocols
`Source.jobs`; runner.tree prints that order as it comes). So when the stream starts the next tree
(a job without a parent), every child of the open groups has been queued; a group is read once it
is closed and each of its queued children is done (or failed, or checked alone). `finish` reads
whatever is left (a child whose copy failed keeps its group open until then). A child of a group
already read (a retry pass, a stream out of tree order) is checked alone: the answer is the same.

What is held: the children done of the groups still open (their records and metric digests), at
most the trees in flight; then each is checked and dropped. The reading (the search, which child a
search result can stand for) is the target checker's: `read_children` and `searchable`
(runner.mlflow.check for MLflow-compatible targets). A checker without them checks every run alone.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from runner.core.records import JobRecord


@dataclass
class Group:
    queued: set[str] = field(default_factory=set)  # source ids of the children the stream gave
    settled: set[str] = field(default_factory=set)  # of those: done, failed or checked alone
    held: list[tuple[JobRecord, dict | None]] = field(default_factory=list)  # done, waiting for the search
    closed: bool = False  # the stream has moved past this parent's tree


# check(job, wanted digests or None, the target run a search returned or None: read it alone)
Check = Callable[[JobRecord, "dict | None", object], None]


class ChildGroups:
    def __init__(self, checker, check: Check):
        self.checker, self.check = checker, check
        self.enabled = hasattr(checker, "read_children") and hasattr(checker, "searchable")
        self._groups: dict[str, Group] = {}  # parent source id -> its children, until read
        self._read: set[str] = set()  # parents whose group was read: a late child goes alone
        self._lock = threading.Lock()

    def queued(self, job: JobRecord) -> None:
        """The stream gave `job` (before its copy or check): count it under its parent."""
        if not self.enabled:
            return
        with self._lock:
            if job.depth == 0 or not job.parent_id:  # a new tree: the open ones are whole
                for group in self._groups.values():
                    group.closed = True
                ready = self._take_ready()
            else:
                ready = []
            if job.parent_id and job.parent_id not in self._read:
                self._groups.setdefault(job.parent_id, Group()).queued.add(job.source_id)
        self._read_groups(ready)

    def done(self, job: JobRecord, wanted: dict | None) -> bool:
        """`job` is complete in the target. True: held, checked with its siblings' search; False:
        the caller checks it alone now (no group, or its search result would not do)."""
        hold = self.enabled and self.checker.searchable(job)
        return self._settle(job, (job, wanted) if hold else None)

    def settle(self, job: JobRecord) -> None:
        """`job` failed, or is checked elsewhere: its group waits for it no longer."""
        self._settle(job, None)

    def _settle(self, job: JobRecord, held: tuple | None) -> bool:
        if not self.enabled:
            return False
        with self._lock:
            group = self._groups.get(job.parent_id or "")
            if group is None or job.source_id not in group.queued:
                return False
            group.settled.add(job.source_id)
            if held is not None:
                group.held.append(held)
            ready = self._take_ready()
        self._read_groups(ready)
        return held is not None

    def finish(self) -> None:
        """Read every group left (children whose copy failed never settle theirs)."""
        with self._lock:
            ready = list(self._groups.items())
            self._read.update(self._groups)
            self._groups = {}
        self._read_groups(ready)

    def _take_ready(self) -> list[tuple[str, Group]]:
        ready = [(parent, g) for parent, g in self._groups.items() if g.closed and g.settled >= g.queued]
        for parent, _ in ready:
            del self._groups[parent]
            self._read.add(parent)
        return ready

    def _read_groups(self, ready: list[tuple[str, Group]]) -> None:
        """One search per group of two or more (one child: its own runs/get costs the same and reads
        everything), then each child checked against the run the search returned."""
        for parent, group in ready:
            if not group.held:
                continue
            runs = self.checker.read_children(parent, [job for job, _ in group.held]) if len(group.held) > 1 else {}
            for job, wanted in group.held:
                self.check(job, wanted, runs.get(job.source_id))
