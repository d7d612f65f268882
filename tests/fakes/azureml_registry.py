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
and MLflow 3 logged models are newer than the service's published support matrix). `refuse(ws,
"aliases", "stages", "logged-model-create")` makes this workspace answer those routes as a store
without them does: HTTP 404 with MLflow's `ENDPOINT_NOT_FOUND` error, so the replayer's fallbacks
(aliases and stages kept as `replay.*` tags, a clear error for a version that needs a logged model)
run. Only the creation of logged models can be refused: an MLflow 3 client searches logged models
whenever it lists `runs:/RUN/path` artifacts, so a store without that search serves no MLflow 3
client at all.
"""
from __future__ import annotations

import json

from fakes.azureml_control_plane import MLFLOW_ROUTES

FEATURES = {  # feature -> does (method, rest) belong to it
    "aliases": lambda method, rest: rest.startswith("/api/2.0/mlflow/registered-models/alias"),
    "stages": lambda method, rest: rest.startswith("/api/2.0/mlflow/model-versions/transition-stage"),
    "logged-model-create": lambda method, rest: method == "POST" and rest.rstrip("/") == "/api/2.0/mlflow/logged-models",
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
            answer = {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for '{handler.command} {rest}'"}
            handler._send(404, json.dumps(answer).encode())
            return True
    return False


MLFLOW_ROUTES.append(_refused_routes)
