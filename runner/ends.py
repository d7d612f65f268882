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


def workspace_of(uri: str | None):
    """The Azure ML workspace an end's URI names (runner.azureml.workspace.WorkspaceRef): a workspace URI
    or config.json, or a workspace's MLflow URI (`azureml://HOST/mlflow/v2.0/subscriptions/S/resourceGroups/R/
    providers/Microsoft.MachineLearningServices/workspaces/W`) by its scope; None for anything else."""
    from runner.azureml.workspace import is_azureml, parse_workspace, scope_of

    if not uri:
        return None
    if is_azureml(uri):
        return parse_workspace(uri)
    return scope_of(uri) if str(uri).lower().startswith("azureml://") else None


def same_store(source_uri: str | None, target_uri: str | None) -> bool:
    """Both ends in one workspace (subscription, resource group and name, case-insensitive, however each
    is spelled: a workspace URI, config.json or its MLflow tracking URI), or two tracking URIs of one MLflow
    server (runner.mlflow.uris.workspace_name: localhost or 127.0.0.1, a default port, a trailing slash).
    Azure meters a workspace, not an end, so `replayer estimate` then probes and projects it once."""
    from runner.engine.manifest import is_manifest
    from runner.mlflow import uris

    if not source_uri or not target_uri or is_manifest(source_uri):
        return False
    source_ws, target_ws = workspace_of(source_uri), workspace_of(target_uri)
    if source_ws or target_ws:
        return bool(source_ws and target_ws and source_ws.key == target_ws.key)
    remote = all(uris.is_remote(uris.tracking_uri(uri)) for uri in (source_uri, target_uri))
    return remote and uris.workspace_name(source_uri) == uris.workspace_name(target_uri)


def estimate_reads(source, source_uri: str, target_uri: str, experiment: str, run_id: str) -> dict:
    """The reads `replayer estimate` probes, by bucket (`end family`, runner.engine.estimate): each end's
    (`probe_reads`), or, when both ends are one store (`same_store`), that store's once as `workspace family`."""
    if same_store(source_uri, target_uri):
        ends = (("workspace", source, source_uri),)
    else:
        ends = (("source", source, source_uri), ("target", None, target_uri))
    return {f"{end} {family}": send for end, opened, uri in ends for family, send in probe_reads(opened, uri, experiment, run_id).items()}


def probe_reads(end, uri: str | None, experiment: str, run_id: str) -> dict:
    """The reads `replayer estimate` measures an end's request rates with, by family (runner.engine.estimate):
    `end` an opened source (a workspace's MLflow endpoint and run history's artifact routes, an MLflow server's MLflow; none
    for a manifest folder), or None to open `uri` (a workspace: as the AzureML source opens it, only reads follow;
    an MLflow server: its MLflow; none for a local store, which has no request rate). A workspace's MLflow tracking
    URI, at either end, is its workspace (`workspace_of`): opened as the AzureML source opens a workspace URI, so
    that its run history is probed too (a migration registers and lists its runs' files there).
    `experiment` and `run_id` name what the reads ask for (absent on a new target: a 404 is an answer too)."""
    from runner.azureml.probe_reads import listing_read
    from runner.azureml.source import AzuremlSource
    from runner.azureml.workspace import is_azureml
    from runner.mlflow import uris
    from runner.mlflow.probe_reads import experiment_read

    workspace = workspace_of(uri)
    if not isinstance(end, AzuremlSource) and workspace is not None:
        end = AzuremlSource(uri if is_azureml(uri) else workspace.uri, Filters())  # a config.json keeps its tenant
    if isinstance(end, AzuremlSource):
        reads = {"mlflow": experiment_read(end.client, experiment), "artifacts": listing_read(end, experiment, run_id)}
        return {family: send for family, send in reads.items() if send}
    if end is not None:
        client = getattr(end, "client", None)  # an MLflow source's; a manifest folder has none
    else:
        client = uris.open_client(uri, create=False) if uri and uris.is_remote(uris.tracking_uri(uri)) else None
    send = experiment_read(client, experiment) if client is not None else None
    return {"mlflow": send} if send else {}
