"""Failure modes: bad input is refused before anything is written; reruns are idempotent;
an interrupted migration (kill -9) resumes without duplicates; half-copied runs are repaired.

Bad-input and idempotence tests use embedded (folder) stores; the kill test uses the real
mlflow servers, isolated by a unique experiment name and a unique `--workspace`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType

from conftest import run_cli
from runner.mlflow import uris
from runner.demo import seed as seed_demo  # in-process: the same data as `replayer demo`, without a CLI start
from servers import free_port

SUMMARY = "summary: created {}, repaired {}, skipped {}, failed 0"


# -- helpers -----------------------------------------------------------------------------------


def folder_client(folder: Path) -> MlflowClient:
    """A client on an embedded folder store (sqlite file + artifacts beside it)."""
    assert (folder / "mlflow.db").is_file(), f"no embedded store at {folder}"
    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def all_runs(client: MlflowClient, query: str = "") -> list:
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs, token = [], None
    while True:
        page = client.search_runs(ids, query, ViewType.ALL, max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def replayed(client: MlflowClient, workspace: str | None = None) -> Counter:
    """original_job_id -> number of target runs (active or deleted) claiming it."""
    query = f"tags.original_workspace = '{workspace}'" if workspace else ""
    return Counter(r.data.tags["original_job_id"] for r in all_runs(client, query) if "original_job_id" in r.data.tags)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a bad-input run prints; fails unless exit code 2 and exactly one line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert " ERROR " in lines[0] and "Traceback" not in result.stderr
    return lines[0]


def summary_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return next(line for line in result.stderr.splitlines() if "summary:" in line)


def verify_clean(*args: str, cwd: Path) -> dict:
    report = cwd / "verify-report.json"
    result = run_cli("verify", *args, "--report", str(report), cwd=cwd)
    data = json.loads(report.read_text()) if report.exists() else {}
    assert result.returncode == 0, f"verify exit {result.returncode}: {json.dumps(data.get('differences'), indent=1)[:3000]}\n{result.stderr[-2000:]}"
    assert data["differences"] == [] and data["summary"]["compared"] > 0
    return data


# -- shared read-only fixtures for the bad-input tests -----------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """A demo source folder and a manifest extracted from it (never modified: copy before damaging)."""
    base = tmp_path_factory.mktemp("failures-demo")
    source, manifest = base / "src", base / "manifest"
    seed_demo(str(source))
    result = run_cli("extract", "--source", str(source), "--out", str(manifest), cwd=base)
    assert result.returncode == 0, result.stderr
    return {"source": source, "manifest": manifest, "jobs": json.loads((manifest / "manifest.json").read_text())["counts"]["jobs"]}


def damaged(demo: dict, tmp_path: Path, damage) -> Path:
    """A copy of the demo manifest with `damage(folder)` applied."""
    folder = tmp_path / "manifest"
    shutil.copytree(demo["manifest"], folder)
    damage(folder)
    return folder


def set_schema(version):
    def damage(folder: Path) -> None:
        header = json.loads((folder / "manifest.json").read_text())
        header["schema_version"] = version
        (folder / "manifest.json").write_text(json.dumps(header))

    return damage


def cut_last_line(folder: Path) -> None:
    data = (folder / "jobs.jsonl").read_bytes()
    (folder / "jobs.jsonl").write_bytes(data[: len(data) - 40])  # the last record loses its tail


def drop_last_records(folder: Path) -> None:
    lines = (folder / "jobs.jsonl").read_bytes().splitlines(keepends=True)
    (folder / "jobs.jsonl").write_bytes(b"".join(lines[:-2]))  # whole lines: only the count can tell


def drop_field(folder: Path) -> None:
    lines = (folder / "jobs.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[3])
    del record["source_id"]
    lines[3] = json.dumps(record) + "\n"
    (folder / "jobs.jsonl").write_text("".join(lines), encoding="utf-8")


def not_utf8(folder: Path) -> None:
    lines = (folder / "jobs.jsonl").read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"name": "', b'"name": "\xff\xfe', 1)  # Latin-1 debris inside a record
    assert b"\xff" in lines[5]
    (folder / "jobs.jsonl").write_bytes(b"".join(lines))


# -- 1. bad input: exit 2, one line naming the thing, nothing written ---------------------------
#
# Each case is a CLI run in its own folder whose target is `<folder>/dst`. A CLI start costs a
# few seconds (importing mlflow), so the `refused` fixture runs all cases at once; each test then
# checks its own case: exit code 2, exactly one ERROR line with the expected words, no target.


def config_case(text: str):
    def args(demo: dict, folder: Path) -> list[str]:
        (folder / "migration.yml").write_text(text.format(src=demo["source"], dst=folder / "dst"))
        return ["migrate", "--config", str(folder / "migration.yml")]

    return args


def manifest_case(damage):
    def args(demo: dict, folder: Path) -> list[str]:
        return ["replay", "--manifest", str(damaged(demo, folder, damage)), "--target", str(folder / "dst")]

    return args


def migrate_case(*extra: str, source: str | None = None, target: str | None = None):
    def args(demo: dict, folder: Path) -> list[str]:
        src = (source or "{src}").format(src=demo["source"], closed=demo["closed"])
        dst = (target or "{dst}").format(dst=folder / "dst", closed=demo["closed"])
        return ["migrate", "--source", src, "--target", dst, *extra]

    return args


def unfinished_manifest(demo: dict, folder: Path) -> list[str]:
    (folder / "half").mkdir()
    (folder / "half" / "jobs.jsonl").write_text("")  # an extract that died before writing manifest.json
    return ["replay", "--manifest", str(folder / "half"), "--target", str(folder / "dst")]


BAD_INPUT = {
    # config files: file and line for YAML errors, the right key suggested for a typo
    "yaml-bad-indent": (config_case("source: {src}\ntarget: {dst}\noptions:\n  parallel: 4\n   dry_run: true\n"),
                        ["migration.yml:5:", "malformed YAML", "fix the file"]),
    "config-key-sorce": (config_case("sorce: {src}\ntarget: {dst}\n"),
                         ["migration.yml: unknown key 'sorce'", "did you mean 'source'?"]),
    "config-key-filters": (config_case("source: {src}\ntarget: {dst}\nfilters: {{experimnts: [demo-*]}}\n"),
                           ["migration.yml: unknown key 'filters.experimnts'", "did you mean 'filters.experiments'?"]),
    # manifests: file and line, and what to do
    "manifest-schema-version": (manifest_case(set_schema(99)),
                                ["manifest.json: schema version 99 is not supported", "re-extract"]),
    "manifest-last-line-cut": (manifest_case(cut_last_line), ["jobs.jsonl:{jobs}: last line is cut off", "re-run `replayer extract`"]),
    "manifest-fewer-records": (manifest_case(drop_last_records),
                               ["jobs.jsonl: {short} records but manifest.json says {jobs}", "re-run `replayer extract`"]),
    "manifest-missing-field": (manifest_case(drop_field), ["jobs.jsonl:4: bad job record", "missing required fields ['source_id']"]),
    "manifest-not-utf8": (manifest_case(not_utf8), ["jobs.jsonl:6: not UTF-8"]),
    "manifest-no-folder": (lambda demo, folder: ["replay", "--manifest", str(folder / "nowhere"), "--target", str(folder / "dst")],
                           ["--manifest", "nowhere: no such folder", "replayer extract"]),
    "manifest-unfinished": (unfinished_manifest, ["half/manifest.json is missing", "re-run `replayer extract`"]),
    # selection: an unknown experiment stops every command before it writes anything
    "experiment-migrate": (migrate_case("--experiments", "demo-classification,nope"),
                           ["unknown experiment 'nope'", "demo-classification"]),
    "experiment-replay": (lambda demo, folder: ["replay", "--manifest", str(demo["manifest"]), "--target", str(folder / "dst"),
                                                "--experiments", "demo-classification,nope"],
                          ["unknown experiment 'nope' in manifest", "demo-classification"]),
    "experiment-extract": (lambda demo, folder: ["extract", "--source", str(demo["source"]), "--out", str(folder / "dst"),
                                                 "--experiments", "nope"],
                           ["unknown experiment 'nope'", "demo-classification"]),
    # endpoints
    "unreachable-source": (migrate_case(source="{closed}"), ["cannot reach MLflow server {closed}", "is it running"]),
    "unreachable-target": (migrate_case(target="{closed}"), ["cannot reach MLflow server {closed}", "is it running"]),
    # flags
    "flag-typo-experiments": (migrate_case("--experimnts", "demo-*"), ["unknown flag --experimnts; did you mean --experiments?"]),
    "date-since": (migrate_case("--since", "2024-13-45"), ["--since '2024-13-45': not a date", "2024-05-01"]),
}


@pytest.fixture(scope="module")
def refused(demo, tmp_path_factory) -> dict:
    """Every BAD_INPUT case run concurrently: id -> (completed process, its folder)."""
    demo = {**demo, "closed": f"http://127.0.0.1:{free_port()}"}
    base = tmp_path_factory.mktemp("refused")

    def one(case: str):
        folder = base / case
        folder.mkdir()
        started = time.monotonic()
        result = run_cli(*BAD_INPUT[case][0](demo, folder), cwd=folder, timeout=120)
        return case, (result, folder, time.monotonic() - started)

    with ThreadPoolExecutor(4) as pool:
        done = dict(pool.map(one, BAD_INPUT))
    return {"demo": demo, "runs": done}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_refused(refused, case):
    result, folder, seconds = refused["runs"][case]
    demo = refused["demo"]
    line = error_line(result)
    for part in BAD_INPUT[case][1]:
        assert part.format(jobs=demo["jobs"], short=demo["jobs"] - 2, closed=demo["closed"]) in line, line
    assert not (folder / "dst").exists(), f"{case}: the target was created"
    assert seconds < 60  # refused promptly (an unreachable address is not retried for minutes)


def test_bad_input_leaves_target_server_untouched(demo, servers, tmp_path, unique):
    """The same refusal against a live target server: no experiment, no run appears there."""
    _, target = servers
    client = MlflowClient(tracking_uri=target.uri)
    state = lambda: (len(all_runs(client)), sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL)))  # noqa: E731
    before = state()
    manifest = damaged(demo, tmp_path, drop_field)
    line = error_line(run_cli("replay", "--manifest", str(manifest), "--target", target.uri, "--workspace", f"ws-{unique}", cwd=tmp_path))
    assert "jobs.jsonl:4: bad job record" in line
    line = error_line(run_cli("migrate", "--source", str(demo["source"]), "--target", target.uri,
                              "--experiments", f"demo-*,nope-{unique}", "--workspace", f"ws-{unique}", cwd=tmp_path))
    assert f"unknown experiment 'nope-{unique}'" in line
    assert state() == before


# -- 2. rerun idempotence, and repair after the source changes ----------------------------------


def test_rerun_is_idempotent_and_repairs_source_changes(tmp_path):
    source, target = tmp_path / "src", tmp_path / "dst"
    seed_demo(str(source))
    src = folder_client(source)
    forecasting = src.get_experiment_by_name("demo-forecasting").experiment_id
    live = src.create_run(forecasting, start_time=1_736_950_000_000, run_name="live-training", tags={"team": "vision"}).info.run_id
    src.log_batch(live, metrics=[Metric("loss", 1.0 / (s + 1), 1_736_950_000_000 + s, s) for s in range(20)], params=[Param("lr", "0.1")])
    assert src.get_run(live).info.status == "RUNNING"
    total = len(all_runs(src))
    assert total == 16

    assert f"{SUMMARY.format(total, 0, 0)}" in summary_line(run_cli("migrate", "--source", str(source), "--target", str(target), cwd=tmp_path))
    dst = folder_client(target)
    ids = {r.info.run_id: r.data.tags["original_job_id"] for r in all_runs(dst)}
    assert sorted(ids.values()) == sorted(r.info.run_id for r in all_runs(src))
    live_copy = next(r for r in all_runs(dst) if r.data.tags["original_job_id"] == live)
    assert live_copy.info.status == "RUNNING" and live_copy.info.end_time is None

    second = summary_line(run_cli("migrate", "--source", str(source), "--target", str(target), cwd=tmp_path))
    assert SUMMARY.format(0, 0, total) in second and "metric points 0" in second
    assert {r.info.run_id: r.data.tags["original_job_id"] for r in all_runs(dst)} == ids  # same runs, none added
    verify_clean("--source", str(source), "--target", str(target), cwd=tmp_path)

    # The source moves on: a finished run gets more metric points, the running one finishes.
    fold = next(r for r in all_runs(src) if r.info.run_name == "fold-1")
    last = max(m.step for m in src.get_metric_history(fold.info.run_id, "loss"))
    src.log_batch(fold.info.run_id, metrics=[Metric("loss", 0.3 - s / 1000, 1_736_960_000_000 + s, last + 1 + s) for s in range(25)])
    src.log_batch(live, metrics=[Metric("loss", 0.01, 1_736_950_100_000, 20)], tags=[RunTag("stage", "done")])
    src.set_terminated(live, "FINISHED", end_time=1_736_950_200_000)

    third = summary_line(run_cli("migrate", "--source", str(source), "--target", str(target), cwd=tmp_path))
    assert SUMMARY.format(0, 2, total - 2) in third and "metric points 26" in third, third
    assert {r.info.run_id: r.data.tags["original_job_id"] for r in all_runs(dst)} == ids
    repaired = dst.get_run(next(k for k, v in ids.items() if v == live))
    assert repaired.info.status == "FINISHED" and repaired.info.end_time == 1_736_950_200_000
    assert repaired.data.tags["stage"] == "done"
    verify_clean("--source", str(source), "--target", str(target), cwd=tmp_path)

    # ... and once repaired, the next rerun has nothing left to do.
    assert SUMMARY.format(0, 0, total) in summary_line(run_cli("migrate", "--source", str(source), "--target", str(target), cwd=tmp_path))
    assert replayed(dst) == Counter({v: 1 for v in ids.values()})


# -- 3. resume after kill -9, against real servers ----------------------------------------------


def seed_tree(uri: str, experiment: str, roots: int = 10) -> list[str]:
    """`roots` trees of 6 runs (root -> 4 children, one with a grandchild); 2 x 100 metric points and a file each."""
    client = MlflowClient(tracking_uri=uri)
    root = uris.artifact_root(uri)  # a local store keeps files beside its database, not in ./mlruns of the cwd
    location = f"{root}/{experiment}" if root else None
    exp = client.create_experiment(experiment, artifact_location=location, tags={"purpose": "kill-9 resume test"})
    base = 1_730_000_000_000

    def make(name: str, start: int, parent: str | None) -> str:
        tags = {"mlflow.parentRunId": parent} if parent else {}
        run_id = client.create_run(exp, start_time=start, tags={"team": "resume", **tags}, run_name=name).info.run_id
        metrics = [Metric(k, v * (s + 1) % 7.3, start + s * 10, s) for k, v in (("loss", 0.37), ("acc", 0.11)) for s in range(100)]
        client.log_batch(run_id, metrics=metrics, params=[Param("name", name), Param("seed", str(start % 97))])
        client.log_text(run_id, f"{name} artifact\n" * 50, f"out/{name}.txt")
        client.set_terminated(run_id, "FAILED" if name.endswith("c3") else "FINISHED", end_time=start + 60_000)
        return run_id

    def tree(i: int) -> list[str]:
        start = base + i * 600_000
        root = make(f"r{i}", start, None)
        kids = [make(f"r{i}c{j}", start + 1000 * (j + 1), root) for j in range(4)]
        return [root, *kids, make(f"r{i}c0g", start + 9000, kids[0])]

    with ThreadPoolExecutor(4) as pool:
        return [run_id for ids in pool.map(tree, range(roots)) for run_id in ids]


def start_migrate(args: list[str], cwd: Path, stderr) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "migrate", *args],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr,
        env={**os.environ, "REPLAYER_LOG_DIR": str(cwd / "logs")},
    )


def settled(client: MlflowClient, workspace: str) -> dict[str, bool]:
    """original_job_id -> has replay.complete, once the server has finished what the dead client sent."""
    snapshot = lambda: {  # noqa: E731
        r.data.tags["original_job_id"]: "replay.complete" in r.data.tags
        for r in all_runs(client, f"tags.original_workspace = '{workspace}'")
    }
    previous, deadline = snapshot(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = snapshot()
        if current == previous:
            return current
        previous = current
    return previous


# The migration kills itself (SIGKILL) right after the target answered a create_run for a source
# run: the Nth one, or the one copying a given source run. That run exists with no data and no
# completion tag, so the rerun has a half-written run to repair however fast or loaded the machine is.
KILLED_AFTER_CREATE = """
import os, signal, sys
from mlflow import MlflowClient

after, created, create = sys.argv.pop(1), [], MlflowClient.create_run

def create_then_die(self, *args, **kwargs):
    run = create(self, *args, **kwargs)
    job = (kwargs.get("tags") or {}).get("original_job_id")
    if job:
        created.append(job)
        if job == after or str(len(created)) == after:
            os.kill(os.getpid(), signal.SIGKILL)
    return run

MlflowClient.create_run = create_then_die
from runner.cli import main
main()
"""


def migrate_killed(args: list[str], cwd: Path, after: int | str) -> None:
    """`replayer migrate ARGS`, killed by SIGKILL right after creating its `after`th target run (an
    int) or the copy of source run `after` (a run id)."""
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_CREATE, str(after), "migrate", *args],
                            cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "REPLAYER_LOG_DIR": str(cwd / "logs")})
    assert killed.returncode == -signal.SIGKILL, f"exit {killed.returncode}: {killed.stderr[-2000:]}"


def test_resume_after_kill_9(servers, tmp_path, unique):
    source, target = servers
    experiment = f"resume-{unique}"
    source_ids = seed_tree(source.uri, experiment)
    total = len(source_ids)
    assert total == 60
    dst = MlflowClient(tracking_uri=target.uri)
    for point in (15, 40):  # the migration dies once it has created this many target runs
        workspace = f"ws-{unique}-{point}"
        args = ["--source", source.uri, "--target", target.uri, "--experiments", experiment, "--workspace", workspace]
        migrate_killed([*args, "--parallel", "4"], tmp_path, after=point)
        partial = settled(dst, workspace)
        assert sum(replayed(dst, workspace).values()) == len(partial)
        assert point <= len(partial) < total, f"kill point {point}: {len(partial)} runs in target"
        complete = sum(partial.values())
        assert complete < len(partial), f"kill point {point}: the run created last is complete already"

        line = summary_line(run_cli("migrate", *args, "--parallel", "4", cwd=tmp_path))
        expected = SUMMARY.format(total - len(partial), len(partial) - complete, complete)
        assert expected in line, f"kill point {point}: expected {expected!r}, got {line!r}"
        verify_clean(*args, cwd=tmp_path)
        copies = replayed(dst, workspace)
        assert copies == Counter({run_id: 1 for run_id in source_ids}), f"kill point {point}: {copies - Counter(source_ids)}"
        assert all(r.info.lifecycle_stage == "active" for r in all_runs(dst, f"tags.original_workspace = '{workspace}'"))


# -- 4. a half-copied run found in the target is repaired, not duplicated ------------------------


@pytest.mark.parametrize("terminated", [False, True], ids=["running", "status-already-set"])
def test_incomplete_target_run_is_repaired(tmp_path, terminated):
    source, target = tmp_path / "src", tmp_path / "dst"
    seed_demo(str(source))
    src = folder_client(source)
    fold = next(r for r in all_runs(src) if r.info.run_name == "fold-0")
    loss = src.get_metric_history(fold.info.run_id, "loss")
    assert len(loss) == 100 and fold.data.tags.get("mlflow.parentRunId")

    # What an interrupted copy leaves: lineage tags, one param, half of one metric, no completion tag.
    dst = uris.open_client(str(target), create=True)
    exp = dst.create_experiment("demo-classification")
    half = dst.create_run(
        exp, start_time=fold.info.start_time, run_name="fold-0",
        tags={"original_job_id": fold.info.run_id, "original_workspace": "ws-demo", "original_experiment": "demo-classification"},
    ).info.run_id
    dst.log_batch(half, metrics=[Metric(m.key, m.value, m.timestamp, m.step) for m in loss[:50]], params=[Param("fold", "0")])
    if terminated:  # a new run gets its status and end time before its data (runner/mlflow/target.py)
        dst.set_terminated(half, "FINISHED", end_time=fold.info.end_time)

    args = ["--source", str(source), "--target", str(target), "--workspace", "ws-demo"]
    line = summary_line(run_cli("migrate", *args, cwd=tmp_path))
    assert SUMMARY.format(14, 1, 0) in line, line
    copies = replayed(folder_client(target))
    assert copies == Counter({r.info.run_id: 1 for r in all_runs(src)})
    repaired = folder_client(target).get_run(half)  # the same run, now whole
    assert repaired.data.tags["replay.complete"] and repaired.info.status == "FINISHED"
    assert len(folder_client(target).get_metric_history(half, "loss")) == 100
    new_parent = next(r for r in all_runs(folder_client(target)) if r.data.tags["original_job_id"] == fold.data.tags["mlflow.parentRunId"])
    assert repaired.data.tags["mlflow.parentRunId"] == new_parent.info.run_id  # linked to the parent's copy
    verify_clean(*args, cwd=tmp_path)


def test_a_rejected_credential_is_one_line_naming_the_server(demo, servers, tmp_path, unique):
    """An MLflow server that answers 401 (a wrong MLFLOW_TRACKING_TOKEN, a revoked password) on either
    side: one ERROR line naming that server, exit 2, nothing written to the target."""
    from fakes.fault_proxy import FaultProxy

    _, target = servers
    client = MlflowClient(tracking_uri=target.uri)
    state = lambda: (len(all_runs(client)), sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL)))  # noqa: E731
    before = state()
    with FaultProxy(target.uri, rate=1.0, faults=("401",)) as refusing:
        result = run_cli("migrate", "--source", str(demo["source"]), "--target", refusing.uri, "--workspace", f"ws-{unique}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"MLflow server {refusing.uri} refused our credentials (HTTP 401" in error_line(result)
    assert state() == before
    with FaultProxy(target.uri, rate=1.0, faults=("401",)) as refusing:
        result = run_cli("migrate", "--source", refusing.uri, "--target", str(tmp_path / "dst"), "--workspace", f"ws-{unique}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"MLflow server {refusing.uri} refused our credentials (HTTP 401" in error_line(result)
    assert not (tmp_path / "dst").exists()
