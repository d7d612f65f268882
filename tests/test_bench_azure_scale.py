"""The Azure-shaped bench's counting and projection (bench/bench_azure_scale.py, bench/azure_scale_report.py),
so the bench cannot rot between runs of `make bench`.

Two kinds of check: the arithmetic of the projection and of the counters' deltas on numbers worked by
hand; and the bench itself, run small as `make bench` runs it (its own process, the fake with three
workspaces, production blob URLs through the counting TLS proxy), without latency or buckets so it
takes a minute, asserting that every command's table has routes of every family it must touch.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import azure_scale_report as report  # noqa: E402
from fakes import azureml_latency as latency  # noqa: E402

WS = "/subscriptions/5e2d/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/w1"


def test_routes_are_templates_with_names_and_ids_taken_out():
    assert latency.route("GET", WS + "?api-version=2024-10-01-preview") == "GET /{ws}"
    assert latency.route("GET", WS + "/jobs/eager_owl_04_c3") == "GET /{ws}/jobs/{job}"
    assert latency.route("GET", f"/history/v1.0{WS}/runs/abc/children?$top=50") == "GET /history/v1.0/{ws}/runs/{run}/children"
    assert (latency.route("POST", f"/history/v1.0{WS}/experiments/fraud/runs/r1/artifacts/batch/metadata")
            == "POST /history/v1.0/{ws}/experiments/{experiment}/runs/{run}/artifacts/batch/metadata")
    # MLflow's routes are verbs: `runs/log-batch` is not a run named log-batch.
    assert latency.route("POST", f"/mlflow/v2.0{WS}/api/2.0/mlflow/runs/log-batch") == "POST /mlflow/v2.0/{ws}/api/2.0/mlflow/runs/log-batch"
    assert latency.route("GET", f"/history/v1.0{WS}/runs/0f3c2a5e-5a1e-4d2b-9c1d-77e5a0d0c0de") == "GET /history/v1.0/{ws}/runs/{run}"
    assert latency.blob_route("PUT", "/src/ExperimentRun/dcid.x/a.bin?comp=block&blockid=AA", {}) == "PUT /{account}/{container}/{blob} comp=block"
    assert latency.blob_route("PUT", "/dst/a.bin", {"x-ms-copy-source": "https://..."}) == "PUT /{account}/{container}/{blob} (copy)"


def test_made_counts_requests_carried_out_by_family_and_route():
    before = {"family:mlflow": 10, "throttled:mlflow": 2, "route:mlflow POST /x": 8}
    after = {"family:mlflow": 40, "throttled:mlflow": 7, "route:mlflow POST /x": 20, "route:mlflow GET /y": 13,
             "family:blob": 6, "route:blob HEAD /{account}/{container}/{blob}": 6, "jobs_get": 3}
    row = report.made(before, after)
    assert row["requests"]["mlflow"] == 25  # 30 sent less 5 answered 429
    assert row["requests"]["blob"] == 6 and row["requests"]["arm"] == 0
    assert row["throttled"] == {"mlflow": 5}
    assert row["routes"] == {"mlflow": {"GET /y": 13, "POST /x": 12}, "blob": {"HEAD /{account}/{container}/{blob}": 6}}
    units = report.per_unit({**row, "wall_s": 1}, jobs=4, files=12)
    assert units["blob HEAD /{account}/{container}/{blob}"] == {"total": 6, "per_job": 1.5, "per_file": 0.5}
    assert units["mlflow GET /y"]["per_file"] is None  # MLflow requests grow with jobs, not files


def test_projection_takes_the_larger_of_the_latency_and_the_throttle_bound():
    row = {"wall_s": 50.0, "requests": {"arm": 10, "discovery": 0, "history": 20, "artifacts": 0, "mlflow": 100, "blob": 30}}
    latency_ms = {"arm": 50, "history": 100, "mlflow": 100, "blob": 20}
    buckets = {"arm": (25.0, 250), "mlflow": (20.0, 40)}
    # 100,000 jobs from 10: x10,000. Latency: (10*50 + 20*100 + 100*100 + 30*20) ms * 10,000 / 1000
    # = 131,000 s over 8 in flight = 16,375 s (4.55 h) on one node, 0.57 h on eight.
    # Throttle: MLflow (1,000,000 - 40) / 20 = 49,998 s = 13.89 h whatever the nodes; ARM (100,000 - 250) / 25 = 1.11 h.
    one = report.projection(row, 10, latency_ms, buckets, parallel=8, project=100_000, nodes=1)
    eight = report.projection(row, 10, latency_ms, buckets, parallel=8, project=100_000, nodes=8)
    assert (one["latency_bound_h"], eight["latency_bound_h"]) == (4.55, 0.57)
    assert one["throttle_bound_h"] == eight["throttle_bound_h"] == 13.89 and one["throttle_family"] == "mlflow"
    assert one["throttle_h"] == {"arm": 1.11, "mlflow": 13.89}
    assert one["hours"] == eight["hours"] == 13.89
    assert one["measured_scale_h"] == round(50 * 10_000 / 3600, 2) and eight["measured_scale_h"] == 17.36
    # Without buckets the latency bound decides, and shards divide it.
    assert report.projection(row, 10, latency_ms, {}, 8, 100_000, 8)["hours"] == 0.57
    assert report.modelled_seconds(row, latency_ms, {}, 8) == round(13.1 / 8, 1)


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "azure_scale.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_azure_scale.py"), "--jobs", "38", "--files", "2", "--max-kb", "8",
                           "--metrics", "1", "--steps", "5", "--no-latency", "--no-peer", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_the_bench_counts_every_command_by_route(small_bench):
    results, stdout = small_bench
    data = results["data"]
    assert (data["jobs"], data["files"]) == (38, 76)
    assert data["kinds"]["pipeline"] == 2 and data["kinds"]["command step"] > 0 and data["kinds"]["command trial"] == 8
    assert results["summary"]["migrate_failed_0"] and results["summary"]["verify_all_equal"] and results["summary"]["migrate_verify_all_equal"]
    assert results["tool_copied"] == {"runs": 38, "metric_points": 38 * 5, "files": 76}  # read back from the target's stores
    must = {"extract": {"arm", "history", "artifacts", "mlflow", "blob"}, "migrate": {"arm", "history", "artifacts", "mlflow", "blob"},
            "verify": {"arm", "history", "artifacts", "mlflow", "blob"}, "migrate --verify": {"arm", "history", "artifacts", "mlflow", "blob"}}
    for name, families in must.items():
        row = results["commands"][name]
        assert families <= set(row["routes"]), (name, row["routes"])
        for family, routes in row["routes"].items():
            assert sum(routes.values()) == row["requests"][family], (name, family)  # every request carried out has its route
            assert all(n > 0 for n in routes.values())
    # Files are read through the production blob URLs (the TLS proxy counts them) and copied server-side.
    assert results["commands"]["extract"]["routes"]["blob"].get("GET /{account}/{container}/{blob}", 0) >= 76
    assert any("(copy)" in r for r in results["commands"]["migrate"]["routes"]["blob"])
    assert "requests per job (per file: artifacts, blob) by route; 38 jobs, 76 files" in stdout
    # migrate --verify: the source's histories read once (1 metric key: one get-history a run on each side),
    # so one run's metric reads fewer than migrate and verify together.
    routes = {name: results["commands"][name]["routes"]["mlflow"] for name in ("migrate", "verify", "migrate --verify")}
    history = "GET /mlflow/v2.0/{ws}/api/2.0/mlflow/metrics/get-history"
    assert (routes["migrate"][history], routes["verify"][history], routes["migrate --verify"][history]) == (38, 76, 76)
    tool = results["whole"]["tool (migrate + verify)"]
    assert tool["wall_s"] == round(results["commands"]["migrate"]["wall_s"] + results["commands"]["verify"]["wall_s"], 1)
    assert [p["nodes"] for p in tool["projection"]] == [1, 8]
