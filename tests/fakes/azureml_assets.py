"""Schedule routes for the AzureML fake (tests/fakes/azureml_control_plane.py): what azure-ai-ml 1.35.2
calls for `az ml schedule create -f schedule.yml` (`ml.schedules.begin_create_or_update`) and
`az ml schedule show` (`ml.schedules.get`).

    schedules(ws)                     name -> the JSON body of the schedule's PUT, as sent

Routes (under .../workspaces/W):
    PUT  /schedules/NAME      stored as sent; answered 200 with the Schedule, provisioning Succeeded
                              (the SDK's ARM poller then finishes on that first answer)
    GET  /schedules/NAME      the stored Schedule, 404 when there is none

The job a schedule creates is inside its body (`properties.action.jobDefinition`), its components
registered before the PUT by the existing component route. Answers are azure-ai-ml's REST models.
(Submitting migrate.yml itself needs no route beyond the fake's own: the SDK names the environment
`azureml:replayer:<version>` and the compute by ARM id without reading either.)
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from fakes.azureml_control_plane import ARM_ROUTES, FakeWorkspace, dump


def schedules(ws: FakeWorkspace) -> dict[str, dict]:
    return ws.__dict__.setdefault("_schedules", {})


def _schedule(ws: FakeWorkspace, name: str, body: dict):
    from azure.ai.ml._restclient.arm_ml_service.models import Schedule, SystemData

    found = Schedule(json.loads(json.dumps(body)))
    found["id"], found["name"] = ws.arm_id("schedules", name), name
    found["type"] = "Microsoft.MachineLearningServices/workspaces/schedules"
    found["systemData"] = SystemData(created_by="ada@contoso.test", created_by_type="User", created_at=datetime.now(timezone.utc)).as_dict()
    found.properties["provisioningState"] = "Succeeded"
    return found


def _route(handler, ws: FakeWorkspace, rest: str, query: dict, body: bytes) -> bool:
    match = re.match(r"^/schedules/([^/]+)$", rest)
    if not match:
        return False
    name = match.group(1)
    if handler.command == "PUT":
        handler.fake.requests["schedule_put"] += 1
        schedules(ws)[name] = json.loads(body or b"{}")
        handler._send(200, dump(_schedule(ws, name, schedules(ws)[name])))
        return True
    if handler.command == "GET":
        handler.fake.requests["schedule_get"] += 1
        if name not in schedules(ws):
            handler._error(404, "UserError", f"Schedule {name} not found.")
        else:
            handler._send(200, dump(_schedule(ws, name, schedules(ws)[name])))
        return True
    return False


ARM_ROUTES.append(_route)
