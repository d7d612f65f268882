"""MLflow 3 run history beyond classic runs: the dataset inputs of each run.

Real `mlflow server` processes (3.15, sqlite-backed) and embedded sqlite stores. The copies are
read back with MlflowClient directly, so a bug in verify cannot hide a bug in replay; verify is
then checked on its own against a difference made on purpose.
"""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, ViewType
from mlflow.exceptions import MlflowException

from conftest import run_cli

sys.path.insert(0, str(Path(__file__).parent / "fakes"))
from fault_proxy import FaultProxy  # noqa: E402

from runner.mlflow.run_inputs import InputWriter, read_datasets  # noqa: E402

T0 = 1_700_000_000_000
SCHEMA = json.dumps({"mlflow_colspec": [{"type": "double", "name": "x"}, {"type": "long", "name": "label"}]})
PROFILE = json.dumps({"num_rows": 1200, "num_elements": 2400})
LOG_INPUTS = "/api/2.0/mlflow/runs/log-inputs"


def dataset(name: str, digest: str, context: str, **extra) -> DatasetInput:
    return DatasetInput(
        Dataset(name=name, digest=digest, source_type="http", source=json.dumps({"url": f"https://data.example/{name}.csv"}),
                schema=SCHEMA, profile=PROFILE),
        tags=[InputTag("mlflow.data.context", context), *[InputTag(k, v) for k, v in extra.items()]],
    )


def seed(client: MlflowClient, name: str, with_inputs: bool = True) -> dict[str, str]:
    """A parent with two datasets (training, evaluation), a child with one, a run with none."""
    experiment = client.create_experiment(name)
    ids = {}
    for run_name, start, parent in [("parent", 0, None), ("child", 10, "parent"), ("plain", 20, None)]:
        tags = {"mlflow.parentRunId": ids[parent]} if parent else {}
        ids[run_name] = client.create_run(experiment, start_time=T0 + start, tags=tags, run_name=run_name).info.run_id
        client.log_param(ids[run_name], "lr", "0.1")
    if with_inputs:
        log_seeded_inputs(client, ids)
    for run_id in ids.values():
        client.set_terminated(run_id, "FINISHED", end_time=T0 + 5000)
    return ids


def log_seeded_inputs(client: MlflowClient, ids: dict[str, str]) -> None:
    client.log_inputs(ids["parent"], datasets=[dataset("train", "d1a2", "training", split="80%"), dataset("eval", "e9f0", "evaluation")])
    client.log_inputs(ids["child"], datasets=[dataset("train", "d1a2", "training")])


def copies(client: MlflowClient, workspace: str) -> dict[str, object]:
    """original_job_id -> target run (with its inputs)."""
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(exps, f"tags.original_workspace = '{workspace}'", ViewType.ALL, max_results=1000)
    return {r.data.tags["original_job_id"]: client.get_run(r.info.run_id) for r in runs}


def inputs_of(run) -> list[tuple]:
    """Everything a dataset input holds, read straight from MlflowClient's entities."""
    return sorted(
        (d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source, d.dataset.schema, d.dataset.profile,
         tuple(sorted((t.key, t.value) for t in d.tags)))
        for d in run.inputs.dataset_inputs
    )


@pytest.fixture(scope="module")
def migrated(servers, tmp_path_factory):
    import uuid

    source, target = servers
    name = f"inputs-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("inputs")
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    ids = seed(src, name)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    result = run_cli("migrate", *args, cwd=work)
    assert result.returncode == 0, result.stderr
    return {"ids": ids, "args": args, "work": work, "src": src, "dst": dst, "workspace": f"ws-{name}", "result": result}


def test_dataset_inputs_are_copied_between_servers(migrated):
    src, runs = migrated["src"], copies(migrated["dst"], migrated["workspace"])
    assert set(runs) == set(migrated["ids"].values())
    for run_id, copy in runs.items():
        assert inputs_of(copy) == inputs_of(src.get_run(run_id))
    parent = inputs_of(runs[migrated["ids"]["parent"]])
    assert [(d[0], d[1], dict(d[6])) for d in parent] == [
        ("eval", "e9f0", {"mlflow.data.context": "evaluation"}),
        ("train", "d1a2", {"mlflow.data.context": "training", "split": "80%"}),
    ]
    assert parent[0][4] == SCHEMA and parent[0][5] == PROFILE
    assert inputs_of(runs[migrated["ids"]["plain"]]) == []


def test_verify_is_clean_and_a_rerun_adds_nothing(migrated):
    check = run_cli("verify", *migrated["args"], cwd=migrated["work"])
    assert check.returncode == 0, check.stdout + check.stderr
    before = {k: inputs_of(v) for k, v in copies(migrated["dst"], migrated["workspace"]).items()}
    again = run_cli("migrate", *migrated["args"], cwd=migrated["work"])
    assert again.returncode == 0, again.stderr
    assert "created 0, repaired 0, skipped 3, failed 0" in again.stderr
    after = {k: inputs_of(v) for k, v in copies(migrated["dst"], migrated["workspace"]).items()}
    assert after == before and sum(map(len, after.values())) == 3


def test_embedded_target_repair_adds_inputs_once_and_verify_names_a_changed_digest(servers, tmp_path, unique):
    """Runs copied without their inputs (as an older replayer did) get them on repair, once;
    a dataset digest changed in the target store afterwards is named by verify."""
    source, _ = servers
    src = MlflowClient(source.uri)
    name = f"inputs-late-{unique}"
    ids = seed(src, name, with_inputs=False)
    target = tmp_path / "embedded"
    args = ["--source", source.uri, "--target", str(target), "--experiments", name, "--workspace", f"ws-{name}"]
    assert run_cli("migrate", *args, cwd=tmp_path).returncode == 0
    dst = MlflowClient(f"sqlite:///{target / 'mlflow.db'}")
    assert all(inputs_of(run) == [] for run in copies(dst, f"ws-{name}").values())

    log_seeded_inputs(src, ids)  # the source runs gain inputs: their copies are out of date now
    repaired = run_cli("migrate", *args, cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stderr
    assert "created 0, repaired 2, skipped 1, failed 0" in repaired.stderr
    runs = copies(dst, f"ws-{name}")
    for run_id, copy in runs.items():
        assert inputs_of(copy) == inputs_of(src.get_run(run_id))
    # A repair of a run that holds inputs already must not log them again (they cannot be removed).
    dst.delete_tag(runs[ids["parent"]].info.run_id, "replay.complete")
    assert run_cli("migrate", *args, cwd=tmp_path).returncode == 0
    assert inputs_of(dst.get_run(runs[ids["parent"]].info.run_id)) == inputs_of(src.get_run(ids["parent"]))
    assert run_cli("verify", *args, cwd=tmp_path).returncode == 0

    with sqlite3.connect(target / "mlflow.db") as db:  # the difference, made on purpose in the store itself
        changed = db.execute("UPDATE datasets SET digest = 'tampered' WHERE name = 'eval'").rowcount
    assert changed == 1
    report = tmp_path / "report.json"
    check = run_cli("verify", *args, "--report", str(report), cwd=tmp_path)
    assert check.returncode == 1, check.stdout + check.stderr
    found = [d for d in json.loads(report.read_text())["differences"] if d["field"].startswith("dataset:")]
    assert [(d["job"], d["field"]) for d in found] == [(ids["parent"], "dataset:eval")]
    assert "digest=e9f0" in found[0]["source"] and "digest=tampered" in found[0]["target"]


def test_target_without_log_inputs_warns_once_and_copies_the_rest(servers, tmp_path, unique):
    source, target = servers
    src = MlflowClient(source.uri)
    name = f"inputs-refused-{unique}"
    ids = seed(src, name)
    with FaultProxy(target.uri, rate=0, refuse=(LOG_INPUTS,)) as proxy:
        args = ["--source", source.uri, "--target", proxy.uri, "--experiments", name, "--workspace", f"ws-{name}"]
        result = run_cli("migrate", *args, "--parallel", "1", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert proxy.refused[LOG_INPUTS] >= 1
    assert result.stderr.count("has no log-inputs API") == 1
    assert "NOT copied, the target has no API for them: dataset inputs of 2 runs" in result.stderr
    runs = copies(MlflowClient(target.uri), f"ws-{name}")
    assert set(runs) == set(ids.values())
    assert all(run.data.params == {"lr": "0.1"} and "replay.complete" in run.data.tags for run in runs.values())
    assert all(inputs_of(run) == [] for run in runs.values())


class Refusing:
    """A client whose store predates the route: the plain 404 page MLflow's REST client reports."""

    tracking_uri = "http://old-server"

    def __init__(self):
        self.calls = 0

    def log_inputs(self, run_id, datasets):
        import requests
        from mlflow.utils.rest_utils import verify_rest_response

        self.calls += 1
        page = requests.Response()
        page.status_code, page._content = 404, b"<!doctype html><title>404 Not Found</title>"
        verify_rest_response(page, LOG_INPUTS)  # raises as MLflow's REST client does on that answer


def test_a_plain_404_is_a_missing_route_and_is_asked_once():
    writer, client = InputWriter(), Refusing()
    records = [{"name": "train", "digest": "d", "source_type": "http", "source": "{}", "schema": "", "profile": "", "tags": {}}]
    for run_id in ("a", "b", "c"):
        writer.write(client, run_id, records)
    assert client.calls == 1 and writer.left_out_counts() == {"dataset inputs": 3}
    writer.write(client, "d", [])  # a run without inputs loses nothing
    assert writer.left_out_counts() == {"dataset inputs": 3}


def test_other_errors_are_not_taken_for_a_missing_route():
    class Broken(Refusing):
        def log_inputs(self, run_id, datasets):
            raise MlflowException("Run 'a' not found", error_code="RESOURCE_DOES_NOT_EXIST")

    with pytest.raises(MlflowException):
        InputWriter().write(Broken(), "a", [{"name": "train", "digest": "d", "tags": {}}])


def test_read_datasets_keeps_every_field():
    class Run:
        class inputs:
            dataset_inputs = [dataset("train", "d1a2", "training")]

    assert read_datasets(Run) == [{
        "name": "train", "digest": "d1a2", "source_type": "http", "source": json.dumps({"url": "https://data.example/train.csv"}),
        "schema": SCHEMA, "profile": PROFILE, "tags": {"mlflow.data.context": "training"},
    }]
