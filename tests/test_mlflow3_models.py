"""MLflow 3 logged models that no registered version uses, copied with the runs (real servers).

Read back with MlflowClient directly: name, type, status, params, tags, files, metrics with their
model id and dataset, the replayed run as source run and as a run output; a rerun skips; a copy
left PENDING is completed; a target without the logged-model API is warned about once.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, ViewType

from conftest import run_cli, run_killed_after

sys.path.insert(0, str(Path(__file__).parent / "fakes"))
from fault_proxy import FaultProxy  # noqa: E402

T0 = 1_700_000_000_000
FILES = {"MLmodel": b"flavors: {}\n", "model.pkl": bytes(range(256)) * 8, "sub/notes ✓.txt": "unicode ✓\n".encode()}
LOGGED_MODEL_ROUTES = ("/api/2.0/mlflow/logged-models", "/api/2.0/mlflow/logged-models/search")


def seed(client: MlflowClient, name: str, scratch: Path, finalize: bool = True) -> dict:
    """A run that logged a model `clf` at step 3 (files, params, tags, an eval metric), and a
    model `broken` logged without a run, FAILED."""
    experiment = client.create_experiment(name)
    run_id = client.create_run(experiment, start_time=T0, run_name="trainer").info.run_id
    client.log_metric(run_id, "loss", 0.5, T0 + 1, 0)
    model = client.create_logged_model(experiment, name="clf", source_run_id=run_id, params={"C": "0.1", "penalty": "l2"},
                                       tags={"team": "a", "note": "λ ✓"}, model_type="sklearn")
    folder = scratch / name
    for rel, content in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    client.log_model_artifacts(model.model_id, str(folder))
    client.log_metric(run_id, "accuracy", 0.93, T0 + 2, 3, model_id=model.model_id, dataset_name="eval", dataset_digest="e9f0")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 3)])
    if finalize:
        client.finalize_logged_model(model.model_id, "READY")
    client.set_terminated(run_id, "FINISHED", end_time=T0 + 10)
    broken = client.create_logged_model(experiment, name="broken", params={"k": "v"})
    client.finalize_logged_model(broken.model_id, "FAILED")
    return {"run": run_id, "clf": model.model_id, "broken": broken.model_id, "experiment": experiment}


def copies(client: MlflowClient, name: str) -> dict[str, object]:
    """original_model_id -> the target's logged model, in the target experiment `name`."""
    experiment = client.get_experiment_by_name(name)
    found = client.search_logged_models([experiment.experiment_id])
    out = {}
    for model in found:
        original = model.tags["original_model_id"]
        assert original not in out, f"two copies of {original}"
        out[original] = model
    return out


def files_of(client: MlflowClient, model_id: str, scratch: Path) -> dict[str, bytes]:
    folder = scratch / model_id
    folder.mkdir(parents=True)
    from mlflow.artifacts import download_artifacts

    root = Path(download_artifacts(artifact_uri=client.get_logged_model(model_id).artifact_location, dst_path=str(folder),
                                   tracking_uri=client.tracking_uri))
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def replayed_run(client: MlflowClient, workspace: str, source_run: str):
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(ids, f"tags.original_job_id = '{source_run}' AND tags.original_workspace = '{workspace}'")
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def migrated(servers, tmp_path_factory):
    import uuid

    source, target = servers
    name = f"models-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("models")
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    ids = seed(src, name, work)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    result = run_cli("migrate", *args, cwd=work)
    assert result.returncode == 0, result.stderr
    return {"ids": ids, "args": args, "work": work, "src": src, "dst": dst, "name": name, "result": result}


def test_logged_models_are_copied_with_their_run_link(migrated, tmp_path):
    src, dst, ids = migrated["src"], migrated["dst"], migrated["ids"]
    found = copies(dst, migrated["name"])
    assert set(found) == {ids["clf"], ids["broken"]}
    run = replayed_run(dst, f"ws-{migrated['name']}", ids["run"])
    for original, copy in found.items():
        source = src.get_logged_model(original)
        assert (copy.name, copy.model_type, copy.status, copy.params) == (source.name, source.model_type, source.status, source.params)
        assert {k: v for k, v in copy.tags.items() if not k.startswith("original_")} == source.tags
        assert copy.tags["original_workspace"] == f"ws-{migrated['name']}"
    clf = found[ids["clf"]]
    assert clf.source_run_id == run.info.run_id and found[ids["broken"]].source_run_id in (None, "")
    assert str(clf.status) in ("READY", "LoggedModelStatus.READY") and "FAILED" in str(found[ids["broken"]].status)
    assert files_of(dst, clf.model_id, tmp_path / "dst") == files_of(src, ids["clf"], tmp_path / "src")
    assert [(m.key, m.value, m.step, m.timestamp, m.dataset_name, m.dataset_digest, m.model_id, m.run_id) for m in clf.metrics] == [
        ("accuracy", 0.93, 3, T0 + 2, "eval", "e9f0", clf.model_id, run.info.run_id)
    ]
    outputs = dst.get_run(run.info.run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(clf.model_id, 3)]
    # The model's metric point is in the run's history once, as in the source.
    assert len(dst.get_metric_history(run.info.run_id, "accuracy")) == len(src.get_metric_history(ids["run"], "accuracy")) == 1
    assert "logged models: copied 2, completed 0, updated 0, skipped 0, failed 0" in migrated["result"].stderr


def test_a_rerun_skips_them_and_verify_stays_clean(migrated):
    again = run_cli("migrate", *migrated["args"], cwd=migrated["work"])
    assert again.returncode == 0, again.stderr
    assert "logged models: copied 0, completed 0, updated 0, skipped 2, failed 0" in again.stderr
    assert len(copies(migrated["dst"], migrated["name"])) == 2
    check = run_cli("verify", *migrated["args"], cwd=migrated["work"])
    assert check.returncode == 0, check.stdout + check.stderr


def test_verify_names_a_changed_tag_and_a_missing_file_of_a_copy(migrated, tmp_path):
    import json

    dst, ids = migrated["dst"], migrated["ids"]
    clf = copies(dst, migrated["name"])[ids["clf"]]
    dst.set_logged_model_tags(clf.model_id, {"team": "b"})
    extra = tmp_path / "extra.txt"
    extra.write_text("not in the source\n")
    dst.log_model_artifact(clf.model_id, str(extra))
    report = tmp_path / "report.json"
    check = run_cli("verify", *migrated["args"], "--report", str(report), cwd=migrated["work"])
    assert check.returncode == 1, check.stdout + check.stderr
    found = {(d["job"], d["field"]) for d in json.loads(report.read_text())["differences"]}
    assert found == {(ids["clf"], "logged_model:tags"), (ids["clf"], "logged_model:file:extra.txt")}


def test_a_pending_copy_is_completed_once_the_source_finalizes(servers, tmp_path, unique):
    source, target = servers
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    name = f"models-pending-{unique}"
    ids = seed(src, name, tmp_path, finalize=False)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    first = run_cli("migrate", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "PENDING" in str(copies(dst, name)[ids["clf"]].status)
    src.finalize_logged_model(ids["clf"], "READY")
    second = run_cli("migrate", *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "logged models: copied 0, completed 1, updated 0, skipped 1, failed 0" in second.stderr
    clf = copies(dst, name)[ids["clf"]]
    assert "READY" in str(clf.status) and len(clf.metrics) == 1
    run = replayed_run(dst, f"ws-{name}", ids["run"])
    assert len(dst.get_run(run.info.run_id).outputs.model_outputs) == 1


def test_target_without_logged_models_warns_once_and_copies_the_runs(servers, tmp_path, unique):
    source, target = servers
    name = f"models-refused-{unique}"
    ids = seed_evaluated(MlflowClient(source.uri), name, tmp_path)
    with FaultProxy(target.uri, rate=0, refuse=LOGGED_MODEL_ROUTES) as proxy:
        args = ["--source", source.uri, "--target", proxy.uri, "--experiments", name, "--workspace", f"ws-{name}"]
        result = run_cli("migrate", *args, cwd=tmp_path)
        check = run_cli("verify", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("has no logged-model API") == 1
    assert "NOT copied, the target has no API for them: 3 logged models; NOT copied, the target has no API for them: 1 model inputs" in result.stderr
    assert check.returncode == 1  # verify says what was left out: each model, and the evaluator's model input
    assert check.stdout.count(" logged_model ") == 3 and f"model_input:{ids['clf']}" in check.stdout, check.stdout
    run = replayed_run(MlflowClient(target.uri), f"ws-{name}", ids["run"])
    assert "replay.complete" in run.data.tags


def test_a_source_without_logged_models_copies_its_runs_quietly(servers, tmp_path, unique):
    """An MLflow server before 3 has no logged-model routes: nothing to copy, nothing to warn about."""
    source, target = servers
    name = f"models-old-source-{unique}"
    ids = seed(MlflowClient(source.uri), name, tmp_path)
    with FaultProxy(source.uri, rate=0, refuse=LOGGED_MODEL_ROUTES) as proxy:
        args = ["--source", proxy.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
        result = run_cli("migrate", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert proxy.refused["/api/2.0/mlflow/logged-models/search"] >= 1
        check = run_cli("verify", *args, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "logged model" not in result.stderr.lower()
    assert "replay.complete" in replayed_run(MlflowClient(target.uri), f"ws-{name}", ids["run"]).data.tags
    assert MlflowClient(target.uri).get_experiment_by_name(name) is not None


# -- model inputs, run filters, changes on rerun, --skip-logged-models, dry run, manifest, kill -9 ----------------


def seed_evaluated(client: MlflowClient, name: str, scratch: Path) -> dict:
    """seed()'s models, plus a run `evaluator` that evaluated `clf` (a model input and a model
    metric on its own dataset) and a run `sweep-1` that logged a model `trial` at step 2."""
    from mlflow.entities import LoggedModelInput

    ids = seed(client, name, scratch)
    evaluator = client.create_run(ids["experiment"], start_time=T0 + 100, run_name="evaluator").info.run_id
    client.log_inputs(evaluator, models=[LoggedModelInput(ids["clf"])])
    client.log_metric(evaluator, "f1", 0.81, T0 + 101, 0, model_id=ids["clf"], dataset_name="holdout", dataset_digest="h0")
    client.set_terminated(evaluator, "FINISHED", end_time=T0 + 110)
    sweep = client.create_run(ids["experiment"], start_time=T0 + 200, run_name="sweep-1").info.run_id
    trial = client.create_logged_model(ids["experiment"], name="trial", source_run_id=sweep, model_type="pyfunc")
    client.log_outputs(sweep, [LoggedModelOutput(trial.model_id, 2)])
    client.finalize_logged_model(trial.model_id, "READY")
    client.set_terminated(sweep, "FINISHED", end_time=T0 + 210)
    return {**ids, "evaluator": evaluator, "sweep": sweep, "trial": trial.model_id}


def model_inputs_of(client: MlflowClient, run_id: str) -> list[str]:
    return [m.model_id for m in client.get_run(run_id).inputs.model_inputs]


@pytest.fixture(scope="module")
def evaluated(servers, tmp_path_factory):
    import uuid

    source, target = servers
    name = f"evaluated-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("evaluated")
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    ids = seed_evaluated(src, name, work)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    with FaultProxy(source.uri, rate=0) as proxy:  # counts what the migration asks the source
        result = run_cli("migrate", *[proxy.uri if a == source.uri else a for a in args], cwd=work)
    assert result.returncode == 0, result.stderr
    return {"ids": ids, "args": args, "work": work, "src": src, "dst": dst, "name": name, "result": result, "proxy": proxy}


def test_model_inputs_point_at_the_copied_model_and_a_rerun_adds_none(evaluated):
    src, dst, ids, name = evaluated["src"], evaluated["dst"], evaluated["ids"], evaluated["name"]
    assert model_inputs_of(src, ids["evaluator"]) == [ids["clf"]]
    found = copies(dst, name)
    assert set(found) == {ids["clf"], ids["broken"], ids["trial"]}
    evaluator = replayed_run(dst, f"ws-{name}", ids["evaluator"]).info.run_id
    assert model_inputs_of(dst, evaluator) == [found[ids["clf"]].model_id]
    for source_run in ("run", "sweep"):  # runs that evaluated nothing have no model input
        assert model_inputs_of(dst, replayed_run(dst, f"ws-{name}", ids[source_run]).info.run_id) == []
    # The evaluator's model metric is on the copy of clf with its dataset; the trial's output keeps its step.
    clf = found[ids["clf"]]
    assert sorted((m.key, m.dataset_name, m.run_id) for m in clf.metrics) == [
        ("accuracy", "eval", replayed_run(dst, f"ws-{name}", ids["run"]).info.run_id), ("f1", "holdout", evaluator)]
    sweep = replayed_run(dst, f"ws-{name}", ids["sweep"]).info.run_id
    assert [(o.model_id, o.step) for o in dst.get_run(sweep).outputs.model_outputs] == [(found[ids["trial"]].model_id, 2)]
    assert "model inputs added 1" in evaluated["result"].stderr
    # Model inputs cost a get_run per run, paid here (the experiment holds logged models).
    assert evaluated["proxy"].paths["/api/2.0/mlflow/runs/get"] >= 3
    again = run_cli("migrate", *evaluated["args"], cwd=evaluated["work"])
    assert again.returncode == 0, again.stderr
    assert "logged models: copied 0, completed 0, updated 0, skipped 3, failed 0" in again.stderr
    assert "model inputs added" not in again.stderr
    assert model_inputs_of(dst, evaluator) == [clf.model_id]
    check = run_cli("verify", *evaluated["args"], cwd=evaluated["work"])
    assert check.returncode == 0, check.stdout + check.stderr


def test_verify_names_a_model_input_the_target_run_lacks_or_has_extra(evaluated, tmp_path):
    """A model input added in the target to the trainer's copy is named; then the same on a copy
    made without the evaluator's input (another workspace name, inputs stripped by a proxy)."""
    import json

    from mlflow.entities import LoggedModelInput

    dst, ids, name = evaluated["dst"], evaluated["ids"], evaluated["name"]
    trainer = replayed_run(dst, f"ws-{name}", ids["run"]).info.run_id
    trial_copy = copies(dst, name)[ids["trial"]].model_id
    dst.log_inputs(trainer, models=[LoggedModelInput(trial_copy)])
    report = tmp_path / "report.json"
    check = run_cli("verify", *evaluated["args"], "--report", str(report), cwd=evaluated["work"])
    assert check.returncode == 1, check.stdout + check.stderr
    found = [(d["job"], d["field"], d["source"], d["target"]) for d in json.loads(report.read_text())["differences"]]
    assert found == [(ids["run"], f"model_input:{ids['trial']}", "(absent)", "present")]


def test_a_source_without_logged_models_pays_no_get_run_for_model_inputs(servers, tmp_path, unique):
    source, target = servers
    name = f"no-models-{unique}"
    client = MlflowClient(source.uri)
    experiment = client.create_experiment(name)
    for i in range(3):
        run_id = client.create_run(experiment, start_time=T0 + i, run_name=f"r{i}").info.run_id
        client.set_terminated(run_id, "FINISHED", end_time=T0 + 10)
    with FaultProxy(source.uri, rate=0) as proxy:
        result = run_cli("migrate", "--source", proxy.uri, "--target", target.uri, "--experiments", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created 3" in result.stderr
    assert proxy.paths["/api/2.0/mlflow/runs/get"] == 0
    assert proxy.paths["/api/2.0/mlflow/logged-models/search"] >= 1


def test_run_filters_narrow_logged_models_to_the_selected_runs(servers, tmp_path, unique):
    """--include trainer: clf (its run) comes; trial (its run not selected) and broken (no run:
    only with whole experiments) do not; verify with the same filter is clean."""
    source, target = servers
    name = f"models-filtered-{unique}"
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    ids = seed_evaluated(src, name, tmp_path)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    dry = run_cli("migrate", *args, "--include", "trainer", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "selected: 1 runs, 0 dataset inputs, 1 logged models, 0 model inputs" in dry.stdout
    result = run_cli("migrate", *args, "--include", "trainer", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(copies(dst, name)) == {ids["clf"]}
    check = run_cli("verify", *args, "--include", "trainer", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    # Then the evaluator alone: its model input points at the clf copied before.
    result = run_cli("migrate", *args, "--include", "evaluator", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    evaluator = replayed_run(dst, f"ws-{name}", ids["evaluator"]).info.run_id
    assert model_inputs_of(dst, evaluator) == [copies(dst, name)[ids["clf"]].model_id]
    assert set(copies(dst, name)) == {ids["clf"]}


def test_a_model_changed_in_the_source_is_updated_on_rerun(servers, tmp_path, unique):
    """Tags added, changed and removed, a new param and a new metric point on a finished model:
    the rerun brings its copy level (the run, its history grown, is repaired as ever)."""
    source, target = servers
    name = f"models-changed-{unique}"
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    ids = seed(src, name, tmp_path)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    assert run_cli("migrate", *args, cwd=tmp_path).returncode == 0
    src.set_logged_model_tags(ids["clf"], {"team": "c", "stage": "prod"})
    src.delete_logged_model_tag(ids["clf"], "note")
    src.log_model_params(ids["clf"], {"max_iter": "200"})
    src.log_metric(ids["run"], "accuracy", 0.95, T0 + 3, 4, model_id=ids["clf"], dataset_name="eval", dataset_digest="e9f0")
    again = run_cli("migrate", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "logged models: copied 0, completed 0, updated 1, skipped 1, failed 0" in again.stderr
    copy, changed = copies(dst, name)[ids["clf"]], src.get_logged_model(ids["clf"])
    assert {k: v for k, v in copy.tags.items() if not k.startswith("original_")} == changed.tags == {"team": "c", "stage": "prod"}
    assert copy.params == changed.params and len(copy.params) == 3
    assert sorted((m.value, m.step) for m in copy.metrics) == [(0.93, 3), (0.95, 4)]
    run = replayed_run(dst, f"ws-{name}", ids["run"]).info.run_id
    assert [(m.value, m.step) for m in dst.get_metric_history(run, "accuracy")] == [(0.93, 3), (0.95, 4)]
    check = run_cli("verify", *args, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    third = run_cli("migrate", *args, cwd=tmp_path)
    assert "logged models: copied 0, completed 0, updated 0, skipped 2, failed 0" in third.stderr


def test_skip_logged_models_copies_runs_only_and_the_dry_run_counts_each_kind(servers, tmp_path, unique):
    source, _ = servers
    name = f"models-skip-{unique}"
    src = MlflowClient(source.uri)
    ids = seed_evaluated(src, name, tmp_path)
    src.create_experiment(f"{name}-empty", tags={"mlflow.note.content": "a GenAI project, no runs yet"})
    target = tmp_path / "target"
    args = ["--source", source.uri, "--target", str(target), "--experiments", f"{name}*", "--workspace", f"ws-{name}"]
    dry = run_cli("migrate", *args, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "selected: 3 runs, 0 dataset inputs, 3 logged models, 1 model inputs, 1 runless experiments" in dry.stdout
    skipped = run_cli("migrate", *args, "--dry-run", "--skip-logged-models", cwd=tmp_path)
    assert "selected: 3 runs, 0 dataset inputs, 1 runless experiments" in skipped.stdout
    result = run_cli("migrate", *args, "--skip-logged-models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created 3" in result.stderr and "logged models" not in result.stderr
    dst = MlflowClient(f"sqlite:///{target / 'mlflow.db'}")
    assert copies(dst, name) == {}
    assert model_inputs_of(dst, replayed_run(dst, f"ws-{name}", ids["evaluator"]).info.run_id) == []
    check = run_cli("verify", *args, "--skip-logged-models", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    full = run_cli("verify", *args, cwd=tmp_path)
    assert full.returncode == 1
    for field in ("logged_model ", f"model_input:{ids['clf']}"):
        assert field in full.stdout, full.stdout


def test_logged_models_travel_through_a_manifest(servers, tmp_path, unique):
    """extract writes the models (records and files) and the runs' model inputs; replay creates
    them in an embedded target; verify from the manifest and from the live source are clean; a
    second replay creates nothing."""
    import json

    source, _ = servers
    name = f"models-manifest-{unique}"
    src = MlflowClient(source.uri)
    ids = seed_evaluated(src, name, tmp_path)
    manifest, target = tmp_path / "manifest", tmp_path / "target"
    select = ["--experiments", name, "--workspace", f"ws-{name}"]
    extracted = run_cli("extract", "--source", source.uri, "--out", str(manifest), *select, cwd=tmp_path)
    assert extracted.returncode == 0, extracted.stderr
    header = json.loads((manifest / "manifest.json").read_text())
    assert header["counts"]["logged_models"] == 3
    records = {r["model_id"]: r for r in map(json.loads, (manifest / "logged_models.jsonl").read_text().splitlines())}
    assert records[ids["trial"]]["output_steps"] == [2] and records[ids["clf"]]["params"] == {"C": "0.1", "penalty": "l2"}
    jobs = {j["source_id"]: j for j in map(json.loads, (manifest / "jobs.jsonl").read_text().splitlines())}
    assert jobs[ids["evaluator"]]["model_inputs"] == [ids["clf"]]
    replayed = run_cli("replay", "--manifest", str(manifest), "--target", str(target), cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert "logged models: copied 3, completed 0, updated 0, skipped 0, failed 0; model inputs added 1" in replayed.stderr
    dst = MlflowClient(f"sqlite:///{target / 'mlflow.db'}")
    found = copies(dst, name)
    assert set(found) == set(records)
    clf = found[ids["clf"]]
    assert files_of(dst, clf.model_id, tmp_path / "dst") == files_of(src, ids["clf"], tmp_path / "src")
    evaluator = replayed_run(dst, f"ws-{name}", ids["evaluator"]).info.run_id
    assert model_inputs_of(dst, evaluator) == [clf.model_id]
    sweep = replayed_run(dst, f"ws-{name}", ids["sweep"]).info.run_id
    assert [(o.model_id, o.step) for o in dst.get_run(sweep).outputs.model_outputs] == [(found[ids["trial"]].model_id, 2)]
    for origin in (str(manifest), source.uri):
        check = run_cli("verify", "--source", origin, "--target", str(target), *select, cwd=tmp_path)
        assert check.returncode == 0, origin + check.stdout + check.stderr
    again = run_cli("replay", "--manifest", str(manifest), "--target", str(target), cwd=tmp_path)
    assert "logged models: copied 0, completed 0, updated 0, skipped 3, failed 0" in again.stderr


def test_a_migration_killed_among_the_logged_models_resumes_without_duplicates(servers, tmp_path, unique):
    source, target = servers
    name = f"models-killed-{unique}"
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    ids = seed_evaluated(src, name, tmp_path)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}", "--parallel", "1"]
    # Killed right after the target answered the 2nd create_logged_model: that copy exists PENDING,
    # without files, metrics, output or status, whatever the machine's speed.
    run_killed_after("mlflow:MlflowClient.create_logged_model", 2, "migrate", *args, cwd=tmp_path)
    half = copies(dst, name)
    assert len(half) == 2 and sorted("PENDING" in str(m.status) for m in half.values()) == [False, True]
    evaluator = replayed_run(dst, f"ws-{name}", ids["evaluator"]).info.run_id
    assert model_inputs_of(dst, evaluator) == []  # killed before the model inputs
    again = run_cli("migrate", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "logged models: copied 1, completed 1, updated 0, skipped 1, failed 0; model inputs added 1" in again.stderr
    found = copies(dst, name)  # asserts one copy per source model
    assert set(found) == {ids["clf"], ids["broken"], ids["trial"]}
    assert all("PENDING" not in str(m.status) for m in found.values())
    assert model_inputs_of(dst, evaluator) == [found[ids["clf"]].model_id]
    check = run_cli("verify", *args, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    third = run_cli("migrate", *args, cwd=tmp_path)
    assert "logged models: copied 0, completed 0, updated 0, skipped 3, failed 0" in third.stderr
