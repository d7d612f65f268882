"""MLflow 3 traces in a manifest (runner.engine.manifest):

    traces.jsonl    one trace per line: {"experiment": name, "trace": Trace.to_dict(), "links": [run ids]}

`trace` is MLflow's own serialization of a trace (its info: id, request time, duration, state,
previews, tags, metadata, assessments; its spans: ids, parents, nanosecond times, attributes,
events, status); `links` are the source runs `link_traces_to_run` tied it to, which only a search
per run shows (its own `mlflow.sourceRun` is in the metadata). Written by extract after the runs,
from a reader that hands it a page of traces at a time; read back by replay and verify through
runner.mlflow.trace_readers.ManifestTraces. The file is plain JSON here: the engine does not know
MLflow's classes. A manifest written before traces has no such file: it holds none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from runner.engine.manifest import ManifestSource

TRACES = "traces.jsonl"


def extract_traces(records: Iterable[dict], folder: Path) -> int:
    """Write trace records (dicts, streamed) into the manifest at `folder`; returns how many."""
    count = 0
    with open(folder / TRACES, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def path_of(source) -> Path | None:
    """The traces file of a manifest source; None for any other source, or a manifest without any."""
    if isinstance(source, ManifestSource) and (source.folder / TRACES).exists():
        return source.folder / TRACES
    return None
