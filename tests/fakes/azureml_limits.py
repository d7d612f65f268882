"""The AzureML fake's MLflow endpoint enforces Azure ML's documented limits before forwarding.

Limits (MicrosoftDocs/azure-docs articles/machine-learning/resource-limits-capacity.md, and the
service's own "FieldName=Parameters, Limit=200" of Azure/azure-sdk-for-python#35685):
runs 50 tags, tag key 100, tag value 1,000 characters, display name 256, description 5,000;
200 params per run; 50 metric names per run, 250 metric rows per batch, 1,000,000 rows per
metric name; experiments 50 tags, tag key 250, tag value 1,000, description 5,000.

The 250 metric rows are counted per metric name in one request (FieldName `MetricV2Dto.Value/Count`,
Size = the largest name's row count in the request), plus MLflow's own 1,000 metrics and 1,000
entities per log_batch (mlflow.utils.validation MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH).
Why per name: the one real answer on record, mlflow/mlflow#11462 (comment of 2024-06-17), refused
a log_batch of one metric with 699 rows as "FieldName=MetricV2Dto.Value/Count, Limit=250,
Size=699": the field is one MetricV2Dto's values, and a MetricV2Dto is one metric name with its
values (azureml-core's metrics client handles "(UserError) MetricV2Dto.Value/Count ... exceeds
the limit" beside the per-DTO MetricV2Dto.Name/Length and MetricV2Dto.Columns/Count). The docs'
"Metric rows per batch uploaded: 250" also reads as 250 in all: `rows_cap_per_request_total=True`
(set_limits) models that reading, same error shape, so the tool's fallback is tested.
A refused request writes nothing (checked before forwarding), as the service validates first.

Counts are cumulative per run and per experiment, as the service counts them: what the entity holds
already (asked of the mlflow server behind the fake) plus what the request adds. Every tag the
entity would hold counts, the `mlflow.*` ones the server adds itself included (stricter than the
service may be: a tool that fits here fits there). `mlflow.note.content` is the description.

Refusals are shaped like the service's (seen in mlflow/mlflow#11462, a real answer to log_batch):
HTTP 400, `error_code` INVALID_PARAMETER_VALUE and no `message` key, the text in `Error.Message`
("A field of the entity is over the size limit. FieldName=..., Limit=..., Size=...."); MLflow's
client then raises `INVALID_PARAMETER_VALUE: Response: {...}`. The FieldNames other than
`MetricV2Dto.Value/Count` and `Parameters` are ours: no recording shows them (nor how Azure ML
refuses more than MLflow's 1,000: `Batch.Metrics`, `Batch.Entities` here).

Run searches: Azure ML's MLflow endpoint does not support attribute filters, LIKE/ILIKE or OR
(DESIGN.md); such a filter answers 400 here, so a test catches any the tool sends.

`set_limits(ws, rows_per_metric=500)` lowers a limit for one workspace (a test cannot send a
million rows); `fake.requests["mlflow_refused_limit"]` counts refusals and
`fake.requests["mlflow_log_batch"]` every log-batch request that reached the checks (refused or not).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from urllib.parse import parse_qs

from fakes.azureml_control_plane import MLFLOW_ROUTES

DESCRIPTION = "mlflow.note.content"
RUN_NAME = "mlflow.runName"


@dataclass(frozen=True)
class AzureLimits:
    run_tags: int = 50
    run_tag_key: int = 100
    tag_value: int = 1000
    display_name: int = 256
    description: int = 5000
    params: int = 200
    metric_names: int = 50
    rows_per_metric_per_request: int = 250  # rows of one metric name in one request
    rows_cap_per_request_total: bool = False  # the docs' other reading: 250 rows of all names in one request
    metrics_per_request: int = 1000  # MLflow's MAX_METRICS_PER_BATCH
    entities_per_request: int = 1000  # MLflow's MAX_ENTITIES_PER_BATCH: metrics, params and tags
    rows_per_metric: int = 1_000_000
    experiment_tags: int = 50
    experiment_tag_key: int = 250


LIMITS = AzureLimits()


def set_limits(workspace, **changes) -> None:
    workspace.mlflow_limits = replace(limits_of(workspace), **changes)


def limits_of(workspace) -> AzureLimits:
    return getattr(workspace, "mlflow_limits", LIMITS)


class OverLimit(Exception):
    def __init__(self, field: str, limit: int, size: int):
        super().__init__(field)
        self.field, self.limit, self.size = field, limit, size

    def body(self) -> bytes:
        message = (f"A field of the entity is over the size limit. FieldName={self.field}, Limit={self.limit}, Size={self.size}. "
                   "See https://aka.ms/azure-machine-learning-limits for service limits documentation.")
        return json.dumps({
            "Error": {"Code": "ValidationError", "Severity": None, "Message": message, "MessageFormat": None, "Details": []},
            "Correlation": {"operation": "fake", "request": "fake"}, "ComponentName": "mlflow",
            "statusCode": 400, "error_code": "INVALID_PARAMETER_VALUE",
        }).encode()


def at_most(field: str, limit: int, size: int) -> None:
    if size > limit:
        raise OverLimit(field, limit, size)


class Unsupported(Exception):
    pass


# -- the route --------------------------------------------------------------------------------


def _limits_route(handler, workspace, rest: str, query: str, body: bytes) -> bool:
    check = CHECKS.get((handler.command, rest.rstrip("/")))
    if check is None:
        return False
    try:
        data = json.loads(body or b"{}") if handler.command != "GET" else {k: v[0] for k, v in parse_qs(query).items()}
        check(Backing(handler, workspace), limits_of(workspace), data)
    except OverLimit as refused:
        handler.fake.requests["mlflow_refused_limit"] += 1
        handler._send(400, refused.body())
        return True
    except Unsupported as refused:
        handler.fake.requests["mlflow_refused_filter"] += 1
        answer = {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Azure ML does not support this search filter: {refused}"}
        handler._send(400, json.dumps(answer).encode())
        return True
    return False


class Backing:
    """What the mlflow server behind the fake holds now, for cumulative counts."""

    def __init__(self, handler, workspace):
        self.handler, self.workspace = handler, workspace
        self.base = (workspace.mlflow_uri or handler.fake.mlflow_uri).rstrip("/") + "/api/2.0/mlflow"

    def get(self, route: str, **params) -> dict:
        answer = self.handler.fake.forward("GET", f"{self.base}/{route}", params=params, timeout=60)
        return answer.json() if answer.ok else {}

    def run(self, run_id: str) -> dict:
        return self.get("runs/get", run_id=run_id).get("run", {})

    def experiment(self, experiment_id: str) -> dict:
        return self.get("experiments/get", experiment_id=experiment_id).get("experiment", {})

    def rows(self) -> Counter:
        """(run id, metric name) -> rows written through this fake (the server answers no count)."""
        if not hasattr(self.workspace, "mlflow_metric_rows"):
            self.workspace.mlflow_metric_rows = Counter()
        return self.workspace.mlflow_metric_rows


def as_dict(entries) -> dict[str, str]:
    return {e["key"]: e.get("value", "") for e in entries or []}


# -- what each request may carry ----------------------------------------------------------------


def check_run_tags(limits: AzureLimits, have: dict[str, str], new: dict[str, str]) -> None:
    for key, value in new.items():
        at_most("Tags.Key", limits.run_tag_key, len(key))
        if key == RUN_NAME:
            at_most("DisplayName", limits.display_name, len(value))
        elif key == DESCRIPTION:
            at_most("Description", limits.description, len(value))
        else:
            at_most("Tags.Value", limits.tag_value, len(value))
    at_most("Tags", limits.run_tags, len({**have, **new}))


def check_experiment_tags(limits: AzureLimits, have: dict[str, str], new: dict[str, str]) -> None:
    for key, value in new.items():
        at_most("ExperimentTags.Key", limits.experiment_tag_key, len(key))
        at_most("Description" if key == DESCRIPTION else "ExperimentTags.Value", limits.description if key == DESCRIPTION else limits.tag_value, len(value))
    at_most("ExperimentTags", limits.experiment_tags, len({**have, **new}))


def check_rows_per_request(limits: AzureLimits, added: Counter) -> None:
    """250 rows of one name (or, in the docs' other reading, of all names) in one request."""
    size = sum(added.values()) if limits.rows_cap_per_request_total else max(added.values(), default=0)
    at_most("MetricV2Dto.Value/Count", limits.rows_per_metric_per_request, size)


def check_metrics(backing: Backing, limits: AzureLimits, run_id: str, have_names, metrics: list[dict]) -> None:
    added = Counter(m["key"] for m in metrics)
    check_rows_per_request(limits, added)
    at_most("Batch.Metrics", limits.metrics_per_request, len(metrics))
    at_most("Metrics", limits.metric_names, len(set(have_names) | set(added)))
    rows = backing.rows()
    for key, count in added.items():
        at_most(f"Metrics[{key}].Count", limits.rows_per_metric, rows[(run_id, key)] + count)
    rows.update({(run_id, key): count for key, count in added.items()})


def create_run(backing: Backing, limits: AzureLimits, data: dict) -> None:
    tags = as_dict(data.get("tags"))
    if data.get("run_name"):
        tags[RUN_NAME] = data["run_name"]
    check_run_tags(limits, {}, tags)


def update_run(backing: Backing, limits: AzureLimits, data: dict) -> None:
    if data.get("run_name"):
        at_most("DisplayName", limits.display_name, len(data["run_name"]))


def log_batch(backing: Backing, limits: AzureLimits, data: dict) -> None:
    backing.handler.fake.requests["mlflow_log_batch"] += 1
    run_id = data.get("run_id") or data.get("run_uuid")
    entities = sum(len(data.get(kind) or []) for kind in ("metrics", "params", "tags"))
    at_most("Batch.Entities", limits.entities_per_request, entities)
    run = backing.run(run_id)
    have_tags = as_dict(run.get("data", {}).get("tags"))
    have_params = as_dict(run.get("data", {}).get("params"))
    check_run_tags(limits, have_tags, as_dict(data.get("tags")))
    at_most("Parameters", limits.params, len(set(have_params) | {p["key"] for p in data.get("params") or []}))
    have_names = {m["key"] for m in run.get("data", {}).get("metrics") or []}
    check_metrics(backing, limits, run_id, have_names, data.get("metrics") or [])


def set_tag(backing: Backing, limits: AzureLimits, data: dict) -> None:
    run_id = data.get("run_id") or data.get("run_uuid")
    have = as_dict(backing.run(run_id).get("data", {}).get("tags"))
    check_run_tags(limits, have, {data["key"]: data.get("value", "")})


def log_param(backing: Backing, limits: AzureLimits, data: dict) -> None:
    run_id = data.get("run_id") or data.get("run_uuid")
    have = as_dict(backing.run(run_id).get("data", {}).get("params"))
    at_most("Parameters", limits.params, len(set(have) | {data["key"]}))


def log_metric(backing: Backing, limits: AzureLimits, data: dict) -> None:
    run_id = data.get("run_id") or data.get("run_uuid")
    have_names = {m["key"] for m in backing.run(run_id).get("data", {}).get("metrics") or []}
    check_metrics(backing, limits, run_id, have_names, [data])


def create_experiment(backing: Backing, limits: AzureLimits, data: dict) -> None:
    check_experiment_tags(limits, {}, as_dict(data.get("tags")))


def set_experiment_tag(backing: Backing, limits: AzureLimits, data: dict) -> None:
    have = as_dict(backing.experiment(data["experiment_id"]).get("tags"))
    check_experiment_tags(limits, have, {data["key"]: data.get("value", "")})


# Outside quotes: an attribute identifier (attributes./attribute./attr./run. prefix), LIKE, ILIKE or OR.
QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`")
REFUSED = re.compile(r"(?<![\w.])(?:attributes?|attr|run)\s*\.|\b(?:i?like|or)\b", re.IGNORECASE)


def search_runs(backing: Backing, limits: AzureLimits, data: dict) -> None:
    text = QUOTED.sub("''", data.get("filter") or "")
    found = REFUSED.search(text)
    if found:
        raise Unsupported(f"{found.group(0)!r} in {data.get('filter')!r}")


CHECKS = {
    ("POST", "/api/2.0/mlflow/runs/create"): create_run,
    ("POST", "/api/2.0/mlflow/runs/update"): update_run,
    ("POST", "/api/2.0/mlflow/runs/log-batch"): log_batch,
    ("POST", "/api/2.0/mlflow/runs/set-tag"): set_tag,
    ("POST", "/api/2.0/mlflow/runs/log-parameter"): log_param,
    ("POST", "/api/2.0/mlflow/runs/log-metric"): log_metric,
    ("POST", "/api/2.0/mlflow/runs/search"): search_runs,
    ("POST", "/api/2.0/mlflow/experiments/create"): create_experiment,
    ("POST", "/api/2.0/mlflow/experiments/set-experiment-tag"): set_experiment_tag,
}

MLFLOW_ROUTES.append(_limits_route)
