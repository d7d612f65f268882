"""A parent's children read from the target with one search (runner.engine.child_groups with
runner.mlflow.check `read_children`), against a real mlflow server: the search pages, and a child
the search no longer brings is read alone and reported missing.

The CLI end (migrate --verify reading a sweep's trials this way, a changed child reported) is in
tests/test_migrate_verify.py; the request counts between two Azure ML workspaces in
tests/test_workspace_to_workspace.py.
"""
from __future__ import annotations

import os
import subprocess
import uuid

from mlflow import MlflowClient

from conftest import run_cli
from servers import MLFLOW
from test_migrate_verify import seed_sweep, target_runs

from runner.core.filters import Filters
from runner.engine.child_groups import ChildGroups
from runner.engine.mapping import Mapping
from runner.mlflow.source import MlflowSource
from runner.mlflow.target import DirectTarget


def purge(server, run_id: str) -> None:
    """Delete a target run for good, as `mlflow gc` does (what no REST route does)."""
    MlflowClient(server.uri).delete_run(run_id)
    subprocess.run([MLFLOW, "gc", "--backend-store-uri", f"sqlite:///{server.folder / 'mlflow.db'}", "--run-ids", run_id],
                   check=True, capture_output=True, timeout=120, env={**os.environ, "MLFLOW_TRACKING_URI": server.uri})


def test_children_over_several_pages_and_one_gone_for_good(servers, tmp_path):
    source, target = servers
    name = f"groups-{uuid.uuid4().hex[:8]}"
    ids = seed_sweep(MlflowClient(source.uri), name, trials=5)
    workspace = f"ws-{name}"
    done = run_cli("migrate", "--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", workspace, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    copies = target_runs(target.uri, workspace)

    src = MlflowSource(source.uri, Filters(experiments=[name]), workspace=workspace)
    dst = DirectTarget(target.uri)
    checker = dst.checker(src, dst.ledger(workspace), Mapping())  # the ledger as read before the purge
    checker.children_page = 2  # 5 children: a search of one page would miss some
    pages = []
    search = checker.client.search_runs
    checker.client.search_runs = lambda *a, **k: pages.append(k["max_results"]) or search(*a, **k)
    purge(target, copies[ids["trial_4"]])

    given = {}  # source id -> the target run its parent's search gave it (None: read alone)
    groups = ChildGroups(checker, lambda job, wanted, run: given.__setitem__(job.source_id, run))
    jobs = {job.source_id: job for job in src.jobs()}
    for job in jobs.values():
        groups.queued(job)
        if not groups.done(job, None):
            given[job.source_id] = None
    groups.finish()

    trials = [ids[f"trial_{i}"] for i in range(4)]
    assert {i: run.info.run_id for i, run in given.items() if run is not None} == {i: copies[i] for i in trials}
    assert given[ids["sweep"]] is None and given[ids["trial_4"]] is None  # the parent alone; the purged child not in the search
    assert len(pages) >= 2 and set(pages) == {2}, pages  # paged, at the checker's page size
    for trial in trials:
        assert checker.compare(jobs[trial], None, given[trial]) == [], trial  # equal, from the search result alone
    [missing] = checker.compare(jobs[ids["trial_4"]])  # read alone: runs/get says it is gone
    assert (missing.job, missing.field, missing.source, missing.target) == (ids["trial_4"], "run", "present", "missing")
    checker.close()


def test_the_next_tree_closes_a_group_and_finish_reads_one_a_failed_child_kept_open(servers, tmp_path):
    """Two sweeps: the first one's group is read as soon as the stream gives the second root (its
    children all done); the second one's, where one child never finishes (a failed copy), waits for
    `finish` and is read then, without that child."""
    source, target = servers
    name = f"trees-{uuid.uuid4().hex[:8]}"
    for suffix in ("a", "b"):
        seed_sweep(MlflowClient(source.uri), f"{name}-{suffix}", trials=3)
    workspace = f"ws-{name}"
    done = run_cli("migrate", "--source", source.uri, "--target", target.uri, "--experiments", f"{name}-*", "--workspace", workspace,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    src = MlflowSource(source.uri, Filters(experiments=[f"{name}-*"]), workspace=workspace)
    dst = DirectTarget(target.uri)
    checker = dst.checker(src, dst.ledger(workspace), Mapping())
    given = {}
    groups = ChildGroups(checker, lambda job, wanted, run: given.__setitem__(job.source_id, run))
    jobs = list(src.jobs())
    [first_root, second_root] = [job for job in jobs if not job.parent_id]
    first = [job.source_id for job in jobs if job.parent_id == first_root.source_id]
    second = [job.source_id for job in jobs if job.parent_id == second_root.source_id]
    for job in jobs:
        groups.queued(job)
        if job.source_id == second_root.source_id:
            assert set(given) == set(first) and all(given[i] is not None for i in first)  # read when the next tree began
        if job.source_id == second[-1]:
            continue  # its copy failed: it never settles its group
        assert groups.done(job, None) == bool(job.parent_id)  # children held, roots checked alone by the caller
    assert not set(second) & set(given)  # still waiting for the failed child
    groups.finish()
    assert {i for i in second if given.get(i) is not None} == set(second[:-1]) and second[-1] not in given
    checker.close()
