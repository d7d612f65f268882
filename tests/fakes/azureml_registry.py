"""The AzureML fake's model registry: MLflow's registry routes, and a switch to take some away.

What azureml-mlflow 1.62 calls (read from azureml/mlflow/_store/model_registry/model_registry.py):
its `AzureMLflowModelRegistry` is MLflow's own registry `RestStore` with the host
`https://HOST/mlflow/v2.0/subscriptions/S/resourceGroups/R/providers/Microsoft.MachineLearningServices/workspaces/W`
and the workspace credential's bearer token, so every registry call is MLflow's REST route under
that prefix (`/api/2.0/mlflow/registered-models/...`, `/model-versions/...`, `.../alias`,
`/logged-models/...`). The control plane forwards those to its real mlflow server unchanged: the
registry needs no route of its own. The one override is `create_model_version` with a `file://`
source, which uploads the folder through the artifact service first (LocalUpload); the replayer
never registers local files, so that path is not faked.

Whether the AzureML service implements every one of those routes cannot be checked here (aliases
are newer than the service's published support matrix). `refuse(ws, FEATURE, ...)` makes this
workspace answer a feature's routes as a store without it does, so the replayer's fallbacks run:
- "aliases", "stages": HTTP 404 with MLflow's `ENDPOINT_NOT_FOUND` error (what an MLflow server
  without the route answers); aliases and stages are then kept as `replay.*` tags.
- "logged-model-create": HTTP 404 with an EMPTY body, as the real service answers
  `POST /api/2.0/mlflow/logged-models` (Azure/azure-sdk-for-python#44896, 2026-01, azureml-mlflow
  1.60/1.61 with mlflow 3.5-3.8.1: "failed with error code 404 != 200. Response body: ''";
  Azure/azureml-examples PRs #3846/#3868/#3891, 2026-03/04, still work around it). MLflow's client
  reads an empty 404 as ENDPOINT_NOT_FOUND. Only the creation is refused: an MLflow 3 client
  searches logged models whenever it lists `runs:/RUN/path` artifacts, and no report says that
  search fails.
- "traces": HTTP 403 with an empty body on the trace routes, as the service answered
  `POST /api/2.0/mlflow/traces` (Azure/azure-sdk-for-python#40261, 2025-03, open; the answer there:
  "mlflow tracing is not supported in AML yet"). MLflow's client reads it as PERMISSION_DENIED,
  though the same credential writes runs: the replayer must not take it for a refused login.
  OpenTelemetry's `/v1/traces` under the workspace (where MLflow's client sends spans) has no
  report: it answers 404, as a route the service lacks.
The fake does not refuse them by default: the reports are of a given time, and the service may
have gained the routes since; tests that model today's service refuse them explicitly.
"""
from __future__ import annotations

import json

from fakes.azureml_control_plane import MLFLOW_ROUTES

FEATURES = {  # feature -> does (method, rest) belong to it
    "aliases": lambda method, rest: rest.startswith("/api/2.0/mlflow/registered-models/alias"),
    "stages": lambda method, rest: rest.startswith("/api/2.0/mlflow/model-versions/transition-stage"),
    "logged-model-create": lambda method, rest: method == "POST" and rest.rstrip("/") == "/api/2.0/mlflow/logged-models",
    "traces": lambda method, rest: rest.startswith(("/api/2.0/mlflow/traces", "/api/3.0/mlflow/traces", "/v1/traces")),
}
# How the service answers a refused feature: (status, body). See the module docstring for the sources.
ANSWERS = {
    "logged-model-create": (404, b""),
    "traces": (403, b""),
}


def refuse(workspace, *features: str) -> None:
    """This workspace's MLflow endpoint lacks these registry features from now on."""
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown registry features {sorted(unknown)}; known: {sorted(FEATURES)}")
    workspace.mlflow_refused = set(getattr(workspace, "mlflow_refused", set())) | set(features)


def _refused_routes(handler, workspace, rest: str, query: str, body: bytes) -> bool:
    for feature in getattr(workspace, "mlflow_refused", ()):
        if FEATURES[feature](handler.command, rest):
            handler.fake.requests[f"mlflow_refused_{feature}"] += 1
            missing = {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for '{handler.command} {rest}'"}
            status, body = ANSWERS.get(feature, (404, json.dumps(missing).encode()))
            if rest.startswith("/v1/"):  # OpenTelemetry's route: no report of it; a route the service lacks
                status, body = 404, b""
            handler._send(status, body)
            return True
    return False


MLFLOW_ROUTES.append(_refused_routes)
