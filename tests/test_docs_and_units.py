"""Docs stay true to the CLI; small pure pieces (batching, redaction, records) behave."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest

from runner.core import logs
from runner.mlflow import uris
from runner.cli import Replayer
from runner.core.records import JobRecord, MetricPoint
from runner.mlflow.target import MAX_ENTITIES_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, batches

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
COMMANDS = [name for name, _ in inspect.getmembers(Replayer, inspect.isfunction) if not name.startswith("_")]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_a_readme_entry(command):
    assert inspect.getdoc(getattr(Replayer, command)), f"{command} has no docstring (shown by --help)"
    assert f"`replayer {command} " in README, f"README does not document `replayer {command}`"


def test_readme_quick_start_comes_first():
    quick = README.index("## Quick start")
    assert README.index("make local-run", quick) < README.index("## Commands")
    assert README.index("make test", quick) < README.index("## Commands")


def test_batches_respect_mlflow_limits_and_keep_every_point():
    params = {f"p{i}": str(i) for i in range(250)}
    tags = {f"t{i}": "v" for i in range(30)}
    points = (MetricPoint("m", float(i), i, i) for i in range(5000))
    sent = list(batches(params, tags, points))
    assert all(len(p) + len(t) <= MAX_PARAMS_TAGS_PER_BATCH for _, p, t in sent)
    assert all(len(m) + len(p) + len(t) <= MAX_ENTITIES_PER_BATCH for m, p, t in sent)
    assert sum(len(p) for _, p, _ in sent) == 250 and sum(len(t) for _, _, t in sent) == 30
    assert [m.step for batch, _, _ in sent for m in batch] == list(range(5000))


def test_params_and_tags_ride_beside_azures_250_metric_rows():
    """Azure ML caps metric rows per batch at 250, not params and tags: 10 params, 5 tags and 1,000
    points are 4 requests (not 5), each within 250 rows and MLflow's own limits."""
    params, tags = {f"p{i}": str(i) for i in range(10)}, {f"t{i}": "v" for i in range(5)}
    sent = list(batches(params, tags, (MetricPoint("m", float(i), i, i) for i in range(1000)), rows=250))
    assert [len(m) for m, _, _ in sent] == [250] * 4
    assert (len(sent[0][1]), len(sent[0][2])) == (10, 5) and not any(p or t for _, p, t in sent[1:])
    assert [m.step for batch, _, _ in sent for m in batch] == list(range(1000))
    plain = list(batches(params, tags, (MetricPoint("m", float(i), i, i) for i in range(1000))))  # MLflow: 1000 entities in all
    assert [len(m) + len(p) + len(t) for m, p, t in plain] == [1000, 15]


def test_batches_of_nothing_send_nothing():
    assert list(batches({}, {}, [])) == []


def test_redaction_of_secrets_in_logs():
    line = ("https://acct.blob.core.windows.net/c/b?sv=2023&sig=abcdEFGH1234%2Bxyz&se=2030 "
            "AccountKey=Zm9vYmFyYmF6cXV4cXV1eA==; Authorization: Bearer abc.def-ghi "
            "token eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJodHRwcyJ9.c2lnbmF0dXJl http://user:pa55@host/x")
    clean = logs.redact(line)
    for secret in ("abcdEFGH1234", "Zm9vYmFy", "abc.def-ghi", "eyJhbGciOiJIUzI1NiJ9", "pa55"):
        assert secret not in clean
    assert "sig=REDACTED" in clean and "AccountKey=REDACTED" in clean


def test_uri_redaction_keeps_location_only():
    assert uris.redact("https://u:secret@host:5000/path?sig=abc&x=1") == "https://host:5000/path?sig=REDACTED&x=1"


def test_fingerprint_changes_with_state_and_treats_nan_as_equal():
    job = JobRecord(source_id="a", experiment="e", latest_metrics={"m": float("nan")})
    same = JobRecord(source_id="a", experiment="e", latest_metrics={"m": float("nan")})
    assert job.fingerprint() == same.fingerprint()
    same.status = "FAILED"
    assert job.fingerprint() != same.fingerprint()
    assert MetricPoint("m", math.nan, 1, 1).identity() == MetricPoint("m", math.nan, 1, 1).identity()
    assert JobRecord.from_json(job.to_json()).fingerprint() == job.fingerprint()


def test_progress_leaves_runs_already_there_out_of_rate_and_eta():
    from runner.core.progress import Progress

    progress = Progress("replay", 100, every=3600)
    progress.tick(90, skipped=True)
    assert " 0.0 runs/s ETA ?" in progress.line() and "90 already there" in progress.line()
    progress.tick(5)
    rate = float(progress.line().split(" already there ")[1].split()[0])
    assert rate > 0 and "95/100" in progress.line()
