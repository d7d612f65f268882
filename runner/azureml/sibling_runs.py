"""The MLflow runs of a parent's children in one search, not one `runs/get` each.

A job's params, tags and latest metrics come from the workspace's MLflow view of it. Asked per job
that is one request each; on Azure each costs tens of milliseconds and takes a token from MLflow's
bucket. A pipeline's steps and a sweep's trials share a parent, and the MLflow view of a child
carries `mlflow.parentRunId` (MLflow's convention for nested runs; Microsoft's "Get child (nested)
runs" in how-to-track-experiments-mlflow.md queries Azure ML's pipeline and sweep children by this
very filter), a tag equality Azure ML's run search takes (it refuses attribute filters, LIKE and OR: DESIGN.md). So the first child read of a
parent asks one page of `tags.mlflow.parentRunId = 'P'` and keeps the runs of the children the
plan holds; each is handed out once and dropped, so what is kept is at most one page (1,000 runs)
per parent in flight. A child the page did not bring (more than a page of children, a service
that tags none or refuses the search) is read alone, as before: the answer is the same either way.
"""
from __future__ import annotations

import threading
from typing import Callable

from loguru import logger

PAGE = 1000  # one search page: a parent with more children reads the rest one by one


def planned_children(plan) -> dict[str, set[str]]:
    """parent -> the names of its children in the plan, for parents with two or more (one search pays)."""
    children: dict[str, set[str]] = {}
    for node in plan:
        if node.depth and node.parent:
            children.setdefault(node.parent, set()).add(node.name)
    return {parent: names for parent, names in children.items() if len(names) > 1 and "'" not in parent}


class SiblingRuns:
    def __init__(self, client, experiment_id: Callable[[str], str | None], planned: dict[str, set[str]]):
        """`experiment_id(name)`: an experiment's MLflow id (None: unknown, its jobs read alone);
        `planned`: planned_children of the plan."""
        self.client, self.experiment_id, self.planned = client, experiment_id, planned
        self._runs: dict[str, dict] = {}  # parent -> child name -> its MLflow run, until handed out
        self._lock = threading.Lock()
        self._parent_locks: dict[str, threading.Lock] = {}

    def take(self, parent: str | None, experiment: str, name: str):
        """The child's MLflow run from its parent's search (None: not there, read it alone)."""
        with self._lock:
            if parent not in self.planned and parent not in self._parent_locks:  # a lock: searched or being searched
                return None
            lock = self._parent_locks.setdefault(parent, threading.Lock())
        with lock:
            with self._lock:
                wanted = self.planned.pop(parent, None)
            if wanted is not None:  # the first child asks for all of them
                runs = self._search(parent, experiment)
                with self._lock:
                    self._runs[parent] = {run_id: run for run_id, run in runs.items() if run_id in wanted}
        with self._lock:
            found = self._runs.get(parent)
            run = found.pop(name, None) if found is not None else None
            if found is not None and not found:
                del self._runs[parent]
                self._parent_locks.pop(parent, None)
            return run

    def _search(self, parent: str, experiment: str) -> dict:
        from mlflow.entities import ViewType
        from mlflow.exceptions import MlflowException

        experiment_id = self.experiment_id(experiment)
        if experiment_id is None:
            return {}
        try:
            page = self.client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'", ViewType.ALL, max_results=PAGE)
        except MlflowException as error:  # a refused search: each child is read alone
            logger.debug("searching the children of {} failed ({}); reading them one by one", parent, error)
            return {}
        return {run.info.run_id: run for run in page}
