"""Verify compares metric histories as multisets in flat memory, and still counts what differs.

Equal histories cost a digest per key; a key whose digests differ is read again to count the
missing and extra points exactly (runner.engine.metric_digest.count_differences), in bounded memory.
"""
from __future__ import annotations

import gc
import json
import math
import random
import re
import sqlite3
from collections import Counter
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

from conftest import run_cli
from runner.core.records import JobRecord, MetricPoint
from runner.ends import open_source
from runner.mlflow.target import DirectTarget
from runner.engine.metric_digest import count_differences
from runner.mlflow.check import JobChecker

T0 = 1_700_000_000_000
LONG = 100_000  # points a side
FLAT_MB = 40  # what comparing them may add to peak RSS: a page of 25,000 points and its JSON (Counters of both, the old way: +66 MB)


def long_run(server, experiment: str, points: int, extra: list[Metric] = ()) -> str:
    """A finished run holding `points` points of `loss` (and `extra`), on a real mlflow server.

    The last point goes through the API (so the run's latest metric is MLflow's own); the others
    are inserted into the server's sqlite database: 100,000 points over log_batch take a minute.
    """
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(experiment)
    run_id = client.create_run(exp.experiment_id if exp else client.create_experiment(experiment)).info.run_id
    client.log_batch(run_id, metrics=[Metric("loss", value(points - 1), T0 + points - 1, points - 1), *extra])
    with sqlite3.connect(server.folder / "mlflow.db") as con:
        con.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, 0)",
            (("loss", value(i), T0 + i, run_id, i) for i in range(points - 1)),
        )
    client.set_terminated(run_id, "FINISHED")
    return run_id


def value(i: int) -> float:
    return ((i * 7919) % 1_000_003) / 1_000_003.0


def test_long_equal_histories_compare_in_flat_memory(servers, unique, tmp_path):
    """100,000 points a side: no difference, and the comparison holds a page, not the histories;
    one extra point in the target is found and counted exactly, in bounded memory too (200,001
    points: more than one counting step holds, so through two partitions on disk)."""
    source_server, target_server = servers
    source_run = long_run(source_server, f"flat-{unique}", LONG)
    target_run = long_run(target_server, f"flat-{unique}", LONG)
    tampered = long_run(target_server, f"flat-{unique}", LONG, extra=[Metric("loss", 0.5, T0 - 1, 7)])
    source = open_source(source_server.uri)
    job = JobRecord(source_run, f"flat-{unique}", latest_metrics={"loss": value(LONG - 1)})
    checker = JobChecker(source, DirectTarget(target_server.uri), ledger=None)
    try:
        equal, equal_peak = peak_growth_mb(lambda: checker.compare_metrics(job, target_run, {"loss"}))
        found, differing_peak = peak_growth_mb(lambda: checker.compare_metrics(job, tampered, {"loss"}))
    finally:
        checker.close()
    assert equal == []
    assert [(d.field, d.source, d.target) for d in found] == [
        ("metric:loss", f"{LONG} points", f"{LONG + 1} points (0 missing, 1 extra or changed)")
    ]
    assert equal_peak < FLAT_MB and differing_peak < FLAT_MB, (equal_peak, differing_peak)


def peak_growth_mb(compare):
    """compare()'s result and how far it raised this process's peak resident memory (MB).

    Writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current RSS.
    """
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = status_mb("VmRSS")
    result = compare()
    return result, status_mb("VmHWM") - before


def status_mb(field: str) -> float:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024


def test_each_kind_of_metric_difference_is_counted(servers, unique, tmp_path):
    """A changed value, a missing point, an extra point and a duplicate point (histories are
    multisets) are each reported with their counts; NaN points equal NaN points."""
    source, target = servers
    name = f"kinds-{unique}"
    client = MlflowClient(source.uri)
    run_id = client.create_run(client.create_experiment(name), run_name="kinds").info.run_id
    keys = ["changed", "duplicate", "equal", "extra", "missing"]
    client.log_batch(run_id, metrics=[Metric(k, math.nan if s % 7 == 3 else s / 10, T0 + s, s) for k in keys for s in range(50)])
    client.set_terminated(run_id, "FINISHED")
    args = ["--experiments", name, "--workspace", name]
    assert run_cli("migrate", "--source", source.uri, "--target", target.uri, *args, cwd=tmp_path).returncode == 0
    manifest = tmp_path / "manifest"
    assert run_cli("extract", "--source", source.uri, "--out", str(manifest), *args, cwd=tmp_path).returncode == 0
    equal = run_cli("verify", "--source", source.uri, "--target", target.uri, *args, cwd=tmp_path)
    assert equal.returncode == 0, equal.stdout + equal.stderr

    copy = MlflowClient(target.uri).search_runs(
        [MlflowClient(target.uri).get_experiment_by_name(name).experiment_id], f"tags.original_job_id = '{run_id}'"
    )[0].info.run_id
    MlflowClient(target.uri).log_batch(copy, metrics=[Metric("extra", 0.5, T0 + 1, 1)])  # step 1 again, another value
    assert differences(run_cli("verify", "--source", source.uri, "--target", target.uri, *args, "--report", str(tmp_path / "one.json"), cwd=tmp_path),
                       tmp_path / "one.json") == {"metric:extra": ("50 points", "51 points (0 missing, 1 extra or changed)")}

    # The manifest as the source: one value changed, a NaN point twice, a point the target lacks.
    history = manifest / "metrics" / f"{run_id}.jsonl"
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    rows = [[k, s, t, 9.5] if (k, s) == ("changed", 5) else [k, s, t, v] for k, s, t, v in rows]
    rows += [["duplicate", 3, T0 + 3, "NaN"], ["missing", 50, T0 + 50, 5.0]]
    history.write_text("".join(json.dumps(row) + "\n" for row in rows))
    found = differences(run_cli("verify", "--source", str(manifest), "--target", target.uri, *args, "--report", str(tmp_path / "all.json"), cwd=tmp_path),
                        tmp_path / "all.json")
    assert found == {
        "metric:changed": ("50 points", "50 points (1 missing, 1 extra or changed)"),
        "metric:duplicate": ("51 points", "50 points (1 missing, 0 extra or changed)"),
        "metric:extra": ("50 points", "51 points (0 missing, 1 extra or changed)"),
        "metric:missing": ("51 points", "50 points (1 missing, 0 extra or changed)"),
    }


def differences(result, report: Path) -> dict[str, tuple[str, str]]:
    assert result.returncode == 1, result.stdout + result.stderr
    return {d["field"]: (d["source"], d["target"]) for d in json.loads(report.read_text())["differences"]}


def test_counts_through_partitions_equal_exact_multiset_counts(tmp_path):
    """count_differences spilled over many partitions gives what Counters of the whole histories give."""
    rng = random.Random(7)
    base = [MetricPoint("m", rng.choice([math.nan, 0.0, 1, rng.random()]), rng.randrange(50), rng.randrange(50)) for _ in range(3000)]
    want = base + rng.sample(base, 40)  # duplicates
    have = rng.sample(base, 2800) + [MetricPoint("m", -0.0, 1, 1), MetricPoint("m", 1.0, 2, 2), MetricPoint("m", math.nan, 99, 99)]
    truth = Counter(p.identity() for p in want)
    truth.subtract(p.identity() for p in have)
    expected = (sum(n for n in truth.values() if n > 0), -sum(n for n in truth.values() if n < 0))
    assert expected[0] > 200 and expected[1] > 0
    for part_points in (10_000, 100):  # in memory; 59 partitions a side
        assert count_differences(lambda: iter(want), lambda: iter(have), len(want) + len(have), tmp_path, part_points) == expected
    assert count_differences(lambda: iter(want), lambda: reversed(want), 2 * len(want), tmp_path, 100) == (0, 0)
    assert list(tmp_path.iterdir()) == []  # the partition files are gone
