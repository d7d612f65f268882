"""Schedule and environment routes for the AzureML fake (tests/fakes/azureml_control_plane.py): what
azure-ai-ml 1.35.2 calls for `az ml schedule create -f schedule.yml` (`ml.schedules.begin_create_or_update`),
`az ml schedule show` (`ml.schedules.get`), `az ml environment create -f environments/replayer.yml`
(`ml.environments.create_or_update`: the build context goes to the default datastore first, through
tests/fakes/azureml_datastores.py) and `az ml environment show` (`ml.environments.get`).

    schedules(ws)                     name -> the JSON body of the schedule's PUT, as sent
    environments(ws)                  (name, version) -> the JSON body of the environment version's PUT, as sent

Routes (under .../workspaces/W):
    PUT  /schedules/NAME      stored as sent; answered 200 with the Schedule, provisioning Succeeded
                              (the SDK's ARM poller then finishes on that first answer)
    GET  /schedules/NAME      the stored Schedule, 404 when there is none
    PUT  /environments/NAME/versions/V   stored as sent; answered 201 with the EnvironmentVersion, provisioning
                              Succeeded (the service then builds the image; this fake builds nothing)
    GET  /environments/NAME/versions/V   the stored EnvironmentVersion, 404 when there is none

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


def environments(ws: FakeWorkspace) -> dict[tuple[str, str], dict]:
    return ws.__dict__.setdefault("_environments", {})


def _environment(ws: FakeWorkspace, name: str, version: str, body: dict):
    from azure.ai.ml._restclient.arm_ml_service.models import EnvironmentVersion, SystemData

    found = EnvironmentVersion(json.loads(json.dumps(body)))
    found["id"], found["name"] = ws.arm_id("environments", f"{name}/versions/{version}"), version
    found["type"] = "Microsoft.MachineLearningServices/workspaces/environments/versions"
    found["systemData"] = SystemData(created_by="ada@contoso.test", created_by_type="User", created_at=datetime.now(timezone.utc)).as_dict()
    found.properties["provisioningState"] = "Succeeded"
    found.properties.setdefault("environmentType", "UserCreated")
    return found


def _environment_route(handler, ws: FakeWorkspace, rest: str, query: dict, body: bytes) -> bool:
    match = re.match(r"^/environments/([^/]+)/versions/([^/]+)$", rest)
    if not match:
        return False
    key = match.groups()
    if handler.command == "PUT":
        handler.fake.requests["environment_put"] += 1
        created = key not in environments(ws)
        environments(ws)[key] = json.loads(body or b"{}")
        handler._send(201 if created else 200, dump(_environment(ws, *key, environments(ws)[key])))
        return True
    if handler.command == "GET":
        handler.fake.requests["environment_get"] += 1
        if key not in environments(ws):
            handler._error(404, "UserError", f"Environment {key[0]}:{key[1]} not found.")
        else:
            handler._send(200, dump(_environment(ws, *key, environments(ws)[key])))
        return True
    return False


ARM_ROUTES.append(_environment_route)
