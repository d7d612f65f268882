"""Azure ML's MLflow limits (tests/fakes/azureml_limits.py): the fake refuses what the service
refuses, and the replayer fits every run into them with nothing lost.

- Each limit the fake enforces is shown refusing a request one past it, sent by MLflow's own
  client (and taking the request at the limit), so the fake is not just agreeing with our code.
- A source run with 250 params, 60 tags, 2,000-character tag values, a 300-character name and 55
  metric names migrates into the `azureml://` fake without one refusal; replay/overflow.json holds
  what the run could not, the summary counts it, and verify is clean.
"""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from conftest import replayed_runs, run_cli
from fakes.azureml_control_plane import make_token
from fakes.azureml_limits import LIMITS, set_limits
from runner.core.filters import Filters
from runner.core.records import JobRecord, MetricPoint
from runner.engine import limits as caps
from runner.engine.limits import AZUREML_LIMITS, OVERFLOW_PATH
from runner.mlflow import sync_state, uris
from test_azureml_target import counting_az, target  # noqa: F401 - the azureml:// target workspace (module fixture)


@pytest.fixture
def azure(target, monkeypatch):  # noqa: F811
    """MLflow's own REST client on the fake's MLflow endpoint (bearer token, the fake's CA)."""
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", make_token())
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(target.fake.ca_file))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return MlflowClient(f"{target.fake.url}/mlflow/v2.0{target.ws.scope}")


def refused(call, field: str, limit: int) -> str:
    """The service's refusal: INVALID_PARAMETER_VALUE naming the field and its limit."""
    with pytest.raises(MlflowException) as raised:
        call()
    text = str(raised.value)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE", text
    assert f"FieldName={field}, Limit={limit}," in text, text
    return text


def new_run(client: MlflowClient, unique: str, **tags: str) -> str:
    exp = client.create_experiment(f"lim-{unique}-{os.urandom(3).hex()}")
    return client.create_run(exp, tags=tags).info.run_id


# -- the fake refuses what Azure ML refuses -------------------------------------------------------------


def test_run_tags_count_cumulatively_to_50(azure, unique):
    run_id = new_run(azure, unique, **{f"t{i:02d}": "v" for i in range(29)})  # and the mlflow.runName the store makes
    azure.log_batch(run_id, tags=[RunTag(f"u{i:02d}", "v") for i in range(20)])
    assert len(azure.get_run(run_id).data.tags) == 50
    refused(lambda: azure.set_tag(run_id, "one-more", "v"), "Tags", 50)
    refused(lambda: azure.create_run(azure.get_run(run_id).info.experiment_id, tags={f"k{i}": "v" for i in range(51)}), "Tags", 50)


def test_run_tag_key_100_and_value_1000(azure, unique):
    run_id = new_run(azure, unique, **{"k" * 100: "v" * 1000})
    refused(lambda: azure.set_tag(run_id, "k" * 101, "v"), "Tags.Key", 100)
    refused(lambda: azure.set_tag(run_id, "long", "v" * 1001), "Tags.Value", 1000)


def test_run_display_name_256_and_description_5000(azure, unique):
    exp = azure.create_experiment(f"lim-name-{unique}")
    run_id = azure.create_run(exp, run_name="n" * 256, tags={"mlflow.note.content": "d" * 5000}).info.run_id
    refused(lambda: azure.create_run(exp, run_name="n" * 257), "DisplayName", 256)
    refused(lambda: azure.set_tag(run_id, "mlflow.note.content", "d" * 5001), "Description", 5000)


def test_params_count_cumulatively_to_200(azure, unique):
    run_id = new_run(azure, unique)
    azure.log_batch(run_id, params=[Param(f"p{i:03d}", "v") for i in range(100)])
    azure.log_batch(run_id, params=[Param(f"p{i:03d}", "v") for i in range(100, 200)])
    refused(lambda: azure.log_param(run_id, "p200", "v"), "Parameters", 200)
    refused(lambda: azure.log_batch(run_id, params=[Param("p201", "v")]), "Parameters", 200)


def test_metric_names_50_and_rows_250_per_name_in_a_request(azure, target, unique):  # noqa: F811
    """250 rows of one name per request (mlflow/mlflow#11462's MetricV2Dto.Value/Count), 1000 in all."""
    run_id = new_run(azure, unique)
    azure.log_batch(run_id, metrics=[Metric(f"m{k:02d}", 1.0, 1, s) for k in range(50) for s in range(5)])
    refused(lambda: azure.log_metric(run_id, "m50", 1.0), "Metrics", 50)
    azure.log_batch(run_id, metrics=[Metric(f"m{k:02d}", 1.0, 1, s) for k in range(4) for s in range(5, 255)])  # 1000 rows, 250 a name
    text = refused(lambda: azure.log_batch(run_id, metrics=[Metric("m00", 1.0, 1, s) for s in range(300, 551)]
                                           + [Metric("m01", 1.0, 1, s) for s in range(300, 400)]), "MetricV2Dto.Value/Count", 250)
    assert "Size=251." in text, "the size is the largest name's rows, not the request's 351"
    assert len(azure.get_metric_history(run_id, "m01")) == 255, "a refused request writes nothing"
    # MLflow's own 1000 entities per request (its client would split more itself: sent raw).
    body = {"run_id": run_id, "metrics": [{"key": f"m{k:02d}", "value": 1.0, "timestamp": 1, "step": s} for k in range(5) for s in range(1000, 1200)],
            "params": [{"key": "p", "value": "v"}]}
    answer = requests.post(f"{target.fake.url}/mlflow/v2.0{target.ws.scope}/api/2.0/mlflow/runs/log-batch", json=body,
                           headers={"Authorization": f"Bearer {make_token()}"}, verify=str(target.fake.ca_file), timeout=60)
    assert answer.status_code == 400 and "FieldName=Batch.Entities, Limit=1000, Size=1001." in answer.text, answer.text


def test_the_documented_reading_refuses_more_than_250_rows_in_all(azure, target, unique):  # noqa: F811
    """rows_cap_per_request_total: the docs' other reading, for the tool's fallback."""
    set_limits(target.ws, rows_cap_per_request_total=True)
    try:
        run_id = new_run(azure, unique)
        azure.log_batch(run_id, metrics=[Metric(f"m{k}", 1.0, 1, s) for k in range(5) for s in range(50)])  # 250 in all
        refused(lambda: azure.log_batch(run_id, metrics=[Metric(f"m{k}", 1.0, 1, s) for k in range(2) for s in range(50, 176)]),
                "MetricV2Dto.Value/Count", 250)
        assert len(azure.get_metric_history(run_id, "m0")) == 50, "a refused request writes nothing"
    finally:
        set_limits(target.ws, rows_cap_per_request_total=False)


def test_rows_per_metric_name(azure, target, unique):  # noqa: F811
    """A million rows per name on Azure; lowered to 500 here (a test cannot send a million)."""
    assert LIMITS.rows_per_metric == 1_000_000
    set_limits(target.ws, rows_per_metric=500)
    try:
        run_id = new_run(azure, unique)
        for start in (0, 250):
            azure.log_batch(run_id, metrics=[Metric("loss", 1.0, 1, s) for s in range(start, start + 250)])
        refused(lambda: azure.log_metric(run_id, "loss", 1.0, step=500), "Metrics[loss].Count", 500)
    finally:
        set_limits(target.ws, rows_per_metric=LIMITS.rows_per_metric)


def test_experiment_tags_50_key_250_value_1000_description_5000(azure, unique):
    tags = {f"t{i:02d}": "v" * 1000 for i in range(48)} | {"k" * 250: "v", "mlflow.note.content": "d" * 5000}
    exp = azure.create_experiment(f"lim-exp-{unique}", tags=tags)
    refused(lambda: azure.set_experiment_tag(exp, "one-more", "v"), "ExperimentTags", 50)
    refused(lambda: azure.create_experiment(f"lim-exp2-{unique}", tags={"k" * 251: "v"}), "ExperimentTags.Key", 250)
    refused(lambda: azure.create_experiment(f"lim-exp3-{unique}", tags={"t": "v" * 1001}), "ExperimentTags.Value", 1000)
    refused(lambda: azure.create_experiment(f"lim-exp4-{unique}", tags={"mlflow.note.content": "d" * 5001}), "Description", 5000)


@pytest.mark.parametrize("text", [
    "attributes.start_time >= 0", "attributes.run_id IN ('a', 'b')", "run.status = 'FINISHED'",
    "tags.team LIKE 'a%'", "tags.team ILIKE 'a%'", "tags.team = 'a' OR tags.team = 'b'",
])
def test_search_filters_azure_does_not_support_are_refused(azure, unique, text):
    exp = azure.create_experiment(f"lim-search-{unique}")
    with pytest.raises(MlflowException) as raised:
        azure.search_runs([exp], text)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE" and "does not support" in str(raised.value)
    assert azure.search_runs([exp], "tags.team = 'a or b' AND tags.`attributes.x` = 'LIKE'") == []  # quoted words are values


# -- the replayer fits runs into them ----------------------------------------------------------------


def test_azureml_caps_match_the_documented_limits():
    assert (AZUREML_LIMITS.max_tags, AZUREML_LIMITS.max_tag_length, AZUREML_LIMITS.max_tag_key) == (LIMITS.run_tags, LIMITS.tag_value, LIMITS.run_tag_key)
    assert (AZUREML_LIMITS.max_params, AZUREML_LIMITS.max_metric_keys) == (LIMITS.params, LIMITS.metric_names)
    assert (AZUREML_LIMITS.rows_per_metric_per_batch, AZUREML_LIMITS.rows_per_batch) == (LIMITS.rows_per_metric_per_request, LIMITS.metrics_per_request)
    assert (AZUREML_LIMITS.max_name_length, AZUREML_LIMITS.max_metric_rows) == (LIMITS.display_name, LIMITS.rows_per_metric)
    tags = {f"t{i:02d}": "v" for i in range(60)} | {"k" * 251: "v", "long": "x" * 1001, "mlflow.note.content": "d" * 5001, "replay.overflow": "{}"}
    kept, spill = caps.fit_experiment_tags(AZUREML_LIMITS, tags)
    assert len(kept) == 49 and "replay.overflow" not in {**kept, **spill}, "room for the target's own pointer; the source's is not copied"
    assert {**kept, **spill} == {k: v for k, v in tags.items() if k != "replay.overflow"}
    assert len(kept["long"]) == 1000 and len(kept["mlflow.note.content"]) == 5000 and "k" * 251 in spill and "t59" in spill
    limits = caps.Limits(max_metric_rows=3)
    overflow = caps.new_overflow()
    job = JobRecord(source_id="r", experiment="e", latest_metrics={"a": 1.0})
    sent = list(caps.fit_metrics(limits, job, [MetricPoint("a", float(s), 1, s) for s in range(5)], overflow))
    assert [p.step for p in sent] == [0, 1, 2] and [row[0] for row in overflow["metrics"]["a"]] == [3, 4]


def seed_wide_run(uri: str, experiment: str) -> dict:
    """One finished run over every per-run limit; returns what it holds."""
    client = MlflowClient(uri)
    experiment_tags = {f"etag{i:02d}": f"{i}" * (2000 if i % 10 == 0 else 3) for i in range(55)} | {"mlflow.note.content": "d" * 3000}
    exp = client.create_experiment(experiment, tags=experiment_tags)
    tags = {f"tag{i:02d}": f"value {i}" for i in range(50)} | {f"long{i}": f"{i}" * 2000 for i in range(10)}
    tags["k" * 120] = "a key over Azure's 100"
    name = "wide-" + "n" * 295
    run_id = client.create_run(exp, start_time=1_700_000_000_000, tags=tags, run_name=name).info.run_id
    params = {f"p{i:03d}": f"v{i}" for i in range(250)}
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])
    metrics = [Metric(f"m{k:02d}", float(s), 1_700_000_000_000 + s, s) for k in range(55) for s in range(3)]
    metrics += [Metric("curve", s / 7, 1_700_000_000_000 + s, s) for s in range(600)]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.set_terminated(run_id, "FINISHED", end_time=1_700_000_100_000)
    return {"tags": tags, "params": params, "name": name, "experiment_tags": experiment_tags}


def test_a_run_over_every_limit_migrates_into_azureml_with_nothing_lost(servers, target, unique, tmp_path):  # noqa: F811
    source = servers[0]
    experiment, workspace = f"azlim-{unique}", f"ws-lim-{unique}"
    wide = seed_wide_run(source.uri, experiment)
    az_path, _ = counting_az(tmp_path / "az")
    env = {**target.env, "PATH": f"{az_path}{os.pathsep}{os.environ['PATH']}"}
    args = ["--source", source.uri, "--target", target.uri, "--experiments", experiment, "--workspace", workspace, "--credential", "cli"]
    refusals = target.fake.requests["mlflow_refused_limit"]
    report = tmp_path / "summary.json"
    result = run_cli("migrate", *args, "--report", str(report), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert target.fake.requests["mlflow_refused_limit"] == refusals, "the fake refused a request the replayer sent"
    summary = json.loads(report.read_text())
    assert summary["created"] == 1 and summary["overflowed"] == 1

    [run_id] = replayed_runs(target.backing.uri, workspace).values()
    backing = MlflowClient(target.backing.uri)
    run = backing.get_run(run_id)
    assert len(run.data.params) == 200 and len(run.data.tags) <= 50 and len(run.data.metrics) == 50
    assert all(len(v) <= 1000 and len(k) <= 100 for k, v in run.data.tags.items())
    assert len(run.info.run_name) == 256 and wide["name"].startswith(run.info.run_name)
    overflow = json.loads(target.store.client().download_blob(target.store.prefix(run_id) + OVERFLOW_PATH).readall())  # run history's blob
    assert {**run.data.params, **overflow["params"]} == wide["params"] and len(overflow["params"]) == 50
    user = {k: v for k, v in {**run.data.tags, **overflow["tags"]}.items() if k in wide["tags"]}
    assert user == wide["tags"]
    assert overflow["tags"]["mlflow.runName"] == wide["name"]
    assert sorted(overflow["metrics"]) == [f"m{k:02d}" for k in range(49, 55)]
    counts = {"params": 50, "tags": len(overflow["tags"]), "metrics": 6}
    assert json.loads(run.data.tags["replay.overflow"]) == counts and summary["overflow"] == counts
    assert "50 params" in result.stderr and "1 runs over the target's limits" in result.stderr
    assert len(backing.get_metric_history(run_id, "curve")) == 600

    # The experiment's excess: in a run of replayer-experiments, the experiment pointing at it.
    held = backing.get_experiment_by_name(experiment).tags
    assert len(held) <= 50 and all(len(v) <= 1000 for k, v in held.items() if k != "mlflow.note.content")
    assert held["mlflow.note.content"] == wide["experiment_tags"]["mlflow.note.content"], "a description up to 5,000 stays whole"
    where = json.loads(held["replay.overflow"])
    spilled = json.loads(target.store.client().download_blob(target.store.prefix(where["run"]) + OVERFLOW_PATH).readall())["tags"]
    assert {**{k: v for k, v in held.items() if not k.startswith("replay.")}, **spilled} == wide["experiment_tags"]
    assert where["tags"] == len(spilled) >= 5

    check = run_cli("verify", *args, cwd=tmp_path, env=env)
    assert check.returncode == 0 and "1 runs compared, 1 equal" in check.stdout, check.stdout[-3000:] + check.stderr[-2000:]
    again = run_cli("migrate", *args, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "skipped 1" in again.stderr, again.stderr[-3000:]
    assert backing.get_experiment_by_name(experiment).tags["replay.overflow"] == held["replay.overflow"], "an unchanged excess is not written again"

    # A source experiment tag changes (and a new run makes replay open the experiment again): the
    # excess moves to a new bookkeeping run, the old one goes.
    src = MlflowClient(source.uri)
    exp_id = src.get_experiment_by_name(experiment).experiment_id
    src.set_experiment_tag(exp_id, "etag54", "changed")
    src.set_terminated(src.create_run(exp_id, start_time=1_700_000_200_000, run_name="later").info.run_id, "FINISHED")
    moved = run_cli("migrate", *args, cwd=tmp_path, env=env)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert json.loads(backing.get_experiment_by_name(experiment).tags["replay.overflow"])["run"] != where["run"]
    assert backing.get_run(where["run"]).info.lifecycle_stage == "deleted"
    check = run_cli("verify", *args, cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]


# -- log-batch requests: 250 rows per metric name, and the fallback to 250 in all ------------------------

SHAPES = {  # run name -> (metric name -> points, params); log-batch requests per name cap / total cap
    "five-by-200": ({f"m{k}": 200 for k in range(5)}, {}),  # 1 / 4 (the bench's job shape, without params)
    "one-by-1000": ({"loss": 1000}, {"lr": "0.1", "epochs": "1000"}),  # 4 / 4, the params in the first
    "300-then-100": ({"a": 300, "b": 100}, {}),  # 2 / 2: a 250 | a 50 + b 100
}


def seed_shapes(uri: str, experiment: str) -> dict[str, dict[str, int]]:
    """One finished run per shape; returns run name -> points per metric name."""
    client = MlflowClient(uri)
    exp = client.create_experiment(experiment)
    for i, (name, (histories, params)) in enumerate(SHAPES.items()):
        run_id = client.create_run(exp, start_time=1_700_000_000_000 + i, run_name=name).info.run_id
        points = [Metric(key, s / 7, 1_700_000_000_000 + s, s) for key, count in histories.items() for s in range(count)]
        for start in range(0, len(points), 1000):
            client.log_batch(run_id, metrics=points[start : start + 1000])
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run_id, "FINISHED", end_time=1_700_000_100_000)
    return {name: histories for name, (histories, _) in SHAPES.items()}


def migrate_shapes(servers, target, unique, tmp_path, label: str):  # noqa: F811
    """Migrate the shapes into the azureml:// target: (log-batch requests, refusals, the migrate's stderr)."""
    experiment, workspace = f"azrows-{label}-{unique}", f"ws-rows-{label}-{unique}"
    histories = seed_shapes(servers[0].uri, experiment)
    az_path, _ = counting_az(tmp_path / "az")
    env = {**target.env, "PATH": f"{az_path}{os.pathsep}{os.environ['PATH']}"}
    args = ["--source", servers[0].uri, "--target", target.uri, "--experiments", experiment, "--workspace", workspace, "--credential", "cli"]
    before = (target.fake.requests["mlflow_log_batch"], target.fake.requests["mlflow_refused_limit"])
    result = run_cli("migrate", *args, cwd=tmp_path, env=env)
    assert result.returncode == 0 and "created 3," in result.stderr, result.stderr[-3000:]
    counts = (target.fake.requests["mlflow_log_batch"] - before[0], target.fake.requests["mlflow_refused_limit"] - before[1])
    backing = MlflowClient(target.backing.uri)
    for original, run_id in replayed_runs(target.backing.uri, workspace).items():
        name = backing.get_run(run_id).info.run_name
        for key, count in histories[name].items():
            assert [m.step for m in backing.get_metric_history(run_id, key)] == list(range(count)), (name, key)
    check = run_cli("verify", *args, cwd=tmp_path, env=env)
    assert check.returncode == 0 and "3 runs compared, 3 equal" in check.stdout, check.stdout[-3000:] + check.stderr[-2000:]
    return counts, result.stderr


def test_azureml_takes_250_rows_per_metric_name_so_a_job_costs_fewer_log_batches(servers, target, unique, tmp_path):  # noqa: F811
    (batches, refusals), stderr = migrate_shapes(servers, target, unique, tmp_path, "name")
    # 1 + 4 + 2; with 250 rows in all a request it was 4 + 4 + 2.
    assert (batches, refusals) == (7, 0), stderr[-3000:]
    assert "counts Azure ML's documented" not in stderr


def test_a_workspace_capping_250_rows_in_all_is_met_by_the_fallback(servers, target, unique, tmp_path):  # noqa: F811
    """The docs' other reading: the five-by-200 run's one 1000-row request is refused once, the
    target switches to 250 rows in all (one warning) and resends it as four; nothing is lost."""
    set_limits(target.ws, rows_cap_per_request_total=True)
    try:
        (batches, refusals), stderr = migrate_shapes(servers, target, unique, tmp_path, "total")
    finally:
        set_limits(target.ws, rows_cap_per_request_total=False)
    assert refusals == 1 and batches == 1 + 4 + 4 + 2, (batches, refusals, stderr[-3000:])
    assert stderr.count("counts Azure ML's documented") == 1, stderr[-3000:]


# -- the incremental sync state and the source's filters on Azure ML ------------------------------------


def test_sync_state_of_500_open_runs_fits_azureml_and_reads_back_exactly(servers, target, unique, tmp_path):  # noqa: F811
    """500 open runs (3 taken, RUNNING, and 497 past --limit) are a state of ~17,000 characters:
    it goes whole into a run's file of `replayer-sync`, the 1,000-character tag points at it, and
    the next sync reads all 500 back."""
    source = MlflowClient(servers[0].uri)
    experiment, workspace = f"azsync-{unique}", f"ws-sync-{unique}"
    exp = source.create_experiment(experiment)
    ids = sorted(source.create_run(exp, start_time=1_700_000_000_000 + i, run_name=f"r{i}").info.run_id for i in range(500))
    az_path, _ = counting_az(tmp_path / "az")
    env = {**target.env, "PATH": f"{az_path}{os.pathsep}{os.environ['PATH']}"}
    args = ["--source", servers[0].uri, "--target", target.uri, "--experiments", experiment, "--workspace", workspace,
            "--credential", "cli", "--incremental"]
    refusals = target.fake.requests["mlflow_refused_limit"]
    first = run_cli("migrate", *args, "--limit", "3", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sync state of" in first.stderr and "500 open runs" in first.stderr, first.stderr[-3000:]
    assert target.fake.requests["mlflow_refused_limit"] == refusals

    backing = MlflowClient(target.backing.uri)
    key = sync_state.state_key(workspace, Filters())
    tag = backing.get_experiment_by_name(sync_state.STATE_EXPERIMENT).tags[sync_state.tag_name(key)]
    where = json.loads(tag)
    assert len(tag) <= 1000 and set(where) == {"key", "run", "sha1"}
    text = target.store.client().download_blob(target.store.prefix(where["run"]) + sync_state.STATE_FILE).readall().decode()
    state = sync_state.SyncState.from_json(text)
    assert hashlib.sha1(text.encode()).hexdigest() == where["sha1"] and len(text) > 15_000
    assert state.key == key and state.open == ids and state.watermark == 1_700_000_000_499

    second = run_cli("migrate", *args, "--limit", "3", "--dry-run", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "and 500 open runs" in second.stderr and "no sync state" not in second.stderr, second.stderr[-3000:]

    third = run_cli("migrate", *args, "--limit", "3", cwd=tmp_path, env=env)  # a new state run; the old one goes
    assert third.returncode == 0, third.stderr[-3000:]
    moved = json.loads(backing.get_experiment_by_name(sync_state.STATE_EXPERIMENT).tags[sync_state.tag_name(key)])
    assert moved["run"] != where["run"] and backing.get_run(where["run"]).info.lifecycle_stage == "deleted"


def test_an_azureml_source_is_windowed_and_fetched_here_not_by_the_service(target, unique, tmp_path):  # noqa: F811
    """The service takes no attribute filters: reading an azureml:// tracking URI (a full and an
    incremental sync) sends none, and copies what a plain MLflow source would."""
    backing = MlflowClient(target.backing.uri)
    experiment, workspace = f"azsrc-{unique}", f"ws-src-{unique}"
    exp = backing.create_experiment(experiment)
    runs = [backing.create_run(exp, start_time=1_700_000_000_000 + i, run_name=f"r{i}").info.run_id for i in range(3)]
    for run_id in runs[:2]:
        backing.log_batch(run_id, params=[Param("p", run_id)], metrics=[Metric("loss", 0.5, 1_700_000_000_000, 0)])
        backing.set_terminated(run_id, "FINISHED")
    az_path, _ = counting_az(tmp_path / "az")
    env = {**target.env, "PATH": f"{az_path}{os.pathsep}{os.environ['PATH']}"}
    local = tmp_path / "copy"
    args = ["--source", target.uri, "--target", str(local), "--experiments", experiment, "--workspace", workspace,
            "--credential", "cli", "--incremental"]
    refused_before = target.fake.requests["mlflow_refused_filter"]
    first = run_cli("migrate", *args, cwd=tmp_path, env=env)
    assert first.returncode == 0 and "created 3," in first.stderr, first.stderr[-3000:]

    backing.set_terminated(runs[2], "FINISHED")  # the open run finishes; a new run starts
    late = backing.create_run(exp, start_time=1_700_000_000_010, run_name="late").info.run_id
    second = run_cli("migrate", *args, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "and 1 open runs" in second.stderr and "created 1, repaired 1, skipped 2" in second.stderr, second.stderr[-3000:]
    assert target.fake.requests["mlflow_refused_filter"] == refused_before
    assert set(replayed_runs(uris.tracking_uri(str(local)), workspace)) == {*runs, late}
