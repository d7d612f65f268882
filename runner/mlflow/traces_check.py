"""Verify's trace part: every trace of the selected experiments against its copy (runner.mlflow.traces).

Per trace: presence and completion, its info (state, request time, duration, previews, client
request id), user tags, metadata (run and logged-model links mapped to the copies), assessments,
the runs it is linked to, and each span by id (name, parent, times, status, attributes, events,
links). Copies of this source that the source no longer has are named too. One row per difference.
"""
from __future__ import annotations

import json

from runner.core.records import Experiment
from runner.engine.ledger import COMPLETE
from runner.engine.verify import Difference, show
from runner.mlflow.trace_readers import reader_for
from runner.mlflow.traces import PAGE, Remap, copy_infos, fingerprint, full, infos, no_api, run_links, tracing, user_tags

INFO_FIELDS = ("state", "request_time", "execution_duration", "request_preview", "response_preview", "client_request_id")


def compare_traces(source, target, ledger, mapping, parallel: int = 8) -> tuple[int, list[Difference]]:
    """(source traces compared, differences); nothing from a source without traces."""
    reader = reader_for(source)
    if reader is None:
        return 0, []
    with_traces = [e for e in source.experiments() if next(reader.infos(e), None) is not None]
    if not with_traces:
        return 0, []
    client = target.client
    pairs = [(e, client.get_experiment_by_name(mapping.target_experiment(e).name)) for e in with_traces]
    checker = TraceCheck(source, reader, client, ledger, parallel)
    try:
        checker.links_of([e for e, _ in pairs], [found.experiment_id for _, found in pairs if found])
    except Exception as error:  # noqa: BLE001 - a target without the trace routes: one row, not one per trace
        if not no_api(error, client):
            raise
        total = sum(1 for e in with_traces for _ in reader.infos(e))
        return total, [Difference("", "", "traces", f"{total} traces",
                                  "left out: the target has no trace API (verify --skip-traces leaves them out)")]
    for experiment, found in pairs:
        checker.experiment(experiment, found.experiment_id if found else None)
    return checker.compared, checker.out


class TraceCheck:
    def __init__(self, source, reader, client, ledger, parallel: int):
        self.reader, self.client, self.ledger = reader, client, ledger
        self.workspace, self.parallel = source.workspace, parallel
        self.remap = Remap(client, ledger, self.workspace)
        self.compared, self.out = 0, []

    def links_of(self, source_experiments: list[Experiment], target_experiments: list[str]) -> None:
        """Runs linked to traces by `link_traces_to_run`, on both sides: one search per run."""
        self.source_links = self.reader.run_links(source_experiments, self.ledger.runs, self.parallel)
        target_runs = [run.run_id for run in self.ledger.runs.values()]
        if target_experiments:  # asked even without runs: a target without the trace routes says so here
            next(infos(self.client, target_experiments[0]), None)
        self.target_links = run_links(self.client, target_experiments, target_runs, self.parallel)

    def experiment(self, experiment: Experiment, experiment_id: str | None) -> None:
        done = self.copies(experiment_id)
        seen: set[str] = set()
        page: list = []
        for info in self.reader.infos(experiment):
            seen.add(info.trace_id)
            page.append(info)
            if len(page) == PAGE:
                self.page(page, experiment_id, done)
                page = []
        self.page(page, experiment_id, done)
        for trace_id in sorted(set(done) - seen):
            self.out.append(Difference(trace_id, experiment.name, "trace:target_only", "", trace_id))

    def copies(self, experiment_id: str | None) -> dict:
        """This source's copies in the target experiment, in the source's window (--since/--until:
        a copy outside it is not this selection's, so not "target only")."""
        found = copy_infos(self.client, experiment_id, self.workspace) if experiment_id else {}
        return {i: info for i, info in found.items() if self.reader.window.in_window(info.request_time)}

    def page(self, page: list, experiment_id: str | None, done: dict) -> None:
        if not page:
            return
        self.compared += len(page)
        here = [info for info in page if info.trace_id in done]
        theirs = self.reader.full(here)
        mine = full(tracing(self.client), [done[info.trace_id] for info in here])
        for info in page:
            name = info.tags.get("mlflow.traceName", "")
            if info.trace_id not in done:
                self.out.append(Difference(info.trace_id, name, "trace", "present", "missing"))
                continue
            links = self.source_links.get(info.trace_id, set())
            if done[info.trace_id].tags.get(COMPLETE) != fingerprint(info, links):
                self.out.append(Difference(info.trace_id, name, "trace", "complete", "incomplete or out of date (rerun migrate)"))
            rows = self.differences(theirs[info.trace_id], mine[info.trace_id], links, experiment_id)
            self.out += [Difference(info.trace_id, name, f"trace:{what}", show(a), show(b)) for what, a, b in rows]

    def differences(self, trace, copy, links: set[str], experiment_id: str) -> list[tuple[str, object, object]]:
        want, have = trace.info, copy.info
        pairs = [(what, getattr(want, what), getattr(have, what)) for what in INFO_FIELDS]
        pairs += [
            ("tags", user_tags(want.tags), user_tags(have.tags)),
            ("metadata", self.remap.metadata(want.trace_metadata, experiment_id), dict(have.trace_metadata)),
            ("assessments", assessments(self.remap.assessment(a) for a in want.assessments or []), assessments(have.assessments or [])),
            ("links", sorted(self.remap.run(r) for r in links), sorted(self.target_links.get(have.trace_id, set()))),
        ]
        rows = [(what, a, b) for what, a, b in pairs if a != b]
        return rows + span_differences(trace.data.spans, copy.data.spans)


def assessments(found) -> list[dict]:
    return sorted((a.to_dictionary() for a in found), key=lambda d: d.get("assessment_id", ""))


def span_differences(want: list, have: list) -> list[tuple[str, object, object]]:
    """One row per span missing, extra or differing (by span id: every field of its dict form)."""
    theirs = {s.span_id: s.to_dict() for s in want}
    mine = {s.span_id: s.to_dict() for s in have}
    rows = []
    for span_id in sorted(set(theirs) | set(mine)):
        a, b = theirs.get(span_id), mine.get(span_id)
        if a is None or b is None:
            rows.append((f"span:{span_id}", "present" if a else "absent", "present" if b else "absent"))
            continue
        rows += [(f"span:{span_id}:{key}", a.get(key), b.get(key)) for key in sorted(set(a) | set(b))
                 if json.dumps(a.get(key), sort_keys=True, default=str) != json.dumps(b.get(key), sort_keys=True, default=str)]
    return rows

