"""`replayer step` (runner/azureml/step.py), the body of the replay_step component, run locally.

A manifest written with the project's own writer holds a failed pipeline step (a 2,500-point
history with NaN, repeated steps and out-of-order timestamps, artifacts and logs of every
family), a sweep trial that failed under a sweep that completed, and a canceled standalone job.
Each is replayed into a real `mlflow server` and compared point by point with the manifest.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from conftest import run_cli
from runner.azureml import step as replay_step
from runner.core.errors import UsageError
from runner.core.filters import Filters
from runner.engine.manifest import ManifestSource, ManifestWriter
from runner.core.records import ArtifactRef, Experiment, JobRecord, MetricPoint
from servers import MlflowServer

T0 = 1_709_251_200_000
EXPERIMENT = "step-replay"
FILES = {
    "model/model.pkl": b"\x80\x04binary model",
    "outputs/metrics.json": b'{"auc": 0.9}\n',
    "user_logs/std_log.txt": b"epoch 1\nepoch 2\n",
    "azureml-logs/70_driver_log.txt": b"driver started\n",
    "system_logs/lifecycler/execution-wrapper.log": b"exit 1\n",
}


def history() -> list[MetricPoint]:
    points = [MetricPoint("loss", 1.0 / (1 + s), T0 + 1000 * s + (s * 7919) % 500, s) for s in range(2500)]
    points[100] = MetricPoint("loss", math.nan, points[100].timestamp, 100)
    points += [MetricPoint("loss", 0.5, T0 + 5, 3), MetricPoint("loss", 0.25, T0 + 1, 3)]  # a repeated step, older timestamp
    points += [MetricPoint("accuracy", 0.5 + 0.01 * s, T0 + 60_000 * s, s * 10) for s in range(40)]
    return points


def records() -> dict[str, JobRecord]:
    def job(source_id, status, kind="command", parent=None, root=None, depth=0, **extra):
        return JobRecord(source_id=source_id, experiment=EXPERIMENT, name=extra.pop("name", source_id), kind=kind, status=status,
                         start_time=T0, end_time=T0 + 3_600_000, parent_id=parent, root_id=root or source_id, depth=depth, **extra)

    jobs = [
        job("pipe-1", "FAILED", "pipeline", source_status="Failed"),
        job("train-1", "FAILED", parent="pipe-1", root="pipe-1", depth=1, step_name="train", name="Train the model", source_status="Failed",
            params={"lr": "0.05", "note": "ünïcode ✓ " + "x" * 300}, tags={"team": "risk", "mlflow.user": "Ada", "mlflow.parentRunId": "pipe-1"},
            latest_metrics={"loss": 0.25, "accuracy": 0.89}),
        job("sweep-1", "FINISHED", "sweep", source_status="Completed"),
        job("trial-1", "FAILED", parent="sweep-1", root="sweep-1", depth=1, params={"lr": "0.1"}, latest_metrics={"accuracy": 0.7}),
        job("alone-1", "KILLED", source_status="Canceled", latest_metrics={"accuracy": 0.6}),
    ]
    return {j.source_id: j for j in jobs}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("step") / "manifest"
    writer = ManifestWriter(folder)
    writer.add_experiment(Experiment(EXPERIMENT))
    everything = history()
    for job in records().values():
        writer.add_job(job)
        points = everything if job.source_id == "train-1" else [p for p in everything if p.key in job.latest_metrics][:5]
        writer.write_metrics(job, points)
        refs = []
        if job.source_id == "train-1":
            for path, data in FILES.items():
                writer.artifact_path(job, ArtifactRef(path, len(data))).write_bytes(data)
                refs.append(ArtifactRef(path, len(data), hashlib.md5(data).hexdigest()))
        writer.write_artifacts(job, refs)
    writer.close({"kind": "test", "workspace": "ws-source"}, Filters())
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("step-mlflow")) as running:
        yield running


def replayed_history(client, run_id: str) -> list[tuple]:
    rows = []
    for key in sorted(client.get_run(run_id).data.metrics):
        rows += [MetricPoint(m.key, m.value, m.timestamp, m.step).identity() for m in client.get_metric_history(run_id, key)]
    return sorted(rows, key=repr)


def original_history(manifest: Path, job_id: str) -> list[tuple]:
    source = ManifestSource(manifest, Filters())
    job = next(j for j in source.jobs() if j.source_id == job_id)
    return sorted((p.identity() for p in source.metrics(job)), key=repr)


def test_a_failed_step_is_replayed_exactly_and_ends_failed(manifest, server, tmp_path):
    from mlflow import MlflowClient

    logs, artifacts = tmp_path / "original_logs", tmp_path / "artifacts"
    result = replay_step.run_step(manifest, "train-1", target=server.uri, logs=logs, artifacts=artifacts)
    client = MlflowClient(server.uri)
    run = client.get_run(result.run_id)
    assert replayed_history(client, result.run_id) == original_history(manifest, "train-1")
    assert result.metric_points == 2542 and len(replayed_history(client, result.run_id)) == 2542
    assert run.data.params == records()["train-1"].params
    tags = run.data.tags
    assert {k: tags[k] for k in ("team", "mlflow.user")} == {"team": "risk", "mlflow.user": "Ada"}
    assert tags.get("mlflow.parentRunId") is None, "the original's parent link is structure, not a tag to copy"
    assert {k: v for k, v in tags.items() if k.startswith("original_")} == {
        "original_job_id": "train-1", "original_parent_job_id": "pipe-1", "original_parent_pipeline_id": "pipe-1",
        "original_pipeline_depth": "1", "original_experiment": EXPERIMENT, "original_workspace": "ws-source",
        "original_status": "Failed", "original_start_time": str(T0), "original_end_time": str(T0 + 3_600_000), "original_step_name": "train",
    }
    assert tags["replay.complete"] == records()["train-1"].fingerprint()
    assert (run.info.status, run.info.start_time, run.info.end_time, run.info.run_name) == ("FAILED", T0, T0 + 3_600_000, "Train the model")
    assert result.mirrored_failure, "the original failed inside a failed pipeline: the step must fail too"
    copied = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert copied == {
        "artifacts/model/model.pkl": FILES["model/model.pkl"],
        "artifacts/outputs/metrics.json": FILES["outputs/metrics.json"],
        "original_logs/user_logs/std_log.txt": FILES["user_logs/std_log.txt"],
        "original_logs/azureml-logs/70_driver_log.txt": FILES["azureml-logs/70_driver_log.txt"],
        "original_logs/system_logs/lifecycler/execution-wrapper.log": FILES["system_logs/lifecycler/execution-wrapper.log"],
    }
    assert (result.artifacts, result.logs) == (2, 3)

    again = replay_step.run_step(manifest, "train-1", target=server.uri, run_id=result.run_id)  # a retried step
    assert (again.metric_points, again.params) == (0, 0)
    assert replayed_history(client, result.run_id) == original_history(manifest, "train-1"), "a retry must not duplicate points"


def test_a_failed_trial_of_a_completed_sweep_completes_with_its_tags(manifest, server):
    from mlflow import MlflowClient

    extra = {"automl_role": "trial", "automl_trial_rank": "3"}
    result = replay_step.run_step(manifest, "trial-1", target=server.uri, extra_tags=extra)
    assert not result.mirrored_failure, "failing would turn the replayed sweep Failed; the original sweep completed"
    tags = MlflowClient(server.uri).get_run(result.run_id).data.tags
    assert tags["automl_role"] == "trial" and tags["automl_trial_rank"] == "3" and tags["original_status"] == "FAILED"
    assert replay_step.mirrors_failure("KILLED", []) and not replay_step.mirrors_failure("FINISHED", [])
    assert not replay_step.mirrors_failure("FAILED", ["FAILED", "FINISHED"]), "any completed ancestor stops the mirror"


def test_inside_an_azureml_job_the_step_writes_into_the_jobs_own_run(manifest, server, monkeypatch):
    """MLFLOW_TRACKING_URI / MLFLOW_RUN_ID, as Azure ML sets them: the run's status stays Azure ML's."""
    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    found = client.get_experiment_by_name(EXPERIMENT)  # made by an earlier step when this module ran in order
    experiment = found.experiment_id if found else client.create_experiment(EXPERIMENT)
    own = client.create_run(experiment).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", own)
    result = replay_step.run_step(manifest, "alone-1")
    assert result.run_id == own and result.mirrored_failure
    run = client.get_run(own)
    assert run.info.status == "RUNNING", "inside Azure ML the job ends the run; the step must not"
    assert replayed_history(client, own) == original_history(manifest, "alone-1")
    monkeypatch.delenv("MLFLOW_RUN_ID")
    with pytest.raises(UsageError, match="MLFLOW_RUN_ID"):
        replay_step.run_step(manifest, "alone-1")


def test_cli_exit_codes_tags_and_mirror_switch(manifest, server, tmp_path):
    from mlflow import MlflowClient

    base = ["step", "--manifest", str(manifest), "--target", server.uri]
    canceled = run_cli(*base, "--job-id", "alone-1", "--tags", '{"automl_role": "parent", "note": "it\'s"}', cwd=tmp_path)
    assert canceled.returncode == replay_step.EXIT_MIRRORED, canceled.stderr[-2000:]
    assert "exiting 3 so Azure ML marks this step failed" in canceled.stderr
    runs = MlflowClient(server.uri).search_runs(
        [MlflowClient(server.uri).get_experiment_by_name(EXPERIMENT).experiment_id], "tags.original_job_id = 'alone-1' and tags.automl_role = 'parent'"
    )
    assert len(runs) == 1 and runs[0].data.tags["note"] == "it's"
    kept = run_cli(*base, "--job-id", "alone-1", "--mirror-status", "false", "--run-id", runs[0].info.run_id, cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr[-2000:]
    missing = run_cli(*base, "--job-id", "nope", cwd=tmp_path)
    errors = [line for line in missing.stderr.splitlines() if "ERROR" in line]
    assert missing.returncode == 2 and len(errors) == 1 and "--job-id nope: no such job" in errors[0]


def test_paths_leaving_the_output_folder_are_refused(tmp_path):
    from runner.files.options import clean_path, log_family

    with pytest.raises(Exception, match="not a plain relative path"):
        clean_path("../../etc/passwd")
    assert log_family("user_logs/a/b.txt") == ("user_logs", "a/b.txt")
    assert log_family("outputs/user_logs.txt") is None and log_family("logs") is None
    assert replay_step.parse_tags('{"a": 1}') == {"a": "1"} and replay_step.parse_tags({"b": "x"}) == {"b": "x"}
    with pytest.raises(UsageError, match="JSON object"):
        replay_step.parse_tags("[1, 2]")
    assert json.loads(json.dumps(replay_step.step_tags(records()["alone-1"], "ws")))["original_status"] == "Canceled"


def test_a_record_over_the_runs_limits_overflows_and_verifies_clean(server, tmp_path):
    """30 user tags, 8 metric names, a 7,000-character param (MLflow takes 6,000) and a 9,000-character
    tag, under 20 tags and 5 metric names: the excess goes to replay/overflow.json, nothing is lost,
    verify merges it back and is clean; a retried step changes nothing."""
    import uuid

    from mlflow import MlflowClient

    from runner.engine.limits import OVERFLOW_PATH

    token = uuid.uuid4().hex[:8]
    experiment, workspace = f"step-limits-{token}", f"ws-limits-{token}"
    tags = {f"tag{i:02d}": f"value {i}" for i in range(30)} | {"long": "t" * 9000, "mlflow.runName": "wide"}
    job = JobRecord(source_id="wide-1", experiment=experiment, name="wide", kind="command", status="FINISHED", start_time=T0,
                    end_time=T0 + 60_000, root_id="wide-1", params={"long": "p" * 7000, "short": "s"}, tags=tags,
                    latest_metrics={f"m{k}": 39.0 for k in range(8)})
    manifest = tmp_path / "manifest"
    writer = ManifestWriter(manifest)
    writer.add_experiment(Experiment(experiment))
    writer.add_job(job)
    writer.write_metrics(job, [MetricPoint(f"m{k}", float(i), T0 + i, i) for k in range(8) for i in range(40)])
    writer.write_artifacts(job, [])
    writer.close({"kind": "test", "workspace": workspace}, Filters())

    caps = ["--max-tags", "20", "--max-metric-keys", "5"]
    first = run_cli("step", "--manifest", str(manifest), "--job-id", "wide-1", "--target", server.uri, *caps, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "over the run's limits" in first.stderr
    client = MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(run.data.tags) <= 20 and sorted(run.data.metrics) == [f"m{k}" for k in range(5)]
    assert run.data.params["long"] == "p" * 6000
    overflow = json.loads(Path(client.download_artifacts(run.info.run_id, OVERFLOW_PATH, str(tmp_path))).read_text())
    assert overflow["params"] == {"long": "p" * 7000}
    assert sorted(overflow["metrics"]) == ["m5", "m6", "m7"] and all(len(v) == 40 for v in overflow["metrics"].values())
    kept = {k for k in run.data.tags if k.startswith("tag")}
    assert kept | {k for k in overflow["tags"] if k.startswith("tag")} == {f"tag{i:02d}" for i in range(30)}
    assert json.loads(run.data.tags["replay.overflow"]) == {"metrics": 3, "params": 1, "tags": len(overflow["tags"])}

    verify = ["verify", "--source", str(manifest), "--target", server.uri]
    clean = run_cli(*verify, cwd=tmp_path)
    assert clean.returncode == 0 and "1 runs compared, 1 equal" in clean.stdout, clean.stdout[-3000:]
    again = run_cli("step", "--manifest", str(manifest), "--job-id", "wide-1", "--target", server.uri, "--run-id", run.info.run_id,
                    *caps, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 params, 0 tags, 0 metric points" in again.stderr
    assert run_cli(*verify, cwd=tmp_path).returncode == 0
    assert len(client.search_runs([run.info.experiment_id])) == 1
