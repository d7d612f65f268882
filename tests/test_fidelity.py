"""Full-fidelity copy between two real mlflow servers, checked field by field on the target.

The assertions read the target with MlflowClient directly, not through our verify, so a bug in
verify cannot hide a bug in replay; a separate test then proves verify catches tampering.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType

from conftest import run_cli

T0 = 1_700_000_000_000
LONG_PARAM = "λ" * 50 + "x" * 4900
PATHS = {
    "model/weights.bin": bytes(range(256)) * 40,
    "a/b/c/deep.txt": b"three levels down\n",
    "reports/final report.txt": b"with a space\n",
    "reports/résumé ✓.md": "unicode ✓\n".encode(),
    "logs/empty.log": b"",
}


def seed_rich(client: MlflowClient, name: str, scratch: Path) -> dict[str, str]:
    """Two experiments, a 4-level tree, every status, odd values; returns run name -> id."""
    ids = {}
    exp = client.create_experiment(name, tags={"mlflow.note.content": "a description ✓", "owner": "team-a"})
    other = client.create_experiment(name + "-other", tags={"purpose": "second"})

    def run(exp_id, run_name, start, parent=None, status="FINISHED", end=None, tags=None):
        all_tags = {"user.tag": "v", "mlflow.user": "alice", **(tags or {})}
        if parent:
            all_tags["mlflow.parentRunId"] = ids[parent]
        run_id = client.create_run(exp_id, start_time=T0 + start, tags=all_tags, run_name=run_name).info.run_id
        ids[run_name] = run_id
        if status != "RUNNING":
            client.set_terminated(run_id, status, end_time=end or T0 + start + 5000)
        return run_id

    root = run(exp, "pipeline", 0, status="FINISHED", end=T0 + 900_000)
    client.log_batch(root, params=[Param("long", LONG_PARAM), Param("unicode", "héllo wörld ✓"), Param("empty", "")])
    run(exp, "stage", 10, parent="pipeline", status="FAILED", end=T0 + 50_000)
    run(exp, "step", 20, parent="stage", status="KILLED")
    leaf = run(exp, "leaf", 30, parent="step", tags={"depth": "3"})
    history = [Metric("loss", 1.0 / (i + 1), T0 + i * 7, i) for i in range(250)]
    history += [Metric("odd", v, T0 + i, i) for i, v in enumerate([float("nan"), float("inf"), float("-inf"), -0.0, 1e-300])]
    history += [Metric("same_step", float(i), T0 + i, 0) for i in range(5)]  # many points on one step
    client.log_batch(leaf, metrics=history)
    for rel, content in PATHS.items():
        local = scratch / leaf / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(content)
        folder = str(Path(rel).parent)
        client.log_artifact(leaf, str(local), None if folder == "." else folder)
    run(other, "standalone", 40, status="FINISHED")
    gone = run(other, "deleted-run", 50)
    client.delete_run(gone)
    return ids


@pytest.fixture(scope="module")
def migrated(servers, tmp_path_factory):
    """Seed once, migrate once through the CLI; tests inspect the result."""
    import uuid

    source, target = servers
    name = f"fidelity-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("fidelity")
    ids = seed_rich(MlflowClient(source.uri), name, work)
    workspace = f"ws-{name}"
    result = run_cli("migrate", "--source", source.uri, "--target", target.uri, "--experiments", f"{name}*",
                     "--workspace", workspace, "--parallel", "4", cwd=work)
    assert result.returncode == 0, result.stderr
    return {"name": name, "ids": ids, "workspace": workspace, "work": work, "result": result,
            "source": MlflowClient(source.uri), "target": MlflowClient(target.uri), "uris": (source.uri, target.uri)}


def target_runs(client: MlflowClient, workspace: str, view=ViewType.ACTIVE_ONLY) -> dict[str, object]:
    """original_job_id -> target run, across all experiments."""
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(exps, f"tags.original_workspace = '{workspace}'", view, max_results=1000)
    found = {}
    for run in runs:
        key = run.data.tags["original_job_id"]
        assert key not in found, f"duplicate replayed run for {key}"
        found[key] = run
    return found


def history(client, run_id, key):
    return sorted(
        (m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value) for m in client.get_metric_history(run_id, key)
    )


def test_every_active_run_is_copied_once_and_deleted_ones_are_not(migrated):
    runs = target_runs(migrated["target"], migrated["workspace"])
    ids = migrated["ids"]
    assert set(runs) == {ids[n] for n in ("pipeline", "stage", "step", "leaf", "standalone")}


def test_run_info_is_kept(migrated):
    src, runs = migrated["source"], target_runs(migrated["target"], migrated["workspace"])
    for source_id, copy in runs.items():
        orig = src.get_run(source_id)
        assert copy.info.run_name == orig.info.run_name
        assert copy.info.status == orig.info.status
        assert copy.info.start_time == orig.info.start_time
        assert copy.info.end_time == orig.info.end_time
        assert copy.data.params == orig.data.params
    statuses = {migrated["ids"][n]: s for n, s in [("stage", "FAILED"), ("step", "KILLED"), ("leaf", "FINISHED")]}
    assert {k: runs[k].info.status for k in statuses} == statuses


def test_long_and_unicode_params(migrated):
    copy = target_runs(migrated["target"], migrated["workspace"])[migrated["ids"]["pipeline"]]
    assert copy.data.params["long"] == LONG_PARAM
    assert copy.data.params["unicode"] == "héllo wörld ✓"
    assert copy.data.params["empty"] == ""


def test_user_and_lineage_tags(migrated):
    ids, runs = migrated["ids"], target_runs(migrated["target"], migrated["workspace"])
    leaf = runs[ids["leaf"]].data.tags
    assert leaf["user.tag"] == "v" and leaf["depth"] == "3" and leaf["mlflow.user"] == "alice"
    assert leaf["original_job_id"] == ids["leaf"]
    assert leaf["original_parent_job_id"] == ids["step"]
    assert leaf["original_experiment"] == migrated["name"]
    assert leaf["original_workspace"] == migrated["workspace"]
    assert leaf["original_pipeline_depth"] == "3"
    assert "replay.complete" in leaf
    assert "original_parent_job_id" not in runs[ids["pipeline"]].data.tags


def test_parent_links_point_at_new_parents(migrated):
    ids, runs = migrated["ids"], target_runs(migrated["target"], migrated["workspace"])
    for child, parent in [("stage", "pipeline"), ("step", "stage"), ("leaf", "step")]:
        assert runs[ids[child]].data.tags["mlflow.parentRunId"] == runs[ids[parent]].info.run_id
    assert "mlflow.parentRunId" not in runs[ids["pipeline"]].data.tags


def test_full_metric_history_with_special_values(migrated):
    src, dst = migrated["source"], migrated["target"]
    leaf = migrated["ids"]["leaf"]
    copy = target_runs(dst, migrated["workspace"])[leaf].info.run_id
    for key in ("loss", "odd", "same_step"):
        assert history(dst, copy, key) == history(src, leaf, key)
    assert len(history(dst, copy, "loss")) == 250
    odd = [v for _, _, v in history(dst, copy, "odd")]
    assert "nan" in odd and -0.0 in odd and 1e-300 in odd
    # The sqlite store behind both servers saves +-inf as +-max float; both sides agree.
    assert max(v for v in odd if v != "nan") >= 1.7976931348623157e308


def test_artifacts_bytes_and_names(migrated, tmp_path):
    dst = migrated["target"]
    copy = target_runs(dst, migrated["workspace"])[migrated["ids"]["leaf"]].info.run_id
    for rel, content in PATHS.items():
        local = Path(dst.download_artifacts(copy, rel, str(tmp_path)))
        assert local.read_bytes() == content, rel


def test_experiments_keep_tags_and_description(migrated):
    exp = migrated["target"].get_experiment_by_name(migrated["name"])
    assert exp.tags["mlflow.note.content"] == "a description ✓"
    assert exp.tags["owner"] == "team-a"
    assert migrated["target"].get_experiment_by_name(migrated["name"] + "-other").tags["purpose"] == "second"


def test_rerun_creates_nothing_and_verify_is_clean(migrated):
    src_uri, dst_uri = migrated["uris"]
    args = ["--experiments", f"{migrated['name']}*", "--workspace", migrated["workspace"]]
    again = run_cli("migrate", "--source", src_uri, "--target", dst_uri, *args, cwd=migrated["work"])
    assert again.returncode == 0, again.stderr
    assert "created 0, repaired 0, skipped 5, failed 0" in again.stderr
    report = migrated["work"] / "report.json"
    check = run_cli("verify", "--source", src_uri, "--target", dst_uri, *args, "--report", str(report), cwd=migrated["work"])
    assert check.returncode == 0, check.stdout + check.stderr
    data = json.loads(report.read_text())
    assert data["summary"]["compared"] == 5 and data["summary"]["equal"] == 5 and data["differences"] == []


def test_include_deleted_copies_deleted_runs_as_deleted(migrated):
    src_uri, dst_uri = migrated["uris"]
    workspace = migrated["workspace"] + "-del"
    result = run_cli("migrate", "--source", src_uri, "--target", dst_uri, "--experiments", f"{migrated['name']}-other",
                     "--workspace", workspace, "--include-deleted", cwd=migrated["work"])
    assert result.returncode == 0, result.stderr
    every = target_runs(migrated["target"], workspace, ViewType.ALL)
    deleted = migrated["ids"]["deleted-run"]
    assert every[deleted].info.lifecycle_stage == "deleted"
    assert every[migrated["ids"]["standalone"]].info.lifecycle_stage == "active"


def test_verify_catches_tampering(migrated, tmp_path):
    """Change one metric point, one tag and one artifact in the target: verify names each."""
    src_uri, dst_uri = migrated["uris"]
    dst = migrated["target"]
    workspace = migrated["workspace"] + "-tamper"
    args = ["--experiments", migrated["name"], "--workspace", workspace]
    assert run_cli("migrate", "--source", src_uri, "--target", dst_uri, *args, cwd=tmp_path).returncode == 0
    leaf = target_runs(dst, workspace)[migrated["ids"]["leaf"]].info.run_id
    dst.log_batch(leaf, metrics=[Metric("loss", 42.0, T0, 999)])
    dst.set_tag(leaf, "user.tag", "changed")
    local = tmp_path / "weights.bin"
    local.write_bytes(b"corrupted")
    dst.log_artifact(leaf, str(local), "model")
    report = tmp_path / "report.json"
    check = run_cli("verify", "--source", src_uri, "--target", dst_uri, *args, "--report", str(report), cwd=tmp_path)
    assert check.returncode == 1
    fields = {d["field"] for d in json.loads(report.read_text())["differences"]}
    assert {"metric:loss", "tag:user.tag", "artifact:model/weights.bin"} <= fields
    assert "metric:loss" in check.stdout


def test_manifest_round_trip(migrated, tmp_path):
    """extract -> files on disk -> replay into an embedded store -> verify against the manifest."""
    src_uri, _ = migrated["uris"]
    manifest, target = tmp_path / "manifest", tmp_path / "target"
    args = ["--experiments", f"{migrated['name']}*"]
    assert run_cli("extract", "--source", src_uri, "--out", str(manifest), *args, cwd=tmp_path).returncode == 0
    header = json.loads((manifest / "manifest.json").read_text())
    assert header["schema_version"] == 1 and header["counts"]["jobs"] == 5
    jobs = [json.loads(line) for line in (manifest / "jobs.jsonl").read_text().splitlines()]
    position = {j["source_id"]: i for i, j in enumerate(jobs)}
    assert all(position[j["parent_id"]] < position[j["source_id"]] for j in jobs if j["parent_id"])
    leaf = migrated["ids"]["leaf"]
    points = [json.loads(line) for line in (manifest / "metrics" / f"{leaf}.jsonl").read_text().splitlines()]
    assert ["odd", 0, T0, "NaN"] in points
    refs = [json.loads(line) for line in (manifest / "artifacts" / f"{leaf}.jsonl").read_text().splitlines()]
    assert {r["path"] for r in refs} == set(PATHS) and all(len(r["md5"]) == 32 for r in refs)
    replayed = run_cli("replay", "--manifest", str(manifest), "--target", str(target), cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    check = run_cli("verify", "--source", str(manifest), "--target", str(target), cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    live = run_cli("verify", "--source", src_uri, "--target", str(target), *args,
                   "--workspace", header["source"]["workspace"], cwd=tmp_path)
    assert live.returncode == 0, live.stdout + live.stderr
