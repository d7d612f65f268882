"""Registered models and experiment options between two real mlflow servers.

Seeded: two models whose versions use all three forms of `source` (a run's artifacts by
`runs:/`, a run's artifact URI, an MLflow 3 logged model by `models:/` and by `runs:/RUN/NAME`),
a deleted version (a gap in the numbers), stages, aliases, descriptions and tags. The assertions
read the target with MlflowClient directly; verify is then checked to agree and to catch changes.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from conftest import run_cli
from runner.core.errors import UsageError
from runner.engine.mapping import load_renames
from servers import MlflowServer
from test_azureml_target import target  # noqa: F401 - a workspace whose runs get azureml:// artifact URIs (HTTPS Azurite)

T0 = 1_700_000_000_000


def model_files(folder: Path, marker: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(f"flavors: {{}}\nmarker: {marker}\n")
    (folder / "weights.bin").write_bytes(marker.encode() * 100 + bytes(range(256)))
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "conf ✓.json").write_text(json.dumps({"m": marker}))
    return folder


def seed(client: MlflowClient, name: str, scratch: Path, uri_form: bool = True) -> dict:
    exp = client.create_experiment(f"{name}-exp")
    other = client.create_experiment(f"{name}-other")
    runs = {}
    for i, key in enumerate(["r1", "r2", "r3", "r4"]):
        run = client.create_run(exp, start_time=T0 + i, run_name=key, tags={"mlflow.user": "alice"})
        runs[key] = run
        client.log_param(run.info.run_id, "i", str(i))
        if key != "r3":
            client.log_artifacts(run.info.run_id, str(model_files(scratch / key, key)), "model")
        client.set_terminated(run.info.run_id, "FINISHED", end_time=T0 + 1000 + i)
    runs["lonely"] = client.create_run(other, start_time=T0, run_name="lonely")
    client.log_artifacts(runs["lonely"].info.run_id, str(model_files(scratch / "lonely", "lonely")), "model")
    client.set_terminated(runs["lonely"].info.run_id, "FINISHED", end_time=T0 + 5)
    ids = {k: r.info.run_id for k, r in runs.items()}
    # An MLflow 3 logged model of run r3 (its files are not run artifacts).
    net = client.create_logged_model(exp, name="net", source_run_id=ids["r3"], tags={"framework": "numpy"}, params={"layers": "3"})
    client.log_model_artifacts(net.model_id, str(model_files(scratch / "net", "net")))
    client.finalize_logged_model(net.model_id, "READY")

    churn, fraud, lonely = f"{name}-churn", f"{name}-fraud", f"{name}-lonely"
    client.create_registered_model(churn, tags={"team": "growth", "pii": "no"}, description="churn model ✓")
    client.create_model_version(churn, f"runs:/{ids['r1']}/model", ids["r1"], tags={"quality": "low"}, description="first")
    client.create_model_version(churn, f"runs:/{ids['r2']}/model", ids["r2"], description="to be deleted")
    third = f"{runs['r2'].info.artifact_uri}/model" if uri_form else f"runs:/{ids['r2']}/model"
    client.create_model_version(churn, third, ids["r2"], tags={"quality": "good"}, description="third")
    client.create_model_version(churn, f"models:/{net.model_id}", ids["r3"], model_id=net.model_id, description="net")
    client.delete_model_version(churn, "2")
    client.transition_model_version_stage(churn, "1", "Archived")
    client.transition_model_version_stage(churn, "3", "Production")
    client.set_registered_model_alias(churn, "champion", "3")
    client.set_registered_model_alias(churn, "challenger", "4")
    client.create_registered_model(fraud)
    client.create_model_version(fraud, f"runs:/{ids['r4']}/model", ids["r4"], tags={"k": "v"})
    client.create_model_version(fraud, f"runs:/{ids['r3']}/net", ids["r3"], description="the net, by run and name")
    # Files somewhere else on the source's store, registered without a run.
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    elsewhere = f"mlflow-artifacts:/shared/{fraud}/v3"
    get_artifact_repository(elsewhere, tracking_uri=client.tracking_uri).log_artifacts(str(model_files(scratch / "shared", "shared")))
    client.create_model_version(fraud, elsewhere, description="from a shared folder")
    client.set_registered_model_alias(fraud, "live", "2")
    client.create_registered_model(lonely, description="its run lives in another experiment")
    client.create_model_version(lonely, f"runs:/{ids['lonely']}/model", ids["lonely"])
    return {"ids": ids, "models": [churn, fraud], "lonely": lonely, "net": net.model_id}


@pytest.fixture(scope="module")
def migrated(servers, tmp_path_factory):
    source, target = servers
    name = f"reg-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("registry")
    seeded = seed(MlflowClient(source.uri), name, work / "seed")
    workspace = f"ws-{name}"
    args = ["--source", source.uri, "--target", target.uri, "--experiments", f"{name}-exp", "--workspace", workspace,
            "--models", f"{name}-churn,{name}-fraud", "--parallel", "4"]
    dry = run_cli("migrate", *args, "--dry-run", cwd=work)
    assert dry.returncode == 0, dry.stderr
    result = run_cli("migrate", *args, cwd=work)
    assert result.returncode == 0, result.stderr
    return {**seeded, "name": name, "work": work, "workspace": workspace, "args": args, "dry": dry, "result": result,
            "source": MlflowClient(source.uri), "target": MlflowClient(target.uri), "uris": (source.uri, target.uri)}


def replayed_run(client: MlflowClient, workspace: str, source_id: str):
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    found = client.search_runs(exps, f"tags.original_workspace = '{workspace}' and tags.original_job_id = '{source_id}'", ViewType.ALL)
    assert len(found) == 1, f"{len(found)} replayed runs for {source_id}"
    return found[0]


def versions(client: MlflowClient, model: str) -> dict[str, object]:
    return {str(v.version): v for v in client.search_model_versions(f"name='{model}'")}


def tree(uri: str, dest: Path, tracking_uri: str, monkeypatch) -> dict[str, bytes]:
    import mlflow

    # runs:/RUN/NAME of a logged model resolves through a client on the default URI (MLflow 3.15).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=tracking_uri))
    return {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}


def test_dry_run_plans_models_and_writes_nothing(migrated):
    out = migrated["dry"].stdout
    churn, fraud = migrated["models"]
    assert f"+ model {churn} (3 versions)" in out and f"+ model {fraud} (3 versions)" in out
    assert f"+   {churn} v3 [Production]" in out
    assert "would create 2 models and 6 versions" in migrated["dry"].stderr


def test_models_and_versions_round_trip(migrated, tmp_path, monkeypatch):
    src, dst, ws = migrated["source"], migrated["target"], migrated["workspace"]
    src_uri, dst_uri = migrated["uris"]
    for model in migrated["models"]:
        a, b = src.get_registered_model(model), dst.get_registered_model(model)
        assert (b.description, b.tags, b.aliases) == (a.description, a.tags, a.aliases)
        want, have = versions(src, model), versions(dst, model)
        assert sorted(have) == sorted(want), "same version numbers, gaps included"
        for number, v in want.items():
            copy = have[number]
            assert (copy.description, copy.current_stage) == (v.description, v.current_stage)
            user = {k: x for k, x in copy.tags.items() if not k.startswith(("original_", "replay."))}
            assert user == v.tags
            assert copy.tags["original_model_version"] == number and copy.tags["original_workspace"] == ws
            # What the target sets by itself is kept as tags (an MLflow server has no user or run link).
            assert copy.tags["original_creation_timestamp"] == str(v.creation_timestamp) != str(copy.creation_timestamp)
            assert ("original_user_id" in copy.tags, "original_run_link" in copy.tags) == (bool(v.user_id), bool(v.run_link))
            if v.run_id:
                assert copy.tags["original_run_id"] == v.run_id
                assert copy.run_id == replayed_run(dst, ws, v.run_id).info.run_id, "run link points at the replayed run"
                assert copy.source.split(":")[0] == v.source.split(":")[0], "same form of source"
            else:  # files from elsewhere: uploaded into a logged model of the target
                assert not copy.run_id and copy.source.startswith("models:/m-")
            copied = tree(dst.get_model_version_download_uri(model, number), tmp_path / f"b{model}{number}", dst_uri, monkeypatch)
            assert copied == tree(src.get_model_version_download_uri(model, number), tmp_path / f"a{model}{number}", src_uri, monkeypatch)
            assert any(path.endswith("weights.bin") for path in copied)
    churn = migrated["models"][0]
    assert "2" not in versions(dst, churn), "the deleted version stays a gap"
    copy = versions(dst, churn)["3"]
    assert copy.source == replayed_run(dst, ws, migrated["ids"]["r2"]).info.artifact_uri + "/model"


def test_logged_model_is_copied_once_with_its_run(migrated):
    dst, ws = migrated["target"], migrated["workspace"]
    run = replayed_run(dst, ws, migrated["ids"]["r3"])
    found = dst.search_logged_models([run.info.experiment_id], filter_string=f"tags.original_model_id = '{migrated['net']}'")
    assert len(found) == 1, "two versions (models:/ and runs:/RUN/net) share one copy"
    net = found[0]
    assert (net.name, net.source_run_id, net.params, net.tags["framework"]) == ("net", run.info.run_id, {"layers": "3"}, "numpy")
    assert str(getattr(net.status, "value", net.status)) == "READY"
    churn, fraud = migrated["models"]
    assert versions(dst, churn)["4"].source == f"models:/{net.model_id}"
    assert versions(dst, fraud)["2"].source == f"runs:/{run.info.run_id}/net"


def test_rerun_creates_nothing_and_verify_covers_models(migrated):
    again = run_cli("migrate", *migrated["args"], cwd=migrated["work"])
    assert again.returncode == 0, again.stderr
    assert "summary: created 0, repaired 0, skipped 4, failed 0" in again.stderr
    assert "models: created 0, updated 0, skipped 2; versions: created 0, repaired 0, skipped 6, failed 0" in again.stderr
    report = migrated["work"] / "verify.json"
    check = run_cli("verify", *migrated["args"], "--report", str(report), cwd=migrated["work"])
    assert check.returncode == 0, check.stdout + check.stderr
    data = json.loads(report.read_text())
    assert data["summary"]["models"] == 2 and data["differences"] == []


def test_verify_catches_changes_and_migrate_repairs_them(migrated):
    src, dst = migrated["source"], migrated["target"]
    churn, fraud = migrated["models"]
    src.update_model_version(churn, "1", description="first, edited at the source")
    src.set_model_version_tag(fraud, "1", "k", "changed")
    dst.set_registered_model_alias(churn, "champion", "1")  # tampered in the target
    dst.set_registered_model_tag(fraud, "extra", "x")
    dst.delete_model_version_tag(churn, "3", "original_creation_timestamp")  # as copied before that tag existed
    report = migrated["work"] / "verify-changed.json"
    check = run_cli("verify", *migrated["args"], "--report", str(report), cwd=migrated["work"])
    assert check.returncode == 1
    fields = {(d["job"], d["field"]) for d in json.loads(report.read_text())["differences"]}
    assert {(f"model:{churn}/v1", "description"), (f"model:{fraud}/v1", "tags"), (f"model:{churn}", "aliases"),
            (f"model:{fraud}", "model_tags"), (f"model:{churn}/v3", "lineage")} <= fields
    fixed = run_cli("migrate", *migrated["args"], cwd=migrated["work"])
    assert fixed.returncode == 0, fixed.stderr
    assert "versions: created 0, repaired 3, skipped 3" in fixed.stderr
    assert run_cli("verify", *migrated["args"], cwd=migrated["work"]).returncode == 0
    assert dst.get_registered_model(churn).aliases["champion"] == "3"


def test_a_version_whose_run_was_not_migrated_fails_with_a_hint(migrated):
    src_uri, dst_uri = migrated["uris"]
    base = ["--source", src_uri, "--target", dst_uri, "--workspace", migrated["workspace"], "--models", migrated["lonely"]]
    alone = run_cli("migrate", *base, "--models-only", cwd=migrated["work"])
    assert alone.returncode == 1
    assert "is not in the target: migrate that run first" in alone.stderr
    both = run_cli("migrate", *base, "--experiments", f"{migrated['name']}-other", cwd=migrated["work"])
    assert both.returncode == 0, both.stderr
    copy = versions(migrated["target"], migrated["lonely"])["1"]
    assert copy.run_id == replayed_run(migrated["target"], migrated["workspace"], migrated["ids"]["lonely"]).info.run_id


def test_rename_file_source_tags_source_user_and_deleted_experiments(servers, tmp_path, unique):
    source, target = servers
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    old, gone = f"ren-{unique}", f"gone-{unique}"
    exp = src.create_experiment(old, tags={"owner": "team-b"})
    run = src.create_run(exp, start_time=T0, run_name="r", tags={"mlflow.user": "bob", "t": "1"})
    src.delete_tag(run.info.run_id, "mlflow.user")  # the run keeps user bob, without the tag
    src.set_terminated(run.info.run_id, "FAILED", end_time=T0 + 10)
    dead = src.create_experiment(gone)
    src.set_terminated(src.create_run(dead, start_time=T0, run_name="in-deleted").info.run_id, "FINISHED", end_time=T0 + 1)
    src.delete_experiment(dead)
    renames = tmp_path / "renames.csv"
    renames.write_text(f"old,new\n{old},{old}-renamed\n")
    args = ["--source", source.uri, "--target", target.uri, "--experiments", f"{old},{gone}", "--include-deleted",
            "--workspace", f"ws-{unique}"]
    result = run_cli("migrate", *args, "--rename-file", str(renames), "--import-source-tags", "--use-source-user", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert dst.get_experiment_by_name(old) is None
    renamed = dst.get_experiment_by_name(f"{old}-renamed")
    assert renamed.tags["owner"] == "team-b" and renamed.tags["original_src.experiment_id"] == exp
    copy = replayed_run(dst, f"ws-{unique}", run.info.run_id)
    assert copy.info.experiment_id == renamed.experiment_id
    assert copy.data.tags["original_experiment"] == old
    assert copy.data.tags["mlflow.user"] == "bob" and copy.info.user_id == "bob"
    assert copy.data.tags["original_src.user_id"] == "bob" and copy.data.tags["original_src.status"] == "FAILED"
    assert copy.data.tags["original_src.experiment_id"] == exp and copy.data.tags["original_src.start_time"] == str(T0)
    assert dst.get_experiment_by_name(gone).lifecycle_stage == "deleted", "a deleted experiment stays deleted"
    assert run_cli("verify", *args, "--rename-file", str(renames), cwd=tmp_path).returncode == 0
    report = tmp_path / "no-renames.json"
    lost = run_cli("verify", *args, "--report", str(report), cwd=tmp_path)
    assert lost.returncode == 1
    assert {"experiment"} <= {d["field"] for d in json.loads(report.read_text())["differences"]}


def test_rename_files_in_csv_and_yaml(tmp_path):
    (tmp_path / "r.yml").write_text("a: b\n'with, comma': c\n")
    assert load_renames(tmp_path / "r.yml") == {"a": "b", "with, comma": "c"}
    (tmp_path / "r.csv").write_text('# comment\na,b\n"x, y",z\n')
    assert load_renames(tmp_path / "r.csv") == {"a": "b", "x, y": "z"}
    (tmp_path / "bad.csv").write_text("a,b,c\n")
    with pytest.raises(UsageError, match="bad.csv:1: expected two columns"):
        load_renames(tmp_path / "bad.csv")
    (tmp_path / "twice.csv").write_text("a,b\na,c\n")
    with pytest.raises(UsageError, match="renamed twice"):
        load_renames(tmp_path / "twice.csv")


# -- through the AzureML MLflow endpoint ---------------------------------------------------------


class LocalArtifactsServer(MlflowServer):
    """The fake workspace's backing server with file:// artifact roots: this round trip exercises
    the registry calls through the AzureML endpoint and azureml-mlflow, and logged models (whose
    files the fake's artifact service does not serve). Run files through Azure ML's artifact
    service (azureml://.../runs/R/artifacts, blob SAS) are the last test of this file."""

    def artifact_args(self) -> list[str]:
        return ["--default-artifact-root", (self.folder / "artifacts").as_uri(), "--no-serve-artifacts"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An AzureML workspace in the fake control plane; the CLI reaches it with `az` (the fake one)."""
    from fakes import azureml_registry  # noqa: F401 - registers the registry switches
    from fakes.azureml_control_plane import FakeControlPlane, FakeWorkspace, cli_environment

    base = tmp_path_factory.mktemp("azureml-registry")
    server = LocalArtifactsServer(base / "mlflow").start()
    fake = FakeControlPlane(base / "fake", server.uri).start()
    ws = fake.add(FakeWorkspace("2f1e0c4d-0000-4000-8000-00000000c0de", "rg-models", "ws-models"))
    try:
        with cli_environment(fake, base / "az") as env:
            # The URI `MLClient.workspaces.get()` reports as the workspace's mlflow_tracking_uri.
            yield {"uri": f"azureml://127.0.0.1:{fake.port}/mlflow/v1.0{ws.scope}", "fake": fake, "ws": ws, "env": env}
    finally:
        fake.stop()
        server.stop()


def test_models_round_trip_into_and_out_of_an_azureml_workspace(servers, workspace, tmp_path, monkeypatch):
    """MLflow server -> AzureML workspace -> local store: versions, gaps, stages, aliases, logged
    models and files equal at every hop; verify clean; a rerun creates nothing."""
    source, _ = servers
    name = f"aml-{uuid.uuid4().hex[:8]}"
    # Not the run-artifact-URI form of `source`: this fake's file:// artifact URIs would meet
    # azureml-mlflow's create_model_version, which uploads file:// sources as local folders
    # (a real workspace's run artifact URIs are azureml://, which it passes through).
    seeded = seed(MlflowClient(source.uri), name, tmp_path / "seed", uri_form=False)
    models = ",".join(seeded["models"])
    azure, local = workspace["uri"], str(tmp_path / "local")
    legs = [
        (source.uri, azure, ["--experiments", f"{name}-exp", "--workspace", f"ws-{name}"]),
        (azure, local, ["--experiments", f"{name}-exp", "--workspace", f"aml-{name}"]),
    ]
    for src_uri, dst_uri, extra in legs:
        args = ["--source", src_uri, "--target", dst_uri, *extra, "--models", models, "--parallel", "4"]
        result = run_cli("migrate", *args, cwd=tmp_path, env=workspace["env"])
        assert result.returncode == 0, result.stderr[-3000:]
        assert "versions: created 6, repaired 0, skipped 0, failed 0" in result.stderr
        again = run_cli("migrate", *args, cwd=tmp_path, env=workspace["env"])
        assert "models: created 0, updated 0, skipped 2; versions: created 0, repaired 0, skipped 6, failed 0" in again.stderr, again.stderr[-2000:]
        report = tmp_path / "verify.json"
        check = run_cli("verify", *args, "--report", str(report), cwd=tmp_path, env=workspace["env"])
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]
        assert json.loads(report.read_text())["summary"]["models"] == 2
    assert workspace["fake"].requests["mlflow"] > 100, "the AzureML hop went through the endpoint"

    src = MlflowClient(source.uri)
    end = MlflowClient(stores_uri(local))
    for model in seeded["models"]:
        a, b = src.get_registered_model(model), end.get_registered_model(model)
        aliases = {k: str(v) for k, v in b.aliases.items()}  # a sqlite store answers numbers, REST strings
        assert (b.description or "", b.tags, aliases) == (a.description or "", a.tags, a.aliases)
        want, have = versions(src, model), versions(end, model)
        assert sorted(have) == sorted(want)
        for number, v in want.items():
            copy = have[number]
            assert (copy.description or "", copy.current_stage, user_only(copy.tags)) == (v.description or "", v.current_stage, v.tags)
            copied = tree(end.get_model_version_download_uri(model, number), tmp_path / f"b{model}{number}", stores_uri(local), monkeypatch)
            assert copied == tree(src.get_model_version_download_uri(model, number), tmp_path / f"a{model}{number}", source.uri, monkeypatch)


def test_a_workspace_without_aliases_stages_or_logged_models(servers, workspace, tmp_path):
    """Should the AzureML endpoint lack aliases and stages, they are kept as `replay.aliases` /
    `replay.stage` tags (verify reads them back); a version that needs a logged model fails with
    one clear reason, and the versions after it wait (versions are copied in order)."""
    from fakes.azureml_registry import refuse

    source, _ = servers
    name = f"bare-{uuid.uuid4().hex[:8]}"
    seeded = seed(MlflowClient(source.uri), name, tmp_path / "seed", uri_form=False)
    churn, fraud = seeded["models"]
    refuse(workspace["ws"], "aliases", "stages", "logged-model-create")
    try:
        args = ["--source", source.uri, "--target", workspace["uri"], "--experiments", f"{name}-exp", "--workspace", f"ws-{name}",
                "--models", f"{churn},{fraud}"]
        result = run_cli("migrate", *args, cwd=tmp_path, env=workspace["env"])
        assert result.returncode == 1
        assert "the target registry has no aliases (ENDPOINT_NOT_FOUND)" in result.stderr
        assert "the target registry has no stages (ENDPOINT_NOT_FOUND)" in result.stderr
        assert f"failed {churn} v4: its files (models:/{seeded['net']}) need an MLflow 3 logged model in the target" in result.stderr
        assert f"failed {fraud} v2: its files (runs:/{seeded['ids']['r3']}/net) need an MLflow 3 logged model" in result.stderr
        assert f"failed {fraud} v3: v2 before it failed" in result.stderr
        dst = MlflowClient(workspace["uri"])
        model = dst.get_registered_model(churn)
        assert model.aliases == {} and json.loads(model.tags["replay.aliases"]) == {"champion": "3"}
        copies = versions(dst, churn)
        assert copies["3"].current_stage == "None" and copies["3"].tags["replay.stage"] == "Production"
        assert copies["1"].tags["replay.stage"] == "Archived"
        report = tmp_path / "bare.json"
        check = run_cli("verify", *args, "--report", str(report), cwd=tmp_path, env=workspace["env"])
        differences = {(d["job"], d["field"]) for d in json.loads(report.read_text())["differences"]}
        assert differences == {(f"model:{churn}/v4", "version"), (f"model:{churn}", "aliases"), (f"model:{fraud}/v2", "version"),
                               (f"model:{fraud}/v3", "version"), (f"model:{fraud}", "aliases"),
                               (seeded["net"], "logged_model")}, "stages and churn's copied alias read back; the logged model is missing"
        assert "has no logged-model API" in result.stderr  # replay's own copy of it met the refusal first
        again = run_cli("migrate", *args, cwd=tmp_path, env=workspace["env"])
        assert "versions: created 0, repaired 0, skipped 3, failed 3" in again.stderr, again.stderr[-2000:]
        assert workspace["fake"].requests["mlflow_refused_aliases"] == 1, "a known-missing feature is not asked for again"
    finally:
        workspace["ws"].mlflow_refused = set()


def user_only(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not k.startswith(("original_", "replay."))}


def stores_uri(folder: str) -> str:
    from runner.mlflow import uris

    return uris.tracking_uri(folder)


# -- into an AzureML workspace whose run files go through its artifact service --------------------


def test_model_versions_into_azureml_artifact_service(target, tmp_path):
    """`--models all` into a workspace whose runs' files live in run history's artifact store: each
    version links to its replayed run, whose files (in Azurite, under that run's prefix) are the
    version's; verify is clean and a rerun creates nothing."""
    from fakes.azureml_control_plane import write_fake_az

    source = MlflowServer(tmp_path / "source").start()  # its own: `all` must mean this test's models only
    try:
        client, name = MlflowClient(source.uri), f"azart-{uuid.uuid4().hex[:8]}"
        exp = client.create_experiment(f"{name}-exp")
        ids = {}
        for i, key in enumerate(["r1", "r2"]):
            run = client.create_run(exp, start_time=T0 + i, run_name=key)
            client.log_artifacts(run.info.run_id, str(model_files(tmp_path / key, key)), "model")
            client.set_terminated(run.info.run_id, "FINISHED", end_time=T0 + 10 + i)
            ids[key] = run.info
        client.create_registered_model(name, tags={"team": "a"}, description="through the artifact service")
        client.create_model_version(name, f"runs:/{ids['r1'].run_id}/model", ids["r1"].run_id, description="first")
        client.create_model_version(name, f"runs:/{ids['r2'].run_id}/model", ids["r2"].run_id, tags={"q": "good"})
        client.create_model_version(name, f"{ids['r2'].artifact_uri}/model", ids["r2"].run_id, description="by URI")
        client.set_registered_model_alias(name, "champion", "3")

        env = {**target.env, "PATH": f"{write_fake_az(tmp_path / 'az', sys.executable)}{os.pathsep}{os.environ['PATH']}"}
        args = ["--source", source.uri, "--target", target.uri, "--experiments", f"{name}-exp", "--workspace", f"ws-{name}",
                "--models", "all", "--credential", "cli"]
        result = run_cli("migrate", *args, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "versions: created 3, repaired 0, skipped 0, failed 0" in result.stderr, result.stderr[-3000:]

        dst = MlflowClient(target.backing.uri)  # the fake's own server: what the workspace holds
        assert dst.get_registered_model(name).aliases == {"champion": "3"}
        copies = versions(dst, name)
        assert sorted(copies) == ["1", "2", "3"]
        for number, key in (("1", "r1"), ("2", "r2"), ("3", "r2")):
            run_id = replayed_run(dst, f"ws-{name}", ids[key].run_id).info.run_id
            assert copies[number].run_id == run_id
            prefix = target.store.prefix(run_id) + "model/"
            blobs = {b.name[len(prefix):] for b in target.store.client().list_blobs(name_starts_with=prefix)}
            assert blobs == {"MLmodel", "weights.bin", "sub/conf ✓.json"}, blobs
            weights = target.store.client().download_blob(prefix + "weights.bin").readall()
            assert weights == (tmp_path / key / "weights.bin").read_bytes()
        assert copies["3"].source.startswith(f"azureml://127.0.0.1:{target.fake.port}/") and copies["3"].source.endswith(f"/runs/{copies['3'].run_id}/artifacts/model")

        located = lambda: target.fake.requests["artifact_contentinfo"] + target.fake.requests["artifact_prefix_contentinfo"]  # noqa: E731
        report, read = tmp_path / "verify.json", located()
        check = run_cli("verify", *args, "--report", str(report), cwd=tmp_path, env=env)
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]
        data = json.loads(report.read_text())
        assert data["summary"]["models"] == 1 and data["differences"] == []
        # Each version's model/ folder (3 files) located in one prefix/contentinfo or per file: through the service either way.
        assert located() - read >= 3, "verify read the versions' files through the service"
        again = run_cli("migrate", *args, cwd=tmp_path, env=env)
        assert "models: created 0, updated 0, skipped 1; versions: created 0, repaired 0, skipped 3, failed 0" in again.stderr, again.stderr[-3000:]

        # Changed bytes in the workspace's blob store are seen through the version, not only the run.
        first = copies["1"].run_id
        target.store.client().upload_blob(target.store.prefix(first) + "model/weights.bin", b"changed", overwrite=True)
        changed = run_cli("verify", *args, "--report", str(report), cwd=tmp_path, env=env)
        assert changed.returncode == 1
        assert (f"model:{name}/v1", "file:weights.bin") in {(d["job"], d["field"]) for d in json.loads(report.read_text())["differences"]}
    finally:
        source.stop()
