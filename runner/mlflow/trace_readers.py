"""Where traces are read from: a live MLflow store (LiveTraces) or a manifest (ManifestTraces),
through one interface, so the copy (runner.mlflow.traces) and verify (runner.mlflow.traces_check)
do not tell them apart:

    infos(experiment)                          trace infos (no spans) of one experiment, in the window
    full(infos)                                trace id -> Trace with its spans, for infos it gave
    run_links(experiments, run_ids, parallel)  trace id -> runs of `run_ids` linked to it by link_traces_to_run

--since / --until narrow traces by their request time, as they narrow runs by their start time
(since inclusive, until exclusive). A manifest holds what its extract's window took; replay's and
verify's own window narrows it further.
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.core.errors import ManifestError
from runner.core.filters import Filters
from runner.engine import manifest_traces
from runner.mlflow.traces import PAGE, full, readable, run_links, source_infos, tracing


def reader_for(source):
    """The source's trace reader: a manifest's, a live MLflow store's, or None (no traces there)."""
    path = manifest_traces.path_of(source)
    if path is not None:
        return ManifestTraces(path, window(source))
    return LiveTraces(source.client, window(source)) if readable(source) else None


def window(source) -> Filters:
    """The source's filters, whose --since / --until (Filters.in_window) narrow its traces."""
    return getattr(source, "filters", None) or Filters()


class LiveTraces:
    """The traces of a live MLflow store."""

    def __init__(self, client, window: Filters | None = None):
        self.client, self.window = client, window or Filters()
        self._store = None

    def infos(self, experiment):
        return (info for info in source_infos(self.client, experiment.source_id) if self.window.in_window(info.request_time))

    def full(self, found: list) -> dict:
        if self._store is None:
            self._store = tracing(self.client)
        return full(self._store, found)

    def run_links(self, experiments, run_ids, parallel: int) -> dict[str, set[str]]:
        return run_links(self.client, [e.source_id for e in experiments], run_ids, parallel)

    def records(self, experiments, run_ids, parallel: int):
        """Extract's lines (runner.engine.manifest_traces): each trace of these experiments with its
        spans and the runs of `run_ids` linked to it, a page of traces in memory at a time."""
        with_traces = [e for e in experiments if next(self.infos(e), None) is not None]
        links = self.run_links(with_traces, run_ids, parallel) if with_traces else {}
        for experiment in with_traces:
            page: list = []
            for info in self.infos(experiment):
                page.append(info)
                if len(page) == PAGE:
                    yield from self._lines(experiment, page, links)
                    page = []
            yield from self._lines(experiment, page, links)

    def _lines(self, experiment, page: list, links: dict) -> list[dict]:
        traces = self.full(page) if page else {}
        return [{"experiment": experiment.name, "trace": traces[info.trace_id].to_dict(),
                 "links": sorted(links.get(info.trace_id, ()))} for info in page]


class ManifestTraces:
    """The traces a manifest holds. Only ids and line offsets are kept between calls: a page of
    full traces is read back from its lines when asked."""

    def __init__(self, path: Path, window: Filters | None = None):
        self.path, self.window = path, window or Filters()
        self._at: dict[str, int] = {}  # trace id -> offset of its line

    def lines(self):
        """(offset, record) per line; a damaged line is a ManifestError naming file and line."""
        with open(self.path, "rb") as handle:
            number = 0
            while True:
                offset, raw = handle.tell(), handle.readline()
                if not raw:
                    return
                number += 1
                yield offset, self.parse(raw, number)

    def parse(self, raw: bytes, number: int) -> dict:
        try:
            if not raw.endswith(b"\n"):
                raise ValueError("last line is cut off (truncated file)")
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("trace"), dict):
                raise ValueError("expected a JSON object with a trace")
            return data
        except (UnicodeDecodeError, ValueError) as error:
            raise ManifestError(f"{self.path}:{number}: bad trace record: {error}; re-run `replayer extract`") from None

    def infos(self, experiment):
        from mlflow.entities import TraceInfo

        for offset, data in self.lines():
            if data.get("experiment") != experiment.name:
                continue
            info = TraceInfo.from_dict(data["trace"]["info"])
            if self.window.in_window(info.request_time):
                self._at[info.trace_id] = offset
                yield info

    def full(self, found: list) -> dict:
        from mlflow.entities import Trace, TraceData

        out = {}
        with open(self.path, "rb") as handle:
            for info in found:
                handle.seek(self._at[info.trace_id])
                data = self.parse(handle.readline(), 0)
                out[info.trace_id] = Trace(info, TraceData.from_dict(data["trace"]["data"]))
        return out

    def run_links(self, experiments, run_ids, parallel: int) -> dict[str, set[str]]:
        names = {e.name for e in experiments}
        out: dict[str, set[str]] = {}
        for _, data in self.lines():
            linked = {r for r in data.get("links") or () if r in run_ids}
            if linked and data.get("experiment") in names:
                out[data["trace"]["info"]["trace_id"]] = linked
        return out
