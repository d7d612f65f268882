"""The one place that picks an end for a URI (rclone's backend/all): importing it loads both ends,
whose store openers register with runner.files.stores."""
from __future__ import annotations

from runner.azureml import auth, blob, run_history  # noqa: F401 - register the blob and run history stores, and azureml:// tracking auth
from runner.core.filters import Filters
from runner.engine.protocols import Source
from runner.mlflow import artifact_store  # noqa: F401 - registers the MLflow artifact store (the fallback)


def open_source(uri: str, filters: Filters | None = None, workspace: str | None = None, parallel: int = 8) -> Source:
    """A manifest folder, an AzureML workspace (azureml://subscriptions/... or config.json) or an MLflow tracking URI."""
    from runner.engine.manifest import ManifestSource, is_manifest
    from runner.azureml.source import AzuremlSource
    from runner.azureml.workspace import is_azureml
    from runner.mlflow.source import MlflowSource

    filters = filters or Filters()
    if is_manifest(uri):
        return ManifestSource(uri, filters)
    if is_azureml(uri):
        return AzuremlSource(uri, filters, workspace=workspace, parallel=parallel)
    return MlflowSource(uri, filters, workspace=workspace)
