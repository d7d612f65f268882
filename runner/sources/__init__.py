"""Sources: where run history is read from. Each one implements the small `Source` protocol."""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Iterator, Protocol

from runner.filters import Filters
from runner.model import ArtifactRef, Experiment, JobRecord, MetricPoint


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

    def metrics(self, job: JobRecord) -> Iterator[MetricPoint]:
        """Every metric point of a job, key by key, in logged order."""

    def artifacts(self, job: JobRecord) -> Iterator[ArtifactRef]:
        """The job's files, by path relative to its artifact root."""

    def fetch_artifact(self, job: JobRecord, ref: ArtifactRef, scratch: Path) -> AbstractContextManager[Path]:
        """A local file holding the artifact's bytes, valid inside the `with` block."""


def open_source(uri: str, filters: Filters | None = None, workspace: str | None = None, parallel: int = 8) -> Source:
    """A manifest folder, an AzureML workspace (azureml://subscriptions/... or config.json) or an MLflow tracking URI."""
    from runner.manifest import ManifestSource, is_manifest
    from runner.sources.azureml import AzuremlSource, is_azureml
    from runner.sources.mlflow import MlflowSource

    filters = filters or Filters()
    if is_manifest(uri):
        return ManifestSource(uri, filters)
    if is_azureml(uri):
        return AzuremlSource(uri, filters, workspace=workspace, parallel=parallel)
    return MlflowSource(uri, filters, workspace=workspace)
