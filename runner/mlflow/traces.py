"""MLflow 3 traces of the selected experiments, copied after the runs and logged models (direct target).

Each source trace keeps its trace id in the target: its spans go through the server's OTLP route
(`log_spans`, the path MLflow's own exporter takes), which derives the id from the spans' OpenTelemetry
trace id as the source's server did, and keeps span ids, parents, times, attributes, events and status
byte for byte; then `start_trace` writes the trace's info with the original request time, duration,
state, previews, tags, metadata and assessments (with their ids). Links are remapped to the copies:
`mlflow.sourceRun` (and an assessment's source run) to the replayed run, `mlflow.modelId` to the
logged model's copy (runner.mlflow.logged_models.find_copy); a run linked with `link_traces_to_run`
is linked to its replayed run. What has no copy in the target keeps the source's id.

The info carries `replay.complete` (a fingerprint of the source trace) and is written last, after
the spans (logged a page of traces per request) and the run links. A trace id is unique, so a copy
can never be made twice; one an interrupted migration left without that tag (spans only), or whose
source changed since (a new assessment, a tag), is written again: every write is an upsert.
"""
from __future__ import annotations

import copy
import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from loguru import logger

from runner.core.errors import ReplayerError
from runner.engine.ledger import COMPLETE, ORIGINAL_WORKSPACE, is_own_tag
from runner.mlflow.logged_models import find_copy
from runner.mlflow.uris import is_azureml_endpoint, missing_route

PAGE = 100
SPANS_PER_REQUEST = 500  # spans of several traces in one OTLP request, a few MB at most
SOURCE_RUN = "mlflow.sourceRun"
MODEL_ID = "mlflow.modelId"
ASSESSMENT_RUN = "mlflow.assessment.sourceRunId"
SPANS_LOCATION = "mlflow.trace.spansLocation"
# Tags each server writes for itself (where it keeps the spans and the trace's files): never copied or compared.
SERVER_TAGS = ("mlflow.artifactLocation", SPANS_LOCATION, "mlflow.trace.archiveLocation",
               "mlflow.trace.archivalFailure")


@dataclass
class TracesSummary:
    copied: int = 0
    completed: int = 0  # copies an interrupted migration (or a changed source trace) left unfinished, finished now
    skipped: int = 0
    left_out: int = 0  # the target has no trace API
    failures: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        return f"traces: copied {self.copied}, completed {self.completed}, skipped {self.skipped}, failed {len(self.failures)}"


def readable(source) -> bool:
    """An MLflow source whose store may hold traces. Azure ML's MLflow endpoint is left out: no
    answer of it to the trace routes is recorded (tests/recordings), so none is assumed."""
    client = getattr(source, "client", None)
    return hasattr(client, "search_traces") and not is_azureml_endpoint(client)


def no_api(error: Exception, client=None) -> bool:
    """The store has no trace route: ENDPOINT_NOT_FOUND, a bare 404, or a server MLflow's client
    knows to be too old for span logging (before 3.4: NotImplementedError). Azure ML's MLflow
    endpoint answers its trace routes 403 (Azure/azure-sdk-for-python#40261: "not supported in AML
    yet") to the very token that writes its runs: on an azureml:// store that is no route either."""
    if missing_route(error) or isinstance(error, NotImplementedError) or "error code 404" in str(error):
        return True
    return client is not None and is_azureml_endpoint(client) and getattr(error, "error_code", "") == "PERMISSION_DENIED"


def tracing(client):
    """MlflowClient's trace store (start_trace, log_spans, batch_get_traces: not on MlflowClient itself)."""
    from mlflow.tracing.client import TracingClient

    return TracingClient(client.tracking_uri)


def infos(client, experiment_id: str | list[str], filter_string: str | None = None):
    """Every trace info (no spans) of one experiment (or several), a page at a time."""
    token = None
    locations = [experiment_id] if isinstance(experiment_id, str) else list(experiment_id)
    while True:
        page = client.search_traces(locations=locations, filter_string=filter_string, max_results=PAGE,
                                    page_token=token, include_spans=False)
        yield from (trace.info for trace in page)
        token = page.token
        if not token:
            return


def source_infos(client, experiment_id: str):
    """A source experiment's traces; none where the store has no trace route (MLflow before 3)."""
    try:
        yield from infos(client, experiment_id)
    except Exception as error:  # noqa: BLE001 - only a missing route means "none here"
        if not no_api(error):
            raise
        logger.debug("source has no trace API: {}", error)


def full(store, found: list) -> dict:
    """trace id -> Trace with its spans, for trace infos `found` of one store."""
    from mlflow.entities import Trace

    if not found:
        return {}
    # A batch get answers spans kept in the database only (others come back empty): the rest,
    # kept as files or archived, one by one through MLflow's client, which reads them where they are.
    in_db = [i.trace_id for i in found if i.tags.get(SPANS_LOCATION) == "TRACKING_STORE"]
    by_id = {t.info.trace_id: t for t in store.store.batch_get_traces(in_db)} if in_db else {}
    out = {}
    for info in found:
        data = by_id[info.trace_id].data if info.trace_id in by_id else store.get_trace(info.trace_id).data
        out[info.trace_id] = Trace(info, data)
    return out


def copy_infos(client, experiment_id: str, workspace: str) -> dict:
    """trace id -> info of each copy from `workspace` in a target experiment."""
    query = f"tags.{ORIGINAL_WORKSPACE} = '{workspace}'"
    return {info.trace_id: info for info in infos(client, experiment_id, query)}


def copies(client, experiment_id: str, workspace: str) -> dict[str, str]:
    """trace id -> its `replay.complete` fingerprint ("" if unfinished), for copies from `workspace`."""
    return {trace_id: info.tags.get(COMPLETE, "") for trace_id, info in copy_infos(client, experiment_id, workspace).items()}


def run_links(client, experiment_ids: list[str], run_ids, parallel: int) -> dict[str, set[str]]:
    """trace id -> runs it is linked to by `link_traces_to_run` (not by its own `mlflow.sourceRun`).
    MLflow answers these only per run (search by run id), so one search per run; none for a store
    whose experiments hold no trace (the caller checks)."""

    def linked(run_id: str) -> list[tuple[str, str]]:
        query = f"attribute.run_id = '{run_id}'"
        found = list(infos(client, experiment_ids, query)) if experiment_ids else []
        return [(i.trace_id, run_id) for i in found if i.trace_metadata.get(SOURCE_RUN) != run_id]

    out: dict[str, set[str]] = {}
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        for pairs in pool.map(linked, list(run_ids)):
            for trace_id, run_id in pairs:
                out.setdefault(trace_id, set()).add(run_id)
    return out


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k not in SERVER_TAGS and not is_own_tag(k)}


def fingerprint(info, links: set[str]) -> str:
    """What a copy must be redone for: the source trace's info (its spans do not change once logged)."""
    facts = {**info.to_dict(), "tags": user_tags(info.tags), "trace_location": None, "links": sorted(links)}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Remap:
    """Source run and logged-model ids -> their copies' ids in the target (the source's id where none)."""

    def __init__(self, target_client, ledger, workspace: str):
        self.client, self.ledger, self.workspace = target_client, ledger, workspace
        self._models: dict[tuple[str, str], str] = {}

    def run(self, run_id: str | None) -> str | None:
        found = self.ledger.find(run_id) if run_id else None
        return found.run_id if found else run_id

    def model(self, model_id: str | None, experiment_id: str) -> str | None:
        if not model_id:
            return model_id
        key = (model_id, experiment_id)
        if key not in self._models:
            try:
                found = find_copy(self.client, experiment_id, model_id, self.workspace)
            except Exception as error:  # noqa: BLE001 - a target without logged models holds no copy
                if not no_api(error, self.client):
                    raise
                found = None
            self._models[key] = found.model_id if found else model_id
        return self._models[key]

    def metadata(self, metadata: dict[str, str], experiment_id: str) -> dict[str, str]:
        out = dict(metadata)
        if out.get(SOURCE_RUN):
            out[SOURCE_RUN] = self.run(out[SOURCE_RUN])
        if out.get(MODEL_ID):
            out[MODEL_ID] = self.model(out[MODEL_ID], experiment_id)
        return out

    def assessment(self, assessment):
        out = copy.deepcopy(assessment)
        if (out.metadata or {}).get(ASSESSMENT_RUN):
            out.metadata[ASSESSMENT_RUN] = self.run(out.metadata[ASSESSMENT_RUN])
        if out.run_id:
            out.run_id = self.run(out.run_id)
        return out


def target_info(info, experiment_id: str, remap: Remap, workspace: str, mark: str | None):
    """The source trace's info as its copy in target experiment `experiment_id` carries it."""
    from mlflow.entities import TraceLocation

    tags = {**user_tags(info.tags), ORIGINAL_WORKSPACE: workspace, **({COMPLETE: mark} if mark else {})}
    return replace(info, trace_location=TraceLocation.from_experiment_id(experiment_id), tags=tags,
                   trace_metadata=remap.metadata(info.trace_metadata, experiment_id),
                   assessments=[remap.assessment(a) for a in info.assessments or []])


def otel_id(trace) -> bool:
    """Whether the trace id is the one a server derives from its spans (MLflow 3 traces: `tr-` +
    the OpenTelemetry trace id); only then does logging its spans keep the id."""
    spans = trace.data.spans
    return not spans or all(trace.info.trace_id == f"tr-{span._trace_id}" for span in spans)


class TraceCopier:
    """Copies what `reader` (runner.mlflow.trace_readers: a live store's or a manifest's) gives."""

    def __init__(self, source, target, mapping, reader, parallel: int = 8):
        self.source, self.target, self.mapping, self.parallel = source, target, mapping, parallel
        self.reader, self.client = reader, target.client
        self.workspace = source.workspace
        self.summary = TracesSummary()
        self._refused = False
        self._lock = threading.Lock()

    def prepare(self) -> list:
        """The selected experiments that hold traces, and what copying them needs: the replayed
        runs (for the links) and the run links only a search per run shows."""
        with_traces = [e for e in self.source.experiments() if next(self.reader.infos(e), None) is not None]
        if with_traces:
            ledger = self.target.ledger(self.workspace)
            self.links = self.reader.run_links(with_traces, ledger.runs, self.parallel)
            self.remap = Remap(self.client, ledger, self.workspace)
        return with_traces

    def plan(self) -> TracesSummary:
        """Dry run: what a real run would copy, complete and skip; nothing is written."""
        for experiment in self.prepare():
            found = self.client.get_experiment_by_name(self.mapping.target_experiment(experiment).name) if self.client else None
            done = copies(self.client, found.experiment_id, self.workspace) if found else {}
            for _, _, action in self.decide(self.reader.infos(experiment), done):
                setattr(self.summary, action, getattr(self.summary, action) + 1)
        return self.summary

    def run(self) -> TracesSummary:
        with_traces = self.prepare()
        self.writer = tracing(self.client)
        for experiment in with_traces:
            try:
                self.experiment(experiment)
            except Exception as error:  # noqa: BLE001 - one experiment's listing costs its traces only
                if no_api(error, self.client):
                    self.refused(sum(1 for _ in self.reader.infos(experiment)))
                    continue
                logger.error("failed copying the traces of experiment {}: {}", experiment.name, error)
                self.summary.failures.append((f"experiment {experiment.name}", str(error)))
        if self.summary.copied or self.summary.completed or self.summary.failures:
            logger.info(self.summary.line())
        return self.summary

    def refused(self, count: int) -> None:
        """The target has no trace route: said once; those traces are counted as left out."""
        with self._lock:
            if not self._refused:
                why = ("Azure ML's MLflow endpoint does not implement them" if is_azureml_endpoint(self.client)
                       else "an MLflow server before 3.4, or an endpoint without traces")
                logger.warning("target {} has no trace API ({}): traces are not copied; runs are", self.client.tracking_uri, why)
            self._refused = True
            self.summary.left_out += count

    def experiment(self, experiment) -> None:
        if self._refused:  # asked once: a target without the route has none for the next experiment either
            raise NotImplementedError("no trace API")
        experiment_id = self.target.ensure_experiment(self.mapping.target_experiment(experiment))
        done = copies(self.client, experiment_id, self.workspace)
        page = []
        for info, mark, action in self.decide(self.reader.infos(experiment), done):
            if action == "skipped":
                self.summary.skipped += 1
                continue
            page.append((info, mark, action))
            if len(page) == PAGE:
                self.page(page, experiment_id)
                page = []
        self.page(page, experiment_id)

    def decide(self, found, done: dict[str, str]):
        """(info, fingerprint, copied|completed|skipped) per source trace: the one decision of a dry
        run and a real one. A copy without the source's fingerprint is unfinished or out of date."""
        for info in found:
            mark = fingerprint(info, self.links.get(info.trace_id, set()))
            action = "copied" if info.trace_id not in done else "skipped" if done[info.trace_id] == mark else "completed"
            yield info, mark, action

    def page(self, page: list, experiment_id: str) -> None:
        if not page:
            return
        traces = self.reader.full([info for info, _, _ in page])
        logged = self.log_spans(experiment_id, [traces[info.trace_id] for info, _, _ in page])
        with ThreadPoolExecutor(max(1, self.parallel), thread_name_prefix="traces") as pool:
            for info, mark, action in page:
                pool.submit(self.each, traces[info.trace_id], experiment_id, mark, action, logged)

    def log_spans(self, experiment_id: str, traces: list) -> bool:
        """The spans of a page of traces in few requests (the OTLP route takes many traces at once);
        False where that failed: each trace then logs its own, so a failure is named per trace."""
        ready = [t for t in traces if otel_id(t)]
        try:
            for chunk in chunks(ready):
                self.writer.store.log_spans(experiment_id, [span for trace in chunk for span in trace.data.spans])
        except Exception as error:  # noqa: BLE001 - retried trace by trace, where the error is told
            logger.debug("logging the spans of {} traces at once failed: {}", len(ready), error)
            return False
        return True

    def each(self, trace, experiment_id: str, mark: str, action: str, logged: bool) -> None:
        trace_id = trace.info.trace_id
        if self._refused:
            self.refused(1)
            return
        try:
            self.write(trace, experiment_id, mark, logged)
        except Exception as error:  # noqa: BLE001 - one trace's failure must not stop the others
            if no_api(error, self.client):
                self.refused(1)
                return
            logger.opt(exception=error).debug("trace {} failed", trace_id)
            logger.error("failed trace {}: {}", trace_id, error)
            with self._lock:
                self.summary.failures.append((f"trace {trace_id}", str(error)))
            return
        with self._lock:
            setattr(self.summary, action, getattr(self.summary, action) + 1)

    def write(self, trace, experiment_id: str, mark: str, logged: bool) -> None:
        """Spans, links, then the info carrying the completion mark: the last write, and an upsert
        like the others, so a rerun after any of them only finishes the copy. A trace without
        spans has no row before its info: there the mark is set after the links."""
        trace_id = trace.info.trace_id
        if not otel_id(trace):
            raise ReplayerError(f"trace {trace_id}: its id is not its spans' OpenTelemetry id (an MLflow 2 trace?); "
                                "copying those is not supported yet")
        spans = trace.data.spans
        if spans and not logged:
            self.writer.store.log_spans(experiment_id, spans)
        if spans:
            self.link(trace_id)
        written = self.writer.store.start_trace(target_info(trace.info, experiment_id, self.remap, self.workspace,
                                                            mark if spans else None))
        if written.trace_id != trace_id:
            raise ReplayerError(f"the target gave trace {trace_id} a new id {written.trace_id}")
        if not spans:
            self.link(trace_id)
            self.client.set_trace_tag(trace_id, COMPLETE, mark)

    def link(self, trace_id: str) -> None:
        for run_id in sorted(self.links.get(trace_id, ())):
            self.client.link_traces_to_run([trace_id], self.remap.run(run_id))


def chunks(traces: list):
    """Traces in groups of at most SPANS_PER_REQUEST spans (a bigger trace goes alone)."""
    group, size = [], 0
    for trace in traces:
        if group and size + len(trace.data.spans) > SPANS_PER_REQUEST:
            yield group
            group, size = [], 0
        group.append(trace)
        size += len(trace.data.spans)
    if group:
        yield group
