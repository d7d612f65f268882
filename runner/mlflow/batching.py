"""log_batch requests within a target's caps, and the fallback when Azure ML counts its 250 rows otherwise.

The caps of one log_batch request:
- MLflow's own (mlflow.utils.validation MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH,
  MAX_ENTITIES_PER_BATCH): 1000 metric rows, 100 params, 100 tags, 1000 entities in all.
- Azure ML's MLflow endpoint: 250 rows of any ONE metric name (`Limits.rows_per_metric_per_batch`).
  The one real refusal on record, mlflow/mlflow#11462 (comment of 2024-06-17), is a log_batch of
  one metric's history refused with "FieldName=MetricV2Dto.Value/Count, Limit=250, Size=699": the
  field counted is the values of one MetricV2Dto, and a MetricV2Dto is one metric name with its
  values (azureml-core's metrics client handles "MetricV2Dto.Value/Count ... exceeds the limit"
  beside the per-DTO MetricV2Dto.Name/Length and MetricV2Dto.Columns/Count). So five names of 200
  points are one request, one name of 1000 points four.

The docs (MicrosoftDocs/azure-docs, articles/machine-learning/resource-limits-capacity.md: "Metric
rows per batch uploaded: 250") also read as 250 rows in all. A target that refuses a batch of more
than 250 rows in all with that field (`is_rows_refusal`) switches for good to that reading
(`RowCaps.fall_back`: one warning, thread-safe) and the refused batch goes again, split. The
refusal is the service's 400 ValidationError, given before anything is written (the fake behaves
so); should a real one ever have written part of it, verify would report the doubled points.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Iterable, Iterator

from loguru import logger

from runner.engine.limits import MAX_ENTITIES_PER_BATCH, Limits
from runner.core.records import MetricPoint

MAX_PARAMS_TAGS_PER_BATCH = 100  # MLflow's log_batch limit on params, and on tags
ROWS_FIELD = "MetricV2Dto.Value/Count"  # the field Azure ML names when a batch holds too many rows


def batches(params: dict[str, str], tags: dict[str, str], points: Iterable[MetricPoint],
            rows_per_metric: int = MAX_ENTITIES_PER_BATCH, rows_total: int = MAX_ENTITIES_PER_BATCH):
    """log_batch payloads (metrics, params, tags) within the caps above, streaming the points.

    Params and tags go first (at most 100 per request), the points filling the last of those
    requests: a request is sent when it holds 1000 entities (`rows_total` metric rows, if lower)
    or when the name being read reaches `rows_per_metric` rows in it. Sources yield one name's
    history at a time, so a request holds at most one request's points: memory stays bounded.
    Params and tags ride beside the rows: Azure ML caps metric rows, not entities.
    """
    from mlflow.entities import Param, RunTag

    keyed = [Param(k, v) for k, v in params.items()] + [RunTag(k, v) for k, v in tags.items()]
    head = [keyed[i : i + MAX_PARAMS_TAGS_PER_BATCH] for i in range(0, len(keyed), MAX_PARAMS_TAGS_PER_BATCH)]
    stream, carried = iter(points), []
    while True:
        small = head.pop(0) if head else []
        metrics = []
        if not head:  # the points fill the last request of params and tags, then their own
            room = min(rows_total, MAX_ENTITIES_PER_BATCH - len(small))
            metrics, carried = fill(stream, carried, room, rows_per_metric)
        if not small and not metrics:
            return
        yield (
            metrics,
            [e for e in small if isinstance(e, Param)],
            [e for e in small if isinstance(e, RunTag)],
        )


def fill(stream: Iterator[MetricPoint], carried: list[MetricPoint], room: int, rows_per_metric: int):
    """(up to `room` Metrics for one request, the point read that must open the next request)."""
    from mlflow.entities import Metric

    taken, per_name = [], Counter()
    while len(taken) < room:
        point = carried.pop() if carried else next(stream, None)
        if point is None:
            break
        if per_name[point.key] >= rows_per_metric:
            return taken, [point]
        per_name[point.key] += 1
        taken.append(Metric(point.key, point.value, point.timestamp, point.step))
    return taken, carried


def is_rows_refusal(error: Exception) -> bool:
    """Azure ML's refusal of a batch's metric rows: HTTP 400 INVALID_PARAMETER_VALUE, "A field of the
    entity is over the size limit. FieldName=MetricV2Dto.Value/Count, ..." (mlflow/mlflow#11462)."""
    text = str(error)
    return (getattr(error, "error_code", None) == "INVALID_PARAMETER_VALUE"
            and "over the size limit" in text and ROWS_FIELD in text)


class RowCaps:
    """A target's metric-row caps per log_batch, and which reading of Azure ML's 250 it follows."""

    def __init__(self, limits: Limits, label: str):
        self.per_metric, self.total = limits.rows_per_metric_per_batch, limits.rows_per_batch
        self.label = label  # names the target in the one warning (no secrets: a redacted URI)
        self._lock = threading.Lock()

    def batches(self, params: dict[str, str], tags: dict[str, str], points: Iterable[MetricPoint]):
        return batches(params, tags, points, self.per_metric, self.total)

    def fall_back(self) -> bool:
        """Switch to rows_per_metric rows per request in all; False if already there (nothing looser to leave)."""
        with self._lock:
            if self.total <= self.per_metric:
                return False
            self.total = self.per_metric
        logger.warning(
            "{} refused a log_batch of more than {} metric rows ({}): it counts Azure ML's documented "
            "\"250 metric rows per batch\" across metric names, not per name; from now on {} rows per request in all",
            self.label, self.per_metric, ROWS_FIELD, self.per_metric,
        )
        return True

    def send(self, client, run_id: str, metrics: list, params: list, tags: list) -> int:
        """One log_batch (split when it holds more rows than the current reading allows); metric rows written.

        A batch refused for its rows while holding more than rows_per_metric in all switches this
        target to the total reading and is sent again, split; every other refusal is raised."""
        if len(metrics) > self.total:
            return self._send_split(client, run_id, metrics, params, tags)
        try:
            client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        except Exception as error:
            looser = len(metrics) > self.per_metric
            # Another thread may have switched while this batch was in flight: split it then too.
            if not (looser and is_rows_refusal(error) and (self.fall_back() or self.total <= self.per_metric)):
                raise
            return self._send_split(client, run_id, metrics, params, tags)
        return len(metrics)

    def _send_split(self, client, run_id: str, metrics: list, params: list, tags: list) -> int:
        """Chunks of `total` rows: the params with the first, the tags with the last (a completion
        tag riding on a batch stays the last write)."""
        size = self.total
        chunks = [metrics[i : i + size] for i in range(0, len(metrics), size)]
        for index, chunk in enumerate(chunks):
            first, last = index == 0, index == len(chunks) - 1
            client.log_batch(run_id, metrics=chunk, params=params if first else [], tags=tags if last else [])
        return len(metrics)
