"""A metric history longer than one page (25,000 points) is read page by page and copied whole."""
from __future__ import annotations

from mlflow.entities import Metric

from conftest import run_cli
from runner.mlflow import uris
from runner.mlflow.source import metric_history

POINTS = 60_000


def test_history_across_pages_is_copied_exactly(tmp_path):
    source, target = tmp_path / "src", tmp_path / "dst"
    client = uris.open_client(str(source), create=True)
    exp = client.create_experiment("long")
    run_id = client.create_run(exp, run_name="long-run").info.run_id
    for start in range(0, POINTS, 1000):
        client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (i + 1), 1_700_000_000_000 + i, i) for i in range(start, start + 1000)])
    client.set_terminated(run_id, "FINISHED")
    pages = list(metric_history(client, run_id, "loss"))
    assert len(pages) == POINTS and len({p.step for p in pages}) == POINTS
    result = run_cli("migrate", "--source", str(source), "--target", str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"metric points {POINTS}" in result.stderr
    check = run_cli("verify", "--source", str(source), "--target", str(target), cwd=tmp_path)
    assert check.returncode == 0, check.stdout


def test_histories_come_in_bulk_from_a_server_and_exactly(servers, unique, tmp_path):
    """The source server's bulk route answers at most 25,000 points: runs cut at the cap are asked
    again, a run that fills the cap alone streams page by page, and every point still arrives."""
    from mlflow import MlflowClient

    from fakes.fault_proxy import FaultProxy

    source, target = servers
    client = MlflowClient(source.uri)
    exp = client.create_experiment(f"bulk-{unique}")
    sizes = {"a": 10_000, "b": 10_000, "c": 10_000, "big": 26_000, "small": 3}
    loss_by_id = {}
    for name, size in sizes.items():
        run_id = client.create_run(exp, run_name=name).info.run_id
        loss_by_id[run_id] = size
        for start in range(0, size, 1000):
            steps = range(start, min(start + 1000, size))
            client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (i + 1), 1_700_000_000_000 + i, i) for i in steps]
                             + [Metric("acc", i / size, 1_700_000_000_000 + i, i) for i in steps if i % 100 == 0])
        client.set_terminated(run_id, "FINISHED")
    with FaultProxy(source.uri, rate=0) as proxy, FaultProxy(target.uri, rate=0) as writes:
        args = ["--experiments", f"bulk-{unique}", "--workspace", f"bulk-{unique}"]
        result = run_cli("migrate", "--source", proxy.uri, "--target", writes.uri, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        bulk = proxy.paths["/ajax-api/2.0/mlflow/metrics/get-history-bulk"]
        per_run = proxy.paths["/api/2.0/mlflow/metrics/get-history"]
    # On a plain MLflow target the completion tag rides on each run's last log_batch.
    assert writes.paths["/api/2.0/mlflow/runs/set-tag"] == 0 and writes.paths["/api/2.0/mlflow/runs/update"] == len(sizes), writes.paths
    total = sum(sizes.values()) + sum(len(range(0, s, 100)) for s in sizes.values())
    assert f"metric points {total}" in result.stderr
    # acc: one call; loss: as many as the cuts need in run id order. Only "big"'s loss streams:
    # two pages of 25,000 and 1,000 points.
    assert (bulk, per_run) == (1 + bulk_calls(loss_by_id), 2), proxy.paths
    check = run_cli("verify", "--source", source.uri, "--target", target.uri, *args, cwd=tmp_path)
    assert check.returncode == 0, check.stdout


def bulk_calls(points_by_run: dict[str, int], cap: int = 25_000) -> int:
    """How many bulk answers one metric key takes: sorted by run id, cut at `cap` points; the runs
    before the cut are done, the cut run is asked again, unless it opened the answer (it streams)."""
    ids, calls = sorted(points_by_run), 0
    while ids:
        calls += 1
        seen = 0
        for index, run_id in enumerate(ids):
            seen += points_by_run[run_id]
            if seen >= cap:
                break
        else:
            return calls
        ids = ids[1:] if index == 0 else ids[index:]
    return calls
