"""Compute clusters of a fake workspace: what `MLClient.compute.get(NAME)` reads.

    GET .../workspaces/W/computes/NAME   an AmlCompute (azure-ai-ml's REST `ComputeResource`), or
                                         404 with no body, as recorded, for a name the workspace lacks
    GET .../workspaces/W/computes        the workspace's clusters (one page)

Add a cluster with `add_cluster(ws, "cpu-cluster")`; clusters live in `CLUSTERS[ws.scope]`.
"""
from __future__ import annotations

import json
import re

from fakes.azureml_control_plane import ARM_ROUTES, FakeWorkspace, dump

CLUSTERS: dict[str, dict[str, object]] = {}  # workspace scope -> cluster name -> ComputeResource


def add_cluster(ws: FakeWorkspace, name: str, vm_size: str = "STANDARD_DS3_V2", max_nodes: int = 4):
    """An AmlCompute cluster, provisioned and scaled to zero, as the service describes one."""
    from azure.ai.ml._restclient.arm_ml_service.models import AmlCompute, AmlComputeProperties, ComputeResource, ScaleSettings

    cluster = ComputeResource(
        {
            "id": ws.arm_id("computes", name),
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/computes",
            "location": ws.location,
            "properties": AmlCompute(
                compute_location=ws.location,
                provisioning_state="Succeeded",
                properties=AmlComputeProperties(
                    os_type="Linux", vm_size=vm_size, vm_priority="Dedicated", allocation_state="Steady",
                    scale_settings=ScaleSettings(max_node_count=max_nodes, min_node_count=0, node_idle_time_before_scale_down="PT120S"),
                ),
            ).as_dict(),
        }
    )
    CLUSTERS.setdefault(ws.scope, {})[name] = cluster
    return cluster


def computes_route(handler, ws: FakeWorkspace, rest: str, query: dict, body: bytes) -> bool:
    if handler.command != "GET" or not rest.startswith("/computes"):
        return False
    clusters = CLUSTERS.get(ws.scope, {})
    if rest == "/computes":
        handler.fake.requests["computes_list"] += 1
        handler._send(200, json.dumps({"value": [json.loads(dump(c)) for c in clusters.values()]}).encode())
        return True
    match = re.match(r"^/computes/([^/]+)$", rest)
    if not match:
        return False
    handler.fake.requests["compute_get"] += 1
    name = match.group(1)
    if name not in clusters:
        # As recorded (tests/recordings/arm_404_empty_body.json): 404, Content-Length 0, no error body.
        handler._send(404, b"", headers={"x-ms-response-type": "standard"})
        return True
    handler._send(200, dump(clusters[name]))
    return True


ARM_ROUTES.append(computes_route)
