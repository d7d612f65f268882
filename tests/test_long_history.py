"""A metric history longer than one page (25,000 points) is read page by page and copied whole."""
from __future__ import annotations

from mlflow.entities import Metric

from conftest import run_cli
from runner import stores
from runner.sources.mlflow import metric_history

POINTS = 60_000


def test_history_across_pages_is_copied_exactly(tmp_path):
    source, target = tmp_path / "src", tmp_path / "dst"
    client = stores.open_client(str(source), create=True)
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
