"""Docs stay true to the CLI; small pure pieces (batching, redaction, records) behave."""
from __future__ import annotations

import inspect
import math
from collections import Counter
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from runner.core import logs
from runner.mlflow import uris
from runner.cli import Replayer
from runner.core.records import JobRecord, MetricPoint
from runner.engine.limits import MAX_ENTITIES_PER_BATCH
from runner.mlflow.batching import MAX_PARAMS_TAGS_PER_BATCH, RowCaps, batches

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


def history(key: str, count: int, first: int = 0) -> list[MetricPoint]:
    return [MetricPoint(key, float(s), 1_700_000_000_000 + s, s) for s in range(first, first + count)]


def shape(sent) -> list[dict[str, int]]:
    """Rows per metric name of each request."""
    return [dict(Counter(m.key for m in metrics)) for metrics, _, _ in sent]


def test_azures_250_rows_are_per_metric_name_in_a_request():
    """Azure ML caps one metric name's rows in a request at 250 (runner/mlflow/batching.py), MLflow
    the request at 1000 entities: 5 names x 200 points are one request, 1 name x 1000 four."""
    per_name = {"rows_per_metric": 250}
    five = [p for k in range(5) for p in history(f"m{k}", 200)]
    assert shape(batches({}, {}, five, **per_name)) == [{f"m{k}": 200 for k in range(5)}]
    assert shape(batches({}, {}, history("m", 1000), **per_name)) == [{"m": 250}] * 4
    # A name reaching its 250 sends the request, though it has room: the next name starts the next one.
    mixed = history("a", 300) + history("b", 100)
    assert shape(batches({}, {}, mixed, **per_name)) == [{"a": 250}, {"a": 50, "b": 100}]
    # Params and tags ride first, beside the rows; the entities of a request stay within 1000.
    params, tags = {f"p{i}": str(i) for i in range(10)}, {f"t{i}": "v" for i in range(5)}
    sent = list(batches(params, tags, five, **per_name))
    assert [len(m) for m, _, _ in sent] == [985, 15] and (len(sent[0][1]), len(sent[0][2])) == (10, 5)
    assert not any(p or t for _, p, t in sent[1:])
    assert [(m.key, m.step) for batch, _, _ in sent for m in batch] == [(p.key, p.step) for p in five]
    plain = list(batches(params, tags, history("m", 1000)))  # MLflow: 1000 entities in all
    assert [len(m) + len(p) + len(t) for m, p, t in plain] == [1000, 15]


def test_the_documented_reading_caps_a_request_at_250_rows_in_all():
    """The fallback reading (250 rows of all names in a request): 5 x 200 points are four requests."""
    five = [p for k in range(5) for p in history(f"m{k}", 200)]
    sent = list(batches({"p": "1"}, {}, five, rows_per_metric=250, rows_total=250))
    assert [len(m) for m, _, _ in sent] == [250] * 4 and [len(p) for _, p, _ in sent] == [1, 0, 0, 0]
    assert shape(sent)[1] == {"m1": 150, "m2": 100} and [m.step for b, _, _ in sent for m in b] == [p.step for p in five]


class RefusingClient:
    """log_batch as Azure ML's endpoint in the documented reading: more than 250 rows refused."""

    def __init__(self, refusal: Exception | None = None, rows: int = 250):
        self.sent: list[tuple[int, int, int]] = []
        self.refused = 0
        self.refusal, self.rows = refusal, rows

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if len(metrics) > self.rows:
            self.refused += 1
            raise self.refusal or MlflowException(
                "Response: {'Error': {'Code': 'ValidationError', 'Message': 'A field of the entity is over the size limit. "
                f"FieldName=MetricV2Dto.Value/Count, Limit=250, Size={len(metrics)}.'}}", error_code=INVALID_PARAMETER_VALUE)
        self.sent.append((len(metrics), len(params), len(tags)))


def test_a_refused_batch_switches_the_target_to_250_in_all_and_goes_again_split():
    from loguru import logger

    from runner.engine.limits import AZUREML_LIMITS

    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    caps = RowCaps(AZUREML_LIMITS, "the target T")
    client = RefusingClient()
    five = [p for k in range(5) for p in history(f"m{k}", 200)]
    try:
        written = sum(caps.send(client, "r", *batch) for batch in caps.batches({"p": "1"}, {"t": "v"}, five))
        again = sum(caps.send(client, "r", *batch) for batch in caps.batches({}, {}, five))
    finally:
        logger.remove(sink)
    # The first request (2 entities + 998 rows) is refused once; the second (2 rows) needs no split.
    assert written == 1000 and client.refused == 1 and caps.total == 250
    assert client.sent[:5] == [(250, 1, 0), (250, 0, 0), (250, 0, 0), (248, 0, 1), (2, 0, 0)]  # the tag with the refused batch's last part
    assert again == 1000 and client.sent[5:] == [(250, 0, 0)] * 4 and client.refused == 1, "once switched, batches are cut before sending"
    assert len(warnings) == 1 and "counts Azure ML's documented" in warnings[0], warnings


def test_the_step_batches_as_the_direct_target_with_azures_per_name_cap_everywhere():
    from runner.azureml.step import log_metrics
    from runner.engine.limits import MLFLOW_LIMITS

    five = [p for k in range(5) for p in history(f"m{k}", 200)]
    client = RefusingClient(rows=1000)
    assert log_metrics(client, "r", five) == 1000 and client.sent == [(1000, 0, 0)]
    client = RefusingClient(rows=1000)
    assert log_metrics(client, "r", history("m", 1000), MLFLOW_LIMITS) == 1000 and client.sent == [(250, 0, 0)] * 4
    client = RefusingClient()  # the documented reading: refused once, then 250 in all
    assert log_metrics(client, "r", five) == 1000 and client.refused == 1 and client.sent == [(250, 0, 0)] * 4


def test_other_refusals_are_raised_and_nothing_falls_back():
    from runner.engine.limits import AZUREML_LIMITS, MLFLOW_LIMITS

    five = [p for k in range(5) for p in history(f"m{k}", 200)]
    other = MlflowException("A field of the entity is over the size limit. FieldName=Parameters, Limit=200", error_code=INVALID_PARAMETER_VALUE)
    caps = RowCaps(AZUREML_LIMITS, "T")
    with pytest.raises(MlflowException, match="Parameters"):
        [caps.send(RefusingClient(other), "r", *batch) for batch in caps.batches({}, {}, five)]
    assert caps.total == 1000
    plain = RowCaps(MLFLOW_LIMITS, "T")  # no per-name cap to leave: a rows refusal there is raised
    with pytest.raises(MlflowException, match="MetricV2Dto"):
        [plain.send(RefusingClient(), "r", *batch) for batch in plain.batches({}, {}, five)]


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
