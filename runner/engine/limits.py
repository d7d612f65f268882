"""What one target run can hold, and where the rest goes: `replay/overflow.json` on the run.

AzureML's MLflow endpoint caps a run at 50 tags and 50 metric names and takes at most 250 metric
rows per request; every MLflow store caps param and tag values (6000 and 8000 characters). A
writer (the direct target, `replayer step`) fits what it writes with these functions and puts the
excess into one JSON artifact on the run, with a `replay.overflow` tag counting it; verify reads
it back (`read`), so nothing is ever dropped silently.

overflow.json: {"tags": {name: value}, "params": {name: full value}, "metrics": {key: [[step, timestamp, value], ...]}}
(a param or tag cut to the cap keeps its full value there; values encoded as in the manifest).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from runner.engine.ledger import PARENT_TAG, RUN_NAME_TAG, is_own_tag
from runner.core.records import JobRecord, MetricPoint, encode_float

OVERFLOW_PATH = "replay/overflow.json"  # what a run could not hold, as a run artifact
OVERFLOW_TAG = "replay.overflow"
MAX_ENTITIES_PER_BATCH = 1000  # MLflow's log_batch limit
BOOKKEEPING_TAGS = 2  # room always left for replay.complete and replay.overflow


@dataclass(frozen=True)
class Limits:
    """What one target run can hold. Whatever exceeds it goes to replay/overflow.json."""

    max_tags: int | None = None  # every tag on the run, the tool's own included
    max_metric_keys: int | None = None
    max_param_length: int = 6000
    max_tag_length: int = 8000
    batch_rows: int = MAX_ENTITIES_PER_BATCH


MLFLOW_LIMITS = Limits()
# AzureML's MLflow endpoint: 50 tags and 50 metric names per run, 250 metric rows per request.
AZUREML_LIMITS = Limits(max_tags=50, max_metric_keys=50, batch_rows=250)


def limits_for(uri: str, max_tags=None, max_metric_keys=None) -> Limits:
    """The caps of a tracking URI's kind, with --max-tags / --max-metric-keys over them."""
    base = AZUREML_LIMITS if uri.startswith("azureml://") else MLFLOW_LIMITS
    return replace(
        base,
        max_tags=int(max_tags) if max_tags else base.max_tags,
        max_metric_keys=int(max_metric_keys) if max_metric_keys else base.max_metric_keys,
    )


def new_overflow(tags: dict[str, str] | None = None) -> dict:
    return {"tags": dict(tags or {}), "params": {}, "metrics": {}}


def fit_tags(limits: Limits, tags: dict[str, str], taken: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """(tags the run keeps, tags for overflow). The tool's own tags always stay; user tags fill
    what is left, in name order, after `taken` (tags already on the run that the writer does not
    own) and room for replay.complete and replay.overflow. A value cut to the length cap is kept
    cut on the run and whole in overflow."""
    limit, length = limits.max_tags, limits.max_tag_length
    kept, spill = {}, {}
    own = {k: v for k, v in tags.items() if is_own_tag(k) or k in (PARENT_TAG, RUN_NAME_TAG)}
    room = None if limit is None else max(limit - len(own) - taken - BOOKKEEPING_TAGS, 0)
    for key in sorted(k for k in tags if k not in own):
        value = tags[key]
        if room is not None and len(kept) >= room:
            spill[key] = value
            continue
        kept[key] = value[:length]
        if len(value) > length:
            spill[key] = value
    return {**own, **kept}, spill


def fit_params(limits: Limits, params: dict[str, str], overflow: dict) -> dict[str, str]:
    """Params cut to the length cap; the full value of each cut one goes to overflow."""
    length = limits.max_param_length
    for key, value in params.items():
        if len(value) > length:
            overflow["params"][key] = value
    return {k: v[:length] for k, v in params.items()}


def fit_metrics(limits: Limits, job: JobRecord, points: Iterable[MetricPoint], overflow: dict) -> Iterator[MetricPoint]:
    """Points of the first max_metric_keys keys (name order) stream to the run; the rest to overflow."""
    limit = limits.max_metric_keys
    allowed = None if limit is None else set(sorted(job.latest_metrics)[:limit])
    for point in points:
        if allowed is None or point.key in allowed:
            yield point
        else:
            overflow["metrics"].setdefault(point.key, []).append([point.step, point.timestamp, encode_float(point.value)])


def write(client, run_id: str, overflow: dict, scratch: Path) -> dict[str, int]:
    """replay/overflow.json on the run and the count tag; returns the counts ({} when nothing spilled).

    Rewritten whole each time, so a retried or repaired run ends with the same file."""
    counts = {kind: len(items) for kind, items in overflow.items() if items}
    if not counts:
        return counts
    folder = Path(tempfile.mkdtemp(dir=scratch))
    path = folder / PurePosixPath(OVERFLOW_PATH).name
    path.write_text(json.dumps(overflow, ensure_ascii=False), encoding="utf-8")
    client.log_artifact(run_id, str(path), str(PurePosixPath(OVERFLOW_PATH).parent))
    client.set_tag(run_id, OVERFLOW_TAG, json.dumps(counts, sort_keys=True))
    return counts


def read(client, run_id: str, scratch: Path) -> dict:
    """A run's overflow.json (verify merges it back into what the run holds)."""
    import shutil

    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        return json.loads(Path(client.download_artifacts(run_id, OVERFLOW_PATH, str(folder))).read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
