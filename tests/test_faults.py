"""Migrations through a fault-injecting proxy: throttling, 5xx, lost answers, resets, slowness.

Nothing may be lost or duplicated, and verify (run without faults) must be clean.
"""
from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType

from runner import retry

from conftest import run_cli
from fakes.fault_proxy import FAULTS, FaultProxy

FAST_RETRIES = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.1"}


retry.configure()  # no "View run" chatter while seeding


def seed(client: MlflowClient, experiment: str, scratch, roots: int = 6, children: int = 4) -> int:
    exp = client.create_experiment(experiment)
    count = 0
    for r in range(roots):
        root = client.create_run(exp, start_time=1_700_000_000_000 + r, run_name=f"root-{r}").info.run_id
        count += 1
        for c in range(children):
            child = client.create_run(exp, run_name=f"child-{r}-{c}", tags={"mlflow.parentRunId": root}).info.run_id
            client.log_batch(child, params=[Param("c", str(c))],
                             metrics=[Metric(k, i * 0.5, 1_700_000_000_000 + i, i) for k in ("a", "b") for i in range(60)])
            artifact = scratch / f"{child}.txt"
            artifact.write_text(f"artifact of {child}")
            client.log_artifact(child, str(artifact), "out")
            client.set_terminated(child, "FINISHED")
            count += 1
        client.set_terminated(root, "FAILED" if r == 0 else "FINISHED")
    return count


def active_copies(client: MlflowClient, workspace: str) -> list[str]:
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(exps, f"tags.original_workspace = '{workspace}'", ViewType.ACTIVE_ONLY, max_results=5000)
    return [r.data.tags["original_job_id"] for r in runs]


@pytest.mark.parametrize("faults", [FAULTS, ("lost",)], ids=["all-faults", "lost-answers"])
def test_migration_through_faults_is_exact(servers, unique, tmp_path, faults):
    source, target = servers
    experiment = f"faults-{unique}"
    total = seed(MlflowClient(source.uri), experiment, tmp_path)
    workspace = f"ws-{unique}"
    with FaultProxy(source.uri, rate=0.2, faults=faults, seed=3) as src_proxy, \
            FaultProxy(target.uri, rate=0.2, faults=faults, seed=4) as dst_proxy:
        result = run_cli("migrate", "--source", src_proxy.uri, "--target", dst_proxy.uri, "--experiments", experiment,
                         "--workspace", workspace, "--parallel", "4", cwd=tmp_path, env=FAST_RETRIES)
        injected = src_proxy.injected + dst_proxy.injected
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(injected) == set(faults) and sum(injected.values()) > 50, injected
    copies = active_copies(MlflowClient(target.uri), workspace)
    assert len(copies) == len(set(copies)) == total
    check = run_cli("verify", "--source", source.uri, "--target", target.uri, "--experiments", experiment,
                    "--workspace", workspace, cwd=tmp_path)
    assert check.returncode == 0, check.stdout[-3000:]
