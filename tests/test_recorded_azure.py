"""The AzureML source against real recorded Azure ML answers (tests/recordings, replayed by fakes/recorded.py).

Every field the source writes into a JobRecord is checked against the recorded body it came from.

Calls the source makes that no recording holds (tests/recordings/README.md, "Wanted, but no recording
found"), answered here as stated, never with invented content:
- the jobs LIST from azure-ai-ml: a page `{"value": [...]}` of the recorded job GET answers (the
  shape of azure-powershell's recorded list, command_job_list_get.json);
- run history children of the sweep and the AutoML job (no trials were recorded): `{"value": []}`,
  the recorded children shape;
- the step components (`components/azureml_anonymous/versions/<guid>`): the recorded component GET
  of another component (component_get.json), the only component answer recorded;
- run history `runs/<root>` (no root's run was recorded): 404, as for a run it does not know;
- MLflow (`/mlflow/v1.0|v2.0/...`): a real `mlflow server` holding the recorded experiment names and
  no runs, so every record's params, metrics and MLflow tags are empty and its times come from Azure.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest

from fakes import recorded
from fakes.azureml_control_plane import FakeCredential
from runner.azureml.source import AzuremlSource
from runner.core.filters import Filters
from servers import MlflowServer

URI = "azureml://subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/00000/workspaces/00000"
STATUS = {"Completed": "FINISHED", "Failed": "FAILED", "Running": "RUNNING", "Preparing": "SCHEDULED", "NotStarted": "SCHEDULED", "Starting": "SCHEDULED"}
KIND = {"Pipeline": "pipeline", "Sweep": "sweep", "AutoML": "automl", "Command": "command"}
MODE = {"ReadOnlyMount": "ro_mount", "ReadWriteMount": "rw_mount"}  # azure-ai-ml's spelling of the REST modes
SYSTEM_TAGS = ("azureml.nodeid", "azureml.pipeline", "azureml.isreused", "azureml.reusedrunid")


def last(name: str, suffix: str) -> dict:
    """The last recorded answer of a file whose URI path ends with `suffix` (a job's settled state)."""
    return [e for e in recorded.load(name) if recorded.route(e["RequestUri"]).endswith(suffix)][-1]


def entries(name: str, *suffixes: str) -> list[dict]:
    return [last(name, s) for s in suffixes]


PIPELINE = "test_680454434153"
SWEEP, AUTOML, COMMAND, COMMAND_DONE = "test_910316408761", "000000000000000000000", "test_756573810826", "commandjob01"
DSL = "000000000000000000000"


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory):
    from mlflow import MlflowClient

    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    client = MlflowClient(server.uri)
    for name in ("azure-ai-ml", "mfe-test1-dataset", "jobexperiment", "DPv2-classification", "dsl_pipeline_e2e"):
        client.create_experiment(name)
    yield server
    server.stop()


def jobs_2026() -> list[dict]:
    """The settled MFE answers of the 2026/2024 recordings: pipeline, sweep, AutoML, two command jobs."""
    return [
        last("pipeline_get_child_run.json", f"/jobs/{PIPELINE}")["ResponseBody"],
        last("sweep_job_get.json", f"/jobs/{SWEEP}")["ResponseBody"],
        last("automl_job_get.json", f"/jobs/{AUTOML}")["ResponseBody"],
        last("command_job_get.json", f"/jobs/{COMMAND}")["ResponseBody"],
        last("command_job_list_get.json", f"/jobs/{COMMAND_DONE}")["ResponseBody"],
    ]


def scenario_2026(tmp_path, mlflow) -> recorded.RecordedAzure:
    azure = recorded.RecordedAzure(tmp_path / "recorded", recorded.load("pipeline_get_child_run.json"), mlflow.uri)
    component = last("component_get.json", "/versions/0.0.1")["ResponseBody"]
    azure.stub("GET", "/WS/jobs", 200, {"value": jobs_2026()})
    for name in (SWEEP, AUTOML):
        azure.stub("GET", f"/history/v1.0/WS/runs/{name}/children", 200, {"value": []})
    for guid in ("3c50b616-4123-4df9-b4b0-86b56bc64321", "dabe3060-3253-43ce-83f9-f2ed0ee635b3"):
        azure.stub("GET", f"/WS/components/azureml_anonymous/versions/{guid}", 200, component)
    for name in (PIPELINE, SWEEP, AUTOML, COMMAND, COMMAND_DONE):
        azure.stub("GET", f"/history/v1.0/WS/runs/{name}", 404, {"error": {"code": "UserError", "message": f"Run {name} was not found"}})
    return azure


def scenario_dsl(tmp_path, mlflow) -> recorded.RecordedAzure:
    records = recorded.load("dsl_get_child_job.json")
    azure = recorded.RecordedAzure(tmp_path / "recorded-dsl", records, mlflow.uri)
    azure.stub("GET", "/WS/jobs", 200, {"value": [last("dsl_get_child_job.json", f"/jobs/{DSL}")["ResponseBody"]]})
    azure.stub("GET", "/WS/components/azureml_anonymous/versions/7587a6fa-b307-4236-bdba-cc9488c8e2b3", 200,
               last("component_get.json", "/versions/0.0.1")["ResponseBody"])
    azure.stub("GET", f"/history/v1.0/WS/runs/{DSL}", 404, {"error": {"code": "UserError", "message": f"Run {DSL} was not found"}})
    return azure


def extract(azure: recorded.RecordedAzure, monkeypatch, **filters):
    for key, value in azure.environ().items():
        monkeypatch.setenv(key, value)
    source = AzuremlSource(URI, Filters.build(**filters), credential=FakeCredential(), parallel=2)
    return source, list(source.jobs())


# -- what each field must be, read from the recorded bodies --------------------------------------


def utc_ms(text: str | None) -> int | None:
    """Epoch ms of a recorded time ("2026-02-27T20:29:54.8599906+00:00", or "2024-07-24 08:48:48", UTC)."""
    if not text:
        return None
    whole, _, rest = text.replace(" ", "T").partition(".")
    fraction = rest[: len(rest) - len(rest.lstrip("0123456789"))]
    moment = datetime.fromisoformat(whole).replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000) + int((fraction + "000")[:3])


def registered(arm_id: str) -> str:
    """`azureml:NAME:VERSION` of a workspace environment's ARM id (the form the record keeps)."""
    parts = arm_id.split("/")
    return f"azureml:{parts[-3]}:{parts[-1]}"


def io(value: dict) -> dict:
    kind = value.get("jobInputType") or value.get("jobOutputType") or value.get("job_input_type") or value.get("type")
    literal = value.get("value")
    if isinstance(literal, str) and literal.startswith("${{"):
        return {"binding": literal}
    if kind == "literal":
        return {"type": "literal", "value": literal}
    found = {"type": kind, "path": value.get("uri"), "mode": MODE.get(value.get("mode"))}
    return {k: v for k, v in found.items() if v}


def azure_split(tags: dict, properties: dict) -> tuple[dict, dict]:
    """(user tags, properties without nulls + system tags as original_system.<name>): the record's choice."""
    system = {k: v for k, v in tags.items() if k.startswith("_aml_system_") or k in SYSTEM_TAGS}
    props = {k: v for k, v in properties.items() if v is not None}
    return {k: v for k, v in tags.items() if k not in system}, {**props, **{f"original_system.{k}": v for k, v in system.items()}}


def expected_root(body: dict, history: dict | None = None) -> dict:
    p = body["properties"]
    props = p.get("properties") or {}
    tags, properties = azure_split(p.get("tags") or {}, props)
    stages = json.loads(props["azureml.pipelines.stages"])["Execution"] if "azureml.pipelines.stages" in props else {}
    start = utc_ms(stages.get("StartTime") or props.get("StartTimeUtc")) or utc_ms((history or {}).get("startTimeUtc"))
    end = utc_ms(stages.get("EndTime") or props.get("EndTimeUtc")) or utc_ms((history or {}).get("endTimeUtc"))
    trial = p.get("trial") or {}
    environment = p.get("environmentId") or trial.get("environmentId") or ""
    inputs = {k: io(v) for k, v in (p.get("inputs") or {}).items()}
    if p["jobType"] == "AutoML":
        # azure-ai-ml's AutoML entity keeps the training data's type and path, not its mode.
        inputs["training_data"] = {k: v for k, v in io(p["taskDetails"]["trainingData"]).items() if k != "mode"}
    return {
        "source_id": body["name"], "experiment": p["experimentName"], "name": p["displayName"], "kind": KIND[p["jobType"]],
        "status": STATUS[p["status"]], "source_status": p["status"], "start_time": start, "end_time": end,
        "parent_id": None, "root_id": body["name"], "depth": 0, "step_name": "", "lifecycle_stage": "active", "user_id": "",
        "params": {}, "latest_metrics": {}, "tags": tags, "properties": properties, "description": p["description"] or "",
        "created_by": body["systemData"]["createdBy"], "created_time": utc_ms(body["systemData"]["createdAt"]),
        "compute": p["computeId"].rsplit("/", 1)[-1],
        "environment": registered(environment) if "/environments/" in environment else environment,
        "command": p.get("command") or trial.get("command") or "",
        "inputs": inputs, "outputs": {k: io(v) for k, v in (p.get("outputs") or {}).items()},
        "error": ((history or {}).get("error") or {}).get("error", {}).get("message", "")[:3000] if p["status"] == "Failed" else "",
        "datasets": [],  # dataset inputs come from MLflow's run (none here: no recorded MLflow answer)
        "model_inputs": [],  # a run that evaluated a logged model: from MLflow's run too (Azure ML holds no logged models)
    }


def expected_step(child: dict, root: dict, component: dict) -> dict:
    node = root["properties"]["jobs"][child["displayName"]]
    tags, properties = azure_split(child["tags"], child["properties"])
    spec = component["properties"]["componentSpec"]
    return {
        "source_id": child["runId"], "experiment": root["properties"]["experimentName"], "name": child["displayName"],
        "kind": "command", "status": STATUS[child["status"]], "source_status": child["status"],
        "start_time": utc_ms(child["startTimeUtc"]), "end_time": utc_ms(child["endTimeUtc"]),
        "parent_id": child["parentRunId"], "root_id": child["rootRunId"], "depth": 1, "step_name": child["displayName"],
        "lifecycle_stage": "active", "user_id": "", "params": {}, "latest_metrics": {}, "tags": tags, "properties": properties,
        "description": child["description"] or "", "created_by": child["createdBy"]["userName"],
        "created_time": utc_ms(child["createdUtc"]), "compute": child["target"],
        "environment": spec["environment"], "command": spec["command"],
        "inputs": {k: io(v) for k, v in (node.get("inputs") or {}).items()},
        "outputs": {k: io(v) for k, v in (node.get("outputs") or {}).items()},
        "error": ((child.get("error") or {}).get("error") or {}).get("message", "")[:3000],
        "datasets": [],  # as for roots: from MLflow's run, none recorded
        "model_inputs": [],
    }


def differences(jobs, want: dict[str, dict]) -> list[str]:
    got = {j.source_id: j.to_json() for j in jobs}
    assert sorted(got) == sorted(want)
    return [f"{name}.{key}: got {got[name][key]!r}, want {value!r}" for name, fields in want.items()
            for key, value in fields.items() if got[name][key] != value] + \
           [f"{name}: field {key} not checked" for name in got for key in got[name] if key not in want[name]]


# -- the recorded jobs, field by field ---------------------------------------------------------


def test_every_field_of_the_recorded_jobs(tmp_path, mlflow, monkeypatch):
    """Pipeline (Failed, 2 Failed steps), sweep, AutoML, a Preparing and a Completed command job."""
    children = last("pipeline_get_child_run.json", f"/runs/{PIPELINE}/children")["ResponseBody"]["value"]
    component = last("component_get.json", "/versions/0.0.1")["ResponseBody"]
    history = last("dsl_get_child_job.json", "/runs/1a96702c-b0e9-4ba9-96c7-d5d8edc3f43b")["ResponseBody"]
    with scenario_2026(tmp_path, mlflow) as azure:
        # Run history's record of a root: none was recorded. Served with the recorded shape of a run
        # history run: a step's GET for the sweep (times), a failed step for the failed pipeline (error).
        azure.stub("GET", f"/history/v1.0/WS/runs/{SWEEP}", 200, history)
        azure.stub("GET", f"/history/v1.0/WS/runs/{PIPELINE}", 200, children[0])
        azure.stubs.reverse()  # these two before the 404s of scenario_2026
        source, jobs = extract(azure, monkeypatch)
    bodies = {b["name"]: b for b in jobs_2026()}
    want = {name: expected_root(body, {SWEEP: history, PIPELINE: children[0]}.get(name)) for name, body in bodies.items()}
    want.update({c["runId"]: expected_step(c, bodies[PIPELINE], component) for c in children})
    problems = differences(jobs, want)
    assert not problems, "\n".join(problems)
    # What the recordings show, said outright (each failed before the fixes):
    steps = [j for j in jobs if j.depth == 1]
    assert all(j.command.startswith("echo Hello World") and j.environment.endswith("/versions/33") for j in steps)  # runDefinition: null
    assert all(j.tags == {} and j.properties["original_system.azureml.nodeid"] for j in steps)  # only system tags
    assert all("Error Code: ScriptExecution" in j.error for j in steps)
    automl = next(j for j in jobs if j.kind == "automl")
    assert "DataPrepJsonString" not in automl.properties and "None" not in automl.properties.values()  # JSON nulls
    sweep = next(j for j in jobs if j.kind == "sweep")
    assert not any(k.startswith("_aml_system_") for k in sweep.tags)
    assert len(sweep.properties["original_system._aml_system_platform_config"]) > 3000
    assert next(j for j in jobs if j.source_id == PIPELINE).start_time is not None  # from azureml.pipelines.stages
    # Each step's component version read once; nothing asked that is neither recorded nor stubbed.
    assert [azure.requests[f"GET /WS/components/azureml_anonymous/versions/{c['properties']['azureml.moduleid']}"] for c in children] == [1, 1]
    assert azure.unmatched == []


def test_every_field_of_the_recorded_dsl_pipeline_with_reused_steps(tmp_path, mlflow, monkeypatch):
    """The 2023 recording: a Completed pipeline whose two reused steps run one component version."""
    children = last("dsl_get_child_job.json", f"/runs/{DSL}/children")["ResponseBody"]["value"]
    root = last("dsl_get_child_job.json", f"/jobs/{DSL}")["ResponseBody"]
    component = last("component_get.json", "/versions/0.0.1")["ResponseBody"]
    with scenario_dsl(tmp_path, mlflow) as azure:
        source, jobs = extract(azure, monkeypatch)
    want = {DSL: expected_root(root)}
    want.update({c["runId"]: expected_step(c, root, component) for c in children})
    problems = differences(jobs, want)
    assert not problems, "\n".join(problems)
    assert [j.source_id for j in jobs] == [DSL] + [c["runId"] for c in sorted(children, key=lambda c: c["startTimeUtc"])]
    assert all(j.properties["azureml.isreused"] == "true" for j in jobs[1:])
    assert azure.requests["GET /WS/components/azureml_anonymous/versions/7587a6fa-b307-4236-bdba-cc9488c8e2b3"] == 1
    assert azure.unmatched == []


def test_hidden_children_are_not_jobs(tmp_path, mlflow, monkeypatch):
    """No recording has `"hidden": true` (every child seen says false); azureml-core drops such
    children. The recorded children answer with one step flipped to hidden."""
    entries = copy.deepcopy(recorded.load("dsl_get_child_job.json"))
    listing = next(e for e in entries if e["RequestUri"].endswith("/children"))
    hidden = listing["ResponseBody"]["value"][1]
    hidden["hidden"] = True
    with scenario_dsl(tmp_path, mlflow) as azure:
        azure.entries = entries
        source, jobs = extract(azure, monkeypatch)
    assert [j.source_id for j in jobs] == [DSL, listing["ResponseBody"]["value"][0]["runId"]]
    assert hidden["runId"] not in {j.source_id for j in jobs}


def test_include_and_limit_narrow_before_children_are_listed(tmp_path, mlflow, monkeypatch):
    """The sweep's children listing fails (500); selecting other roots never asks for it."""
    from runner.core.errors import EndpointError

    with scenario_2026(tmp_path, mlflow) as azure:
        azure.stub("GET", f"/history/v1.0/WS/runs/{SWEEP}/children", 500, {"error": {"code": "InternalServerError", "message": "boom"}})
        azure.stubs.reverse()
        with pytest.raises(EndpointError, match=f"children of {SWEEP}"):
            extract(azure, monkeypatch)  # the failure is real when the sweep is selected
        azure.requests.clear()
        _, jobs = extract(azure, monkeypatch, include=PIPELINE)
        assert [j.source_id for j in jobs][0] == PIPELINE and len(jobs) == 3
        assert azure.requests[f"GET /history/v1.0/WS/runs/{SWEEP}/children"] == 0
        _, jobs = extract(azure, monkeypatch, limit=2)  # the two oldest roots: commandjob01, the pipeline
        assert [j.source_id for j in jobs if j.depth == 0] == [COMMAND_DONE, PIPELINE]
        assert azure.requests[f"GET /history/v1.0/WS/runs/{SWEEP}/children"] == 0


def test_include_of_a_step_id_walks_only_its_root(tmp_path, mlflow, monkeypatch):
    """A step's run id is placed through run history's recorded `runs/{id}` answer (rootRunId)."""
    step = "1a96702c-b0e9-4ba9-96c7-d5d8edc3f43b"
    other = json.loads(json.dumps(last("command_job_get.json", f"/jobs/{COMMAND}")["ResponseBody"]))
    other["properties"]["experimentName"] = "dsl_pipeline_e2e"
    other["properties"]["jobType"], other["properties"]["status"] = "Pipeline", "Completed"  # a second root whose children nobody recorded
    with scenario_dsl(tmp_path, mlflow) as azure:
        azure.stubs[0]["ResponseBody"]["value"].append(other)
        _, jobs = extract(azure, monkeypatch, include=step)
    assert [j.source_id for j in jobs][0] == DSL and len(jobs) == 3
    assert azure.requests[f"GET /history/v1.0/WS/runs/{step}"] == 1
    assert azure.unmatched == []


def test_failed_steps_error_reaches_the_target_and_verify_compares_it(tmp_path, mlflow, monkeypatch):
    """extract -> replay -> verify through the CLI: a failed step's recorded error lands on its target
    run as `original_error` (Azure's 1,000-character tag value), and verify compares what was written."""
    import os
    import sys

    from mlflow import MlflowClient

    from conftest import replayed_runs, run_cli
    from fakes.azureml_control_plane import write_fake_az

    children = last("pipeline_get_child_run.json", f"/runs/{PIPELINE}/children")["ResponseBody"]["value"]
    target = f"sqlite:///{tmp_path / 'target.db'}"
    with scenario_2026(tmp_path, mlflow) as azure:
        az = write_fake_az(tmp_path / "az", sys.executable)
        env = {**azure.environ(), "PATH": f"{az}{os.pathsep}{os.environ['PATH']}", "REPLAYER_CREDENTIAL": "cli"}
        out = tmp_path / "manifest"
        done = run_cli("extract", "--source", URI, "--out", str(out), "--include", PIPELINE, "--experiments", "azure-ai-ml",
                       "--artifacts", "none", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_cli("replay", "--manifest", str(out), "--target", target, "--artifacts", "none", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(target)
    runs = replayed_runs(target, URI.lower())
    for child in children:
        tags = client.get_run(runs[child["runId"]]).data.tags
        assert tags["original_error"] == child["error"]["error"]["message"][:1000]
    assert "original_error" not in client.get_run(runs[PIPELINE]).data.tags  # the root's error was not recorded
    # No MLflow run was recorded for these jobs, so the source's tags lack the mlflow.runName the
    # target run gets: verify reports that on every run. Only the `error` rows matter here.
    assert errors_verified(out, target, tmp_path) == []
    client.set_tag(runs[children[0]["runId"]], "original_error", "something else")
    assert errors_verified(out, target, tmp_path) == [children[0]["runId"]]


def errors_verified(manifest, target: str, folder) -> list[str]:
    """The jobs whose `error` verify reports as different."""
    from conftest import run_cli

    check = run_cli("verify", "--source", str(manifest), "--target", target, "--artifacts", "none", "--report", "r.json", cwd=folder)
    assert check.returncode in (0, 1), check.stderr[-3000:]
    report = json.loads((folder / "r.json").read_text())
    return [d["job"] for d in report["differences"] if d["field"] == "error"]


def test_since_until_use_the_job_answers_times_when_mlflow_has_none(tmp_path, mlflow, monkeypatch):
    """commandjob01 (Completed) has MFE properties StartTimeUtc "2024-07-24 08:48:48" and no MLflow run."""
    with scenario_2026(tmp_path, mlflow) as azure:
        _, jobs = extract(azure, monkeypatch, since="2024-07-24T08:48:00Z", until="2024-07-24T08:49:00Z")
    assert [(j.source_id, j.start_time) for j in jobs] == [(COMMAND_DONE, utc_ms("2024-07-24 08:48:48"))]
