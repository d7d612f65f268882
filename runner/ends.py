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


def probe_reads(end, uri: str | None, experiment: str, run_id: str) -> dict:
    """The reads `replayer estimate` measures an end's request rates with, by family (runner.engine.estimate):
    `end` an opened source (a workspace's MLflow endpoint and run history's artifact routes, an MLflow server's MLflow; none
    for a manifest folder), or None to open the target `uri` (a workspace: as the AzureML source opens it,
    only reads follow; an MLflow server: its MLflow; none for a local store, which has no request rate).
    `experiment` and `run_id` name what the reads ask for (absent on a new target: a 404 is an answer too)."""
    from runner.azureml.probe_reads import listing_read
    from runner.azureml.source import AzuremlSource
    from runner.azureml.workspace import is_azureml
    from runner.mlflow import uris
    from runner.mlflow.probe_reads import experiment_read

    if end is None and uri and is_azureml(uri):
        end = AzuremlSource(uri, Filters())
    if isinstance(end, AzuremlSource):
        reads = {"mlflow": experiment_read(end.client, experiment), "artifacts": listing_read(end, experiment, run_id)}
        return {family: send for family, send in reads.items() if send}
    if end is not None:
        client = getattr(end, "client", None)  # an MLflow source's; a manifest folder has none
    else:
        client = uris.open_client(uri, create=False) if uri and uris.is_remote(uris.tracking_uri(uri)) else None
    send = experiment_read(client, experiment) if client is not None else None
    return {"mlflow": send} if send else {}
