"""The AzureML source against a fake control plane that azure-ai-ml and azureml-mlflow really talk to.

The fake (tests/fakes/azureml_control_plane.py) answers HTTPS with azure-ai-ml's own REST models
and forwards the workspace's MLflow routes to a real `mlflow server`; the fixture workspace
(tests/fakes/azureml_seed.py) holds standalone jobs, a pipeline with two levels of nested
sub-pipelines, a failed pipeline, a sweep with 8 trials and an AutoML job with 12 trials.
Every check compares against that declarative fixture, field by field and point by point.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from azurite import Azurite
from conftest import run_cli
from fakes import azureml_artifacts
from fakes import azureml_seed as seed
from fakes.azureml_control_plane import TENANT, FakeCredential, write_fake_az
from runner.core.errors import ReplayerError, UsageError
from runner.core.filters import Filters
from runner.core.records import ArtifactRef, JobRecord
from runner.ends import open_source
from runner.azureml.job_fields import map_status
from runner.azureml.source import AzuremlSource
from runner.azureml.workspace import is_azureml, parse_workspace

SUB, RG, WS = "2f1e0c4d-0000-4000-8000-00000000c0de", "rg-ml", "ws-fraud"
URI = f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}"


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    base = tmp_path_factory.mktemp("azureml")
    with seed.fixture_workspace(base, SUB, RG, WS) as (fake, ws, specs):
        azurite = Azurite(base / "azurite").start()
        env = fake.environ()
        try:
            store = azureml_artifacts.attach(ws, azurite)
            assert seed.upload_files(store, specs) == 10
            with pytest.MonkeyPatch.context() as patch:
                for key, value in env.items():
                    patch.setenv(key, value)
                yield SimpleNamespace(fake=fake, ws=ws, specs=specs, by_name={s.name: s for s in specs}, base=base, env=env, store=store)
        finally:
            azureml_artifacts.STORES.pop(ws.scope, None)
            azurite.stop()


def source(uri: str = URI, credential=None, parallel: int = 4, **filters) -> AzuremlSource:
    return AzuremlSource(uri, Filters.build(**filters), credential=credential or FakeCredential(), parallel=parallel)


def names(**filters) -> list[str]:
    return [job.source_id for job in source(**filters).jobs()]


def expected_tags(spec: seed.Spec) -> dict[str, str]:
    tags = {**spec.tags, "mlflow.user": spec.created_by, "mlflow.runName": spec.display_name}
    if spec.parent:
        tags["mlflow.parentRunId"] = spec.parent
    return tags


def check_record(job: JobRecord, spec: seed.Spec) -> list[str]:
    """Every field of the record against the fixture; returns the differences."""
    want = {
        "experiment": spec.experiment,
        "name": spec.display_name,
        "kind": spec.kind,
        "status": map_status(spec.status),
        "source_status": spec.status,
        "start_time": spec.start,
        "end_time": spec.end,
        "parent_id": spec.parent,
        "root_id": spec.root,
        "depth": spec.depth,
        "step_name": spec.step,
        "lifecycle_stage": "active",
        "params": spec.params,
        "tags": expected_tags(spec),
        "latest_metrics": {key: max(rows, key=lambda r: (r[0], r[1]))[2] for key, rows in spec.metrics.items()},
        "description": spec.description,
        "created_by": spec.created_by,
        "created_time": spec.created,
        "compute": spec.compute,
        "environment": spec.environment,
        "command": spec.command,
        "properties": spec.properties,
        "inputs": spec.inputs,
        "outputs": spec.outputs,
    }
    return [f"{spec.name}.{key}: got {getattr(job, key)!r}, want {value!r}" for key, value in want.items() if getattr(job, key) != value]


def histories(src, jobs) -> dict[str, list[tuple]]:
    return {job.source_id: sorted((p.key, p.step, p.timestamp, p.value) for p in src.metrics(job)) for job in jobs}


def fixture_histories(specs) -> dict[str, list[tuple]]:
    return {s.name: sorted((key, step, ts, value) for key, rows in s.metrics.items() for step, ts, value in rows) for s in specs}


# -- extraction ------------------------------------------------------------------------------------


def test_extracts_every_job_exactly(azure):
    credential = FakeCredential()
    src = source(credential=credential)
    jobs = list(src.jobs())
    # Parents before children, roots in creation order, siblings in start order: the fixture's order.
    assert [j.source_id for j in jobs] == [s.name for s in azure.specs]
    assert src.count() == len(azure.specs) == 38
    problems = [p for job in jobs for p in check_record(job, azure.by_name[job.source_id])]
    assert not problems, "\n".join(problems)
    assert histories(src, jobs) == fixture_histories(azure.specs)
    assert sum(len(v) for v in fixture_histories(azure.specs).values()) > 3000  # incl. a 2,500-point history
    depths = {j.source_id: j.depth for j in jobs}
    assert max(depths.values()) == 3  # pipeline -> sub-pipeline -> sub-sub-pipeline -> step
    assert sorted(e.name for e in src.experiments()) == ["Default", "fraud-automl", "fraud-baseline", "fraud-hyperopt", "fraud-pipelines", "misc"]
    assert src.describe() == {"kind": "azureml", "uri": URI, "workspace": URI, "tenant_id": ""}
    # azureml-mlflow asks for a token on every request; the source caches them (with the CLI
    # credential each uncached ask would run `az account get-access-token`).
    assert credential.calls <= 3, credential.calls


def test_pipeline_edges_and_trials(azure):
    jobs = {j.step_name or j.source_id: j for j in source(experiments="fraud-pipelines,fraud-hyperopt,fraud-automl").jobs() if j.root_id != "fuzzy_fox_05"}
    fit = jobs["fit"]
    assert fit.depth == 3 and jobs["fit_block"].source_id == fit.parent_id and jobs["fit_block"].depth == 2
    assert fit.inputs == {"features": {"binding": "${{parent.inputs.features}}"}, "lr": {"type": "literal", "value": "0.05"}}
    assert jobs["evaluate"].inputs == {"model": {"binding": "${{parent.jobs.train_block.outputs.model}}"}}
    assert jobs["train_block"].kind == "pipeline" and jobs["train_block"].compute == ""
    trials = [j for j in jobs.values() if j.parent_id == "gentle_gale_06"]
    assert len(trials) == 8 and {t.status for t in trials} == {"FINISHED", "FAILED", "KILLED"}
    automl = [j for j in jobs.values() if j.parent_id == "humble_hawk_07"]
    assert len(automl) == 12 and all(j.kind == "run" and j.properties["runTemplate"] == "automl_child" for j in automl)


def test_sdk_children_listing_stops_at_first_page(azure):
    """The trap this source works around: jobs.list(parent_job_name=...) drops every page but the first."""
    from azure.ai.ml import MLClient

    ml = MLClient(FakeCredential(), SUB, RG, WS, enable_telemetry=False, show_progress=False)
    listed = list(ml.jobs.list(parent_job_name="humble_hawk_07"))
    assert len(listed) == azure.fake.children_page < 12  # azure-ai-ml 1.35.2; the source reads all 12
    assert len([j for j in source(include="humble_hawk_07").jobs() if j.depth == 1]) == 12


def test_a_child_also_listed_at_the_top_level_stays_a_child(azure):
    """Should the service list a trial among top-level jobs, it is still copied once, under its sweep."""
    from azure.ai.ml._restclient.arm_ml_service.models import JobBase

    trial = azure.by_name["gentle_gale_06_3"]
    listed = JobBase(json.loads(json.dumps(azure.ws.roots["bright_kiwi_01"].as_dict())))
    listed["name"], listed["id"] = trial.name, azure.ws.arm_id("jobs", trial.name)
    listed.properties["experimentName"] = trial.experiment
    azure.ws.roots[trial.name] = listed
    try:
        jobs = list(source().jobs())
    finally:
        del azure.ws.roots[trial.name]
    assert [j.source_id for j in jobs] == [s.name for s in azure.specs]
    assert next(j for j in jobs if j.source_id == trial.name).parent_id == "gentle_gale_06"


# -- filters ---------------------------------------------------------------------------------------


def tree(azure, root: str) -> list[str]:
    return [s.name for s in azure.specs if s.root == root]


def test_filters_select_whole_trees(azure):
    assert names(experiments="fraud-pipe*") == tree(azure, "eager_owl_04") + tree(azure, "fuzzy_fox_05")
    fit = next(s.name for s in azure.specs if s.step == "fit")
    assert names(include=fit) == tree(azure, "eager_owl_04")  # a step id brings its whole pipeline
    assert names(include="lr-sweep") == tree(azure, "gentle_gale_06")  # a display name works too
    assert names(since="2024-03-01T06:30:00Z", until="2024-03-01T07:30:00Z") == tree(azure, "gentle_gale_06")
    assert names(status="FAILED") == ["calm_river_02"] + tree(azure, "fuzzy_fox_05")
    assert names(status="killed,running") == ["dusty_moon_03", "icy_peak_08"]
    assert names(limit=2) == ["bright_kiwi_01", "calm_river_02"]
    with pytest.raises(UsageError, match="unknown experiment 'nope'"):
        source(experiments="nope").experiments()


@pytest.mark.skipif(not hasattr(Filters, "in_shard"), reason="--shard not in this tree")
def test_shards_split_roots_exactly(azure):
    parts = [names(shard=f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(s.name for s in azure.specs)
    for part in parts:
        assert {azure.by_name[n].root for n in part} <= set(part)  # whole trees only


# -- throttling and errors ---------------------------------------------------------------------------


def test_throttling_and_unavailability_do_not_lose_anything(azure):
    baseline = {j.source_id: j.to_json() for j in source().jobs()}
    azure.fake.fault_share, azure.fake.fault_seed = 0.25, "throttle"
    azure.fake.faults.clear()
    try:
        src = source(parallel=8)
        jobs = list(src.jobs())
        got = histories(src, jobs)
    finally:
        azure.fake.fault_share = 0.0
    faults = azure.fake.faults
    assert faults[429] > 3 and faults[503] > 3 and faults["arm"] and faults["history"] and faults["mlflow"], faults
    assert {j.source_id: j.to_json() for j in jobs} == baseline
    assert got == fixture_histories(azure.specs)


def test_wrong_tenant_unknown_workspace_and_failing_credential(azure):
    with pytest.raises(UsageError, match=r"refused the token of credential 'FakeCredential'.*HTTP 401"):
        source(credential=FakeCredential(tenant="11111111-2222-3333-4444-555555555555"))
    with pytest.raises(UsageError, match=rf"workspace nope \(resource group {RG}, subscription {SUB}\) not found"):
        source(uri=URI.replace(WS, "nope"))

    class Broken(FakeCredential):
        def get_token(self, *scopes, **kwargs):
            from azure.identity import CredentialUnavailableError

            raise CredentialUnavailableError("no identity endpoint answered")

    with pytest.raises(UsageError, match=r"could not get a token for tenant .* with credential 'Broken'.*no identity endpoint"):
        source(credential=Broken())


def test_workspace_uris_and_config_files(tmp_path):
    assert parse_workspace(URI).workspace_name == WS
    assert parse_workspace(URI.replace("resourcegroups", "resourceGroups") + "/").resource_group == RG
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": SUB, "resource_group": RG, "workspace_name": WS, "tenant_id": TENANT}))
    ref = parse_workspace(str(config))
    assert (ref.subscription_id, ref.resource_group, ref.workspace_name, ref.tenant_id) == (SUB, RG, WS, TENANT)
    assert ref.uri == URI and is_azureml(str(config)) and is_azureml(URI) and not is_azureml("http://x")
    config.write_text(json.dumps({"subscription_id": SUB, "workspace_name": WS}))
    with pytest.raises(UsageError, match="missing `resource_group`"):
        parse_workspace(str(config))
    with pytest.raises(UsageError, match="not a workspace URI"):
        parse_workspace("azureml://subscriptions/x/workspaces/y")


def test_old_manifest_records_still_load():
    old = {"source_id": "r1", "experiment": "e", "name": "n", "kind": "run", "status": "FINISHED", "params": {"a": "1"}}
    job = JobRecord.from_json(old)
    assert job.inputs == {} and job.source_status == "" and job.compute == ""
    assert JobRecord.from_json(job.to_json()) == job


# -- the CLI, end to end ---------------------------------------------------------------------------


def cli_env(azure, tmp_path: Path, fail: bool = False) -> dict:
    az = write_fake_az(tmp_path / ("az-fail" if fail else "az"), sys.executable, fail=fail)
    return {**azure.env, "PATH": f"{az}{os.pathsep}{os.environ['PATH']}", "REPLAYER_CREDENTIAL": "cli"}


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "ERROR" in line]


def test_migrate_then_verify_from_config_json(azure, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": SUB, "resource_group": RG, "workspace_name": WS, "tenant_id": TENANT}))
    env = cli_env(azure, tmp_path)
    target = tmp_path / "target"
    migrate = run_cli("migrate", "--source", str(config), "--target", str(target), "--credential", "cli", "--parallel", "4", cwd=tmp_path, env=env)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    assert "created 38, repaired 0, skipped 0, failed 0" in migrate.stderr
    check = run_cli("verify", "--source", str(config), "--target", str(target), "--credential", "cli", "--report", "r.json", cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["compared"] == 38 and report["summary"]["equal"] == 38


def test_extract_writes_the_control_plane_fields(azure, tmp_path):
    out = tmp_path / "manifest"
    result = run_cli("extract", "--source", URI, "--out", str(out), "--experiments", "fraud-pipelines", cwd=tmp_path, env=cli_env(azure, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    records = [JobRecord.from_json(json.loads(line)) for line in (out / "jobs.jsonl").read_text().splitlines()]
    assert [r.source_id for r in records] == tree(azure, "eager_owl_04") + tree(azure, "fuzzy_fox_05")
    problems = [p for r in records for p in check_record(r, azure.by_name[r.source_id])]
    assert not problems, "\n".join(problems)
    again = open_source(str(out))  # the manifest reads back through the same protocol
    assert [j.to_json() for j in again.jobs()] == [r.to_json() for r in records]


def test_cli_errors_are_one_line_with_exit_code_2(azure, tmp_path):
    broken = run_cli("extract", "--source", URI, "--out", str(tmp_path / "a"), cwd=tmp_path, env=cli_env(azure, tmp_path, fail=True))
    assert broken.returncode == 2, broken.stderr[-2000:]
    lines = error_lines(broken)
    assert len(lines) == 1 and "could not get a token for tenant" in lines[0] and "credential 'cli'" in lines[0] and "az login" in lines[0], broken.stderr
    missing = run_cli("extract", "--source", URI.replace(WS, "nope"), "--out", str(tmp_path / "b"), cwd=tmp_path, env=cli_env(azure, tmp_path))
    assert missing.returncode == 2
    lines = error_lines(missing)
    assert len(lines) == 1 and "workspace nope" in lines[0] and "not found" in lines[0], missing.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- filters shared with the MLflow source -----------------------------------------------------------


def subtree(azure, name: str) -> list[str]:
    """`name` and every descendant, in fixture order."""
    inside = {name}
    for spec in azure.specs:
        if spec.parent in inside:
            inside.add(spec.name)
    return [s.name for s in azure.specs if s.name in inside]


def test_tags_max_depth_and_exclude(azure):
    everything = [s.name for s in azure.specs]
    assert names(tags="team=risk,pipeline=v2") == tree(azure, "eager_owl_04")  # every pair, on the root
    assert names(tags="sweep=random") == tree(azure, "gentle_gale_06")
    assert names(tags="stage=fit") == []  # a step's tag selects no root
    before = azure.fake.requests["history_children"]
    assert names(max_depth=0) == [s.name for s in azure.specs if s.depth == 0]
    assert azure.fake.requests["history_children"] == before, "depth 0: children are not even listed"
    assert names(experiments="fraud-pipelines", max_depth=1) == [s.name for s in azure.specs if s.experiment == "fraud-pipelines" and s.depth <= 1]
    assert names(max_depth=3) == everything
    # A root by display name or id glob drops its tree; a step (by step name) drops its subtree.
    assert names(exclude="lr-sweep,humble_*") == [n for n in everything if azure.by_name[n].root not in ("gentle_gale_06", "humble_hawk_07")]
    block = next(s.name for s in azure.specs if s.step == "train_block")
    assert names(experiments="fraud-pipelines", exclude="train_block") == [
        n for n in tree(azure, "eager_owl_04") + tree(azure, "fuzzy_fox_05") if n not in subtree(azure, block)
    ]
    assert names(include="humble_hawk_07", exclude="humble_hawk_07_1?") == tree(azure, "humble_hawk_07")[:11]  # trials 10, 11 out


# -- artifacts and logs --------------------------------------------------------------------------------


def expected_files(spec: seed.Spec) -> list[ArtifactRef]:
    return sorted(
        (ArtifactRef(path, len(data), "" if path in spec.unhashed else hashlib.md5(data).hexdigest()) for path, data in spec.files.items()),
        key=lambda r: r.path,
    )


def test_artifacts_listed_with_sizes_and_md5_without_reading_bytes(azure, monkeypatch):
    from azure.storage.blob import BlobClient

    def no_download(*args, **kwargs):
        raise AssertionError("listing must not download a byte")

    monkeypatch.setattr(BlobClient, "download_blob", no_download)
    src = source()
    listed = {job.source_id: sorted(src.artifacts(job), key=lambda r: r.path) for job in src.jobs()}
    assert listed == {s.name: expected_files(s) for s in azure.specs}
    assert sum(len(v) for v in listed.values()) == 10 and len(listed["bright_kiwi_01"]) == 6  # two listing pages
    fit = next(s for s in azure.specs if s.step == "fit")
    assert [r.md5 for r in listed[fit.name] if r.path == "outputs/model/model.pkl"] == [""]  # a block upload has no md5


def test_a_runs_files_are_listed_with_their_read_sas_in_one_paged_call_else_per_folder_else_per_file(azure, monkeypatch):
    """prefix/contentinfo without a prefix is the listing and every read SAS at once: one request a
    page of a job's files (as the listing alone costs), none per folder or file. Where the service wants a path (400), the listing comes
    first and a folder holding two or more files costs one prefix/contentinfo, a lone file its own
    contentinfo; without the prefix route (404) every file is asked alone. The listing is the same."""
    from runner.azureml import run_history

    def listed_and_asked() -> tuple[dict, dict]:
        monkeypatch.setattr(run_history, "_no_whole_run", set())  # what a refusal taught one process
        before = dict(azure.fake.requests)
        src = source()
        listed = {job.source_id: sorted(src.artifacts(job), key=lambda r: r.path) for job in src.jobs()}
        kinds = ("artifact_list", "artifact_prefix_contentinfo", "artifact_contentinfo")
        return listed, {k: azure.fake.requests[k] - before.get(k, 0) for k in kinds}

    expected = {s.name: expected_files(s) for s in azure.specs}
    with_files = [s for s in azure.specs if s.files]
    pages = sum(max(1, -(-len(s.files) // azureml_artifacts.PAGE)) for s in azure.specs)  # every job is asked, files or not
    listed, asked = listed_and_asked()
    assert listed == expected
    assert asked == {"artifact_list": 0, "artifact_prefix_contentinfo": pages, "artifact_contentinfo": 0}  # as many as the bare listing

    folders = [Counter(p.split("/", 1)[0] for p in s.files) for s in with_files]
    shared, alone = sum(1 for f in folders for n in f.values() if n > 1), sum(n for f in folders for n in f.values() if n == 1)
    assert (shared, alone) == (2, 5)  # outputs/ of bright_kiwi_01 and of fit; five files alone in their folders
    # A run gone since the plan (404 on every route) fails alone: it teaches the process nothing.
    monkeypatch.setattr(run_history, "_no_whole_run", set())
    src = source()
    gone = dataclasses.replace(next(iter(src.jobs())), source_id="run_deleted_meanwhile")
    with pytest.raises(ReplayerError, match="run_deleted_meanwhile"):
        list(src.artifacts(gone))
    assert run_history._no_whole_run == set()

    monkeypatch.setattr(azureml_artifacts, "WHOLE_RUN", False)
    listed, asked = listed_and_asked()
    assert listed == expected
    assert asked == {"artifact_list": pages, "artifact_prefix_contentinfo": 1 + shared, "artifact_contentinfo": alone}  # 1: the refusal, once
    monkeypatch.setattr(azureml_artifacts, "PREFIX_ROUTE", False)
    listed, asked = listed_and_asked()
    assert listed == expected
    assert asked == {"artifact_list": pages, "artifact_prefix_contentinfo": 0, "artifact_contentinfo": 10}


def test_a_parents_children_come_from_one_mlflow_search_not_one_get_each(azure):
    """A parent with two or more children in the plan costs one runs/search for them all (they carry
    mlflow.parentRunId); every other job one runs/get. The records are the same either way (the other
    tests check them field by field)."""
    from fakes.azureml_control_plane import REQUEST_HOOKS

    asked = Counter()

    def count(handler, path: str) -> bool:
        if "/api/2.0/mlflow/" in path:
            asked[path.split("/api/2.0/mlflow/", 1)[1]] += 1
        return False

    REQUEST_HOOKS.insert(0, count)
    try:
        records = {job.source_id: job for job in source().jobs()}
    finally:
        REQUEST_HOOKS.remove(count)
    children = Counter(s.parent for s in azure.specs if s.parent)
    searched = [p for p, n in children.items() if n > 1]
    assert len(records) == len(azure.specs) and len(searched) >= 4
    assert (asked["runs/search"], asked["runs/get"]) == (len(searched), len(azure.specs) - sum(children[p] for p in searched)), asked
    for spec in azure.specs:  # what the search brought is each child's own run
        assert records[spec.name].params == spec.params and records[spec.name].latest_metrics.keys() == spec.metrics.keys(), spec.name


def test_extract_lists_files_and_logs_without_secrets(azure, tmp_path):
    out = tmp_path / "manifest"
    env = cli_env(azure, tmp_path)
    result = run_cli("extract", "--source", URI, "--out", str(out), "--artifacts", "list", "--parallel", "3", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    listed = {}
    for job in open_source(str(out)).jobs():
        refs = list(open_source(str(out)).artifacts(job))
        if refs:
            listed[job.source_id] = sorted(refs, key=lambda r: r.path)
    assert listed == {s.name: expected_files(s) for s in azure.specs if s.files}
    families = {r.path.split("/")[0] for refs in listed.values() for r in refs}
    assert families == {"outputs", "user_logs", "system_logs", "azureml-logs", "logs"}
    assert not (out / "files").exists(), "--artifacts list keeps no bytes"
    written = "\n".join(p.read_text(errors="replace") for p in [*out.rglob("*"), *(tmp_path / "logs").glob("*.log")] if p.is_file()) + result.stderr
    assert azure.store.key not in written and "sig=" not in written and "se=" not in written and "Bearer" not in written
    none = run_cli("extract", "--source", URI, "--out", str(tmp_path / "none"), "--artifacts", "none", "--experiments", "fraud-baseline", cwd=tmp_path, env=env)
    assert none.returncode == 0, none.stderr[-2000:]
    assert json.loads((tmp_path / "none" / "manifest.json").read_text())["counts"]["artifacts"] == 0


def test_copied_files_arrive_byte_for_byte(azure, tmp_path):
    """migrate copies each listed file through its content URI; verify compares sizes and md5s."""
    env = cli_env(azure, tmp_path)
    target = tmp_path / "target"
    select = ("--experiments", "fraud-baseline,fraud-pipelines", "--include", "bright_kiwi_01,fit")  # verify checks every selected experiment
    migrate = run_cli("migrate", "--source", URI, "--target", str(target), *select, cwd=tmp_path, env=env)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    from runner.mlflow import uris

    client = uris.open_client(str(target), create=False)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.original_job_id = 'bright_kiwi_01'")
    folder = Path(client.download_artifacts(runs[0].info.run_id, "", str(tmp_path / "down")))
    got = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert got == azure.by_name["bright_kiwi_01"].files
    check = run_cli("verify", "--source", URI, "--target", str(target), *select, "--report", "r.json", cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]


# -- a token refused midway ------------------------------------------------------------------------------


def test_token_refused_midway_is_one_error_line_and_exit_2(azure, tmp_path):
    """After N MLflow requests the fake refuses the token (revoked): one ERROR line, exit 2, no manifest.json."""
    handler = azure.fake.server.RequestHandlerClass
    allowed = {"left": 40}

    class Revoking(handler):
        def _authorized(self):
            if "/mlflow/" in self.path:
                with azure.fake._lock:
                    allowed["left"] -= 1
                    refused = allowed["left"] < 0
                if refused:
                    self._error(401, "ExpiredAuthenticationToken", "The access token has been revoked.")
                    return False
            return super()._authorized()

    azure.fake.server.RequestHandlerClass = Revoking
    try:
        out = tmp_path / "manifest"
        result = run_cli("extract", "--source", URI, "--out", str(out), "--parallel", "4", cwd=tmp_path, env=cli_env(azure, tmp_path))
    finally:
        azure.fake.server.RequestHandlerClass = handler
    assert allowed["left"] < 0, "the fake never refused: the test proves nothing"
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"workspace {WS}" in lines[0] and "credential 'cli'" in lines[0] and "HTTP 401" in lines[0] and "ExpiredAuthenticationToken" in lines[0], lines[0]
    assert "Traceback" not in result.stderr and not (out / "manifest.json").exists()


def test_a_throttled_run_history_request_waits_past_the_clients_own_attempts(azure):
    """A 429 is the service pacing the tool: past azure-core's own 8 attempts a run history request
    is sent again after the Retry-After (runner.azureml.run_history `_send`). Here the children
    listing is refused 10 times running (more than the client's attempts; what 16 threads sharing
    one bucket met on the 2,000-job bench, where the whole extract stopped), then answered."""
    from fakes.azureml_control_plane import REQUEST_HOOKS

    refused = Counter()

    def throttle(handler, path: str) -> bool:
        """The first parent's children: refused 10 times running (the same request each time)."""
        route = path.split("?", 1)[0]
        if route.endswith("/children") and (not refused or route in refused) and refused[route] < 10:
            refused[route] += 1
            handler._error(429, "TooManyRequests", "The request is being throttled.", {"Retry-After": "0"})
            return True
        return False

    REQUEST_HOOKS.insert(0, throttle)
    try:
        listed = names()
    finally:
        REQUEST_HOOKS.remove(throttle)
    assert list(refused.values()) == [10]
    assert sorted(listed) == sorted(s.name for s in azure.specs)
