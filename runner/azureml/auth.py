"""azureml-mlflow with our credential: MLflow calls to a workspace authenticate as `--credential` says.

azureml-mlflow (1.62) serves `azureml://` tracking URIs with a ServiceContext per URI, cached in
`_AzureMLServiceContextLoader`, whose `auth` is a credential chain of its own (DefaultAzureCredential's
members plus interactive ones); its stores ask that `auth` for a token on every request. Left alone,
`--credential` / `--client-id` would never reach MLflow calls (a user-assigned identity is not
picked), and a chain landing on the Azure CLI runs `az account get-access-token` per request.
So `use_credential` puts our credential, wrapped in CachedCredential (one token per scope until
near expiry), on that very ServiceContext object: every store mlflow builds (and caches) for the
URI holds it, tracking and model registry alike (the registry URI is the tracking URI).

Its artifact repository for `azureml://.../workspaces/W/experiments/E/runs/R/artifacts` URIs takes
the service context of the *global* `MlflowClient()`, which this process never sets (it may talk to
a source and a target workspace at once); mlflow 3 would then open `./mlflow.db` and azureml-mlflow
ask for a token inside the URI. So its lookup (`_store.artifact.utils.get_service_context`, the one
name `get_artifact_repository_client` resolves at call time) is replaced by one that finds the
workspace named in the URI among those registered here; anything else (inside an Azure ML job, a
URI naming no workspace) goes to azureml-mlflow's own lookup when a global tracking URI is set,
else fails with one line naming the workspace.

Inside an Azure ML job azureml-mlflow authenticates the job's own workspace (MLFLOW_TRACKING_URI)
with the job's token (MLFLOW_TRACKING_TOKEN): that URI is left to it.

These are private internals: if they changed shape, the first use stops with one line.
"""
from __future__ import annotations

import os
import threading

from runner.azureml.workspace import scope_of
from runner.core.errors import ReplayerError, UsageError, first_line
from runner.mlflow import uris

SUPPORTED = "azureml-mlflow 1.62 (pinned in pyproject.toml)"
JOB_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_RUN_ID")

_lock = threading.Lock()
_contexts: dict[tuple[str, str, str], object] = {}  # (sub, rg, ws) lower case -> ServiceContext with our credential
_shared: tuple[object, object] | None = None  # (the process credential, its CachedCredential)
_original_lookup = None  # azureml-mlflow's own artifact service context lookup, once replaced


class InternalsChanged(ReplayerError):
    """azureml-mlflow's private shape is not the one this module patches (exit 2)."""


def use_credential(tracking_uri: str, credential=None, name: str | None = None) -> None:
    """MLflow calls to this `azureml://` tracking URI (and its artifacts) use `credential`
    (already cached; `name` for messages) or the process's chosen one, cached; other URIs are left alone."""
    if not str(tracking_uri).lower().startswith("azureml://") or is_job_workspace(tracking_uri):
        return
    loader = _install()
    context = loader.load_service_context(tracking_uri)  # azureml-mlflow's own object (no token asked yet)
    if not hasattr(context, "_auth") or not isinstance(getattr(type(context), "auth", None), property):
        raise InternalsChanged(f"{changed()}: its service context has no `_auth` behind `auth`")
    if credential is None:
        from runner.azureml import credentials

        credential, name = shared_credential(), credentials.selected().name
    key = workspace_key(tracking_uri)
    where = f"workspace {key[2]}" if key else str(tracking_uri).split("?")[0]
    context._auth = ExplainedCredential(credential, name or type(credential).__name__, where)
    if key is not None:
        with _lock:
            _contexts[key] = context


def opened_context(uri: str):
    """azureml-mlflow's ServiceContext (host_url, cloud, our credential as `auth`) for the workspace
    an `azureml://` URI names, when this process opened it through `use_credential`; else None."""
    key = workspace_key(uri)
    with _lock:
        return _contexts.get(key) if key else None


def shared_credential():
    """The process's chosen credential (runner.azureml.credentials) behind one CachedCredential."""
    global _shared
    from runner.azureml import credentials
    from runner.azureml.credentials import CachedCredential

    raw = credentials.get()
    with _lock:
        if _shared is None or _shared[0] is not raw:  # credentials.configure chose another one
            _shared = (raw, CachedCredential(raw))
        return _shared[1]


class ExplainedCredential:
    """The credential azureml-mlflow gets: one it cannot get a token from (not signed in, no managed
    identity here) stops the command with one line naming the credential and the fix, instead of
    an MLflow request failing with azure-identity's traceback."""

    def __init__(self, inner, name: str, where: str):
        self.inner, self.name, self.where = inner, name, where

    def get_token(self, *scopes, **kwargs):
        from azure.core.exceptions import ClientAuthenticationError

        from runner.azureml.credentials import CREDENTIAL_HINTS

        try:
            return self.inner.get_token(*scopes, **kwargs)
        except ClientAuthenticationError as error:
            if getattr(error, "response", None) is not None:  # a service's refusal: its caller reports it
                raise
            raise UsageError(
                f"could not get a token with credential '{self.name}' for the MLflow endpoint of {self.where}: "
                f"{first_line(error)}; {CREDENTIAL_HINTS.get(self.name, 'choose another --credential')}"
            ) from None


def workspace_key(uri: str) -> tuple[str, str, str] | None:
    ref = scope_of(uri)
    return ref.key if ref else None


def is_job_workspace(uri: str) -> bool:
    """Inside an Azure ML job: the job's own tracking URI, which azureml-mlflow serves with the job's token."""
    if not all(os.environ.get(var) for var in JOB_VARS):
        return False
    return os.environ["MLFLOW_TRACKING_URI"].split("?")[0].rstrip("/") == str(uri).split("?")[0].rstrip("/")


def changed() -> str:
    try:
        from importlib.metadata import version

        found = version("azureml-mlflow")
    except Exception:  # noqa: BLE001 - only for the message
        found = "?"
    return f"azureml-mlflow {found} changed its internals; replayer supports {SUPPORTED}"


def _install():
    """Replace azureml-mlflow's artifact service context lookup (once); returns the context loader."""
    global _original_lookup
    try:
        from azureml.mlflow._internal.service_context_loader import _AzureMLServiceContextLoader as loader
        from azureml.mlflow._store.artifact import utils as artifact_utils
    except ImportError as error:
        raise InternalsChanged(f"{changed()} ({error})") from None
    with _lock:
        if _original_lookup is None:
            original = getattr(artifact_utils, "get_service_context", None)
            if not callable(original) or not callable(getattr(artifact_utils, "get_artifact_repository_client", None)) \
                    or not callable(getattr(loader, "load_service_context", None)):
                raise InternalsChanged(f"{changed()}: no get_service_context / load_service_context to hand our credential to")
            _original_lookup = original
            artifact_utils.get_service_context = _artifact_service_context
    return loader


def _artifact_service_context(parsed_url):
    """The service context for an `azureml://` artifact URI (a urlparse result), by its workspace."""
    key = workspace_key(parsed_url.path)
    with _lock:
        context = _contexts.get(key) if key else None
    if context is not None:
        return context
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    if is_tracking_uri_set():  # e.g. inside an Azure ML job: its global client serves its own workspace
        return _original_lookup(parsed_url)
    from mlflow.exceptions import MlflowException

    named = f"workspace {key[2]} (resource group {key[1]}, subscription {key[0]})" if key else "no workspace"
    raise MlflowException(
        f"artifact URI {parsed_url.scheme}://{parsed_url.netloc}{parsed_url.path} names {named}, whose MLflow "
        "endpoint this process has not opened: open it as a source or target (its azureml:// tracking URI) first"
    )


uris.on_remote(use_credential)
