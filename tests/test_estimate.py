"""`replayer estimate` (runner/engine/estimate.py, runner/engine/rate_probe.py): the workload's requests by
the formula of docs/performance.md, a read-only rate probe per end and family, and the projection.

Against the HTTPS fake of the control plane (tests/fakes/azureml_control_plane.py) with two workspaces,
the fixture's source and an empty target, and its throttle (tests/fakes/azureml_latency.py) on at a
known small MLflow rate or off. What is asserted of the probe follows from the bucket's arithmetic,
never from how fast this machine ran it; the projection is checked on numbers worked by hand.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conftest import run_cli
from fakes import azureml_latency as latency
from fakes import azureml_seed as seed
from fakes.azureml_control_plane import FakeCredential, FakeWorkspace
from runner.azureml.source import AzuremlSource
from runner.engine import estimate
from runner.ends import estimate_reads, probe_reads, same_store
from runner.engine.estimate import BLOB_RATE, Measured, Workload, documented_rates, projection, requests_per_job, summary_line
from test_azureml_source import RG, SUB, URI, WS, cli_env

TARGET = URI.replace(WS, "ws-target")


def tracking_uri(host: str, workspace: str) -> str:
    """A workspace given as its MLflow tracking URI, spelled as bench/bench_azure_scale.py and the portal spell it."""
    return (f"azureml://{host}/mlflow/v2.0/subscriptions/{SUB}/resourceGroups/{RG}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace}")
WRITES = ("runs/create", "log-batch", "runs/update", "set-tag", "experiments/create", "batch/metadata")


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    with seed.fixture_workspace(tmp_path_factory.mktemp("estimate"), SUB, RG, WS) as (fake, _, _):
        fake.add(FakeWorkspace(SUB, RG, "ws-target"))  # nothing in it yet: the reads answer 404, an answer like any other
        try:
            yield SimpleNamespace(fake=fake, env=fake.environ())
        finally:
            latency.turn_off(fake)


def estimate_cli(azure, tmp_path, *flags: str):
    run = run_cli("estimate", "--source", URI, "--target", TARGET, "--sample", "3", "--report", "estimate.json", *flags,
                  cwd=tmp_path, env={**cli_env(SimpleNamespace(env=azure.env), tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    return run, json.loads((tmp_path / "estimate.json").read_text())


def test_the_probe_meets_the_mlflow_bucket_and_reports_its_rate(azure, tmp_path):
    # MLflow: 6/s with a burst of 5 in each workspace; run history's artifacts never throttled. The ramp
    # (5, 10, 20/s, a second each) must be refused: 20 requests in a second find at most 5 + 6 tokens. The
    # burst of 5 holds the whole first stage, even sent at once by threads that started late.
    latency.turn_on(azure.fake, latency={}, buckets={"mlflow": (6.0, 5)})
    try:
        run, report = estimate_cli(azure, tmp_path, "--max-rate", "20", "--probe-seconds", "3")
    finally:
        latency.turn_off(azure.fake)
    probes = report["probes"]
    assert set(probes) == {"source mlflow", "source artifacts", "target mlflow", "target artifacts"}
    for end in ("source", "target"):  # each workspace its own bucket: both refused
        mlflow = probes[f"{end} mlflow"]
        assert mlflow["found"] and mlflow["throttled"] >= 1 and mlflow["retry_after"] >= 1, mlflow
        # The ramp's clean stages (T >= 1 s) carried at most 5 + 6 T requests, up to 11/s: the burst's loan.
        # The reported rate is a confirmation's, held 4 s: at most 5 + 6 x 4 requests, 7.25/s.
        assert mlflow["confirmed"] and 0 < mlflow["rate"] <= 7.25, mlflow
        assert mlflow["stages"][-1]["seconds"] >= 4, mlflow  # the last stage was the confirmation
        artifacts = probes[f"{end} artifacts"]
        assert not artifacts["found"] and artifacts["throttled"] == 0 and artifacts["rate"] > 0, artifacts
    assert azure.fake.requests["throttled:mlflow"] >= 2
    routes = [key for key, n in azure.fake.requests.items() if key.startswith("route:") and n]
    assert not [r for r in routes if any(w in r for w in WRITES)], routes  # reads only
    p = report["projection"]
    assert report["workload"]["sampled"] == 3 and p["jobs"] == report["workload"]["jobs"] > 3
    assert "target mlflow" in p["throttle_h"] and p["lower_bound_rates"] == ["source artifacts", "target artifacts"]
    # Blob, never probed: each workspace's storage account at Azure's documented rate, neither found nor a lower bound.
    assert p["documented_rates"] == ["source blob", "target blob"] and "source blob" not in probes
    for end in ("source", "target"):
        assert p["throttle_h"][f"{end} blob"] == round(p["requests"][f"{end} blob"] / BLOB_RATE / 3600, 2)
    assert [line for line in run.stdout.splitlines() if line.startswith("target blob") and "20,000/s documented" in line]
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith(f"projection: {p['jobs']:,} jobs: {p['hours_1']} h on 1 node, {p['hours_8']} h on 8 nodes"), line
    assert "429 met" in run.stdout and "lower bound" in run.stdout


def test_one_workspace_at_both_ends_is_probed_once_and_carries_both_ends(azure, monkeypatch):
    """In process (the CLI's path is the test above): the source workspace, and the target given as the same
    workspace's MLflow tracking URI (its scope spelled otherwise): one probe per family, counted by the fake and
    never refused (every rate a lower bound); the projection puts both ends' requests on that one rate."""
    for key, value in azure.env.items():
        monkeypatch.setenv(key, value)
    source = AzuremlSource(URI, credential=FakeCredential())
    host = source.tracking_uri.split("/")[2]
    target_uri = tracking_uri(host, WS.upper()).replace("/resourceGroups/", "/RESOURCEGROUPS/")
    reads = estimate_reads(source, URI, target_uri, "fraud-baseline", "eager_owl_04")
    assert set(reads) == {"workspace mlflow", "workspace artifacts"}
    before = dict(azure.fake.requests)
    latency.turn_on(azure.fake, latency={}, buckets={})
    try:
        results, measured = estimate.probe_all(reads, max_rate=10, seconds=2)
    finally:
        latency.turn_off(azure.fake)
    for key, probe in results.items():
        assert not probe["found"] and probe["throttled"] == 0 and probe["rate"] > 0 and probe["p50_ms"] is not None, (key, probe)
        assert probe["describe"].startswith(">= ") and "lower bound" in probe["describe"]
    sent = {key: n - before.get(key, 0) for key, n in azure.fake.requests.items() if key.startswith("ws:") and n > before.get(key, 0)}
    assert sent == {f"ws:{WS} mlflow": results["workspace mlflow"]["requests"], f"ws:{WS} artifacts": results["workspace artifacts"]["requests"]}
    measured.update(documented_rates(measured))
    w = Workload(jobs=100_000, sampled=3, verify=True, per_job=requests_per_job(5, 4, 3))
    p = projection(w, measured, parallel=8, shards=8)  # as the CLI calls it: the probes' buckets say `workspace`
    assert set(p["requests"]) == {"workspace mlflow", "workspace artifacts", "workspace blob"}
    for family in ("mlflow", "artifacts", "blob"):
        both = w.per_job["source"][family] + w.per_job["target"][family]
        assert p["per_job"][f"workspace {family}"] == both and p["requests"][f"workspace {family}"] == both * w.jobs
        rate = measured[f"workspace {family}"].rate
        assert p["throttle_h"][f"workspace {family}"] == round(both * w.jobs / rate / 3600, 2), (family, rate)
    assert p["documented_rates"] == ["workspace blob"]


def test_a_target_given_as_its_tracking_uri_has_its_run_history_probed(azure, monkeypatch):
    """The target workspace named by its MLflow tracking URI (as the Azure bench names it) is opened as a
    workspace URI would be: its run history's listing is probed too, on that workspace (a 404: no such run yet)."""
    from runner.azureml import credentials

    for key, value in azure.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(credentials, "get", FakeCredential)
    host = AzuremlSource(URI, credential=FakeCredential()).tracking_uri.split("/")[2]
    reads = probe_reads(None, tracking_uri(host, "ws-target"), "fraud-baseline", "eager_owl_04")
    assert set(reads) == {"mlflow", "artifacts"}
    before = dict(azure.fake.requests)
    latency.turn_on(azure.fake, latency={}, buckets={})  # counts requests per workspace and family
    try:
        assert reads["artifacts"]().status == 404 and reads["mlflow"]().status in (200, 404)  # ws-target holds no run yet
    finally:
        latency.turn_off(azure.fake)
    sent = {key: n - before.get(key, 0) for key, n in azure.fake.requests.items() if key.startswith("ws:") and n > before.get(key, 0)}
    assert sent == {"ws:ws-target artifacts": 1, "ws:ws-target mlflow": 1}


@pytest.mark.parametrize("source, target, same", [
    (URI, URI.upper().replace("AZUREML://", "azureml://"), True),
    (URI, tracking_uri("westeurope.api.azureml.ms", WS.upper()), True),
    (URI, TARGET, False),
    (tracking_uri("h", WS), tracking_uri("h", "ws-target"), False),
    ("http://localhost:5000/", "http://127.0.0.1:5000", True),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5001", False),
])
def test_same_store_whatever_the_spelling(source, target, same):
    assert same_store(source, target) is same


def test_blob_is_projected_at_the_documented_rate():
    """Each workspace's blob bucket at 20,000/s documented: requests / 20,000, neither found nor a lower
    bound, its latency its end's run history artifacts' p50; the table says documented."""
    w = Workload(jobs=10_000_000, sampled=20, verify=True, per_job=requests_per_job(5, 4, 3))
    measured = {"source artifacts": Measured(40.0, True, 50.0), "target artifacts": Measured(40.0, False, 70.0)}
    measured.update(documented_rates(measured))
    assert set(measured) == {"source artifacts", "target artifacts", "source blob", "target blob"}
    p = projection(w, measured, parallel=8, shards=8)
    # 10,000,000 jobs x 3 HEADs / 20,000/s = 1,500 s = 0.42 h; the target's 6 (copy and the check's HEAD): 0.83 h.
    assert p["throttle_h"]["source blob"] == round(p["requests"]["source blob"] / 20_000 / 3600, 2) == 0.42
    assert p["throttle_h"]["target blob"] == 0.83 and p["documented_rates"] == ["source blob", "target blob"]
    assert p["lower_bound_rates"] == ["target artifacts"]
    assert estimate.p50_for("target blob", measured) == 70.0
    lines = estimate.table(w, measured, {}, p)
    assert [line for line in lines if line.startswith("source blob") and "20,000/s documented" in line]
    assert not [line for line in lines if " blob " in line and "not probed" in line]


def test_the_formula_matches_the_benchs_measured_requests_per_job():
    """docs/performance.md: the bench's job (K 5, F 3; B 4 when measured) took 21 requests a job for migrate
    and 31 for migrate --verify (its table: MLflow 18.92 and run history artifacts 3.0 a job), one of them
    the completion tag's set-tag, which now rides on the create-run (runner.engine.ledger.awaiting)."""
    plain, checked = requests_per_job(5, 4, 3, verify=False), requests_per_job(5, 4, 3)
    assert estimate.total(plain) == 21 - 1 and estimate.total(checked) == 31 - 1
    assert checked["source"]["mlflow"] + checked["target"]["mlflow"] == 19 - 1
    assert checked["source"]["artifacts"] + checked["target"]["artifacts"] == 3
    assert checked["source"]["blob"] + checked["target"]["blob"] == 9  # 3 F: HEAD, copy, the check's HEAD
    assert requests_per_job(0, 1, 0)["target"]["artifacts"] == 0  # no files: no registration


def test_projection_arithmetic_by_hand():
    # 100,000 jobs of 10 + 2 MLflow requests (target, source), 2 + 1 run history artifacts, 6 + 3 blob.
    w = Workload(jobs=100_000, sampled=20, verify=True, per_job={
        "source": {"mlflow": 2.0, "artifacts": 1.0, "blob": 3.0}, "target": {"mlflow": 10.0, "artifacts": 2.0, "blob": 6.0}})
    measured = {"source mlflow": Measured(50.0, False, 100.0), "target mlflow": Measured(20.0, True, 100.0),
                "source artifacts": Measured(40.0, True, 50.0), "target artifacts": Measured(40.0, False, 50.0)}
    p = projection(w, measured, parallel=8, shards=8)
    # Latency: MLflow 1,200,000 x 100 ms = 120,000 s; artifacts 300,000 x 50 ms = 15,000 s; blob at its end's
    # artifacts p50: 900,000 x 50 ms = 45,000 s; 180,000 s / 8 = 22,500 s = 6.25 h on 1 node, 0.78 h on 8.
    assert (p["latency_floor_h_1"], p["latency_floor_h_8"]) == (6.25, 0.78)
    # Throttle: target MLflow 1,000,000 / 20 = 50,000 s = 13.89 h, the largest (source MLflow 200,000 / 50 = 1.11 h).
    assert p["throttle_h"] == {"source mlflow": 1.11, "target mlflow": 13.89, "source artifacts": 0.69, "target artifacts": 1.39}
    assert p["hours_1"] == p["hours_8"] == 13.89 and p["bound_8"] == "target mlflow"
    # Break-even for 1 h: 1,000,000 / 3,600 = 277.78/s for the target's MLflow.
    assert p["break_even_per_s"]["target mlflow"] == 277.78 and p["break_even_per_s"]["source blob"] == 83.33
    assert p["lower_bound_rates"] == ["source mlflow", "target artifacts"] and p["unmeasured_latency"] == []
    assert summary_line(p) == ("projection: 100,000 jobs: 13.89 h on 1 node, 13.89 h on 8 nodes; bound by target mlflow "
                               "(throttle 13.89 h); break-even for 1 h: target mlflow 277.78/s")
    # A target MLflow 12.5x faster (1,000,000 / 250 = 1.11 h): latency decides on one node; on 8 the target's
    # run history artifacts (200,000 / 40 = 1.39 h, over the 0.78 h floor).
    measured["target mlflow"] = Measured(250.0, True, 100.0)
    p = projection(w, measured, parallel=8, shards=8)
    assert (p["hours_1"], p["bound_1"]) == (6.25, "latency") and (p["hours_8"], p["bound_8"]) == (1.39, "target artifacts")


@pytest.mark.parametrize("flags, says", [
    (("--max-rate", "0"), "--max-rate '0': expected more than 0"),
    (("--sample", "many"), "--sample"),
    (("--probe-seconds", "-1"), "--probe-seconds -1: expected more than 0 seconds"),
    (("--shard-count", "2"), "unknown flag --shard-count; did you mean --shard?"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, flags, says):
    run = run_cli("estimate", "--source", str(tmp_path / "src"), "--target", str(tmp_path / "dst"), *flags, cwd=tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1 and says in lines[0], run.stderr


def test_the_ramp_doubles_from_5_per_s_and_fits_the_time_box():
    from runner.engine.rate_probe import ramp

    assert ramp(100, 20) == ([5, 10, 20, 40, 80, 100], 2.0)  # the defaults: 12 s of 20
    assert ramp(20, 3) == ([5, 10, 20], 1.0)  # shorter stages when --probe-seconds needs them
    assert ramp(3, 20) == ([3], 2.0)  # a --max-rate under the first stage's


def test_a_burst_is_not_reported_as_rate_the_found_rate_is_held():
    """A token bucket of 10/s with a burst of 20, in process: the ramp's 1 s stages carry up to 20/s
    on the burst's loan (refused at 40/s). The rate reported is one held for 4 s after a refusal: the
    bucket, emptied by the refusal, refills only during the 1 s Retry-After (10 tokens), so 4 s
    carry at most 10 + 10 x 4 requests: 12.5/s. Without the confirmation this reports about 20/s."""
    import threading
    import time

    from runner.engine.rate_probe import Answer, probe

    lock, bucket = threading.Lock(), {"at": time.monotonic(), "tokens": 20.0}

    def send() -> Answer:
        time.sleep(0.02)
        with lock:
            now = time.monotonic()
            bucket["tokens"] = min(20.0, bucket["tokens"] + (now - bucket["at"]) * 10)
            bucket["at"] = now
            if bucket["tokens"] < 1:
                return Answer(429, 1.0)
            bucket["tokens"] -= 1
            return Answer(200)

    result = probe(send, max_rate=40, seconds=4)
    assert result.found and result.confirmed, result
    assert 0 < result.rate <= 12.5, result
    assert result.stages[-1].clean and result.stages[-1].seconds >= 4, result.stages


def test_children_come_in_their_parents_search():
    """A child's runs/get is 0 at each end: its parent's one search of children stands for it (the check's
    child groups, runner/engine/child_groups.py; the source's plan). Two parents of four children each, 10
    jobs: a spread sample of 5 draws a parent and four children of both parents (0, 2, 4, 6, 8), each
    child carrying a quarter of its parent's search: 1 / 5 = 0.2 searches a job at each end, the whole
    selection's 2 parents / 10 jobs, as when all 10 are sampled."""
    from runner.core.filters import spread
    from runner.core.records import JobRecord

    assert requests_per_job(5, 2, 3, child=True)["source"]["mlflow"] == requests_per_job(5, 2, 3)["source"]["mlflow"] - 1
    assert requests_per_job(5, 2, 3, child=True)["target"]["mlflow"] == requests_per_job(5, 2, 3)["target"]["mlflow"] - 1
    jobs = [job for p in ("p1", "p2") for job in (JobRecord(source_id=p, name=p, experiment="e"),
            *(JobRecord(source_id=f"{p}c{i}", name="c", experiment="e", parent_id=p, depth=1) for i in range(4)))]
    source = SimpleNamespace(count=lambda: 10, metrics=lambda job: iter(()), artifacts=lambda job: iter(()),
                             sample=lambda n: ((job, 4 if job.parent_id else 0) for job in spread(jobs, n)))
    alone = requests_per_job(0, 1, 0)
    for n, roots in ((5, 1), (20, 2)):
        w = estimate.sample_workload(source, n, lambda job, points: sum(1 for _ in points) or 1)
        sampled = min(n, 10)
        gets = roots / sampled  # a root's own runs/get; the children have none
        assert w.per_job["source"]["mlflow"] == pytest.approx(gets + 0.2), n
        assert w.per_job["target"]["mlflow"] == pytest.approx(alone["target"]["mlflow"] - 1 + gets + 0.2), n


def test_the_sample_is_spread_over_the_selection_with_each_jobs_siblings(azure, monkeypatch, tmp_path):
    """`Source.sample`: jobs spread evenly over `jobs()`'s order, each with how many selected jobs share its
    parent, from the AzureML source (the fixture workspace, in process), an MLflow store (the demo) and a
    manifest folder (the demo extracted)."""
    from runner.core.filters import Filters, spread
    from runner.demo import seed as seed_demo
    from runner.mlflow.source import MlflowSource

    assert spread(range(10), 3) == [0, 3, 6] and spread("abc", 5) == ["a", "b", "c"] and spread([], 2) == []
    for key, value in azure.env.items():
        monkeypatch.setenv(key, value)
    from runner.engine.extract import extract
    from runner.engine.manifest import ManifestSource
    from runner.files.options import ArtifactOptions

    seed_demo(str(tmp_path / "demo"))
    extract(MlflowSource(str(tmp_path / "demo"), Filters()), str(tmp_path / "manifest"), artifacts=ArtifactOptions(mode="none"))
    for source in (AzuremlSource(URI, credential=FakeCredential()), MlflowSource(str(tmp_path / "demo"), Filters()),
                   ManifestSource(tmp_path / "manifest", Filters())):
        every = list(source.jobs())
        parents = [job.parent_id for job in every if job.parent_id]
        drawn = list(source.sample(4))
        assert [job.source_id for job, _ in drawn] == [job.source_id for job in spread(every, 4)], source
        assert [siblings for _, siblings in drawn] == [parents.count(job.parent_id) if job.parent_id else 0 for job, _ in drawn]
        assert len(every) > 4 and sum(1 for _, siblings in drawn if siblings) >= 2, (source, drawn)  # children drawn, not only roots
