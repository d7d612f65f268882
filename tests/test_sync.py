"""Incremental sync (runner/sync_state.py) between two real mlflow servers, through the real CLI.

Sync 1 copies everything and leaves a watermark and the open (running) runs in the target. Then
the source gets a new tree, a run that was RUNNING finishes, an old-start-time run appears
outside the window and a finished run is re-tagged. Sync 2 copies exactly the new and the
finished ones; a sync 2 killed half-way writes no state and its rerun is exact; `--full` catches
the rest; verify is clean at the end.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from conftest import run_cli
from test_failures import all_runs, migrate_killed, replayed, verify_clean
from runner.mlflow import uris
from runner.mlflow import sync_state
from runner.core.filters import Filters
from runner.mlflow.source import MlflowSource

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def make(client: MlflowClient, exp: str, name: str, start: int, parent: str | None = None, status: str | None = "FINISHED", points: int = 3) -> str:
    tags = {"team": "sync", **({"mlflow.parentRunId": parent} if parent else {})}
    run_id = client.create_run(exp, start_time=start, tags=tags, run_name=name).info.run_id
    metrics = [Metric("loss", 1.0 / (s + 1), start + s, s) for s in range(points)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    if status:
        client.set_terminated(run_id, status, end_time=start + MINUTE)
    return run_id


def sync(source, target, workspace, experiment, tmp_path: Path, name: str, *extra: str) -> dict:
    report = tmp_path / f"{name}.json"
    done = run_cli("migrate", "--source", source.uri, "--target", target.uri, "--workspace", workspace, "--experiments", experiment,
                   "--report", str(report), *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())


def counts(summary: dict) -> tuple[int, int, int, int]:
    return summary["created"], summary["repaired"], summary["skipped"], summary["failed"]


def state(target, workspace: str) -> sync_state.SyncState:
    found = sync_state.read_state(target.uri, sync_state.state_key(workspace, Filters()))
    assert found is not None, "no sync state in the target"
    return found


def test_incremental_sync_copies_exactly_the_new_and_the_finished(servers, tmp_path, unique):
    source, target = servers
    src = MlflowClient(source.uri)
    experiment, workspace = f"sync-{unique}", f"sync-ws-{unique}"
    exp = src.create_experiment(experiment)
    t = now_ms()
    a = make(src, exp, "a", t - 3 * HOUR)
    a_kids = [make(src, exp, f"a-c{i}", t - 3 * HOUR + i, a) for i in (1, 2)]
    b = make(src, exp, "b", t - 2 * HOUR, status=None)  # RUNNING at sync 1
    b_running = make(src, exp, "b-c1", t - 2 * HOUR + 1, b, status=None)
    b_done = make(src, exp, "b-c2", t - 2 * HOUR + 2, b)
    c = make(src, exp, "c", t - 10 * MINUTE)
    first = [a, *a_kids, b, b_running, b_done, c]
    args = (source, target, workspace, experiment, tmp_path)

    assert counts(sync(*args, "sync1", "--incremental")) == (7, 0, 0, 0)
    after_1 = state(target, workspace)
    assert after_1.watermark == t - 10 * MINUTE and sorted(after_1.open) == sorted([b, b_running])
    dst = MlflowClient(target.uri)
    assert replayed(dst, workspace) == {run_id: 1 for run_id in first}

    # Between syncs: B's running child and B finish, a new tree D, an old-start-time run E outside
    # the window (the watermark less the hour of overlap), and a finished run A re-tagged.
    src.log_batch(b_running, metrics=[Metric("loss", 0.01, t, 99)])
    src.set_terminated(b_running, "FINISHED", end_time=t)
    src.set_terminated(b, "FINISHED", end_time=t)
    d = make(src, exp, "d", now_ms(), points=3_000)  # more than one log_batch: the kill leaves D without its data
    d_kid = make(src, exp, "d-c1", now_ms(), d)
    e = make(src, exp, "e", t - 2 * DAY)
    src.set_tag(a, "reviewed", "yes")

    # What sync 2 will do (the dry run shares the real run's decisions): D and its child are new, B
    # and its child finished since, C is inside the hour of overlap; E and A's new tag are not seen.
    assert counts(sync(*args, "plan2", "--incremental", "--dry-run")) == (2, 2, 1, 0)

    # Sync 2, killed once D's copy is created: no state is written, so the rerun redoes the whole window.
    migrate_killed(["--source", source.uri, "--target", target.uri, "--workspace", workspace,
                    "--experiments", experiment, "--incremental"], tmp_path, after=d)
    assert d in replayed(dst, workspace), "the kill lands once D's copy exists"
    assert state(target, workspace) == after_1, "a killed sync must not move the watermark"

    created, repaired, skipped, failed = counts(sync(*args, "sync2", "--incremental"))
    assert failed == 0 and created + repaired + skipped == 5, "the rerun reads the same window of 5 runs"
    assert repaired >= 1 and created <= 1, "the killed copy of D is repaired, not duplicated"
    # Sync 3: the window moved on (B and its child are finished and older than the overlap).
    assert counts(sync(*args, "sync3", "--incremental")) == (0, 0, 3, 0), "C, D, D's child read again; nothing to do"
    after_2 = state(target, workspace)
    assert after_2.open == [] and after_2.watermark == src.get_run(d_kid).info.start_time
    assert replayed(dst, workspace) == {run_id: 1 for run_id in [*first, d, d_kid]}, "E is outside the window"
    finished = {r.data.tags["original_job_id"]: r for r in all_runs(dst, f"tags.original_workspace = '{workspace}'")}
    assert finished[b].info.status == finished[b_running].info.status == "FINISHED"
    assert "reviewed" not in finished[a].data.tags, "a finished run edited later waits for a full sync"

    assert counts(sync(*args, "full", "--full")) == (1, 1, 8, 0), "full: E created, A repaired"
    verify_clean("--source", source.uri, "--target", target.uri, "--workspace", workspace, "--experiments", experiment, cwd=tmp_path)
    assert replayed(dst, workspace) == {run_id: 1 for run_id in [*first, d, d_kid, e]}
    assert state(target, workspace).watermark == src.get_run(d_kid).info.start_time


def test_extract_replay_verify_through_a_manifest_commits_only_into_its_target(servers, tmp_path, unique):
    """The driver pipeline's path: extract --incremental --target, replay, verify the manifest."""
    source, target = servers
    src = MlflowClient(source.uri)
    experiment, workspace = f"pipe-{unique}", f"pipe-ws-{unique}"
    exp = src.create_experiment(experiment)
    t = now_ms()
    old = make(src, exp, "old", t - HOUR)
    running = make(src, exp, "running", t - 30 * MINUTE, status=None)
    select = ["--workspace", workspace, "--experiments", experiment]

    def extract(out: str) -> Path:
        done = run_cli("extract", "--source", source.uri, "--out", str(tmp_path / out), "--target", target.uri, "--incremental", *select, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        return tmp_path / out

    def replay(manifest: Path, into: str) -> dict:
        report = tmp_path / f"{manifest.name}-summary.json"
        done = run_cli("replay", "--manifest", str(manifest), "--target", into, "--report", str(report), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(report.read_text())

    first = extract("m1")
    assert json.loads((first / "manifest.json").read_text())["counts"]["jobs"] == 2
    other = tmp_path / "elsewhere"
    assert counts(replay(first, str(other))) == (2, 0, 0, 0)
    assert sync_state.read_state(str(other), workspace) is None, "a manifest extracted for another target leaves no state here"
    assert sync_state.read_state(target.uri, workspace) is None, "extract itself writes nothing into the target"
    assert counts(replay(first, target.uri)) == (2, 0, 0, 0)
    assert state(target, workspace).open == [running]

    src.set_terminated(running, "FINISHED", end_time=now_ms())
    new = make(src, exp, "new", now_ms())
    second = extract("m2")
    header = json.loads((second / "manifest.json").read_text())
    assert header["source"]["window"]["open"] == 1
    assert {json.loads(line)["source_id"] for line in (second / "jobs.jsonl").read_text().splitlines()} == {old, running, new}, \
        "old is inside the hour of overlap, running is open, new is new"
    assert counts(replay(second, target.uri)) == (1, 1, 1, 0)
    done = run_cli("verify", "--source", str(second), "--target", target.uri, "--report", str(tmp_path / "v.json"), cwd=tmp_path)
    assert done.returncode == 0, json.loads((tmp_path / "v.json").read_text())["differences"][:5]
    assert state(target, workspace).open == []


def test_window_state_fallbacks_and_errors(tmp_path):
    """In-process, embedded stores: many open runs, other filters, a source that cannot window."""
    from runner.core.errors import UsageError
    from runner.engine.manifest import ManifestSource

    store, target = str(tmp_path / "src"), str(tmp_path / "dst")
    client = uris.open_client(store, create=True)
    exp = client.create_experiment("many")
    t = now_ms()
    ids = [make(client, exp, f"r{i}", t - DAY + i * MINUTE, status=None, points=1) for i in range(160)]  # all RUNNING
    source = MlflowSource(store, Filters(), workspace="many")
    sync = sync_state.begin(source, target)
    assert sync.window.since is None, "no state yet: everything"
    pending = sync.next_state(source)
    assert sorted(pending.open) == sorted(ids) and pending.open_since == t - DAY
    assert len(pending.to_json()) > sync_state.MAX_TAG, "160 ids do not fit one tag"
    sync_state.commit(uris.open_client(target, create=True), pending)
    assert sync_state.read_state(target, "many") == pending, "kept whole, in a run's file"

    again = MlflowSource(store, Filters(), workspace="many")
    window = sync_state.begin(again, target).window
    assert window.since == pending.watermark - sync_state.OVERLAP_MS and window.open == sorted(ids), "every open run by id"
    assert again.count() == 160

    narrower = MlflowSource(store, Filters(experiments=["many"]), workspace="many")
    assert sync_state.begin(narrower, target).window.since is None, "other filters than the state's: read everything"

    client.set_terminated(ids[0], "FINISHED")
    limited = MlflowSource(store, Filters(limit=1), workspace="many")
    next_state = sync_state.begin(limited, target).next_state(limited)
    assert limited.count() == 1 and sorted(next_state.open) == sorted(ids[1:]), "roots past --limit stay open for the next sync"

    manifest = tmp_path / "m"
    from runner.engine.extract import extract

    extract(MlflowSource(store, Filters()), str(manifest), parallel=2)
    with pytest.raises(UsageError, match="--incremental reads MLflow tracking stores"):
        sync_state.begin(ManifestSource(manifest, Filters()), target)
    with pytest.raises(UsageError, match="needs --target"):
        sync_state.begin(MlflowSource(store, Filters()), None)
