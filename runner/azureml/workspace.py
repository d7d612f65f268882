"""Naming an Azure ML workspace: an `azureml://subscriptions/S/resourcegroups/R/workspaces/W` URI
or the path of the portal's `config.json` (subscription_id, resource_group, workspace_name,
optional tenant_id). Its MLflow URIs (`azureml://HOST/mlflow/v2.0/subscriptions/S/resourceGroups/R/
providers/Microsoft.MachineLearningServices/workspaces/W[/experiments/...]`) name it by the same
scope: `scope_of` reads it there (ARM names are case-insensitive, as the regexes are)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from runner.core.errors import UsageError

URI_RE = re.compile(
    r"^azureml://subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/"
    r"(?:providers/microsoft\.machinelearningservices/)?workspaces/(?P<ws>[^/?#]+)/?$",
    re.IGNORECASE,
)
SCOPE_RE = re.compile(  # the ARM scope inside a workspace's MLflow tracking URI, run roots and artifact URIs
    r"/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/microsoft\.machinelearningservices/workspaces/(?P<ws>[^/?#]+)",
    re.IGNORECASE,
)
CONFIG_KEYS = ("subscription_id", "resource_group", "workspace_name")


@dataclass(frozen=True)
class WorkspaceRef:
    subscription_id: str
    resource_group: str
    workspace_name: str
    tenant_id: str | None = None

    @property
    def uri(self) -> str:
        return f"azureml://subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group}/workspaces/{self.workspace_name}"

    @property
    def key(self) -> tuple[str, str, str]:
        """(subscription, resource group, workspace) in lower case: one workspace however it is spelled."""
        return self.subscription_id.lower(), self.resource_group.lower(), self.workspace_name.lower()


def scope_of(uri: str) -> WorkspaceRef | None:
    """The workspace an Azure ML MLflow URI names by its scope (a tracking URI, a run's artifact root),
    as spelled there; None for a URI without one."""
    match = SCOPE_RE.search(str(uri))
    return WorkspaceRef(match["sub"], match["rg"], match["ws"]) if match else None


def is_azureml(uri: str) -> bool:
    """An azureml:// workspace URI or the path of a workspace config.json."""
    text = str(uri)
    if text.lower().startswith("azureml://subscriptions/"):
        return True
    return text.endswith(".json") and Path(text).is_file()


def parse_workspace(uri: str) -> WorkspaceRef:
    text = str(uri).strip()
    match = URI_RE.match(text)
    if match:
        return WorkspaceRef(match.group("sub"), match.group("rg"), match.group("ws"))
    if text.lower().startswith("azureml://"):
        raise UsageError(f"{text}: not a workspace URI; use azureml://subscriptions/SUB/resourcegroups/RG/workspaces/NAME or a config.json")
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"{text}: no such workspace config file; give a config.json or an azureml:// workspace URI")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{text}: not valid JSON ({error}); download config.json again from the workspace page") from None
    if not isinstance(data, dict):
        raise UsageError(f"{text}: expected a JSON object with {', '.join(CONFIG_KEYS)}")
    # The portal's config.json uses these keys; `resourceGroup`-style spellings appear in older ones.
    aliases = {"subscription_id": ("subscriptionId",), "resource_group": ("resourceGroup", "resource_group_name"), "workspace_name": ("workspaceName",)}
    values = {}
    for key in CONFIG_KEYS:
        value = data.get(key) or next((data.get(a) for a in aliases[key] if data.get(a)), None)
        if not value:
            raise UsageError(f"{text}: missing `{key}`; a workspace config.json holds {', '.join(CONFIG_KEYS)} (and optionally tenant_id)")
        values[key] = str(value)
    tenant = data.get("tenant_id") or data.get("tenantId")
    return WorkspaceRef(values["subscription_id"], values["resource_group"], values["workspace_name"], str(tenant) if tenant else None)


# -- the plan -------------------------------------------------------------------------------------
