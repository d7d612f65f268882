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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

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


@dataclass
class Node:
    name: str
    parent: str | None
    root: str
    depth: int
    kind: str
    status: str  # AzureML's word
    display_name: str
    experiment: str
    created: int | None = None
    start: int | None = None
    end: int | None = None
    step: str = ""
    run_type: str = ""
    facts: dict[str, Any] = field(default_factory=dict)  # description, created_by, compute, ... for the record
    graph: dict[str, dict] | None = None  # pipeline nodes: step name -> its REST node, while walking


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




# -- values Azure adds, nulls, errors, times (facts from tests/recordings) --------------------

# Tags the service writes on runs it manages: not the user's. Kept out of JobRecord.tags (a target
# would copy them as user tags, and the sweep's ~4 KB `_aml_system_platform_config` alone crowds a
# 50-tag, 1,000-character run) and kept in JobRecord.properties as `original_system.<name>`.
SYSTEM_TAGS = ("azureml.nodeid", "azureml.pipeline", "azureml.isreused", "azureml.reusedrunid")
SYSTEM_TAG_PREFIX = "_aml_system_"
SYSTEM_PROPERTY_PREFIX = "original_system."
MAX_ERROR = 3000  # Azure ML's limit on a run's error message


def is_system_tag(key: str) -> bool:
    return key.startswith(SYSTEM_TAG_PREFIX) or key in SYSTEM_TAGS


def strings(values) -> dict[str, str]:
    """Property or tag values as text; a JSON null is no value and stays out (never the text "None")."""
    return {str(k): str(v) for k, v in (values or {}).items() if v is not None}


def split_tags(tags: dict[str, str], properties: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(the user's tags, properties plus the service's system tags as `original_system.<name>`)."""
    user = {k: v for k, v in tags.items() if not is_system_tag(k)}
    system = {SYSTEM_PROPERTY_PREFIX + k: v for k, v in tags.items() if is_system_tag(k)}
    return user, {**properties, **system}


def error_message(error) -> str:
    """Run history's `error.error.message` (two levels deep), capped at Azure's 3,000 characters."""
    inner = error.get("error") if isinstance(error, Mapping) else None  # the SDK's models are Mappings
    message = inner.get("message") if isinstance(inner, Mapping) else None
    return str(message or "")[:MAX_ERROR]


def job_times(properties: dict[str, str]) -> tuple[int | None, int | None]:
    """(start, end) from a job answer's properties: a pipeline's `azureml.pipelines.stages` (JSON
    text, Execution StartTime/EndTime), a finished command job's `StartTimeUtc`/`EndTimeUtc`
    ("2024-07-24 08:48:48": UTC without a zone). (None, None) when the answer has neither."""
    stages = properties.get("azureml.pipelines.stages")
    if stages:
        try:
            execution = json.loads(stages).get("Execution") or {}
        except (ValueError, AttributeError):
            execution = {}
        return parse_ms(execution.get("StartTime")), parse_ms(execution.get("EndTime"))
    return parse_ms(properties.get("StartTimeUtc")), parse_ms(properties.get("EndTimeUtc"))


def parse_ms(text) -> int | None:
    """ms() for text that may be malformed: a time Azure wrote oddly is unknown, not a crash."""
    try:
        return ms(text) if text else None
    except ValueError:
        return None


def step_component(spec: dict, properties: dict[str, str]) -> str | None:
    """The component a pipeline step ran: its node's componentId in the parent's graph, else the
    step's own `azureml.moduleName`/`azureml.moduleVersion` (`azureml.moduleid` is the version of
    an inline step's anonymous component)."""
    if spec.get("componentId"):
        return str(spec["componentId"])
    name, version, guid = (properties.get(k) for k in ("azureml.moduleName", "azureml.moduleVersion", "azureml.moduleid"))
    if guid and name in (None, "azureml_anonymous"):
        return f"azureml_anonymous:{guid}"
    if name and version:
        return f"{name}:{version}"
    return None


# -- one job answer as a plan node ------------------------------------------------------------


def root_node(job) -> Node:
    """A top-level job (azure-ai-ml's entity of the MFE answer) as a plan node with its record facts."""
    kind = KINDS.get(str(getattr(job, "type", "") or "").lower(), "run")
    creation = getattr(job, "creation_context", None)
    properties = strings(job.properties)
    start, end = job_times(properties)
    tags, properties = split_tags(strings(job.tags), properties)
    node = Node(
        name=job.name, parent=None, root=job.name, depth=0, kind=kind,
        status=str(getattr(job.status, "value", job.status) or ""),
        display_name=job.display_name or job.name, experiment=job.experiment_name,
        created=ms(getattr(creation, "created_at", None)), start=start, end=end,
    )
    trial = getattr(job, "trial", None)  # a sweep's trial command
    command = getattr(job, "command", None) or getattr(trial, "command", None)
    environment = getattr(job, "environment", None) or getattr(trial, "environment", None)
    inputs = {k: describe_io(v) for k, v in (getattr(job, "inputs", None) or {}).items()}
    if kind == "automl":
        for key in ("training_data", "validation_data", "test_data"):
            value = getattr(job, key, None)
            if value is not None:
                inputs[key] = describe_io(value)
    node.facts = {
        "description": job.description or "",
        "created_by": getattr(creation, "created_by", None) or "",
        "compute": compute_name(getattr(job, "compute", None)),
        "environment": environment_name(environment),
        "command": command or "",
        "properties": properties,
        "tags": tags,
        "inputs": {k: v for k, v in inputs.items() if v},
        "outputs": {k: v for k, v in ((k, describe_io(v)) for k, v in (getattr(job, "outputs", None) or {}).items()) if v},
        "error": "",  # an MFE job answer carries no error: run history has it
    }
    if kind == "pipeline":
        node.graph = {name: rest_node(step) for name, step in (getattr(job, "jobs", None) or {}).items()}
    return node


def child_node(run, parent: Node, step: str, spec: dict) -> Node:
    """A run history child (a `Run`) as a plan node; `step`/`spec`: its node in the parent pipeline's graph ("", {} if none)."""
    run_type = str(run.run_type or "")
    tags, properties = split_tags(strings(run.tags), strings(run.properties))
    node = Node(
        name=run.run_id, parent=parent.name, root=parent.root, depth=parent.depth + 1,
        kind=child_kind(run_type, properties), status=str(run.status or ""),
        display_name=run.display_name or run.run_id, experiment=parent.experiment,
        created=ms(run.created_utc), start=ms(run.start_time_utc), end=ms(run.end_time_utc), run_type=run_type,
    )
    compute = run.compute.target if run.compute is not None and run.compute.target else (run.target or "")
    inputs = {k: asset_io(v) for k, v in (run.inputs or {}).items()}
    outputs = {k: asset_io(v) for k, v in (run.outputs or {}).items()}
    if step:
        node.step = step
        inputs.update({k: v for k, v in ((k, rest_io(v)) for k, v in (spec.get("inputs") or {}).items()) if v})
        outputs.update({k: v for k, v in ((k, rest_io(v)) for k, v in (spec.get("outputs") or {}).items()) if v})
    # What a child ran is in its run history record's runDefinition; pipeline steps have none (the
    # source then reads their component), nor do sub-pipelines and AutoML trials.
    definition = run_definition(run)
    node.facts = {
        "description": run.description or "",
        "created_by": (run.created_by.user_name if run.created_by is not None else "") or "",
        "compute": "" if node.kind == "pipeline" else compute_name(compute),
        "environment": environment_name(definition.get("environment")),
        "command": str(definition.get("command") or ""),
        "properties": properties,
        "tags": tags,
        "inputs": inputs,
        "outputs": outputs,
        "error": error_message(run.get("error")),
    }
    return node


def component_facts(component) -> dict:
    """What the plan needs of a component version (azure-ai-ml's entity): a pipeline component's
    steps by name, a command component's command and environment."""
    return {
        "graph": {name: rest_node(step) for name, step in (getattr(component, "jobs", None) or {}).items()} or None,
        "command": str(getattr(component, "command", None) or ""),
        "environment": environment_name(getattr(component, "environment", None)),
    }
