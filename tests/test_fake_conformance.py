"""The HTTPS fake of Azure ML against real Azure ML answers (tests/recordings/, see its README).

Every call the fake serves that a recording covers is asked of the fake, and the answer's SHAPE is
compared with the recorded one:
- no key Azure does not send (at every level; inside maps whose keys are data, such as `tags`,
  `inputs` or a pipeline's `jobs`, each value is compared with a recorded value of the same kind);
- no missing key that the replayer reads (READS: directly, or through the azure-ai-ml entity it
  builds from the answer); keys nobody reads may be left out, as an SDK model dropping nulls does;
- the same JSON type where both have a value, and null where Azure has null unless the value
  depends on the job (DATA: each with the reason);
- no continuation key on a last page; error bodies {"error": {"code", "message", "details",
  "additionalInfo"}}, and a 404 on a compute with no body at all.
Where the fake still differs on purpose, KNOWN lists it with the reason; the test fails if the
differences found are not exactly those, so a fixed one must leave the list too.

Not covered by any recording (the fake's answer there is our reading of azure-ai-ml's REST models
only): UNRECORDED below, also the "Tested against" table of the README.

The conversation around those answers is checked here too: discovery has the real keys with
`api` as the run history host (azure-ai-ml's WorkspaceDiscoveryUrlKey.API) and every other key on
a host of its own that serves nothing; tokens carry the resource manager's audience for ARM and
run history alike, and the fake refuses any other with ARM's 401.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from fakes import azureml_datastores
from fakes import azureml_seed as seed
from fakes.azureml_control_plane import FakeControlPlane, FakeCredential, FakeWorkspace, make_token

RECORDINGS = Path(__file__).parent / "recordings"
SUB, RG, WS = "2f1e0c4d-0000-4000-8000-00000000c0de", "rg-ml", "ws-fraud"

# Calls the fake serves that no recording holds (tests/recordings/README.md, "Wanted, but no recording found").
UNRECORDED = [
    "GET .../workspaces/W/jobs from azure-ai-ml, a page with nextLink (the shape is azure-powershell's single last page)",
    "GET run history .../runs/R/children, a page with continuationToken",
    "GET/POST run history artifacts: .../artifacts, artifacts/contentinfo, artifacts/batch/metadata",
    "ANY /mlflow/v1.0|v2.0/... (forwarded to a real mlflow server)",
    "GET .../jobs/NAME of a sweep trial or an AutoML child run",
    "PUT .../components/NAME/versions/V (anonymous components of a submission)",
    "GET .../computes/NAME that exists, GET .../environments/... (tests/fakes/azureml_computes.py, azureml_assets.py)",
    "429 / 503 with Retry-After",
]

# What the replayer reads of each answer (paths: `/` for keys, `{*}` for any key of a map, `[]` for
# array items). A key listed here must not be missing from the fake's answer when Azure sends it.
JOB = {"/id", "/name", "/type", "/systemData/createdAt", "/systemData/createdBy", "/properties/jobType", "/properties/status",
       "/properties/displayName", "/properties/description", "/properties/experimentName", "/properties/tags",
       "/properties/properties", "/properties/inputs", "/properties/outputs", "/properties/computeId", "/properties/isArchived",
       "/properties/outputs/{*}/uri", "/properties/outputs/{*}/mode", "/properties/outputs/{*}/jobOutputType",
       "/properties/inputs/{*}/uri", "/properties/inputs/{*}/mode", "/properties/inputs/{*}/jobInputType"}
RUN = {"/runId", "/name", "/displayName", "/parentRunId", "/rootRunId", "/experimentId", "/status", "/createdUtc",
       "/startTimeUtc", "/endTimeUtc", "/createdBy", "/createdBy/userName", "/description", "/runType", "/properties",
       "/tags", "/target", "/compute", "/compute/target", "/runDefinition", "/hidden", "/inputs", "/outputs", "/error"}
READS = {
    "workspace": {"/id", "/name", "/location", "/properties/discoveryUrl", "/properties/mlFlowTrackingUri",
                  "/properties/workspaceId", "/properties/tenantId", "/properties/storageAccount"},
    "discovery": {"/api"},
    "job": JOB,
    "pipeline": JOB | {"/properties/jobs"},
    "command": JOB | {"/properties/command", "/properties/environmentId"},
    "sweep": JOB | {"/properties/trial", "/properties/trial/command", "/properties/trial/environmentId"},
    "automl": JOB | {"/properties/taskDetails", "/properties/taskDetails/taskType"},
    "child job": {"/id", "/name", "/type"},
    "children": {"/value"} | {f"/value[]{path}" for path in RUN},
    "run": RUN,
    "component": {"/id", "/name", "/properties/componentSpec", "/properties/componentSpec/jobs",
                  "/properties/componentSpec/inputs", "/properties/componentSpec/outputs"},
    "datastores": {"/value", "/value[]/name", "/value[]/properties/isDefault", "/value[]/properties/accountName",
                   "/value[]/properties/containerName", "/value[]/properties/endpoint", "/value[]/properties/datastoreType",
                   "/value[]/properties/credentials/credentialsType"},
    "datastore": {"/name", "/properties/accountName", "/properties/containerName", "/properties/endpoint",
                  "/properties/datastoreType", "/properties/credentials/credentialsType"},
    "error": {"/error", "/error/code", "/error/message", "/error/details", "/error/additionalInfo"},
}
# Maps whose keys are data (names of tags, inputs, steps): their values are compared with a recorded
# value of the same kind (jobInputType, jobOutputType, ...), their keys not at all.
ARM_MAPS = ("/properties/properties", "/properties/tags", "/properties/inputs", "/properties/outputs", "/properties/jobs",
            "/properties/services", "/properties/searchSpace", "/properties/componentSpec/inputs",
            "/properties/componentSpec/outputs", "/properties/componentSpec/jobs", "/value[]/properties/properties",
            "/value[]/properties/tags", "/value[]/properties/inputs", "/value[]/properties/outputs", "/value[]/properties/services")
RUN_MAPS = ("/properties", "/tags", "/inputs", "/outputs", "/value[]/properties", "/value[]/tags", "/value[]/inputs", "/value[]/outputs")
# Maps whose values are free-form objects (what the SDK sent for a pipeline step): only their type is compared.
OPAQUE = ("/properties/jobs/{*}", "/properties/componentSpec/jobs/{*}", "/properties/searchSpace/{*}")
# Null in the recording, a value in the fake, and rightly so: it depends on the job.
DATA = {
    "/properties/description": "null when the job has no description (the seeded jobs have one)",
    "/properties/inputs": "null for a pipeline without inputs (fact 7); the seeded pipeline has inputs",
    "/properties/environmentVariables": "{} or null as the job was sent (fact 16)",
    "/compute": "null on a reused step (fact 4); the seeded steps ran",
    "/value[]/compute": "null on a reused step (fact 4); the seeded steps ran",
    "/error": "an object on a failed run (fact 11), null on others",
    "/value[]/error": "an object on a failed step (fact 11), null on others; the seeded failed step has none",
}
# Differences the fake keeps on purpose, with why. The test asserts the set found is exactly this.
KNOWN = {
    ("children", "/value[]/runDefinition: object where Azure has null"):
        "the seed gives pipeline steps a runDefinition (their command and environment), which the AzureML source "
        "reads; real steps have `runDefinition: null` (recordings fact 1): the source must read the step's component",
    ("run", "/runDefinition: object where Azure has null"): "as for children",
}


# -- the comparison ----------------------------------------------------------------------------

DISCRIMINATORS = ("jobType", "jobInputType", "jobOutputType", "job_input_type", "type", "jobServiceType")


def kind(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null", int: "number", float: "number"}[type(value)]


UNLIKE = object()  # no recorded value of this kind: nothing to compare with


def like(candidates: list, value):
    """The recorded value to compare `value` with: one of the same discriminator (jobOutputType, ...),
    UNLIKE when the recording has none of that kind (a literal input, an AutoML job in the list)."""
    if isinstance(value, dict):
        for key in DISCRIMINATORS:
            if key in value:
                same = [c for c in candidates if isinstance(c, dict) and c.get(key) == value[key]]
                return same[0] if same else UNLIKE
    return candidates[0] if candidates else None


def other_kind(fake, real) -> bool:
    """Two objects of different kinds (a pipeline component's spec against a command component's)."""
    return isinstance(fake, dict) and isinstance(real, dict) and any(
        key in fake and key in real and fake[key] != real[key] for key in DISCRIMINATORS)


def shape_differences(fake, real, reads: set[str], path: str = "", maps: tuple = ()) -> list[str]:
    """Where the fake's answer has another shape than the recorded one (module docstring)."""
    if real is UNLIKE or other_kind(fake, real) or any(re.fullmatch(p.replace("{*}", r"\{[^/]*\}"), path) for p in OPAQUE):
        return [] if real is UNLIKE or kind(fake) == kind(real) else [f"{path}: {kind(fake)} where Azure has {kind(real)}"]
    if (real is None) != (fake is None) and path in DATA:
        return []  # null or not as the job is
    if real is None and fake is not None:
        return [f"{path}: {kind(fake)} where Azure has null"]
    if kind(fake) != kind(real):
        return [f"{path}: {kind(fake)} where Azure has {kind(real)}"] if fake is not None or path in reads else []
    if isinstance(real, list):
        return [d for item in fake for d in shape_differences(item, like(real, item), reads, f"{path}[]", maps)] if real else []
    if not isinstance(real, dict):
        return []
    if path in maps:
        found = []
        for key, value in fake.items():
            if real:
                found += shape_differences(value, like(list(real.values()), value), reads, f"{path}/{{*}}", maps)
        return found
    found = [f"{path}/{key}: sent, Azure has no such key" for key in sorted(set(fake) - set(real))]
    found += [f"{path}/{key}: missing, and read" for key in sorted(set(real) - set(fake)) if f"{path}/{key}" in reads]
    for key in sorted(set(fake) & set(real)):
        found += shape_differences(fake[key], real[key], reads, f"{path}/{key}", maps)
    return found


def recorded(file: str, method: str, route: str) -> dict:
    """The first entry of a recording whose method and URI path match (hosts and ids differ: fact 21)."""
    for entry in json.loads((RECORDINGS / file).read_text())["entries"]:
        if entry["RequestMethod"] == method and re.search(route, entry["RequestUri"].split("?")[0]):
            return entry
    raise AssertionError(f"no {method} {route} in {file}")


# -- the fake, seeded ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    base = tmp_path_factory.mktemp("conformance")
    specs, builders = seed.build_specs()
    # No MLflow call is made here: the MLflow routes are UNRECORDED.
    with FakeControlPlane(base / "fake", "http://127.0.0.1:9") as plane:
        ws = plane.add(FakeWorkspace(SUB, RG, WS))
        seed.install(ws, specs, builders)
        storage = SimpleNamespace(key=lambda account: "a2V5LW5vdC11c2Vk")  # only listSecrets reads it
        azureml_datastores.attach_datastore(ws, storage, create=False)
        azureml_datastores.attach_datastore(ws, storage, container="azureml", name="workspaceartifactstore", default=False, create=False)
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would win over `verify`
        session.verify = str(plane.ca_file)
        session.headers["Authorization"] = f"Bearer {make_token()}"
        yield SimpleNamespace(plane=plane, ws=ws, session=session)


def ask(fake, method: str, path: str, body: dict | None = None) -> requests.Response:
    return fake.session.request(method, fake.plane.url + path, json=body, timeout=30)


def root_of(fake, job_type: str) -> str:
    return next(name for name, job in fake.ws.roots.items() if job["properties"]["jobType"] == job_type)


def pipeline_with_children(fake) -> str:
    return next(name for name in fake.ws.children if name in fake.ws.roots and fake.ws.roots[name]["properties"]["jobType"] == "Pipeline")


def calls(fake) -> list[tuple[str, str, str, str, dict]]:
    """(name, reads, method, path on the fake, recorded entry) for every call a recording covers."""
    ws, scope = fake.ws, fake.ws.scope
    parent = pipeline_with_children(fake)
    step = fake.ws.children[parent][0]
    component = next(iter(ws.components))
    history = f"/history/v1.0{scope}/runs"
    last_page = (len(ws.roots) - len(ws.archived) - 1) // fake.plane.list_page * fake.plane.list_page
    return [
        ("workspace", "workspace", "GET", scope, recorded("pipeline_get_child_run.json", "GET", r"/workspaces/00000$")),
        ("discovery", "discovery", "GET", "/discovery", recorded("pipeline_get_child_run.json", "GET", r"/discovery$")),
        ("pipeline job", "pipeline", "GET", f"{scope}/jobs/{parent}", recorded("pipeline_get_child_run.json", "GET", r"/jobs/test_\d+$")),
        ("command job", "command", "GET", f"{scope}/jobs/{root_of(fake, 'Command')}", recorded("command_job_list_get.json", "GET", r"/jobs/commandjob01$")),
        ("command job (2024-01-01-preview)", "command", "GET", f"{scope}/jobs/{root_of(fake, 'Command')}", recorded("command_job_get.json", "GET", r"/jobs/")),
        ("sweep job", "sweep", "GET", f"{scope}/jobs/{root_of(fake, 'Sweep')}", recorded("sweep_job_get.json", "GET", r"/jobs/")),
        ("automl job", "automl", "GET", f"{scope}/jobs/{root_of(fake, 'AutoML')}", recorded("automl_job_get.json", "GET", r"/jobs/")),
        ("jobs list, last page", "job", "GET", f"{scope}/jobs?$skip={last_page}", recorded("command_job_list_get.json", "GET", r"/jobs$")),
        ("child job", "child job", "GET", f"{scope}/jobs/{step}", recorded("dsl_get_child_job.json", "GET", r"/jobs/[0-9a-f-]{36}$")),
        ("children", "children", "GET", f"{history}/{parent}/children", recorded("pipeline_get_child_run.json", "GET", r"/children$")),
        ("run", "run", "GET", f"{history}/{step}", recorded("dsl_get_child_job.json", "GET", r"/runs/[0-9a-f-]{36}$")),
        ("component", "component", "GET", f"{scope}/components/{component[0]}/versions/{component[1]}",
         recorded("component_get.json", "GET", r"/components/")),
        ("datastores", "datastores", "GET", f"{scope}/datastores", recorded("pipeline_job_download.json", "GET", r"/datastores$")),
        ("datastore", "datastore", "GET", f"{scope}/datastores/workspaceartifactstore",
         recorded("pipeline_job_download.json", "GET", r"/datastores/workspaceartifactstore$")),
    ]


def test_every_recorded_call_has_the_recorded_shape(fake):
    found = {}
    for name, reads, method, path, entry in calls(fake):
        answer = ask(fake, method, path)
        assert answer.status_code == entry["StatusCode"], (name, answer.status_code, answer.text[:300])
        real = entry["ResponseBody"]
        # Same kind of object at the top, so the comparison below is not skipped as "another kind".
        assert not other_kind(answer.json(), real) and not other_kind(answer.json().get("properties"), real.get("properties")), name
        maps = RUN_MAPS if reads in ("children", "run") else ARM_MAPS
        for difference in shape_differences(answer.json(), real, READS[reads], maps=maps):
            found[(reads, difference)] = name
    unexpected = {key: name for key, name in found.items() if key not in KNOWN}
    assert not unexpected, "\n".join(f"{name}: {difference}" for (_, difference), name in unexpected.items())
    assert set(KNOWN) <= set(found), f"fixed, so leave KNOWN: {sorted(set(KNOWN) - set(found))}"


def test_the_comparison_catches_each_kind_of_difference():
    """The checker itself: an extra key, a missing key that is read, a type, a null, a last-page token."""
    real = {"value": [{"runId": "a", "runDefinition": None, "tags": {"x": "1"}, "hidden": False}]}
    reads = {"/value", "/value[]/runId", "/value[]/hidden"}
    assert shape_differences({"value": [{"runId": "b", "runDefinition": None, "tags": {"y": "2"}, "hidden": True}]}, real, reads, maps=RUN_MAPS) == []
    assert shape_differences({"value": [{"runId": "b", "runDefinition": None, "tags": {}, "hidden": False}], "continuationToken": None},
                             real, reads, maps=RUN_MAPS) == ["/continuationToken: sent, Azure has no such key"]
    assert shape_differences({"value": [{"runDefinition": None, "tags": {}, "hidden": False}]}, real, reads, maps=RUN_MAPS) == ["/value[]/runId: missing, and read"]
    assert shape_differences({"value": [{"runId": "b", "tags": {}}]}, real, reads, maps=RUN_MAPS) == ["/value[]/hidden: missing, and read"]
    assert shape_differences({"value": [{"runId": 1, "runDefinition": {}, "tags": {"y": 2}, "hidden": False}]}, real, reads, maps=RUN_MAPS) == [
        "/value[]/runDefinition: object where Azure has null", "/value[]/runId: number where Azure has string", "/value[]/tags/{*}: number where Azure has string"]


def test_a_last_page_of_children_has_no_continuation_key_and_a_middle_page_has_one(fake):
    parent = max(fake.ws.children, key=lambda name: len(fake.ws.children[name]))
    kids = fake.ws.children[parent]
    assert len(kids) > fake.plane.children_page  # two pages at least
    path = f"/history/v1.0{fake.ws.scope}/runs/{parent}/children"
    first = ask(fake, "GET", path).json()
    assert set(first) == {"value", "continuationToken"} and len(first["value"]) == fake.plane.children_page
    token, pages = first["continuationToken"], [first]
    while token:
        pages.append(ask(fake, "GET", f"{path}?$continuationtoken={token}").json())
        token = pages[-1].get("continuationToken")
    assert set(pages[-1]) == {"value"}  # not `"continuationToken": null`
    assert [run["runId"] for page in pages for run in page["value"]] == kids


def test_error_bodies_have_azure_s_shape_and_a_missing_compute_has_no_body(fake):
    real = recorded("mfe_error_not_found.json", "PUT", r"/jobs/")
    answer = ask(fake, "GET", f"{fake.ws.scope}/jobs/no-such-job")
    assert answer.status_code == 404
    assert shape_differences(answer.json(), real["ResponseBody"], READS["error"]) == []
    assert answer.headers["x-ms-response-type"] == real["ResponseHeaders"]["x-ms-response-type"] == "error"
    empty = recorded("arm_404_empty_body.json", "GET", r"/computes/")
    missing = ask(fake, "GET", f"{fake.ws.scope}/computes/cpu-cluster-non-existent")
    assert (missing.status_code, missing.content, empty["StatusCode"], empty["ResponseBody"]) == (404, b"", 404, None)


# -- discovery and tokens -----------------------------------------------------------------------


def test_discovery_has_the_real_keys_and_only_the_api_host_serves_run_history(fake):
    real = recorded("pipeline_get_child_run.json", "GET", r"/discovery$")["ResponseBody"]
    answer = fake.session.get(fake.plane.url + "/discovery", headers={"Authorization": ""}, timeout=30)  # no token needed
    assert answer.status_code == 200 and sorted(answer.json()) == sorted(real)
    hosts = answer.json()
    assert hosts["api"] == fake.plane.url
    assert len({hosts[key] for key in ("catalog", "history", "modelmanagement", "pipelines", "studio", "api")}) == 6
    assert hosts["history"] == hosts["experimentation"] == hosts["hyperdrive"] == hosts["labeling"]  # as in the real answer
    parent = pipeline_with_children(fake)
    route = f"/history/v1.0{fake.ws.scope}/runs/{parent}/children"
    assert ask(fake, "GET", route).status_code == 200
    wrong = fake.session.get(hosts["history"] + route, timeout=30)
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "NotFound"


def test_the_source_lists_children_on_the_api_host_with_the_resource_manager_token(fake, monkeypatch):
    from runner.azureml.source import AzuremlSource
    from runner.core.filters import Filters

    for key, value in fake.plane.environ().items():
        monkeypatch.setenv(key, value)
    credential = FakeCredential()
    source = AzuremlSource(f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}", Filters(), credential=credential)
    before = dict(fake.plane.requests)
    parent = pipeline_with_children(fake)
    assert [run.run_id for run in source._children(parent)] == fake.ws.children[parent]
    asked = {key: count - before.get(key, 0) for key, count in fake.plane.requests.items() if count != before.get(key, 0)}
    assert asked.get("history_children", 0) >= 1 and not [key for key in asked if key.startswith(("elsewhere", "wrong_audience"))], asked
    scopes = {scope for call in credential.scopes for scope in call}
    assert scopes == {"https://management.azure.com/.default"}, scopes  # ARM and run history alike


@pytest.mark.parametrize("family, path", [("arm", "{scope}/jobs"), ("history", "/history/v1.0{scope}/runs/{parent}/children")])
def test_a_token_for_another_audience_is_refused_with_arm_s_401(fake, family, path):
    route = path.format(scope=fake.ws.scope, parent=pipeline_with_children(fake))
    for audience in ("https://ml.azure.com", "https://storage.azure.com"):
        answer = fake.session.get(fake.plane.url + route, headers={"Authorization": f"Bearer {make_token(aud=audience)}"}, timeout=30)
        assert answer.status_code == 401, (family, audience)
        error = answer.json()["error"]
        assert error["code"] == "InvalidAuthenticationTokenAudience" and audience in error["message"]
        assert set(error) == {"code", "message", "details", "additionalInfo"}
        assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    for audience in ("https://management.azure.com/", "https://management.core.windows.net/"):
        answer = fake.session.get(fake.plane.url + route, headers={"Authorization": f"Bearer {make_token(aud=audience)}"}, timeout=30)
        assert answer.status_code == 200, (family, audience, answer.text[:300])


@pytest.mark.parametrize("cloud, scope", [
    ("AzureCloud", "https://management.azure.com/.default"),
    ("AzureChinaCloud", "https://management.chinacloudapi.cn/.default"),
    ("AzureUSGovernment", "https://management.usgovcloudapi.net/.default"),
])
def test_run_history_tokens_use_the_cloud_s_resource_manager_scope(cloud, scope):
    from runner.azureml.credentials import management_scope

    assert management_scope(cloud) == scope
