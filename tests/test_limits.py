"""A target with caps (AzureML: 50 tags, 50 metric names per run) loses nothing: the excess goes
to replay/overflow.json on the run, the summary says so, and verify reads it back."""
from __future__ import annotations

import json

from mlflow.entities import Metric, Param

from conftest import run_cli
from runner.mlflow import uris
from runner.engine.limits import AZUREML_LIMITS, OVERFLOW_PATH, limits_for


def test_azureml_targets_get_azureml_caps():
    assert limits_for("azureml://host/mlflow/v2.0/subscriptions/s") == AZUREML_LIMITS
    assert limits_for("sqlite:///x.db").max_tags is None
    assert limits_for("sqlite:///x.db", max_tags=20).max_tags == 20


def test_tags_metrics_and_long_params_beyond_caps_overflow_and_verify(tmp_path):
    source, target = tmp_path / "src", tmp_path / "dst"
    client = uris.open_client(str(source), create=True)
    exp = client.create_experiment("capped")
    tags = {f"tag{i:02d}": f"value {i}" for i in range(30)}
    run_id = client.create_run(exp, run_name="wide", tags=tags).info.run_id
    client.log_batch(run_id, params=[Param("long", "p" * 5000), Param("short", "s")],
                     metrics=[Metric(f"m{k:02d}", float(i), 1_700_000_000_000 + i, i) for k in range(8) for i in range(40)])
    client.set_terminated(run_id, "FINISHED")
    caps = ["--max-tags", "20", "--max-metric-keys", "5"]
    result = run_cli("migrate", "--source", str(source), "--target", str(target), *caps, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 runs over the target's limits" in result.stderr

    copy = uris.open_client(str(target), create=False)
    exps = [e.experiment_id for e in copy.search_experiments()]
    [run] = copy.search_runs(exps, "tags.original_job_id != ''")
    assert len(run.data.tags) <= 20
    assert sorted(run.data.metrics) == [f"m{k:02d}" for k in range(5)]
    overflow = json.loads(open(copy.download_artifacts(run.info.run_id, OVERFLOW_PATH, str(tmp_path))).read())
    assert sorted(overflow["metrics"]) == ["m05", "m06", "m07"] and len(overflow["metrics"]["m07"]) == 40
    kept_user_tags = {k for k in run.data.tags if k.startswith("tag")}
    assert kept_user_tags | set(overflow["tags"]) == set(tags) and not kept_user_tags & set(overflow["tags"])
    assert json.loads(run.data.tags["replay.overflow"]) == {"metrics": 3, "tags": len(overflow["tags"])}

    check = run_cli("verify", "--source", str(source), "--target", str(target), *caps, cwd=tmp_path)
    assert check.returncode == 0, check.stdout
    again = run_cli("migrate", "--source", str(source), "--target", str(target), *caps, cwd=tmp_path)
    assert "created 0, repaired 0, skipped 1" in again.stderr


def test_verify_follows_the_artifact_choices_replay_made(tmp_path):
    """`--artifacts list` records files instead of copying them, `--max-artifact-size` skips big
    ones: verify with the same flags is clean, and without them it says what is not there."""
    src = tmp_path / "src"
    assert run_cli("demo", "--out", str(src), cwd=tmp_path).returncode == 0
    listed, capped = tmp_path / "listed", tmp_path / "capped"
    assert run_cli("migrate", "--source", str(src), "--target", str(listed), "--artifacts", "list", cwd=tmp_path).returncode == 0
    assert run_cli("migrate", "--source", str(src), "--target", str(capped), "--max-artifact-size", "1000", cwd=tmp_path).returncode == 0

    clean = run_cli("verify", "--source", str(src), "--target", str(listed), cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout
    capped_clean = run_cli("verify", "--source", str(src), "--target", str(capped), "--max-artifact-size", "1000", cwd=tmp_path)
    assert capped_clean.returncode == 0, capped_clean.stdout
    strict = run_cli("verify", "--source", str(src), "--target", str(capped), "--report", "r.json", cwd=tmp_path)
    assert strict.returncode == 1
    missing = {d["field"] for d in json.loads((tmp_path / "r.json").read_text())["differences"]}
    assert missing == {f"artifact:model/fold {i}/weights.bin" for i in range(3)}  # the 2048-byte files
