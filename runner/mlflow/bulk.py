"""Metric histories of many runs in a few requests, from an MLflow tracking server.

Reading a history per run and metric key costs one request each: 500 runs with 5 metrics are
2,500 requests, and the source server's per-request work dominates a migration on small runs.
`mlflow server` also serves its UI's bulk route, `GET /ajax-api/2.0/mlflow/metrics/get-history-bulk`
(one metric key, up to 100 run ids, up to 25,000 points, sorted by run id then timestamp, step,
value; no paging). The source asks it once per key for a page of records and keeps the answers
until each run is copied; whatever it cannot cover streams per run as before:

- an answer that hits the 25,000 cap is cut inside its last run: runs before it are complete,
  the rest are asked again; a run that alone fills the cap streams page by page;
- the cache holds at most MAX_POINTS points; past that, runs stream;
- a server without the route (other MLflow-compatible services, proxies) answers an error once
  and the source stops asking.

Only plain http(s) MLflow servers are asked: AzureML's endpoint (azureml://) has no such route.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from loguru import logger

from runner.core.records import MetricPoint

ROUTE = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
CAP = 25_000  # the server's own limit per answer
IDS_PER_CALL = 50  # the route takes 100; 50 ids keep the request line under 4 KiB for any front end
MAX_POINTS = 200_000  # ~40 MB of cached points at most
GENERATIONS = 2  # record pages kept: runs of the previous page may still be in flight


class BulkHistories:
    def __init__(self, client):
        store = client._tracking_client.store
        uri = str(client.tracking_uri)
        self._creds = getattr(store, "get_host_creds", None)
        self.enabled = uri.startswith(("http://", "https://")) and self._creds is not None
        self._pages: OrderedDict[int, dict[tuple[str, str], list[MetricPoint]]] = OrderedDict()
        self._points = 0
        self._lock = threading.Lock()
        self._page_number = 0

    def prefetch(self, runs: dict[str, list[str]]) -> None:
        """Fetch the histories of one page of records: run id -> its metric keys."""
        if not self.enabled or not runs:
            return
        by_key: dict[str, list[str]] = {}
        for run_id, keys in runs.items():
            for key in keys:
                by_key.setdefault(key, []).append(run_id)
        page: dict[tuple[str, str], list[MetricPoint]] = {}
        with self._lock:
            self._page_number += 1
            self._pages[self._page_number] = page
            while len(self._pages) > GENERATIONS:
                _, old = self._pages.popitem(last=False)
                self._points -= sum(len(points) for points in old.values())
        for key in sorted(by_key):
            for start in range(0, len(by_key[key]), IDS_PER_CALL):
                if not self._fetch(key, sorted(by_key[key][start : start + IDS_PER_CALL]), page):
                    return

    def take(self, run_id: str, key: str) -> list[MetricPoint] | None:
        """The run's whole history of `key` if it was fetched; each history is handed out once."""
        with self._lock:
            for page in self._pages.values():
                points = page.pop((run_id, key), None)
                if points is not None:
                    self._points -= len(points)
                    return points
        return None

    def _fetch(self, key: str, run_ids: list[str], page: dict) -> bool:
        """Fill `page` for these runs; False when the cache is full or the route is missing."""
        while run_ids:
            if self._points >= MAX_POINTS:
                return False
            answer = self._call(key, run_ids)
            if answer is None:
                return False
            got: dict[str, list[MetricPoint]] = {run_id: [] for run_id in run_ids}
            for m in answer:
                got.setdefault(m["run_id"], []).append(
                    MetricPoint(m["key"], float(m["value"]), int(m["timestamp"]), int(m.get("step") or 0))
                )
            cut = answer[-1]["run_id"] if len(answer) >= CAP else None
            complete = [r for r in run_ids if cut is None or r < cut]
            with self._lock:
                for run_id in complete:
                    page[(run_id, key)] = got[run_id]
                    self._points += len(got[run_id])
            if cut is None:
                return True
            if cut == run_ids[0]:  # one run fills the cap alone: it streams page by page
                run_ids = run_ids[1:]
            else:
                run_ids = [r for r in run_ids if r >= cut]
        return True

    def _call(self, key: str, run_ids: list[str]) -> list[dict] | None:
        from mlflow.utils.rest_utils import http_request

        try:
            response = http_request(
                self._creds(), ROUTE, "GET", params={"run_id": run_ids, "metric_key": key, "max_results": CAP}
            )
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")
            return response.json().get("metrics", [])
        except Exception as error:  # noqa: BLE001 - any failure: fall back to per-run reads for good
            logger.debug("bulk metric history unavailable ({}); reading histories run by run", type(error).__name__)
            self.enabled = False
            return None
