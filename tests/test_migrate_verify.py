"""`migrate --verify` between two real mlflow servers: verify's full check in the same pass as the
copy (runner/engine/migrate_verify.py), its table, report and exit code.

The request counts between two Azure ML workspaces are in tests/test_workspace_to_workspace.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from conftest import ROOT, run_cli
from runner.core.filters import Filters
from runner.mlflow import sync_state
from test_fidelity import seed_rich

# `python -c` body: the CLI with the target's caps fitting dropping the first point of `loss` on
# its way to the target (a copy that loses a point after the source's stream was digested), and the
# leaf's model/weights.bin overwritten in the target before its completion tag: aimed patches, what
# the check must catch from the copy's own read of the source (digests, files), with no source read.
LOSES_A_POINT = """
import sys
from runner.mlflow.target import DirectTarget
fit = DirectTarget.fit_metrics

def losing(self, job, points, overflow):
    dropped = []
    for point in fit(self, job, points, overflow):
        if point.key == "loss" and not dropped:
            dropped.append(point)
            continue
        yield point

DirectTarget.fit_metrics = losing
finish = DirectTarget.finish

def corrupting(self, run_id, job):
    if job.name == "leaf":  # a file changed in the target between its copy and the completion tag
        import pathlib, tempfile
        folder = pathlib.Path(tempfile.mkdtemp())
        (folder / "weights.bin").write_bytes(b"corrupted")
        self.client.log_artifact(run_id, str(folder / "weights.bin"), "model")
    finish(self, run_id, job)

DirectTarget.finish = corrupting
from runner.cli import main
main()
"""


@pytest.fixture(scope="module")
def seeded(servers, tmp_path_factory):
    source, target = servers
    name = f"inline-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("migrate-verify")
    ids = seed_rich(MlflowClient(source.uri), name, work)
    return {"name": name, "ids": ids, "work": work, "source": source.uri, "target": target.uri}


def migrate(seeded, workspace: str, *more: str, experiments: str | None = None):
    return run_cli("migrate", "--source", seeded["source"], "--target", seeded["target"], "--experiments",
                   experiments or f"{seeded['name']}*", "--workspace", workspace, "--parallel", "4", *more, cwd=seeded["work"])


def report_of(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_migrate_verify_reports_all_equal_then_checks_every_skipped_run_again(seeded):
    workspace = f"ws-{seeded['name']}"
    report = seeded["work"] / "first.json"
    first = migrate(seeded, workspace, "--verify", "--report", str(report))
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert "created 5, repaired 0, skipped 0, failed 0" in first.stderr  # the migrate summary line still prints
    assert "verify: 5 runs compared, 5 equal, 0 differ" in first.stdout  # verify's table
    data = report_of(report)
    assert data["summary"]["compared"] == 5 and data["summary"]["equal"] == 5 and data["differences"] == []
    assert set(data) == {"source", "target", "summary", "differences"}  # verify's JSON, not the copy's summary

    again = seeded["work"] / "again.json"
    rerun = migrate(seeded, workspace, "--verify", "--report", str(again))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    assert "created 0, repaired 0, skipped 5, failed 0" in rerun.stderr
    assert report_of(again)["summary"]["compared"] == 5 and report_of(again)["summary"]["equal"] == 5


def test_a_target_changed_after_the_copy_is_reported_by_the_rerun(seeded):
    """Skipped runs have no digest: they are checked against a fresh read of the source, as verify does."""
    workspace = f"ws-{seeded['name']}-changed"
    assert migrate(seeded, workspace).returncode == 0
    dst = MlflowClient(seeded["target"])
    found = dst.search_runs([e.experiment_id for e in dst.search_experiments()],
                            f"tags.original_workspace = '{workspace}' and tags.original_job_id = '{seeded['ids']['leaf']}'")
    leaf = found[0].info.run_id
    dst.log_batch(leaf, metrics=[Metric("loss", 42.0, 1, 999)])
    dst.set_tag(leaf, "user.tag", "changed")
    report = seeded["work"] / "changed.json"
    rerun = migrate(seeded, workspace, "--verify", "--report", str(report))
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr[-3000:]
    assert "skipped 5, failed 0" in rerun.stderr
    data = report_of(report)
    assert data["summary"]["compared"] == 5 and data["summary"]["equal"] == 4
    by_field = {d["field"]: d for d in data["differences"]}
    assert set(by_field) == {"metric:loss", "tag:user.tag"}
    assert by_field["metric:loss"]["target"] == "251 points (0 missing, 1 extra or changed)"
    assert by_field["tag:user.tag"]["target"] == "changed" and by_field["metric:loss"]["target_run"] == leaf
    assert "metric:loss" in rerun.stdout and "fix: a run that differs" in rerun.stdout


def test_what_the_copy_lost_or_changed_is_caught_by_the_inline_check(seeded, tmp_path):
    """The digests are taken from the source's stream before the target's caps fitting: a point the
    copy loses after that shows as missing, though the check reads no source history of its own; a
    file changed in the target shows against the size and MD5 the copy read from the source."""
    workspace = f"ws-{seeded['name']}-lossy"
    report = tmp_path / "lossy.json"
    lossy = subprocess.run(
        [sys.executable, "-c", LOSES_A_POINT, "migrate", "--source", seeded["source"], "--target", seeded["target"],
         "--experiments", seeded["name"], "--workspace", workspace, "--verify", "--report", str(report), "--incremental"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "REPLAYER_LOG_DIR": str(tmp_path)},
    )
    assert lossy.returncode == 1, lossy.stdout + lossy.stderr[-3000:]
    assert "created 4, repaired 0, skipped 0, failed 0" in lossy.stderr  # the copy itself saw no error
    data = report_of(report)
    assert data["summary"]["compared"] == 4 and data["summary"]["equal"] == 3
    found = {d["field"]: d for d in data["differences"]}
    assert set(found) == {"metric:loss", "artifact:model/weights.bin"} and {d["job"] for d in found.values()} == {seeded["ids"]["leaf"]}
    assert (found["metric:loss"]["source"], found["metric:loss"]["target"]) == ("250 points", "249 points (1 missing, 0 extra or changed)")
    weights = found["artifact:model/weights.bin"]
    assert json.loads(weights["source"])[0] == 256 * 40 and json.loads(weights["target"])[0] == len(b"corrupted")
    # A pass that differs keeps the incremental sync state where it was: the next sync reads this window again.
    assert sync_state.read_state(seeded["target"], sync_state.state_key(workspace, Filters())) is None


def test_an_equal_incremental_pass_moves_the_sync_state_on(seeded):
    workspace = f"ws-{seeded['name']}-sync"
    done = migrate(seeded, workspace, "--verify", "--incremental")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    state = sync_state.read_state(seeded["target"], sync_state.state_key(workspace, Filters()))
    assert state is not None and state.watermark is not None


def test_verify_with_dry_run_is_a_usage_error_and_the_config_file_takes_verify(seeded, tmp_path):
    refused = migrate(seeded, "ws-never", "--verify", "--dry-run")
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()  # one line, naming both flags
    assert "--verify" in line and "--dry-run" in line
    config = tmp_path / "migration.yml"
    config.write_text(f"source: {seeded['source']}\ntarget: {seeded['target']}\nworkspace: ws-{seeded['name']}-config\n"
                      f"filters: {{experiments: ['{seeded['name']}-other']}}\noptions: {{verify: true}}\n", encoding="utf-8")
    done = run_cli("migrate", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "verify: 1 runs compared, 1 equal, 0 differ" in done.stdout


def test_replay_verify_checks_against_the_manifest(seeded, tmp_path):
    """`replay --verify`: the same check, with the manifest as the source."""
    manifest, target = tmp_path / "manifest", tmp_path / "target"
    assert run_cli("extract", "--source", seeded["source"], "--out", str(manifest), "--experiments", f"{seeded['name']}*",
                   cwd=tmp_path).returncode == 0
    done = run_cli("replay", "--manifest", str(manifest), "--target", str(target), "--verify", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "created 5" in done.stderr and "verify: 5 runs compared, 5 equal, 0 differ" in done.stdout


def test_runs_with_model_inputs_are_checked_after_the_logged_models(servers, tmp_path):
    """A model input names the model's copy, written in the logged-model pass after the runs: those
    runs are checked once it is done (checked right after their completion tag, they would lack it)."""
    from test_mlflow3_models import seed_evaluated

    source, target = servers
    name = f"inputs-{uuid.uuid4().hex[:8]}"
    ids = seed_evaluated(MlflowClient(source.uri), name, tmp_path)
    report = tmp_path / "inputs.json"
    done = run_cli("migrate", "--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}",
                   "--verify", "--report", str(report), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "model inputs added 1" in done.stderr
    runs = len(MlflowClient(source.uri).search_runs([ids["experiment"]]))
    assert report_of(report)["summary"]["compared"] == report_of(report)["summary"]["equal"] == runs
    # verify on its own agrees (and reads the model inputs the ordinary way).
    bare = run_cli("verify", "--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}",
                   cwd=tmp_path)
    assert bare.returncode == 0, bare.stdout + bare.stderr[-3000:]


def test_migrate_models_verify_compares_the_registry_after_its_copy(servers, tmp_path):
    """With --models the registered models are compared after their copy, in verify's report."""
    from test_registry import seed as seed_registry

    source, target = servers
    name = f"regv-{uuid.uuid4().hex[:8]}"
    seed_registry(MlflowClient(source.uri), name, tmp_path / "seed")
    report = tmp_path / "verify-report.json"
    done = run_cli("migrate", "--source", source.uri, "--target", target.uri, "--experiments", f"{name}-exp", "--workspace", f"ws-{name}",
                   "--models", f"{name}-churn,{name}-fraud", "--verify", "--report", str(report), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "versions: created 6, repaired 0, skipped 0, failed 0" in done.stderr
    summary = report_of(report)["summary"]
    assert (summary["compared"], summary["equal"], summary["models"]) == (4, 4, 2) and report_of(report)["differences"] == []
    assert "verify: 4 runs compared, 4 equal, 0 differ, 2 models compared" in done.stdout


# `python -c` body: the CLI, counting how verify's checker read each target run: alone (runs/get)
# or from its parent's children search; printed as one JSON line on exit.
COUNTS_READS = """
import atexit, json
from runner.mlflow.check import JobChecker
reads = {"alone": [], "searched": []}
read_run, read_children = JobChecker.read_run, JobChecker.read_children

def alone(self, run_id):
    reads["alone"].append(run_id)
    return read_run(self, run_id)

def searched(self, parent, jobs):
    found = read_children(self, parent, jobs)
    reads["searched"] += sorted(found)
    return found

JobChecker.read_run, JobChecker.read_children = alone, searched
atexit.register(lambda: print("READS " + json.dumps(reads)))
from runner.cli import main
main()
"""


def seed_sweep(client, name: str, trials: int) -> dict[str, str]:
    """A sweep parent with `trials` children, each with a param, a tag and a short history; name -> id."""
    experiment = client.create_experiment(name)
    parent = client.create_run(experiment, start_time=1_700_000_000_000, run_name="sweep").info.run_id
    ids = {"sweep": parent}
    for i in range(trials):
        trial = client.create_run(experiment, start_time=1_700_000_001_000 + i, run_name=f"trial_{i}",
                                  tags={"mlflow.parentRunId": parent, "trial": str(i)}).info.run_id
        client.log_batch(trial, metrics=[Metric("loss", 1.0 / (i + step + 1), 1_700_000_002_000 + step, step) for step in range(3)])
        client.log_param(trial, "lr", str(0.1 * (i + 1)))
        client.set_terminated(trial, "FINISHED", end_time=1_700_000_003_000 + i)
        ids[f"trial_{i}"] = trial
    client.set_terminated(parent, "FINISHED", end_time=1_700_000_004_000)
    return ids


def target_runs(target_uri: str, workspace: str) -> dict[str, str]:
    """source run id -> target run id, of the runs replayed from `workspace`."""
    dst = MlflowClient(target_uri)
    found = dst.search_runs([e.experiment_id for e in dst.search_experiments()], f"tags.original_workspace = '{workspace}'")
    return {run.data.tags["original_job_id"]: run.info.run_id for run in found}


def test_a_changed_child_is_reported_from_its_parents_search(servers, tmp_path):
    """The children of a parent are checked against one search of their parent's children (no
    runs/get each): a tag changed and a param added in the target after the copy still show."""
    source, target = servers
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    ids = seed_sweep(MlflowClient(source.uri), name, trials=3)
    workspace = f"ws-{name}"
    args = ("migrate", "--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", workspace, "--parallel", "4")
    first = subprocess.run([sys.executable, "-c", COUNTS_READS, *args, "--verify"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env={**__import__("os").environ, "REPLAYER_LOG_DIR": str(tmp_path)})
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert "verify: 4 runs compared, 4 equal, 0 differ" in first.stdout
    reads = json.loads(first.stdout.split("READS ", 1)[1])
    trials = sorted(ids[f"trial_{i}"] for i in range(3))
    assert (reads["searched"], len(reads["alone"])) == (trials, 1), reads  # the sweep alone, its 3 trials from one search

    dst = MlflowClient(target.uri)
    copies = target_runs(target.uri, workspace)
    dst.set_tag(copies[ids["trial_1"]], "trial", "changed")
    dst.log_param(copies[ids["trial_2"]], "added", "later")
    report = tmp_path / "changed.json"
    rerun = subprocess.run([sys.executable, "-c", COUNTS_READS, *args, "--verify", "--report", str(report)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "REPLAYER_LOG_DIR": str(tmp_path)})
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr[-3000:]
    assert "skipped 4, failed 0" in rerun.stderr
    assert json.loads(rerun.stdout.split("READS ", 1)[1])["searched"] == trials  # skipped runs are searched too
    found = {(d["job"], d["field"]): (d["source"], d["target"], d["target_run"]) for d in report_of(report)["differences"]}
    assert found == {(ids["trial_1"], "tag:trial"): ("1", "changed", copies[ids["trial_1"]]),
                     (ids["trial_2"], "param:added"): ("(absent)", "later", copies[ids["trial_2"]])}
    assert report_of(report)["summary"]["compared"] == 4 and report_of(report)["summary"]["equal"] == 2
