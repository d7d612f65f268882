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
