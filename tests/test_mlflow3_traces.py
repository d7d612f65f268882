"""MLflow 3 traces copied with the runs (real servers): ids, spans, info, tags, metadata,
assessments and links equal, remapped to the copies; a rerun skips; a kill -9 in the middle
resumes; verify names a changed span or tag; a target without the trace API is warned about once;
traces travel through a manifest (extract, replay, verify, a killed replay resumed); --since
narrows them by request time.

Read back with MlflowClient directly, field by field against the source's.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource, SpanEvent, SpanStatusCode

from conftest import run_cli, run_killed_after
from test_mlflow3_models import copies as model_copies
from test_mlflow3_models import replayed_run

sys.path.insert(0, str(Path(__file__).parent / "fakes"))
from fault_proxy import FaultProxy  # noqa: E402

TRACE_ROUTES = ("/api/3.0/mlflow/traces", "/api/3.0/mlflow/traces/search", "/api/2.0/mlflow/traces", "/v1/traces")
SERVER_TAGS = ("mlflow.artifactLocation", "mlflow.trace.spansLocation")


@pytest.fixture(scope="module", autouse=True)
def synchronous_traces():
    """The fluent API logs a trace in the background by default: seeding must be written when it returns."""
    before = os.environ.get("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING")
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    yield
    if before is None:
        os.environ.pop("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING")
    else:
        os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = before


def seed(uri: str, name: str) -> dict:
    """Three traces: nested spans (attributes, an event, an error status) inside a run; one of an
    external logged model; one rated (feedback and expectation), tagged, linked to a second run."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(name)
    mlflow.set_experiment(experiment_id=experiment_id)
    with mlflow.start_run(run_name="agent-run") as run:
        with mlflow.start_span("agent", span_type="CHAIN") as root:
            root.set_inputs({"question": "λ?"})
            root.set_attributes({"temperature": 0.2, "ks": [1, 2]})
            with mlflow.start_span("retrieve", span_type="RETRIEVER") as middle:
                with mlflow.start_span("llm", span_type="LLM") as leaf:
                    leaf.add_event(SpanEvent("token", attributes={"n": 3}))
                    leaf.set_outputs("answer ✓")
                middle.set_status(SpanStatusCode.ERROR)
            root.set_outputs({"answer": "yes"})
        in_run = mlflow.get_last_active_trace_id()
    model = mlflow.create_external_model(name="support-agent")
    mlflow.set_active_model(model_id=model.model_id)
    with mlflow.start_span("answer") as span:
        span.set_inputs("x")
        span.set_outputs("y")
    of_model = mlflow.get_last_active_trace_id()
    mlflow.clear_active_model()
    with mlflow.start_span("rated") as span:
        span.set_inputs("how?")
        mlflow.update_current_trace(tags={"team": "a", "note": "λ ✓"}, metadata={"release": "7"})
    rated = mlflow.get_last_active_trace_id()
    mlflow.log_feedback(trace_id=rated, name="helpful", value=True, source=AssessmentSource("HUMAN", "bob"), rationale="fine")
    mlflow.log_expectation(trace_id=rated, name="expected", value={"answer": "yes"})
    with mlflow.start_run(run_name="judge") as judge:
        pass
    client.link_traces_to_run([rated], judge.info.run_id)
    return {"in_run": in_run, "of_model": of_model, "rated": rated, "run": run.info.run_id, "judge": judge.info.run_id,
            "model": model.model_id, "experiment": experiment_id}


def plain_traces(uri: str, name: str, count: int) -> list[str]:
    """`count` two-span traces in a new experiment without runs."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=MlflowClient(uri).create_experiment(name))
    ids = []
    for n in range(count):
        with mlflow.start_span(f"step-{n}") as root:
            root.set_inputs({"n": n})
            with mlflow.start_span("inner") as inner:
                inner.set_attribute("n", n)
        ids.append(mlflow.get_last_active_trace_id())
    return ids


def target_traces(client: MlflowClient, name: str) -> dict:
    experiment = client.get_experiment_by_name(name)
    return {t.info.trace_id: t for t in client.search_traces(locations=[experiment.experiment_id], max_results=500)}


def linked(client: MlflowClient, run_id: str) -> list[str]:
    experiment = client.get_run(run_id).info.experiment_id
    return [t.info.trace_id for t in client.search_traces(locations=[experiment], filter_string=f"attribute.run_id = '{run_id}'",
                                                          include_spans=False)]


@pytest.fixture(scope="module")
def migrated(servers, tmp_path_factory):
    import uuid

    source, target = servers
    name = f"traces-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("traces")
    ids = seed(source.uri, name)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    dry = run_cli("migrate", *args, "--dry-run", cwd=work)
    result = run_cli("migrate", *args, cwd=work)
    assert result.returncode == 0, result.stderr
    return {"ids": ids, "args": args, "work": work, "src": MlflowClient(source.uri), "dst": MlflowClient(target.uri),
            "name": name, "result": result, "dry": dry}


def test_every_trace_is_copied_with_its_ids_spans_and_links(migrated):
    src, dst, ids, name = migrated["src"], migrated["dst"], migrated["ids"], migrated["name"]
    assert "traces: would copy 3, complete 0, skip 0" in migrated["dry"].stderr
    assert "traces: copied 3, completed 0, skipped 0, failed 0" in migrated["result"].stderr
    found = target_traces(dst, name)
    assert set(found) == {ids["in_run"], ids["of_model"], ids["rated"]}
    workspace = f"ws-{name}"
    run, judge = replayed_run(dst, workspace, ids["run"]).info.run_id, replayed_run(dst, workspace, ids["judge"]).info.run_id
    model = model_copies(dst, name)[ids["model"]].model_id
    for trace_id, copy in found.items():
        source = src.get_trace(trace_id)
        want, have = source.info, copy.info
        assert [s.to_dict() for s in copy.data.spans] == [s.to_dict() for s in source.data.spans]
        for field in ("request_time", "execution_duration", "state", "request_preview", "response_preview", "client_request_id"):
            assert getattr(have, field) == getattr(want, field), field
        assert {k: v for k, v in have.tags.items() if k not in SERVER_TAGS and not k.startswith(("original_", "replay."))} == \
            {k: v for k, v in want.tags.items() if k not in SERVER_TAGS}
        assert have.tags["original_workspace"] == workspace and have.tags["replay.complete"]
        expected = {**want.trace_metadata, **{k: v for k, v in (("mlflow.sourceRun", run), ("mlflow.modelId", model))
                                               if k in want.trace_metadata}}
        assert dict(have.trace_metadata) == expected
        assert [a.to_dictionary() for a in have.assessments] == [a.to_dictionary() for a in want.assessments]
    spans = {s.name: s for s in found[ids["in_run"]].data.spans}
    assert spans["llm"].parent_id == spans["retrieve"].span_id and spans["retrieve"].parent_id == spans["agent"].span_id
    assert [e.name for e in spans["llm"].events] == ["token"] and spans["retrieve"].status.status_code == "ERROR"
    assert found[ids["in_run"]].info.trace_metadata["mlflow.sourceRun"] == run != ids["run"]
    assert found[ids["of_model"]].info.trace_metadata["mlflow.modelId"] == model != ids["model"]
    assert len(found[ids["rated"]].info.assessments) == 2 and found[ids["rated"]].info.tags["team"] == "a"
    assert linked(dst, judge) == [ids["rated"]] and linked(dst, run) == [ids["in_run"]]


def test_a_rerun_creates_nothing_and_verify_is_clean(migrated):
    again = run_cli("migrate", *migrated["args"], cwd=migrated["work"])
    assert again.returncode == 0, again.stderr
    assert "traces: copied 0, completed 0, skipped 3, failed 0" in again.stderr
    assert len(target_traces(migrated["dst"], migrated["name"])) == 3
    check = run_cli("verify", *migrated["args"], cwd=migrated["work"])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "3 traces compared" in check.stdout


def test_a_source_trace_rated_since_is_brought_up_to_date(migrated):
    src, dst, rated = migrated["src"], migrated["dst"], migrated["ids"]["rated"]
    mlflow.set_tracking_uri(src.tracking_uri)
    mlflow.log_feedback(trace_id=rated, name="late", value=0.5, source=AssessmentSource("LLM_JUDGE", "judge-1"))
    again = run_cli("migrate", *migrated["args"], cwd=migrated["work"])
    assert again.returncode == 0, again.stderr
    assert "traces: copied 0, completed 1, skipped 2, failed 0" in again.stderr
    assert [a.to_dictionary() for a in dst.get_trace(rated).info.assessments] == \
        [a.to_dictionary() for a in src.get_trace(rated).info.assessments]
    check = run_cli("verify", *migrated["args"], cwd=migrated["work"])
    assert check.returncode == 0, check.stdout + check.stderr


def test_verify_names_a_changed_span_and_tag(migrated, tmp_path):
    """Last of the module's tests on `migrated`: it changes the target's copies."""
    from mlflow.entities import Span
    from mlflow.tracing.client import TracingClient

    dst, ids = migrated["dst"], migrated["ids"]
    dst.set_trace_tag(ids["rated"], "team", "b")
    trace = dst.get_trace(ids["in_run"])
    leaf = next(s for s in trace.data.spans if s.name == "llm")
    changed = leaf.to_dict()
    changed["name"] = "llm-renamed"
    TracingClient(dst.tracking_uri).store.log_spans(trace.info.experiment_id, [Span.from_dict(changed)])
    report = tmp_path / "report.json"
    check = run_cli("verify", *migrated["args"], "--report", str(report), cwd=migrated["work"])
    assert check.returncode == 1, check.stdout + check.stderr
    found = {(d["job"], d["field"]) for d in json.loads(report.read_text())["differences"]}
    assert found == {(ids["rated"], "trace:tags"), (ids["in_run"], f"trace:span:{leaf.span_id}:name")}
    assert "llm-renamed" in check.stdout


# The migration is killed right after the target answered its 2nd start_trace (the write that
# completes a copy): the traces after it have their spans (logged a page at a time) but no info,
# no lineage tag and no completion mark.
START_TRACE = "mlflow.store.tracking.rest_store:RestStore.start_trace"


def test_a_kill_9_between_traces_resumes_without_duplicates(servers, tmp_path, unique):
    source, target = servers
    name = f"traces-killed-{unique}"
    ids = plain_traces(source.uri, name, 5)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}", "--parallel", "1"]
    run_killed_after(START_TRACE, 2, "migrate", *args, cwd=tmp_path)
    dst = MlflowClient(target.uri)
    partial = target_traces(dst, name)
    assert sorted(partial) == sorted(ids) and sum("replay.complete" in t.info.tags for t in partial.values()) == 2
    dry = run_cli("migrate", *args, "--dry-run", cwd=tmp_path)
    assert "traces: would copy 3, complete 0, skip 2" in dry.stderr, dry.stderr
    again = run_cli("migrate", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "traces: copied 3, completed 0, skipped 2, failed 0" in again.stderr
    found = target_traces(dst, name)
    assert sorted(found) == sorted(ids) and all("replay.complete" in t.info.tags for t in found.values())
    src = MlflowClient(source.uri)
    assert all([s.to_dict() for s in found[i].data.spans] == [s.to_dict() for s in src.get_trace(i).data.spans] for i in ids)
    check = run_cli("verify", *args, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_target_without_traces_warns_once_and_copies_the_runs(servers, tmp_path, unique):
    source, target = servers
    name = f"traces-refused-{unique}"
    ids = seed(source.uri, name)
    with FaultProxy(target.uri, rate=0, refuse=TRACE_ROUTES) as proxy:
        args = ["--source", source.uri, "--target", proxy.uri, "--experiments", name, "--workspace", f"ws-{name}"]
        result = run_cli("migrate", *args, cwd=tmp_path)
        check = run_cli("verify", *args, cwd=tmp_path)
        skipped = run_cli("verify", *args, "--skip-traces", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("has no trace API") == 1
    assert "NOT copied, the target has no API for them: 3 traces" in result.stderr
    assert "replay.complete" in replayed_run(MlflowClient(target.uri), f"ws-{name}", ids["judge"]).data.tags
    assert check.returncode == 1 and "the target has no trace API" in check.stdout, check.stdout
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr


def test_skip_traces_leaves_them_out_of_migrate_and_verify(servers, tmp_path, unique):
    source, target = servers
    name = f"traces-skipped-{unique}"
    ids = plain_traces(source.uri, name, 1)
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    result = run_cli("migrate", *args, "--skip-traces", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "traces:" not in result.stderr and target_traces(MlflowClient(target.uri), name) == {}
    assert run_cli("verify", *args, "--skip-traces", cwd=tmp_path).returncode == 0
    check = run_cli("verify", *args, cwd=tmp_path)
    assert check.returncode == 1 and ids[0] in check.stdout, check.stdout


def file_trace(uri: str, experiment_id: str, template) -> str:
    """A copy of trace `template` under a new id whose spans sit in a file of the trace's artifact
    folder, as MLflow servers before 3.4 keep them (no span rows): only a per-trace read finds them."""
    import base64
    import uuid

    from mlflow.entities import Span, TraceData, TraceLocation
    from mlflow.tracing.client import TracingClient

    otel = uuid.uuid4().hex
    trace_id = f"tr-{otel}"
    spans = []
    for span in template.data.spans:
        d = span.to_dict()
        d["trace_id"] = base64.b64encode(bytes.fromhex(otel)).decode()
        d["attributes"]["mlflow.traceRequestId"] = json.dumps(trace_id)
        spans.append(Span.from_dict(d))
    info = template.info
    info = type(info)(trace_id=trace_id, trace_location=TraceLocation.from_experiment_id(experiment_id),
                      request_time=info.request_time, state=info.state, execution_duration=info.execution_duration,
                      request_preview=info.request_preview, trace_metadata={"kept": "as a file"}, tags={"kind": "file"})
    tracing = TracingClient(uri)
    written = tracing.store.start_trace(info)
    tracing._upload_trace_data(written, TraceData(spans=spans))
    return trace_id


def test_a_trace_kept_as_a_file_is_copied_with_its_spans(servers, tmp_path, unique):
    source, target = servers
    name = f"traces-file-{unique}"
    template = MlflowClient(source.uri).get_trace(plain_traces(source.uri, name, 1)[0])
    src = MlflowClient(source.uri)
    trace_id = file_trace(source.uri, src.get_experiment_by_name(name).experiment_id, template)
    assert "mlflow.trace.spansLocation" not in src.get_trace(trace_id).info.tags and len(src.get_trace(trace_id).data.spans) == 2
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    result = run_cli("migrate", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "traces: copied 2, completed 0, skipped 0, failed 0" in result.stderr
    copy = MlflowClient(target.uri).get_trace(trace_id)
    assert [s.to_dict() for s in copy.data.spans] == [s.to_dict() for s in src.get_trace(trace_id).data.spans]
    assert copy.info.tags["kind"] == "file" and copy.info.trace_metadata["kept"] == "as a file"
    check = run_cli("verify", *args, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_traces_travel_through_a_manifest(servers, tmp_path, unique):
    """extract writes every trace (spans, info, links) into traces.jsonl; replay copies them as
    migrate does; verify from the manifest and from the live source are clean; a second replay
    skips all."""
    source, target = servers
    name = f"traces-manifest-{unique}"
    ids = seed(source.uri, name)
    manifest = tmp_path / "manifest"
    select = ["--experiments", name, "--workspace", f"ws-{name}"]
    extracted = run_cli("extract", "--source", source.uri, "--out", str(manifest), *select, cwd=tmp_path)
    assert extracted.returncode == 0, extracted.stderr
    assert json.loads((manifest / "manifest.json").read_text())["counts"]["traces"] == 3
    lines = {r["trace"]["info"]["trace_id"]: r for r in map(json.loads, (manifest / "traces.jsonl").read_text().splitlines())}
    assert set(lines) == {ids["in_run"], ids["of_model"], ids["rated"]}
    assert lines[ids["rated"]]["links"] == [ids["judge"]] and len(lines[ids["in_run"]]["trace"]["data"]["spans"]) == 3
    replayed = run_cli("replay", "--manifest", str(manifest), "--target", target.uri, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert "traces: copied 3, completed 0, skipped 0, failed 0" in replayed.stderr
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    found = target_traces(dst, name)
    assert set(found) == set(lines)
    for trace_id, copy in found.items():
        want = src.get_trace(trace_id)
        assert [s.to_dict() for s in copy.data.spans] == [s.to_dict() for s in want.data.spans]
        assert [a.to_dictionary() for a in copy.info.assessments] == [a.to_dictionary() for a in want.info.assessments]
        assert copy.info.request_time == want.info.request_time and copy.info.tags["replay.complete"]
    workspace = f"ws-{name}"
    run, judge = replayed_run(dst, workspace, ids["run"]).info.run_id, replayed_run(dst, workspace, ids["judge"]).info.run_id
    assert found[ids["in_run"]].info.trace_metadata["mlflow.sourceRun"] == run != ids["run"]
    assert found[ids["of_model"]].info.trace_metadata["mlflow.modelId"] == model_copies(dst, name)[ids["model"]].model_id
    assert linked(dst, judge) == [ids["rated"]]
    for origin in (str(manifest), source.uri):
        check = run_cli("verify", "--source", origin, "--target", target.uri, *select, cwd=tmp_path)
        assert check.returncode == 0, origin + check.stdout + check.stderr
        assert "3 traces compared" in check.stdout
    again = run_cli("replay", "--manifest", str(manifest), "--target", target.uri, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "traces: copied 0, completed 0, skipped 3, failed 0" in again.stderr
    assert len(target_traces(dst, name)) == 3


def test_skip_traces_on_extract_leaves_them_out_of_the_manifest(servers, tmp_path, unique):
    source, _ = servers
    name = f"traces-extract-skipped-{unique}"
    plain_traces(source.uri, name, 1)
    manifest = tmp_path / "manifest"
    result = run_cli("extract", "--source", source.uri, "--out", str(manifest), "--experiments", name, "--skip-traces", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (manifest / "traces.jsonl").exists() and "traces" not in json.loads((manifest / "manifest.json").read_text())["counts"]


def old_and_new_traces(uri: str, name: str) -> tuple[str, str]:
    """One trace whose request time is 2020-06-01 (its root span started then) and one of now."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=MlflowClient(uri).create_experiment(name))
    start = 1_590_969_600_000_000_000  # 2020-06-01T00:00:00Z in ns
    old = mlflow.start_span_no_context("old", start_time_ns=start, inputs={"n": 0})
    old.end(end_time_ns=start + 5_000_000)
    with mlflow.start_span("new") as span:
        span.set_inputs({"n": 1})
    return old.trace_id, mlflow.get_last_active_trace_id()


def test_since_leaves_an_older_trace_out_of_migrate_extract_and_verify(servers, tmp_path, unique):
    """--since narrows traces by request time in the dry run, migrate, verify and extract; verify
    without the window names the trace left out."""
    source, target = servers
    name = f"traces-since-{unique}"
    old, new = old_and_new_traces(source.uri, name)
    assert MlflowClient(source.uri).get_trace(old).info.request_time == 1_590_969_600_000
    args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}"]
    window = ["--since", "2021-01-01"]
    dry = run_cli("migrate", *args, *window, "--dry-run", cwd=tmp_path)
    assert "traces: would copy 1, complete 0, skip 0" in dry.stderr, dry.stderr
    result = run_cli("migrate", *args, *window, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "traces: copied 1, completed 0, skipped 0, failed 0" in result.stderr
    assert set(target_traces(MlflowClient(target.uri), name)) == {new}
    check = run_cli("verify", *args, *window, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 traces compared" in check.stdout
    before = run_cli("verify", *args, "--until", "2021-01-01", cwd=tmp_path)
    assert before.returncode == 1 and old in before.stdout and new not in before.stdout, before.stdout
    manifest = tmp_path / "manifest"
    planned = run_cli("extract", "--source", source.uri, "--out", str(manifest), "--experiments", name, *window, "--dry-run",
                      cwd=tmp_path)
    assert "would extract 0 runs and 1 traces" in planned.stdout, planned.stdout + planned.stderr
    extracted = run_cli("extract", "--source", source.uri, "--out", str(manifest), "--experiments", name, *window, cwd=tmp_path)
    assert extracted.returncode == 0, extracted.stderr
    assert [json.loads(line)["trace"]["info"]["trace_id"] for line in (manifest / "traces.jsonl").read_text().splitlines()] == [new]


def test_a_replay_from_a_manifest_killed_between_traces_resumes(servers, tmp_path, unique):
    source, target = servers
    name = f"traces-manifest-killed-{unique}"
    ids = plain_traces(source.uri, name, 5)
    manifest = tmp_path / "manifest"
    extracted = run_cli("extract", "--source", source.uri, "--out", str(manifest), "--experiments", name, cwd=tmp_path)
    assert extracted.returncode == 0, extracted.stderr
    args = ["--manifest", str(manifest), "--target", target.uri, "--parallel", "1"]
    run_killed_after(START_TRACE, 2, "replay", *args, cwd=tmp_path)
    dst = MlflowClient(target.uri)
    assert sum("replay.complete" in t.info.tags for t in target_traces(dst, name).values()) == 2
    again = run_cli("replay", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "traces: copied 3, completed 0, skipped 2, failed 0" in again.stderr
    found = target_traces(dst, name)
    assert sorted(found) == sorted(ids) and all("replay.complete" in t.info.tags for t in found.values())
    check = run_cli("verify", "--source", str(manifest), "--target", target.uri, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
