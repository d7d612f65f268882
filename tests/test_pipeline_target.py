"""Pipeline replay into Azure ML (runner/azureml/pipeline.py) and `replayer wait` (runner/azureml/wait.py).

The manifest is a real extraction of the fixture workspace (tests/fakes/azureml_seed.py: nested
pipelines with edges, a failed pipeline, a sweep with 8 trials, AutoML with 12) through the HTTPS
fake of the Azure ML control plane. Jobs are submitted by azure-ai-ml itself to target workspaces
of the same fake, which keeps every PUT body as sent; the checks read those bodies back.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import run_cli
from fakes import azureml_seed as seed
from fakes.azureml_control_plane import FakeControlPlane, FakeCredential, FakeWorkspace, write_fake_az
from runner.core.errors import UsageError
from runner.engine.extract import extract
from runner.core.filters import Filters
from runner.engine.manifest import ManifestSource
from runner.azureml.source import AzuremlSource
from runner.azureml import pipeline, pipeline_jobs, pipeline_plan
from runner.azureml.pipeline import PipelineOptions, PipelineTarget
from runner.azureml.wait import EXIT_CANCELED, EXIT_FAILED, EXIT_TIMED_OUT, azureml_status, read_names, wait_for
from servers import MlflowServer

SUB, RG, WS = "2f1e0c4d-0000-4000-8000-00000000c0de", "rg-ml", "ws-fraud"
SOURCE_URI = f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}"
MANIFEST_URI = "azureml://datastores/workspaceblobstore/paths/replayer/manifest-1/"
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
ROOTS = ["bright_kiwi_01", "calm_river_02", "dusty_moon_03", "eager_owl_04", "fuzzy_fox_05", "gentle_gale_06", "humble_hawk_07"]


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    specs, builders = seed.build_specs()
    seed.seed_mlflow(base / "mlflow", specs)
    server = MlflowServer(base / "mlflow").start()
    fake = FakeControlPlane(base / "fake", server.uri).start()
    seed.install(fake.add(FakeWorkspace(SUB, RG, WS)), specs, builders)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in {**fake.environ(), "AZUREML_LOG_LEVEL": "ERROR"}.items():
                patch.setenv(key, value)
            extract(AzuremlSource(SOURCE_URI, Filters(), credential=FakeCredential(), parallel=4), str(base / "manifest"), parallel=4)
            yield SimpleNamespace(fake=fake, base=base, manifest=base / "manifest", by_name={s.name: s for s in specs}, tracking_uri=server.uri)
    finally:
        fake.stop()
        server.stop()


def target_workspace(azure) -> tuple[FakeWorkspace, str]:
    """A fresh, empty target workspace in the fake, and its URI."""
    name = f"ws-archive-{uuid.uuid4().hex[:6]}"
    ws = azure.fake.add(FakeWorkspace(SUB, "rg-archive", name, workspace_id=str(uuid.uuid4())))
    return ws, f"azureml://subscriptions/{SUB}/resourcegroups/rg-archive/workspaces/{name}"


def source(azure, **filters) -> ManifestSource:
    return ManifestSource(azure.manifest, Filters.build(**filters))


def run_submit(azure, uri: str | None, dry_run: bool = False, emit: Path | None = None, **options):
    target = PipelineTarget(uri, credential=FakeCredential()) if uri else None
    return pipeline.submit(source(azure), target, PipelineOptions(**options), manifest_uri=MANIFEST_URI, dry_run=dry_run,
                           debug_hierarchy=True, emit_dir=str(emit) if emit else None)


def component(ws: FakeWorkspace, node: dict) -> dict:
    """The spec of the component a submitted node points at (azure-ai-ml registers them first)."""
    match = re.search(r"/components/([^/]+)/versions/([^/]+)$", node["componentId"])
    return ws.components[(match.group(1), match.group(2))]["properties"]["componentSpec"]


def tree(ws: FakeWorkspace, jobs: dict, depth: int = 1) -> list[tuple]:
    """(depth, node name, type, display name) for a submitted job's nodes, sub-pipelines opened."""
    rows = []
    for name, node in jobs.items():
        rows.append((depth, name, node["type"], node.get("display_name")))
        if node["type"] == "pipeline":
            rows += tree(ws, component(ws, node)["jobs"], depth + 1)
    return rows


def binding(node: dict, port: str, side: str = "inputs") -> str:
    value = node[side][port]
    return value.get("value") if side == "inputs" else value


def bound(node_input) -> str:
    """What a loaded node input is bound to (azure-ai-ml wraps bindings of data ports in an Input)."""
    data = node_input._data
    return str(getattr(data, "path", None) or data)


def submitted_root(ws: FakeWorkspace, original: str) -> dict:
    found = [body for body in ws.submitted.values() if body["properties"]["tags"].get("original_job_id") == original]
    assert len(found) == 1, f"{original}: {len(found)} submissions"
    return found[0]["properties"]


# -- planning, dry run, emitted YAML --------------------------------------------------------------


def test_dry_run_prints_the_tree_edges_trials_and_cost_and_emits_valid_yaml(azure, tmp_path, capsys):
    from azure.ai.ml import load_job

    summary = run_submit(azure, None, dry_run=True, emit=tmp_path / "emit", expand_trials=True, max_trials=3)
    out = capsys.readouterr().out
    assert [row["original_job_id"] for row in summary.submitted] == ROOTS and summary.pending == 1  # icy_peak_08 is running
    assert summary.step_jobs == 3 + 5 + 3 + 4 + 4 and round(summary.minutes) == 2 * summary.step_jobs
    assert "~ misc / nightly-refresh icy_peak_08: RUNNING at the source" in out
    assert "+ fraud-pipelines / fraud-training-pipeline eager_owl_04: pipeline job, 5 step jobs, 2 pipeline components, 4 edges" in out
    for line in ("d2 pipeline     fit_block", "d3 step         score", "in: model <- fit.model", "in: data <- parent.data",
                 "edge train_block: featurize.features -> fit_block.features", "edge fraud_training_pipeline: train_block.model -> evaluate.model",
                 "trials: 3 of 8 expanded (best; ranked by accuracy (maximize))", "trials: 3 of 12 expanded (best; ranked by AUC_weighted (maximize))",
                 "d1 step         train                    command:", "ends failed (mirrored)"):
        assert line in out, line
    emitted = sorted((tmp_path / "emit").glob("*/job.yml"))
    assert len(emitted) == 7
    for path in emitted:
        job = load_job(path)
        result = job._validate()
        assert result.passed, (path, result.error_messages)
    nested = load_job(next(p for p in emitted if "eager_owl_04" in str(p)))
    block = nested.jobs["train_block"]
    assert block.display_name == "train_block" and block.tags["original_step_name"] == "train_block"
    assert bound(block.inputs["data"]) == "${{parent.jobs.prep_data.outputs.clean}}"
    inner = block.component.jobs
    assert list(inner) == ["featurize", "fit_block"] and list(inner["fit_block"].component.jobs) == ["fit", "score"]
    assert bound(inner["fit_block"].component.jobs["score"].inputs["model"]) == "${{parent.jobs.fit.outputs.model}}"
    assert nested.settings.force_rerun is True and nested.inputs["raw_data"]._data == "azureml:fraud-raw:5"
    standalone = load_job(emitted[0])
    assert type(standalone).__name__ == "Command" and standalone.inputs["job_id"]._data == "bright_kiwi_01"
    assert "--mark-outputs" in standalone.command and "$[[" not in standalone.command


def test_step_names_are_mapped_deterministically():
    taken: set[str] = set()
    assert pipeline_plan.safe_name("Prep Data!", taken) == "prep_data"
    assert pipeline_plan.safe_name("prep-data", taken) == "prep_data_2", "a clash gets a numbered suffix"
    assert pipeline_plan.safe_name("3rd step") == "s_3rd_step" and pipeline_plan.safe_name("") == "step"
    long = pipeline_plan.safe_name("x" * 200)
    assert len(long) <= pipeline_plan.MAX_NAME and NAME.match(long) and long == pipeline_plan.safe_name("x" * 200)
    assert pipeline_plan.port_name("manifest") == "orig_manifest" and pipeline_plan.port_name("in-data") == "in_data"


def test_trial_sampling_best_first_and_seeded_random(azure):
    jobs = list(source(azure, include="gentle_gale_06").jobs())
    root, trials = jobs[0], jobs[1:]

    def picked(**options):
        plan = pipeline_plan.Planner(PipelineOptions(expand_trials=True, **options)).plan(root, jobs)
        return [(s.record.source_id, s.tags) for s in plan.tree.children if s.role == "trial"]

    best = picked(max_trials=2)
    assert [t for t, _ in best] == ["gentle_gale_06_6", "gentle_gale_06_4"]
    assert best[0][1] == {"automl_role": "trial", "automl_trial_rank": "1", "automl_best_trial": "true", "automl_parent_id": "gentle_gale_06",
                          "automl_total_trials": "8", "automl_expanded_trials_count": "2"}
    assert [t for t, _ in picked(trial_sampling="first", max_trials=3)] == ["gentle_gale_06_0", "gentle_gale_06_1", "gentle_gale_06_2"]
    first, again = picked(trial_sampling="random", max_trials=3, seed=5), picked(trial_sampling="random", max_trials=3, seed=5)
    assert first == again and len(first) == 3, "random sampling is seeded"
    by_loss = pipeline_plan.trial_metric(root, trials, "loss")
    assert by_loss == ("loss", "minimize")
    parent = pipeline_plan.Planner(PipelineOptions()).plan(root, jobs).tree.children
    assert [s.role for s in parent] == ["parent"] and parent[0].tags["automl_expanded_trials_count"] == "0"
    assert parent[0].tags["automl_best_trial"] == "gentle_gale_06_6"
    with pytest.raises(UsageError, match="--trial-sampling"):
        PipelineOptions(trial_sampling="worst").check()


# -- submission ------------------------------------------------------------------------------------


def test_submission_keeps_nesting_edges_names_and_tags_and_a_resubmission_skips(azure, capsys):
    ws, uri = target_workspace(azure)
    summary = run_submit(azure, uri, expand_trials=True, max_trials=3)
    out = capsys.readouterr().out
    assert not summary.failed and len(summary.submitted) == 7 and len(ws.submitted) == 7
    for row in summary.submitted:
        assert f"submitted {row['original_job_id']} as {row['name']}: https://ml.azure.com/runs/{row['name']}?wsid=" in out

    root = submitted_root(ws, "eager_owl_04")
    assert root["jobType"] == "Pipeline" and root["experimentName"] == "fraud-pipelines" and root["displayName"] == "fraud-training-pipeline"
    assert {k: root["tags"][k] for k in ("team", "pipeline", "original_job_id", "original_workspace", "original_pipeline_depth")} == {
        "team": "risk", "pipeline": "v2", "original_job_id": "eager_owl_04", "original_workspace": SOURCE_URI, "original_pipeline_depth": "0"}
    assert root["settings"]["default_compute"].endswith("/computes/serverless") and root["settings"]["force_rerun"] is True
    assert root["inputs"]["manifest"] == {"uri": MANIFEST_URI, "jobInputType": "uri_folder", "mode": "ReadOnlyMount"}
    assert tree(ws, root["jobs"]) == [
        (1, "prep_data", "command", "prep_data"),
        (1, "train_block", "pipeline", "train_block"),
        (2, "featurize", "command", "featurize"),
        (2, "fit_block", "pipeline", "fit_block"),
        (3, "fit", "command", "fit"),
        (3, "score", "command", "score"),
        (1, "evaluate", "command", "evaluate"),
    ]
    jobs = root["jobs"]
    assert binding(jobs["train_block"], "data") == "${{parent.jobs.prep_data.outputs.clean}}"
    assert binding(jobs["evaluate"], "model") == "${{parent.jobs.train_block.outputs.model}}"
    assert binding(jobs["prep_data"], "raw") == "${{parent.inputs.raw_data}}"
    train_block = component(ws, jobs["train_block"])
    fit_block = component(ws, train_block["jobs"]["fit_block"])
    assert binding(train_block["jobs"]["fit_block"], "features") == "${{parent.jobs.featurize.outputs.features}}"
    assert binding(train_block["jobs"]["featurize"], "data") == "${{parent.inputs.data}}"
    assert train_block["jobs"]["fit_block"]["outputs"]["model"]["value"] == "${{parent.outputs.model}}"
    assert binding(fit_block["jobs"]["score"], "model") == "${{parent.jobs.fit.outputs.model}}"
    assert fit_block["jobs"]["fit"]["outputs"]["model"]["value"] == "${{parent.outputs.model}}"
    assert binding(fit_block["jobs"]["fit"], "lr") == "0.05" and set(fit_block["outputs"]) == {"model"}
    fit = fit_block["jobs"]["fit"]
    fit_spec = component(ws, fit)
    assert binding(fit, "job_id") == azure.by_name[fit["tags"]["original_job_id"]].name and fit["tags"]["original_step_name"] == "fit"
    assert fit_spec["command"].startswith("python -m runner step --manifest ${{inputs.manifest}} --job-id ${{inputs.job_id}}")
    assert fit_spec["environment"].endswith("/environments/replayer/versions/0.1.0") and fit_spec["is_deterministic"] is False
    for _, name, _, _ in tree(ws, root["jobs"]):
        assert NAME.match(name), name

    failed = submitted_root(ws, "fuzzy_fox_05")
    assert failed["settings"]["continue_on_step_failure"] is True, "a mirrored failure must not cancel its siblings"
    assert binding(failed["jobs"]["evaluate"], "model") == "${{parent.jobs.train.outputs.model}}"

    sweep = submitted_root(ws, "gentle_gale_06")["jobs"]
    assert list(sweep) == ["parent", "gentle_gale_06_6", "gentle_gale_06_4", "gentle_gale_06_3"]
    tags = json.loads(binding(sweep["gentle_gale_06_6"], "tags"))
    assert tags["automl_role"] == "trial" and tags["automl_best_trial"] == "true" and tags["automl_total_trials"] == "8"
    assert sweep["gentle_gale_06_6"]["tags"]["automl_trial_rank"] == "1"

    command = submitted_root(ws, "bright_kiwi_01")
    assert command["jobType"] == "Command" and command["displayName"] == "baseline-logreg" and command["experimentName"] == "fraud-baseline"
    assert command["inputs"]["job_id"] == {"value": "bright_kiwi_01", "jobInputType": "literal"}
    assert "--mark-outputs '${{outputs.model}}'" in command["command"] and set(command["outputs"]) == {"original_logs", "artifacts", "model"}

    before = dict(ws.submitted)
    again = run_submit(azure, uri, expand_trials=True, max_trials=3)
    assert again.skipped == 7 and not again.submitted and ws.submitted == before, "a resubmission creates nothing"
    assert "= fraud-pipelines / fraud-training-pipeline eager_owl_04: already in the target as " in capsys.readouterr().out


def test_cli_submit_prints_studio_urls_writes_a_report_and_wait_reads_it(azure, tmp_path):
    ws, uri = target_workspace(azure)
    az = write_fake_az(tmp_path / "az", sys.executable)
    env = {"PATH": f"{az}{os.pathsep}{os.environ['PATH']}", "REPLAYER_CREDENTIAL": "cli", "AZUREML_LOG_LEVEL": "ERROR"}
    done = run_cli("submit", "--manifest", str(azure.manifest), "--target", uri, "--manifest-uri", MANIFEST_URI, "--include", "eager_owl_04,dusty_moon_03",
                   "--report", "submitted.json", "--parallel", "2", "--wait", "--timeout", "1", cwd=tmp_path, env=env)
    assert done.returncode == EXIT_TIMED_OUT, done.stderr[-3000:]  # --wait: nothing runs these jobs in the fake
    assert "2 jobs: 2 NotStarted; timed out" in done.stdout
    report = json.loads((tmp_path / "submitted.json").read_text())
    assert sorted(r["original_job_id"] for r in report["submitted"]) == ["dusty_moon_03", "eager_owl_04"] and len(ws.submitted) == 2
    for row in report["submitted"]:
        assert f"as {row['name']}: https://ml.azure.com/runs/{row['name']}" in done.stdout
    names = [r["name"] for r in report["submitted"]]
    for name in names:
        ws.status_plan[name] = ["Running", "Completed"]
    waited = run_cli("wait", "--from", "submitted.json", "--target", uri, "--poll", "0.1", "--max-poll", "0.3", "--timeout", "60", cwd=tmp_path, env=env)
    assert waited.returncode == 0, waited.stdout + waited.stderr[-3000:]
    assert "2 jobs: 2 Completed; done" in waited.stdout and all(name in waited.stdout for name in names)


def test_cli_submit_without_manifest_uri_uploads_the_manifest_to_the_default_datastore(azure, tmp_path):
    """No --manifest-uri: the manifest folder goes to the workspace's default datastore (HTTPS Azurite
    behind the blob proxy, reached by azure-ai-ml at https://acct1.blob.core.windows.net), once, and
    every submitted job reads it from there."""
    import hashlib

    from cloud_storage import CloudStorage, md5s_under
    from fakes.azureml_datastores import attach_datastore

    ws, uri = target_workspace(azure)
    az = write_fake_az(tmp_path / "az", sys.executable)
    with CloudStorage(tmp_path / "storage", ca=azure.fake.ca) as storage:
        attach_datastore(ws, storage, "acct1", "azureml-blobstore")
        env = {"PATH": f"{az}{os.pathsep}{os.environ['PATH']}", "REPLAYER_CREDENTIAL": "cli", "AZUREML_LOG_LEVEL": "ERROR", **storage.env}
        done = run_cli("submit", "--manifest", str(azure.manifest), "--target", uri, "--include", "eager_owl_04,dusty_moon_03,calm_river_02",
                       "--parallel", "3", cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        inputs = {original: submitted_root(ws, original)["inputs"]["manifest"] for original in ("eager_owl_04", "dusty_moon_03", "calm_river_02")}
        uris = {value["uri"] for value in inputs.values()}
        assert len(uris) == 1, inputs  # one upload, shared by every job
        found = re.fullmatch(r"azureml://datastores/workspaceblobstore/paths/(LocalUpload/[0-9a-f]+/manifest)/?", uris.pop())
        assert found, inputs
        prefix = found.group(1) + "/"
        container = storage.azurite.service("acct1").get_container_client("azureml-blobstore")
        held = md5s_under(container, prefix)
        local = {p.relative_to(azure.manifest).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in azure.manifest.rglob("*") if p.is_file()}
        assert held == local  # exactly the manifest's files, byte for byte
        assert storage.proxy.by_host["acct1.blob.core.windows.net"]["tunnels"] >= 1 and not storage.proxy.refused
        assert azure.fake.requests["datastores_secrets"] >= 1
        logs = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*.log")) + done.stderr + done.stdout
        assert storage.key("acct1") not in logs


def test_cli_submit_whose_manifest_upload_fails_stops_with_one_line_before_any_job(azure, tmp_path):
    """A datastore the identity cannot write (here its container is missing) is one ERROR line and exit 2,
    not azure-ai-ml's endless wait for a file that failed, and no job is created."""
    from cloud_storage import CloudStorage
    from fakes.azureml_datastores import attach_datastore

    ws, uri = target_workspace(azure)
    az = write_fake_az(tmp_path / "az", sys.executable)
    with CloudStorage(tmp_path / "storage", ca=azure.fake.ca) as storage:
        attach_datastore(ws, storage, "acct1", "gone", create=False)
        env = {"PATH": f"{az}{os.pathsep}{os.environ['PATH']}", "REPLAYER_CREDENTIAL": "cli", "AZUREML_LOG_LEVEL": "ERROR", **storage.env}
        done = run_cli("submit", "--manifest", str(azure.manifest), "--target", uri, "--include", "eager_owl_04", cwd=tmp_path, env=env, timeout=180)
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "could not upload the manifest" in errors[0] and "container does not exist" in errors[0] and "--manifest-uri" in errors[0]
    assert ws.submitted == {} and storage.key("acct1") not in done.stderr


def render(spec: dict, node: dict, values: dict, outputs: Path) -> list[str]:
    """A submitted node's command line as Azure ML would run it (inputs substituted, optional blocks resolved)."""
    given = {k: v.get("value") for k, v in node["inputs"].items()}
    given.update(values)
    for name, declared in spec["inputs"].items():
        if given.get(name) is None and declared.get("default") is not None:
            given[name] = declared["default"]

    text = pipeline_jobs.resolve_optional(spec["command"], given)
    text = re.sub(r"\$\{\{\s*inputs\.(\w+)\s*\}\}", lambda m: str(given[m.group(1)]), text)
    text = re.sub(r"\$\{\{\s*outputs\.(\w+)\s*\}\}", lambda m: str(outputs / m.group(1)), text)
    args = shlex.split(text)
    assert args[:3] == ["python", "-m", "runner"], args
    return args[3:]


def test_submitted_steps_run_replay_step_and_reproduce_every_history(azure, tmp_path, monkeypatch):
    """Each leaf of the submitted jobs, run as Azure ML would run it: the original histories come back."""
    import fire
    from mlflow import MlflowClient

    from runner import cli

    ws, uri = target_workspace(azure)
    pipeline.submit(source(azure, include="eager_owl_04,gentle_gale_06,fuzzy_fox_05"), PipelineTarget(uri, credential=FakeCredential()),
                    PipelineOptions(expand_trials=True, max_trials=2), manifest_uri=MANIFEST_URI)
    client = MlflowClient(azure.tracking_uri)
    experiment = client.create_experiment(f"replayed-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", azure.tracking_uri)
    monkeypatch.setenv("REPLAYER_LOG_DIR", str(tmp_path / "logs"))
    ran = {}

    def run_leaves(jobs: dict, where: str) -> None:
        for name, node in jobs.items():
            spec = component(ws, node)
            if node["type"] == "pipeline":
                run_leaves(spec["jobs"], f"{where}/{name}")
                continue
            run = client.create_run(experiment).info.run_id
            monkeypatch.setenv("MLFLOW_RUN_ID", run)
            outputs = tmp_path / where.strip("/") / name
            try:
                fire.Fire(cli.Replayer, command=render(spec, node, {"manifest": azure.manifest}, outputs), name="replayer")
            except SystemExit as done:
                ran[node["tags"]["original_job_id"]] = (run, done.code, outputs, json.loads(node["inputs"].get("tags", {}).get("value") or "{}"))

    for body in ws.submitted.values():
        run_leaves(body["properties"]["jobs"], body["properties"]["tags"]["original_job_id"])
    manifest = ManifestSource(azure.manifest, Filters())
    records = {j.source_id: j for j in manifest.jobs()}
    assert len(ran) == 5 + 3 + 3, sorted(ran)  # the nested pipeline's leaves, the failed pipeline's, sweep parent + 2 trials
    for original, (run, code, outputs, extra) in ran.items():
        job = records[original]
        mirrored = job.status in ("FAILED", "KILLED") and job.root_id == "fuzzy_fox_05"
        assert code == (3 if mirrored else 0), (original, job.status, code)
        got = client.get_run(run)
        assert got.data.params == job.params and got.data.tags["original_job_id"] == original
        for key in job.latest_metrics:
            want = sorted((p.step, p.timestamp, p.value) for p in manifest.metrics(job) if p.key == key)
            assert sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run, key)) == want, (original, key)
        assert {k: got.data.tags[k] for k in extra} == extra
    prep = next(v for k, v in ran.items() if records[k].step_name == "prep_data")
    assert json.loads((prep[2] / "clean" / "replayed_from.json").read_text())["step"] == "prep_data", "edge outputs get a marker"


# -- wait ---------------------------------------------------------------------------------------------


def test_wait_exit_codes_over_mixed_statuses_and_timeouts(azure):
    ws, uri = target_workspace(azure)
    run_submit(azure, uri)
    names = {body["properties"]["tags"]["original_job_id"]: name for name, body in ws.submitted.items()}
    plans = {"bright_kiwi_01": ["Queued", "Running", "Completed"], "calm_river_02": ["Running", "Failed"],
             "dusty_moon_03": ["Running", "Canceled"], "eager_owl_04": ["Running"], "fuzzy_fox_05": ["Completed"]}
    for original, plan in plans.items():
        ws.status_plan[names[original]] = list(plan)
    ml = PipelineTarget(uri, credential=FakeCredential()).ml
    get = azureml_status(ml)

    def wait(*originals, timeout=30.0):
        return wait_for([names[o] for o in originals], get, timeout=timeout, poll=0.05, max_poll=0.2, parallel=3)

    assert wait("bright_kiwi_01", "fuzzy_fox_05").exit_code == 0
    assert wait("bright_kiwi_01", "dusty_moon_03").exit_code == EXIT_CANCELED
    mixed = wait("calm_river_02", "dusty_moon_03", "bright_kiwi_01")
    assert mixed.exit_code == EXIT_FAILED and mixed.statuses[names["calm_river_02"]] == "Failed", "failed outranks canceled"
    stuck = wait("eager_owl_04", "bright_kiwi_01", timeout=0.6)
    assert stuck.timed_out and stuck.exit_code == EXIT_TIMED_OUT and stuck.statuses[names["eager_owl_04"]] == "Running"
    with pytest.raises(UsageError, match="job no_such_job not found"):
        wait_for(["no_such_job"], get, poll=0.05)


def test_wait_backs_off_while_nothing_changes_and_stays_bounded():
    clock = SimpleNamespace(now=0.0, sleeps=[])
    answers = iter(["Running"] * 6 + ["Completed"])

    def sleep(seconds):
        clock.sleeps.append(seconds)
        clock.now += seconds

    result = wait_for(["a"], lambda name: next(answers), timeout=1000, poll=10, max_poll=30, clock=lambda: clock.now, sleep=sleep)
    assert result.exit_code == 0 and result.polls == 7
    assert all(8 <= s <= 36 for s in clock.sleeps) and clock.sleeps[-1] > clock.sleeps[0], clock.sleeps
    result = wait_for(["a"], lambda name: "Running", timeout=25, poll=10, max_poll=30, clock=lambda: clock.now, sleep=sleep)
    assert result.timed_out and result.exit_code == EXIT_TIMED_OUT and result.seconds <= 25.0001


def test_wait_reads_names_from_a_report_or_a_plain_list(tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"submitted": [{"name": "job_a", "original_job_id": "x"}]}))
    assert read_names(str(report)) == (["job_a"], {"job_a": "x"})
    plain = tmp_path / "names.txt"
    plain.write_text("# jobs\njob_a\n\njob_b  # the second\n")
    assert read_names(str(plain)) == (["job_a", "job_b"], {})
    with pytest.raises(UsageError, match="no such file"):
        read_names(str(tmp_path / "missing"))


def test_an_unknown_target_workspace_is_one_clear_usage_error(azure):
    with pytest.raises(UsageError, match=r"workspace nope \(resource group rg-archive, subscription .*\) not found"):
        PipelineTarget(f"azureml://subscriptions/{SUB}/resourcegroups/rg-archive/workspaces/nope", credential=FakeCredential())
    with pytest.raises(UsageError, match="not a workspace URI"):
        PipelineTarget("azureml://subscriptions/x/workspaces/y", credential=FakeCredential())


def test_rename_file_source_tags_and_source_user_reach_every_submitted_job(azure, tmp_path):
    """--rename-file renames the submitted jobs' experiments; --import-source-tags and
    --use-source-user put original_src.* and mlflow.user (Azure ML's own "Created by" is whoever
    submits) on the root job and on every node, nested ones included."""
    from runner.engine.mapping import Mapping

    ws, uri = target_workspace(azure)
    renames = tmp_path / "renames.yml"
    renames.write_text("fraud-pipelines: archive-pipelines\nfraud-baseline: archive-baseline\n")
    mapping = Mapping.build(rename_file=str(renames), import_source_tags=True, use_source_user=True)
    summary = run_submit(azure, uri, mapping=mapping)
    assert not summary.failed and len(ws.submitted) == 7

    root = submitted_root(ws, "eager_owl_04")
    assert root["experimentName"] == "archive-pipelines" and root["tags"]["original_experiment"] == "fraud-pipelines"
    spec = azure.by_name["eager_owl_04"]
    assert root["tags"]["mlflow.user"] == spec.created_by and root["tags"]["original_src.created_by"] == spec.created_by
    assert root["tags"]["original_src.kind"] == "pipeline" and root["tags"]["original_src.status"] == "FINISHED"
    assert root["tags"]["original_src.start_time"] == str(spec.start) and "original_src.experiment_id" in root["tags"]
    fit_block = component(ws, component(ws, root["jobs"]["train_block"])["jobs"]["fit_block"])
    fit = fit_block["jobs"]["fit"]["tags"]
    fit_spec = azure.by_name[fit["original_job_id"]]
    assert (fit["mlflow.user"], fit["original_src.step_name"], fit["original_src.start_time"]) == (fit_spec.created_by, "fit", str(fit_spec.start))
    command = submitted_root(ws, "bright_kiwi_01")
    assert command["experimentName"] == "archive-baseline" and command["tags"]["original_src.command"].startswith("python train.py")
    assert submitted_root(ws, "gentle_gale_06")["experimentName"] == "fraud-hyperopt", "not in the rename file: unchanged"

    plain_ws, plain_uri = target_workspace(azure)
    run_submit(azure, plain_uri)
    plain = submitted_root(plain_ws, "eager_owl_04")
    assert plain["experimentName"] == "fraud-pipelines" and not any(k.startswith("original_src.") or k == "mlflow.user" for k in plain["tags"])


# -- compute and the shipped component ----------------------------------------------------------


def leaf_nodes(ws: FakeWorkspace, jobs: dict) -> dict[str, dict]:
    """Every command node of a submitted pipeline, sub-pipelines opened."""
    found = {}
    for name, node in jobs.items():
        if node["type"] == "pipeline":
            found.update(leaf_nodes(ws, component(ws, node)["jobs"]))
        else:
            found[name] = node
    return found


def test_a_named_compute_must_exist_and_runs_every_step(azure, tmp_path):
    """--compute CLUSTER: a name the target lacks is one usage error before anything is submitted;
    one it has is on the pipeline's default and on every step (nested ones too) and command job."""
    from fakes.azureml_computes import add_cluster

    ws, uri = target_workspace(azure)
    az = write_fake_az(tmp_path / "az", sys.executable)
    env = {"PATH": f"{az}{os.pathsep}{os.environ['PATH']}", "REPLAYER_CREDENTIAL": "cli", "AZUREML_LOG_LEVEL": "ERROR"}
    missing = run_cli("submit", "--manifest", str(azure.manifest), "--target", uri, "--manifest-uri", MANIFEST_URI, "--compute", "gpu-cluster",
                      cwd=tmp_path, env=env)
    errors = [line for line in missing.stderr.splitlines() if "ERROR" in line]
    assert missing.returncode == 2 and len(errors) == 1, missing.stderr[-3000:]
    assert f"--compute gpu-cluster: no such compute in workspace {ws.name}" in errors[0] and "--compute serverless" in errors[0]
    assert not ws.submitted and not ws.components, "nothing may be submitted"

    add_cluster(ws, "gpu-cluster")
    summary = run_submit(azure, uri, compute="gpu-cluster", expand_trials=True, max_trials=2)
    assert not summary.failed and len(ws.submitted) == 7
    cluster = ws.arm_id("computes", "gpu-cluster")
    steps = 0
    for body in ws.submitted.values():
        job = body["properties"]
        if job["jobType"] == "Command":
            assert job["computeId"] == cluster
            steps += 1
            continue
        assert job["settings"]["default_compute"] == cluster
        for name, node in leaf_nodes(ws, job["jobs"]).items():
            assert node.get("computeId") == cluster, f"{name}: {node.get('computeId')}"
            steps += 1
    assert steps == summary.step_jobs


def test_an_installed_replayer_finds_its_shipped_component_from_any_folder(azure, tmp_path):
    """The image installs the package with components/ copied into it (Dockerfile, pyproject package
    data): laid out that way, away from this checkout, `submit` needs no --component."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    assert "COPY components ./runner/components" in (root / "Dockerfile").read_text().splitlines()
    assert 'runner = ["components/*.yml"]' in (root / "pyproject.toml").read_text()
    site = tmp_path / "site"
    shutil.copytree(root / "runner", site / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "components", site / "runner" / "components")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import runner.azureml.pipeline_jobs as p; print(p.default_component())"],
                           cwd=elsewhere, env={**os.environ, **env}, capture_output=True, text=True)
    assert where.stdout.strip() == str(site / "runner" / "components" / "replay_step.yml"), where.stderr[-2000:]
    done = run_cli("submit", "--manifest", str(azure.manifest), "--dry-run", "--emit", "jobs", "--include", "bright_kiwi_01", cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    emitted = yaml.safe_load(next((elsewhere / "jobs").glob("*/job.yml")).read_text())
    assert emitted["command"].startswith("python -m runner step --manifest ${{inputs.manifest}}")
