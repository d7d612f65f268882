"""Datastore routes for the AzureML fake (tests/fakes/azureml_control_plane.py), so that azure-ai-ml
1.35.2 uploads local files for real: `datastores.get_default()`, `datastores.get(name)`, the listSecrets
behind them, and with those `Input(path=<local folder>)` in a submitted job, which azure-ai-ml uploads
to https://ACCOUNT.blob.core.windows.net/CONTAINER/LocalUpload/<hash>/<folder> before the job's PUT.

    attach_datastore(ws, storage, account="acct1", container="azureml-blobstore", name="workspaceblobstore",
                     default=True, create=True)    a blob datastore of a FakeWorkspace on a CloudStorage account
                                      (tests/cloud_storage.py: HTTPS Azurite behind the blob proxy);
                                      its listSecrets answers the account key
    datastores(ws)                    name -> Datastore (azure-ai-ml REST model) of a workspace

Routes (under .../workspaces/W):
    GET  /datastores[?isDefault=true]     a page of Datastore (`value`), the default one first
    GET  /datastores/NAME                 one Datastore, credentials without secrets (as the service)
    POST /datastores/NAME/listSecrets     AccountKeyDatastoreSecrets with the account key
Every answer is built from azure-ai-ml's REST models, like the rest of the fake.
"""
from __future__ import annotations

import re

from fakes.azureml_control_plane import ARM_ROUTES, FakeWorkspace, dump

ENDPOINT = "core.windows.net"  # azure-ai-ml builds https://ACCOUNT.blob.core.windows.net from it


def attach_datastore(ws: FakeWorkspace, storage, account: str = "acct1", container: str = "azureml-blobstore",
                     name: str = "workspaceblobstore", default: bool = True, create: bool = True):
    """Add (or replace) a blob datastore on `storage`'s `account`; returns the REST Datastore. Its
    container is created as a workspace's is (`create=False` leaves it missing: a broken datastore)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.ai.ml._restclient.arm_ml_service.models import (
        AccountKeyDatastoreCredentials,
        AzureBlobDatastore,
        Datastore,
        SystemData,
    )

    # As recorded (pipeline_job_download.json): description, tags and properties null; the artifact
    # store's subscriptionId and resourceGroup null too.
    artifacts = name == "workspaceartifactstore"
    props = AzureBlobDatastore(
        credentials=AccountKeyDatastoreCredentials({"credentialsType": "AccountKey"}),
        account_name=account, container_name=container, endpoint=ENDPOINT, protocol="https",
        service_data_access_auth_identity="None",
    )
    for key, value in (("subscriptionId", None if artifacts else ws.subscription), ("resourceGroup", None if artifacts else ws.resource_group),
                       ("description", None), ("tags", None), ("properties", None)):
        props[key] = value
    props["isDefault"] = default  # read-only on the wire: only the service sets it
    found = Datastore(properties=props)
    found["id"] = ws.arm_id("datastores", name)
    found["name"] = name
    found["type"] = "Microsoft.MachineLearningServices/workspaces/datastores"
    # As recorded (pipeline_job_download.json): the workspace made its datastores, so no createdBy.
    found["systemData"] = SystemData(created_at="2024-01-01T00:00:00Z", last_modified_at="2024-01-01T00:00:02Z",
                                     last_modified_by="Sanitized", last_modified_by_type="Application").as_dict()
    stores = datastores(ws)
    if default:
        for other in stores.values():
            other.properties["isDefault"] = False
    stores[name] = found
    keys(ws)[name] = storage.key(account)
    if create:
        try:  # straight to Azurite (path-style, loopback): works whether or not the proxy env is applied
            storage.azurite.service(account).create_container(container)
        except ResourceExistsError:
            pass
    return found


def datastores(ws: FakeWorkspace) -> dict:
    return ws.__dict__.setdefault("_datastores", {})


def keys(ws: FakeWorkspace) -> dict[str, str]:
    return ws.__dict__.setdefault("_datastore_keys", {})


def _route(handler, ws: FakeWorkspace, rest: str, query: dict, body: bytes) -> bool:
    match = re.match(r"^/datastores(?:/([^/]+))?(/listSecrets)?$", rest)
    if not match:
        return False
    name, secrets = match.groups()
    fake, stores = handler.fake, datastores(ws)
    if name is None and handler.command == "GET":
        fake.requests["datastores_list"] += 1
        default_only = (query.get("isDefault") or ["false"])[0].lower() == "true"
        chosen = [d for d in stores.values() if d.properties.get("isDefault") or not default_only]
        chosen.sort(key=lambda d: not d.properties.get("isDefault"))
        handler._send(200, b'{"value": [' + b", ".join(dump(d) for d in chosen) + b"]}")
        return True
    if name is not None and name not in stores:
        handler._error(404, "UserError", f"Datastore {name} not found in workspace {ws.name}.")
        return True
    if secrets and handler.command == "POST":
        from azure.ai.ml._restclient.arm_ml_service.models import AccountKeyDatastoreSecrets

        fake.requests["datastores_secrets"] += 1
        handler._send(200, dump(AccountKeyDatastoreSecrets(key=keys(ws)[name])))
        return True
    if name is not None and not secrets and handler.command == "GET":
        fake.requests["datastores_get"] += 1
        handler._send(200, dump(stores[name]))
        return True
    handler._error(405, "MethodNotAllowed", f"this fake reads datastores and their secrets, not {handler.command} {rest}")
    return True


ARM_ROUTES.append(_route)
