"""What one target run can hold, and where the rest goes: `replay/overflow.json` on the run.

AzureML's MLflow endpoint (MicrosoftDocs resource-limits-capacity.md, and the service's
"FieldName=Parameters, Limit=200") caps a run at 50 tags (key 100, value 1,000 characters), 200
params, 50 metric names of at most 1,000,000 rows each and a display name of 256 characters, and
takes at most 250 rows of one metric name per request (its `MetricV2Dto.Value/Count`, one DTO per
metric name: runner/mlflow/batching.py has the evidence and the fallback to 250 rows in all);
every MLflow store caps param and tag values (6000 and 8000 characters). A writer (the direct target, `replayer step`) fits what it writes with these
functions and puts the excess into one JSON artifact on the run, with a `replay.overflow` tag
counting it; verify reads it back (`read`), so nothing is ever dropped silently. A run name cut to
the cap keeps its full value in overflow's tags as `mlflow.runName`.

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

    max_tags: int | None = None  # every tag on the run, the tool's own and mlflow.runName included
    max_metric_keys: int | None = None
    max_param_length: int = 6000
    max_tag_length: int = 8000
    rows_per_metric_per_batch: int = MAX_ENTITIES_PER_BATCH  # rows of any one metric name in one log_batch
    rows_per_batch: int = MAX_ENTITIES_PER_BATCH  # metric rows of all names in one log_batch
    max_params: int | None = None
    max_tag_key: int | None = None  # a longer user tag key cannot be set at all: it goes whole to overflow
    max_name_length: int | None = None  # the run's display name
    max_metric_rows: int | None = None  # points per metric name
    max_experiment_tags: int | None = None  # every tag on the experiment, the tool's own included
    max_experiment_tag_key: int | None = None
    max_experiment_tag_length: int | None = None
    max_description_length: int | None = None  # the experiment's mlflow.note.content


MLFLOW_LIMITS = Limits()
AZUREML_LIMITS = Limits(
    max_tags=50, max_metric_keys=50, rows_per_metric_per_batch=250, max_tag_length=1000,
    max_params=200, max_tag_key=100, max_name_length=256, max_metric_rows=1_000_000,
    max_experiment_tags=50, max_experiment_tag_key=250, max_experiment_tag_length=1000, max_description_length=5000,
)
DESCRIPTION_TAG = "mlflow.note.content"


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
    cut on the run and whole in overflow; a key over the key cap goes whole to overflow."""
    limit, length, key_cap = limits.max_tags, limits.max_tag_length, limits.max_tag_key
    kept, spill = {}, {}
    own = {k: v for k, v in tags.items() if is_own_tag(k) or k in (PARENT_TAG, RUN_NAME_TAG)}
    if RUN_NAME_TAG in own:
        own[RUN_NAME_TAG] = fit_name(limits, own[RUN_NAME_TAG], spill)
    room = None if limit is None else max(limit - len(own) - taken - BOOKKEEPING_TAGS, 0)
    for key in sorted(k for k in tags if k not in own):
        value = tags[key]
        if (room is not None and len(kept) >= room) or (key_cap is not None and len(key) > key_cap):
            spill[key] = value
            continue
        kept[key] = value[:length]
        if len(value) > length:
            spill[key] = value
    return {**own, **kept}, spill


def fit_name(limits: Limits, name: str, spill: dict[str, str]) -> str:
    """The run name the target takes; a longer one is cut, its whole value in overflow's tags."""
    cap = limits.max_name_length
    if cap is None or len(name) <= cap:
        return name
    spill[RUN_NAME_TAG] = name
    return name[:cap]


def fit_params(limits: Limits, params: dict[str, str], overflow: dict) -> dict[str, str]:
    """The first max_params params (name order) cut to the length cap; the full value of each cut
    one and every param past the count go to overflow."""
    length, limit = limits.max_param_length, limits.max_params
    kept = {}
    for key in sorted(params):
        value = params[key]
        if limit is not None and len(kept) >= limit:
            overflow["params"][key] = value
            continue
        kept[key] = value[:length]
        if len(value) > length:
            overflow["params"][key] = value
    return kept


def fit_metrics(limits: Limits, job: JobRecord, points: Iterable[MetricPoint], overflow: dict) -> Iterator[MetricPoint]:
    """Points of the first max_metric_keys keys (name order), up to max_metric_rows each, stream to
    the run; the rest go to overflow."""
    limit, rows = limits.max_metric_keys, limits.max_metric_rows
    allowed = None if limit is None else set(sorted(job.latest_metrics)[:limit])
    sent: dict[str, int] = {}
    for point in points:
        if (allowed is None or point.key in allowed) and (rows is None or sent.get(point.key, 0) < rows):
            sent[point.key] = sent.get(point.key, 0) + 1
            yield point
        else:
            overflow["metrics"].setdefault(point.key, []).append([point.step, point.timestamp, encode_float(point.value)])


def fit_experiment_tags(limits: Limits, tags: dict[str, str], taken: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """(tags the experiment keeps, tags for its overflow), as fit_tags for runs: the tool's own stay,
    user tags fill the room left after `taken` and one tag for the overflow pointer, in name order;
    a cut value (the description has its own cap) stays cut and goes whole to overflow."""
    limit, key_cap = limits.max_experiment_tags, limits.max_experiment_tag_key
    # A source's own pointer (a source that is itself a replay target) names runs of that store: not copied.
    own = {k: v for k, v in tags.items() if is_own_tag(k) and k != OVERFLOW_TAG}
    room = None if limit is None else max(limit - len(own) - taken - 1, 0)
    kept, spill = {}, {}
    # The description first (what people read), then name order.
    for key in sorted((k for k in tags if k not in own and k != OVERFLOW_TAG), key=lambda k: (k != DESCRIPTION_TAG, k)):
        value = tags[key]
        if (room is not None and len(kept) >= room) or (key_cap is not None and len(key) > key_cap):
            spill[key] = value
            continue
        length = limits.max_description_length if key == DESCRIPTION_TAG else limits.max_experiment_tag_length
        kept[key] = value if length is None else value[:length]
        if kept[key] != value:
            spill[key] = value
    return {**own, **kept}, spill


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
