"""The Protocols the engine knows the ends by. A source (where run history is read from) implements
`Source`; stores implement runner.files.stores.Store."""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Iterator, Protocol

from runner.core.records import ArtifactRef, Experiment, JobRecord, MetricPoint


class Source(Protocol):
    workspace: str  # stable name, written as `original_workspace` on replayed runs

    def describe(self) -> dict:
        """Where this source is, without secrets (goes into manifests and reports)."""

    def experiments(self) -> list[Experiment]:
        """The experiments the filters select."""

    def jobs(self) -> Iterator[JobRecord]:
        """Selected jobs, parents before children, roots in start-time order."""

    def count(self) -> int:
        """How many jobs `jobs()` yields (for progress)."""

    def sample(self, n: int) -> Iterator[tuple[JobRecord, int]]:
        """`n` of those jobs spread evenly over `jobs()`'s order (runner.core.filters.spread), each read
        without reading the others, with how many selected jobs share its parent (0 for a root): what
        `replayer estimate` measures a workload by (a parent's children are read in one search)."""

    def metrics(self, job: JobRecord) -> Iterator[MetricPoint]:
        """Every metric point of a job, key by key, in logged order."""

    def artifacts(self, job: JobRecord) -> Iterator[ArtifactRef]:
        """The job's files, by path relative to its artifact root."""

    def fetch_artifact(self, job: JobRecord, ref: ArtifactRef, scratch: Path) -> AbstractContextManager[Path]:
        """A local file holding the artifact's bytes, valid inside the `with` block."""

