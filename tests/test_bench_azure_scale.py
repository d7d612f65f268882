"""The Azure-shaped bench's counting and projection (bench/bench_azure_scale.py, bench/azure_scale_report.py),
so the bench cannot rot between runs of `make bench`.

Two kinds of check: the arithmetic of the projection and of the counters' deltas on numbers worked by
hand; and the bench itself, run small as `make bench` runs it (its own process, the fake with three
workspaces, production blob URLs through the counting TLS proxy), without latency or buckets so it
takes a minute, asserting that every command's table has routes of every family it must touch.
"""
from __future__ import annotations

import json
import re
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
    before = {"family:mlflow": 10, "throttled:mlflow": 2, "route:mlflow POST /x": 8, "ws:w1 mlflow": 8}
    after = {"family:mlflow": 40, "throttled:mlflow": 7, "route:mlflow POST /x": 20, "route:mlflow GET /y": 13,
             "family:blob": 6, "route:blob HEAD /{account}/{container}/{blob}": 6, "jobs_get": 3,
             "ws:w1 mlflow": 17, "ws:w2 mlflow": 16, "ws:w2 arm": 1, "ws_throttled:w2 mlflow": 5}
    row = report.made(before, after)
    assert row["requests"]["mlflow"] == 25  # 30 sent less 5 answered 429
    assert row["requests"]["blob"] == 6 and row["requests"]["arm"] == 0
    assert row["throttled"] == {"mlflow": 5}
    assert row["routes"] == {"mlflow": {"GET /y": 13, "POST /x": 12}, "blob": {"HEAD /{account}/{container}/{blob}": 6}}
    assert row["workspaces"] == {"w1": {"mlflow": 9}, "w2": {"arm": 1, "mlflow": 16}}  # 9 + 16 = the 25 carried out
    assert row["throttled_workspaces"] == {"w2": {"mlflow": 5}}
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


def test_projection_by_scope_and_the_break_even_rate():
    # Ten jobs; source reads and target writes counted per workspace (ARM's bucket is the subscription's).
    row = {"wall_s": 50.0, "requests": {"arm": 10, "discovery": 0, "history": 20, "artifacts": 0, "mlflow": 100, "blob": 30},
           "workspaces": {"src": {"arm": 4, "history": 12, "mlflow": 40}, "dst": {"arm": 6, "history": 8, "mlflow": 60}}}
    latency_ms = {"arm": 50, "history": 100, "mlflow": 100, "blob": 20}
    buckets = {"arm": (25.0, 250), "history": (20.0, 40), "mlflow": (20.0, 40)}
    one, eight = (report.projection(row, 10, latency_ms, buckets, 8, 100_000, n, scope="workspace") for n in (1, 8))
    # x10,000. Per workspace: MLflow's busiest is dst, (600,000 - 40) / 20 = 29,998 s = 8.33 h; run history's is src,
    # (120,000 - 40) / 20 = 5,998 s = 1.67 h; ARM the subscription's, (100,000 - 250) / 25 = 3,990 s = 1.11 h.
    assert one["throttle_h_by_scope"]["workspace"] == {"arm": 1.11, "history": 1.67, "mlflow": 8.33}
    assert one["busiest_workspace"] == {"arm": "subscription", "history": "src", "mlflow": "dst"}
    # Shared: all of a family's, MLflow (1,000,000 - 40) / 20 = 49,998 s = 13.89 h; run history (200,000 - 40) / 20 = 2.78 h.
    assert one["throttle_h_by_scope"]["shared"] == {"arm": 1.11, "history": 2.78, "mlflow": 13.89}
    # The run's scope decides: max(latency floor 4.55 h / 0.57 h, 8.33 h); the same for any node count.
    assert one["throttle_h"] == one["throttle_h_by_scope"]["workspace"] and one["throttle_family"] == "mlflow"
    assert (one["hours"], eight["hours"], one["throttle_bound_h"]) == (8.33, 8.33, 8.33)
    # Break-even for 1 h: (busiest bucket's requests - burst) / 3,600 s. MLflow per workspace 599,960 / 3,600 = 166.66/s,
    # run history 119,960 / 3,600 = 33.32/s, ARM 99,750 / 3,600 = 27.71/s; one bucket for all: 277.77/s and 55.54/s.
    assert eight["break_even_per_s"] == {"workspace": {"arm": 27.71, "history": 33.32, "mlflow": 166.66},
                                         "shared": {"arm": 27.71, "history": 55.54, "mlflow": 277.77}}
    assert eight["break_even_per_s"] == one["break_even_per_s"]  # the node count moves the latency floor only
    assert (one["latency_fits_goal"], eight["latency_fits_goal"]) == (False, True)  # 4.55 h, 0.57 h against 1 h
    shared = report.projection(row, 10, latency_ms, buckets, 8, 100_000, 8, scope="shared")
    assert (shared["hours"], shared["throttle_bound_h"]) == (13.89, 13.89)
    # A run without buckets still prices its requests: the break-even of the families given.
    unthrottled = report.projection(row, 10, latency_ms, {}, 8, 100_000, 8, priced={"mlflow": (20.0, 40)})
    assert unthrottled["hours"] == 0.57 and unthrottled["break_even_per_s"]["workspace"] == {"mlflow": 166.66}
    # The bench's own workload: latency 13.1 s / 8 = 1.6 s; MLflow per workspace (60 - 40) / 20 = 1 s, shared (100 - 40) / 20 = 3 s.
    assert report.modelled_seconds(row, latency_ms, buckets, 8, "workspace") == 1.6
    assert report.modelled_seconds(row, latency_ms, buckets, 8, "shared") == 3.0
    both = report.combined("tool", [row, {**row, "wall_s": 5.0, "workspaces": {"dst": {"mlflow": 1}}}])
    assert both["workspaces"] == {"src": {"arm": 4, "history": 12, "mlflow": 40}, "dst": {"arm": 6, "history": 8, "mlflow": 61}}
    assert both["wall_s"] == 55.0 and both["requests"]["mlflow"] == 200


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "azure_scale.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_azure_scale.py"), "--jobs", "38", "--files", "2", "--max-kb", "8",
                           "--metrics", "1", "--steps", "5", "--no-latency", "--no-peer", "--checks", "separate", "--estimate-seconds", "0", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_the_backing_stores_look_up_a_runs_history_by_run_whatever_their_size(tmp_path):
    """The bench's stores stand in for Azure's service: a run's history must not cost more as the
    store fills (it did: 16 ms a `get-history` at 100 runs, 52 ms at 2,000)."""
    import sqlite3

    import azure_scale_workload as workload

    workload.plan_as_large(tmp_path / "empty")
    with sqlite3.connect(tmp_path / "empty" / "mlflow.db") as db:
        # The query mlflow's SqlAlchemyStore.get_metric_history sends, in shape.
        plan = db.execute("EXPLAIN QUERY PLAN SELECT * FROM metrics WHERE run_uuid = ? AND key = ?"
                          " ORDER BY timestamp, step, value", ("r1", "loss")).fetchall()
    assert any("index_metrics_run_uuid_key_step (run_uuid=? AND key=?)" in row[-1] for row in plan), plan


def test_the_bench_counts_every_command_by_route(small_bench):
    results, stdout = small_bench
    data = results["data"]
    assert (data["jobs"], data["files"]) == (38, 76)
    assert data["kinds"]["pipeline"] == 2 and data["kinds"]["command step"] > 0 and data["kinds"]["command trial"] == 8
    assert results["summary"]["migrate_failed_0"] and results["summary"]["verify_all_equal"]
    assert results["tool_copied"] == {"runs": 38, "metric_points": 38 * 5, "files": 76}  # read back from the target's stores
    must = {"extract": {"arm", "history", "artifacts", "mlflow", "blob"}, "migrate": {"arm", "history", "artifacts", "mlflow", "blob"},
            "verify": {"arm", "history", "artifacts", "mlflow", "blob"}}
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
    tool = results["whole"]["tool, full checks"]
    assert (tool["checks"], tool["commands"], results["data"]["bucket_scope"]) == ("separate", ["migrate", "verify"], "workspace")
    assert tool["wall_s"] == round(results["commands"]["migrate"]["wall_s"] + results["commands"]["verify"]["wall_s"], 1)
    assert [p["nodes"] for p in tool["projection"]] == [1, 8]


def test_the_bench_counts_each_workspace_and_prices_the_break_even(small_bench):
    results, stdout = small_bench
    commands = results["commands"]
    src, dst = "ws-scale-src", "ws-scale-dst"
    for name, row in commands.items():
        for family in ("history", "artifacts", "mlflow"):  # each of these requests names its workspace
            assert sum(ws.get(family, 0) for ws in row["workspaces"].values()) == row["requests"][family], (name, family)
    assert set(commands["extract"]["workspaces"]) == {src}  # extract reads the source alone
    # migrate reads the source and writes the target; verify reads both; MLflow on each end, per job.
    for name in ("migrate", "verify"):
        assert commands[name]["workspaces"][src]["mlflow"] > 0 and commands[name]["workspaces"][dst]["mlflow"] > 0, name
    assert commands["migrate"]["workspaces"][dst]["mlflow"] > commands["migrate"]["workspaces"][src]["mlflow"]  # writes: create, batches, status
    tool = results["whole"]["tool, full checks"]
    for ws in (src, dst):
        for family in ("mlflow", "history", "artifacts"):
            assert tool["workspaces"][ws].get(family, 0) == sum(commands[n]["workspaces"][ws].get(family, 0) for n in ("migrate", "verify"))
    # No buckets in this run (--no-latency): no throttle bound, and the break-even still priced at the default
    # buckets' bursts (40): (busiest workspace's MLflow requests x 100,000 / 38 - 40) / 3,600 s.
    eight = tool["projection"][-1]
    assert results["buckets"] == {} and eight["throttle_bound_h"] == 0 and eight["hours"] == eight["latency_bound_h"] == 0
    busiest = max(ws.get("mlflow", 0) for ws in tool["workspaces"].values())
    assert eight["break_even_per_s"]["workspace"]["mlflow"] == round((busiest * 100_000 / 38 - 40) / 3600, 2) > 0
    everything = tool["requests"]["mlflow"]
    assert eight["break_even_per_s"]["shared"]["mlflow"] == round((everything * 100_000 / 38 - 40) / 3600, 2)
    assert all("projection" in row for row in commands.values())
    assert "projection: 100,000 jobs from this run's 38" in stdout
    assert "full checks (separate: migrate + verify): " in stdout and "break-even for 1 h on 8 nodes (latency floor " in stdout
    full = stdout[stdout.index("full checks (separate"):]
    per_workspace = next(line for line in full.splitlines() if line.startswith("    per workspace "))
    assert f"mlflow {eight['break_even_per_s']['workspace']['mlflow']}/s" in per_workspace
    assert "requests per job by workspace (source: ws-scale-src, target: ws-scale-dst, peer target: ws-scale-peer)" in stdout


def test_the_bench_checks_inline_with_the_source_read_once(tmp_path):
    """`--checks inline` (the default): one `migrate --verify` is the migration with full checks. Each
    source history is read once (38 runs x 1 key), the target's once by the check: 2 x 38 get-history,
    where migrate + verify read 3 x 38 (the separate fixture above)."""
    out = tmp_path / "azure_scale.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_azure_scale.py"), "--jobs", "38", "--files", "1", "--max-kb", "4",
                           "--metrics", "1", "--steps", "5", "--no-latency", "--no-peer", "--checks", "inline", "--estimate-seconds", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    results = json.loads(out.read_text())
    assert results["summary"]["checks"] == "inline" and results["summary"]["migrate_failed_0"] and results["summary"]["verify_all_equal"]
    assert set(results["commands"]) == {"extract", "migrate --verify"}
    tool = results["whole"]["tool, full checks"]
    assert tool["commands"] == ["migrate --verify"] and results["tool_copied"]["runs"] == 38
    history = "GET /mlflow/v2.0/{ws}/api/2.0/mlflow/metrics/get-history"
    assert results["commands"]["migrate --verify"]["routes"]["mlflow"][history] == 2 * 38
    assert "full checks (inline: migrate --verify): " in done.stdout
    # `replayer estimate` ran first, on the untouched workspaces, and its prediction is set against the wall time.
    estimate = results["estimate"]
    # The bench names its target by its MLflow tracking URI: its workspace's run history is probed too.
    assert estimate["predicted_s"] > 0 and set(estimate["rates"]) == {"source mlflow", "source artifacts", "target mlflow", "target artifacts"}, estimate
    assert results["summary"]["estimate_vs_measured"] == round(estimate["predicted_s"] / tool["wall_s"], 2)
    assert "replayer estimate (before the copy" in done.stdout


def test_the_formula_line_sets_replayer_estimates_formula_against_the_run():
    # 10 jobs of K 5, F 3, 20 log-batch requests (B 2): migrate --verify = 4 + 10 + 2 + 2 + 1 + 9 = 28 a job.
    row = {"requests": {"arm": 1, "history": 2, "mlflow": 170, "artifacts": 30, "blob": 90, "discovery": 0},
           "routes": {"mlflow": {"POST /mlflow/v2.0/{ws}/api/2.0/mlflow/runs/log-batch": 20, "GET /x": 150}}}
    assert report.formula_line(row, jobs=10, files=30, keys=5) == (
        "formula (runner.engine.estimate, K 5, B 2.00, F 3): 28.0 requests a job (MLflow, run history artifacts, blob) against 29.0 carried out")


def test_the_estimates_formula_matches_what_the_bench_carried_out(small_bench):
    """`replayer estimate` projects with runner.engine.estimate.requests_per_job; the bench prints it beside the
    requests it carried out (MLflow, run history artifacts, blob): they must not drift apart. Per experiment and
    per parent a few requests are outside the formula, and children read in their parent's search spare one."""
    _, stdout = small_bench
    line = next(line for line in stdout.splitlines() if line.startswith("migrate: formula (runner.engine.estimate"))
    formula, measured = (float(x) for x in re.search(r": ([\d.]+) requests a job .* against ([\d.]+) carried out", line).groups())
    assert abs(formula - measured) <= 0.1 * measured, line
