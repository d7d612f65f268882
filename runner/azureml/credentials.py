"""Which Azure credential reaches a workspace: chosen by name, never read from or written to a file.

    managed   ManagedIdentityCredential: the compute's identity inside an Azure ML job
              (`identity: type: managed`); a user-assigned identity by its client id
    cli       AzureCliCredential: whoever ran `az login` (a workstation)
    default   DefaultAzureCredential: environment, workload identity, managed identity, CLI, ...
    obo       AzureMLOnBehalfOfCredential: the submitting user inside an Azure ML job
              (`identity: type: user_identity`)

The name comes from `--credential`, else `REPLAYER_CREDENTIAL`, else `obo` when the job runs
on behalf of a user (Azure ML sets `OBO_ENDPOINT` then) and `default` otherwise. The client id of
a user-assigned identity comes from `--client-id`, else `AZURE_CLIENT_ID`, else
`DEFAULT_IDENTITY_CLIENT_ID` (Azure ML sets it on compute with a default user-assigned identity);
without one the system-assigned identity answers. Building a credential makes no network call:
tokens are asked for only when a client first needs one.
"""
from __future__ import annotations

import difflib
import time
import os
import threading
from dataclasses import dataclass
from typing import Mapping

from runner.core.errors import UsageError

NAMES = ("managed", "cli", "default", "obo")
NAME_VAR = "REPLAYER_CREDENTIAL"
CLIENT_ID_VARS = ("AZURE_CLIENT_ID", "DEFAULT_IDENTITY_CLIENT_ID")
OBO_VAR = "OBO_ENDPOINT"


@dataclass(frozen=True)
class Choice:
    """A credential name and, for managed identities, the client id of a user-assigned one."""

    name: str
    client_id: str | None = None


def choose(name: str | None = None, client_id: str | None = None, env: Mapping[str, str] | None = None) -> Choice:
    """The credential to use, from flags first and the environment second."""
    env = os.environ if env is None else env
    picked = str(name or env.get(NAME_VAR) or ("obo" if env.get(OBO_VAR) else "default")).strip().lower()
    if picked not in NAMES:
        close = difflib.get_close_matches(picked, NAMES, n=1)
        hint = f"did you mean {close[0]}?" if close else f"use one of {', '.join(NAMES)}"
        raise UsageError(f"--credential {name or env.get(NAME_VAR)!r}: unknown credential; {hint}")
    if client_id is not None and not str(client_id).strip():
        client_id = None
    if client_id is None and picked in ("managed", "default"):
        client_id = next((env[var] for var in CLIENT_ID_VARS if env.get(var)), None)
    if client_id is not None and picked in ("cli", "obo"):
        raise UsageError(f"--client-id names a managed identity; it does not apply to --credential {picked}")
    return Choice(picked, str(client_id) if client_id is not None else None)


def build(choice: Choice):
    """A fresh azure-core TokenCredential for `choice` (no network until a token is requested)."""
    if choice.name == "managed":
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=choice.client_id) if choice.client_id else ManagedIdentityCredential()
    if choice.name == "cli":
        from azure.identity import AzureCliCredential

        return AzureCliCredential()
    if choice.name == "obo":
        from azure.ai.ml.identity import AzureMLOnBehalfOfCredential

        return AzureMLOnBehalfOfCredential()
    from azure.identity import DefaultAzureCredential

    if choice.client_id:
        return DefaultAzureCredential(managed_identity_client_id=choice.client_id)
    return DefaultAzureCredential()


_lock = threading.Lock()
_selected: Choice | None = None
_credential = None


def configure(name: str | None = None, client_id: str | None = None) -> Choice:
    """Select the process-wide credential (the CLI calls this once from its flags)."""
    global _selected, _credential
    choice = choose(name, client_id)
    with _lock:
        _selected, _credential = choice, None
    return choice


def get():
    """The process-wide credential, built on first use and shared by every Azure client."""
    global _selected, _credential
    with _lock:
        if _selected is None:
            _selected = choose()
        if _credential is None:
            _credential = build(_selected)
        return _credential


def selected() -> Choice:
    """What `get()` builds (without building it)."""
    with _lock:
        return _selected or choose()


CREDENTIAL_HINTS = {
    "cli": "run `az login --tenant <tenant>` (or choose --credential managed|default|obo)",
    "managed": "run on Azure compute with a managed identity (give --client-id for a user-assigned one)",
    "default": "set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or `az login`, or run with a managed identity",
    "obo": "run inside an Azure ML job submitted with `identity: type: user_identity`",
}


class CachedCredential:
    """Reuse each token until 5 minutes before it expires; optionally pin the tenant.

    azureml-mlflow asks its credential for a token on every MLflow request, and AzureCliCredential
    (like DefaultAzureCredential when it lands on the CLI) runs `az account get-access-token` each
    time: about a second per request. Cached here, one token serves the whole extraction.
    """

    MARGIN = 300  # seconds

    def __init__(self, inner, tenant_id: str | None = None):
        self.inner, self.tenant_id = inner, tenant_id
        self._tokens: dict = {}
        self._lock = threading.Lock()

    def get_token(self, *scopes, claims=None, tenant_id=None, **kwargs):
        tenant = tenant_id or self.tenant_id
        if tenant:
            kwargs["tenant_id"] = tenant
        if claims:  # a claims challenge always needs a fresh token
            return self.inner.get_token(*scopes, claims=claims, **kwargs)
        key = (scopes, tenant)
        with self._lock:
            token = self._tokens.get(key)
            if token is None or token.expires_on - self.MARGIN <= time.time():
                token = self._tokens[key] = self.inner.get_token(*scopes, **kwargs)
            return token

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close:
            close()


def workspace_credential(ref, credential=None):
    """(name, cached credential) for a workspace: the process's chosen one unless one is given.

    Tokens are asked for the workspace's tenant (from config.json) where the credential can choose.
    """
    if credential is None:
        name = selected().name
        credential = get()
    else:
        name = type(credential).__name__
    tenant = ref.tenant_id if name in ("cli", "default") else None
    return name, CachedCredential(credential, tenant)


def management_scope(cloud: str | None = None) -> str:
    """The token scope for a workspace's control plane *and* its run history: the cloud's resource
    manager + /.default (https://management.azure.com/.default in the public cloud), the scope
    azure-ai-ml (its cloud metadata's `credential_scopes`) and azureml-mlflow (`_get_default_scope`)
    send to both. `cloud` is azure-ai-ml's cloud name (MLClient's, AZUREML_CURRENT_CLOUD by default)."""
    from azure.ai.ml._azure_environments import _get_cloud_information_from_metadata

    return _get_cloud_information_from_metadata(cloud)["credential_scopes"][0]
