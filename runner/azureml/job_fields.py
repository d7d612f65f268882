"""What Azure ML's answers mean as JobRecord fields: statuses, times, kinds, bindings, tags.

Pure functions over the SDK's entities and run history's JSON (no requests), so each can be
checked against recorded real answers (tests/recordings). Facts they rely on, seen there:
- every property and tag value is a string, but JSON nulls occur (AutoML `DataPrepJsonString`);
  a null is no value: it is left out, never written as the text "None";
- the service adds system tags (`_aml_system_*`, `azureml.nodeid`, `azureml.pipeline`, reuse
  markers); they are not the user's tags and are kept apart (`split_tags`);
- run history children carry `"runDefinition": null` for pipeline steps: what a step ran is in
  its component (`step_component`), read the way azure-ai-ml reads it;
- a failed run's message is two levels deep, `error.error.message` (`error_message`);
- MFE job answers have no start/end time fields: a finished command job has
  `properties.StartTimeUtc` ("2024-07-24 08:48:48", no zone), a pipeline has
  `properties."azureml.pipelines.stages"` (JSON text with Execution StartTime/EndTime).
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from loguru import logger

STATUS = {
    "completed": "FINISHED",
    "failed": "FAILED",
    "canceled": "KILLED",
    "cancelled": "KILLED",
    "notstarted": "SCHEDULED",
    "queued": "SCHEDULED",
    "preparing": "SCHEDULED",
    "provisioning": "SCHEDULED",
    "starting": "SCHEDULED",
    "running": "RUNNING",
    "finalizing": "RUNNING",
    "cancelrequested": "RUNNING",
    "notresponding": "RUNNING",
    "paused": "RUNNING",
}
KINDS = {"command": "command", "pipeline": "pipeline", "sweep": "sweep", "automl": "automl"}
CONTAINER_KINDS = ("pipeline", "sweep", "automl")
# Run history run types of jobs that never have children: their children are not listed.
LEAF_RUN_TYPES = ("azureml.steprun", "azureml.scriptrun", "azureml.commandrun")


def map_status(status: str | None) -> str:
    """AzureML's status word -> the model's (MLflow's) word; unknown words count as RUNNING."""
    return STATUS.get(str(status or "").replace(" ", "").lower(), "RUNNING")


# -- naming the workspace -----------------------------------------------------------------------

def ms(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def child_kind(run_type: str, properties: dict[str, str]) -> str:
    """What a child run is, from run history's run type (the SDK's job types are not given for children)."""
    kind = run_type.lower()
    if kind == "azureml.pipelinerun":
        return "pipeline"
    if kind == "hyperdrive":
        return "sweep"
    if kind == "automl":
        return "run" if properties.get("runTemplate", "").lower() == "automl_child" else "automl"
    if kind in LEAF_RUN_TYPES:
        return "command"
    return "run"


def match_step(graph: dict[str, dict], display_name: str) -> tuple[str, dict]:
    """The pipeline step a child run executes: by node name, else by the node's display name."""
    if display_name in graph:
        return display_name, graph[display_name]
    for name, spec in graph.items():
        if spec.get("display_name") == display_name or spec.get("displayName") == display_name:
            return name, spec
    return "", {}


def rest_node(step) -> dict:
    """A pipeline step as its REST dict (how the service stored it), or {} when it cannot be read."""
    try:
        rest = step._to_rest_object()
    except Exception as error:  # noqa: BLE001 - one odd step must not stop the extraction
        logger.debug("cannot read pipeline step {}: {}", getattr(step, "name", "?"), error)
        return {}
    return dict(rest) if isinstance(rest, dict) else {}


def component_name(component_id) -> tuple[str, str] | None:
    """(name, version) of a workspace component id: ARM id, azureml:name:version or name:version."""
    text = str(component_id)
    match = re.search(r"/components/([^/]+)/versions/([^/]+)$", text)
    if match and "/registries/" not in text:
        return match.group(1), match.group(2)
    text = text.removeprefix("azureml:")
    if "/" not in text and text.count(":") == 1:
        name, version = text.split(":")
        return name, version
    return None


def compute_name(value) -> str:
    if not value:
        return ""
    text = str(value)
    return text.rsplit("/computes/", 1)[-1] if "/computes/" in text else text


def run_definition(run) -> dict:
    """A run history record's `runDefinition` (an object; older answers send it as JSON text)."""
    value = run.get("runDefinition") if hasattr(run, "get") else None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def environment_name(value) -> str:
    """`azureml:name:version` for a registered environment, whatever form the SDK or the service handed back."""
    if not value:
        return ""
    if isinstance(value, dict):  # runDefinition.environment: {name, version, assetId?, docker: {baseImage}}
        name, version = value.get("name"), value.get("version")
        if name and version:
            return f"azureml:{name}:{version}"
        return str(value.get("assetId") or (value.get("docker") or {}).get("baseImage") or name or "")
    if not isinstance(value, str):
        name, version = getattr(value, "name", None), getattr(value, "version", None)
        if name and version:
            return f"azureml:{name}:{version}"
        return getattr(value, "image", None) or str(name or "")
    match = re.search(r"/environments/([^/]+)/versions/([^/]+)$", value)
    if match and "/registries/" not in value:
        return f"azureml:{match.group(1)}:{match.group(2)}"
    if "/" not in value and value.count(":") == 1 and not value.startswith("azureml:"):
        return f"azureml:{value}"
    return value


def clean(values: dict) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v not in (None, "")}


def describe_io(value) -> dict[str, str]:
    """A job input/output entity (Input, Output, NodeInput, a literal) as a plain binding dict."""
    data = value
    for _ in range(4):  # NodeInput / NodeOutput / PipelineInput wrap the real value in `_data`
        inner = getattr(data, "_data", None)
        if inner is None or inner is data:
            break
        data = inner
    if data is None or data is value and hasattr(value, "_data"):
        kind = getattr(value, "type", None)
        return clean({"type": kind}) if isinstance(kind, str) else {}
    if isinstance(data, str):
        return {"binding": data} if data.strip().startswith("${{") else {"type": "literal", "value": data}
    if isinstance(data, (bool, int, float)):
        return {"type": "literal", "value": str(data)}
    binding = getattr(data, "_data_binding", None)
    if callable(binding) and not hasattr(data, "path"):
        return {"binding": str(binding())}
    if isinstance(data, dict):
        return rest_io(data)
    return clean({"type": getattr(data, "type", None), "path": getattr(data, "path", None), "mode": getattr(data, "mode", None)})


def rest_io(value) -> dict[str, str]:
    """A REST input/output dict (`{"value": "${{...}}", "job_input_type": "literal"}`, `{"uri": ...}`)."""
    if not isinstance(value, dict):
        return describe_io(value)
    kind = next((value[k] for k in ("job_input_type", "jobInputType", "job_output_type", "jobOutputType", "type") if value.get(k)), None)
    literal = value.get("value")
    if isinstance(literal, str) and literal.strip().startswith("${{"):
        return {"binding": literal}
    if str(kind).lower() == "literal":
        return {"type": "literal", "value": str(literal)}
    return clean({"type": kind, "path": value.get("uri") or value.get("path"), "mode": value.get("mode")})


def asset_io(value) -> dict[str, str]:
    """Run history's TypedAssetReference (assetId, type)."""
    get = value.get if isinstance(value, dict) else lambda k, d=None: getattr(value, {"assetId": "asset_id"}.get(k, k), d)
    return clean({"type": get("type"), "path": get("assetId")})


