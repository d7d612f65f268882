"""Read run history from any MLflow tracking store (a server, sqlite, an embedded folder).

Listing is two passes so memory stays small: first a skeleton of every run (id, parent, name,
start, status) to pick roots and order parents before children, then full records fetched in
pages of ids while the engine consumes them.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from runner.mlflow import uris
from runner.core.errors import UsageError
from runner.core.filters import Filters, spread
from runner.core.records import ArtifactRef, Experiment, JobRecord, MetricPoint
from runner.mlflow import model_inputs, run_inputs
from runner.mlflow.bulk import BulkHistories

PAGE = 1000  # runs per search page
FETCH = 100  # run ids per `run_id IN (...)` query
PARENT_TAG = "mlflow.parentRunId"
ARTIFACT_URIS = 4096  # artifact roots remembered from the search pages (runs in flight are far fewer)


@dataclass
class Node:
    run_id: str
    parent_id: str | None
    experiment_id: str
    name: str
    start_time: int | None
    status: str
    depth: int = 0
    root_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)  # only the keys --tags asks about


class MlflowSource:
    def __init__(self, uri: str, filters: Filters, workspace: str | None = None):
        self.uri = uri
        self.filters = filters
        self.client = uris.open_client(uri, create=False)
        self.workspace = workspace or uris.workspace_name(uri)
        self._experiments: list[Experiment] | None = None
        self._plan: list[Node] | None = None
        self.window = None  # runner.mlflow.sync_state.Window: an incremental sync reads only that
        self.passed: list[list[Node]] = []  # trees read but not taken by the filters (runner.mlflow.sync_state)
        self._artifact_uris: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._histories = BulkHistories(self.client)
        self._model_inputs = model_inputs.SourceInputs(self.client)
        self.reads_model_inputs = True  # False with --skip-logged-models: no get_run per run for them
        # Azure ML's MLflow endpoint takes no attribute filters (start time, run id) in run searches:
        # there the window and the fetch by id are done here, never sent (DESIGN.md).
        self._attribute_filters = not uris.is_azureml_endpoint(self.client)

    def describe(self) -> dict:
        found = {"kind": "mlflow", "uri": uris.redact(self.uri), "workspace": self.workspace}
        if self.window is not None and self.window.since is not None:  # an incremental sync read a window, not everything
            found["window"] = {"since": self.window.since, "open": len(self.window.open)}
        return found

    def experiments(self) -> list[Experiment]:
        if self._experiments is None:
            self._experiments = self._list_experiments()
        return self._experiments

    def _list_experiments(self) -> list[Experiment]:
        with uris.refusals_named(self.uri):  # the first request of a migration: a refused credential shows here
            chosen = list_experiments(self.client, self.filters, uris.redact(self.uri))
        return sorted(chosen, key=lambda e: int(e.source_id) if e.source_id.isdigit() else 0)

    # -- the run tree ---------------------------------------------------------------------

    def plan(self) -> list[Node]:
        """Every selected run, parents first; computed once."""
        if self._plan is None:
            self._plan = self._build_plan()
        return self._plan

    def _build_plan(self) -> list[Node]:
        nodes = {node.run_id: node for node in self._skeleton()}
        children: dict[str, list[Node]] = {}
        roots = []
        for node in nodes.values():
            if node.parent_id and node.parent_id in nodes:
                children.setdefault(node.parent_id, []).append(node)
            else:
                roots.append(node)  # a run whose parent is not selected stands as a root
        order_key = lambda n: (n.start_time or 0, n.run_id)  # noqa: E731
        roots.sort(key=order_key)
        ordered: list[Node] = []
        taken = 0
        f = self.filters
        keep = lambda n, depth: f.within_depth(depth) and not f.excludes(n.run_id, n.name)  # noqa: E731
        for root in roots:
            tree = list(walk(root, children, order_key, keep))
            if (self.filters.limit and taken >= self.filters.limit) or not self._wants_tree(root, tree):
                self.passed.append(tree)
                continue
            ordered += tree
            taken += 1
        return ordered

    def _wants_tree(self, root: Node, tree: list[Node]) -> bool:
        f = self.filters
        if not f.in_shard(root.run_id) or not f.wants_root(root.start_time, root.status):
            return False
        if not f.wants_tags(root.tags) or f.excludes(root.run_id, root.name):
            return False
        # --include names a root or any run inside its tree; the whole tree comes along.
        return any(f.named(n.run_id, n.name) for n in tree)

    def _skeleton(self) -> Iterator[Node]:
        wanted = self.filters.tags
        windowed = self.window is not None and self.window.since is not None
        for run in self._windowed(self.window) if windowed else self._search(""):
            tags = run.data.tags
            yield Node(
                run_id=run.info.run_id,
                parent_id=run.data.tags.get(PARENT_TAG),
                experiment_id=run.info.experiment_id,
                name=run.info.run_name or "",
                start_time=run.info.start_time,
                status=run.info.status,
                tags={k: tags[k] for k in wanted if k in tags},
            )

    def _windowed(self, window) -> list:
        """An incremental sync's runs (runner.mlflow.sync_state): started since the window opened (the
        store filters), the open ones by id, and the ancestors of both, so each tree keeps its root."""
        found = {run.info.run_id: run for run in self._started_since(int(window.since))}
        wanted, tried = set(window.open) - set(found), set(found)
        while wanted:
            tried |= wanted
            found.update((run.info.run_id, run) for run in self._by_ids(sorted(wanted)))
            wanted = {run.data.tags.get(PARENT_TAG) for run in found.values()} - tried - {None}
        return list(found.values())

    def _started_since(self, since: int):
        if self._attribute_filters:
            yield from self._search(f"attributes.start_time >= {since}")
            return
        yield from (run for run in self._search("") if (run.info.start_time or 0) >= since)

    def _by_ids(self, ids: list[str]):
        """These runs (those still there, in the selected experiments and views)."""
        if self._attribute_filters:
            for start in range(0, len(ids), FETCH):
                quoted = ", ".join(f"'{i}'" for i in ids[start : start + FETCH])
                yield from self._search(f"attributes.run_id IN ({quoted})", FETCH)
            return
        experiments = {e.source_id for e in self.experiments()}
        for run_id in ids:
            run = run_or_none(self.client, run_id)
            if run is None:
                continue  # deleted for good since it was listed
            deleted_hidden = run.info.lifecycle_stage == "deleted" and not self.filters.include_deleted
            if run.info.experiment_id in experiments and not deleted_hidden:
                yield run

    def _search(self, filter_string: str, max_results: int = PAGE):
        from mlflow.entities import ViewType

        ids = [e.source_id for e in self.experiments()]
        view = ViewType.ALL if self.filters.include_deleted else ViewType.ACTIVE_ONLY
        for start in range(0, len(ids), 100):
            token = None
            while True:
                page = self.client.search_runs(
                    ids[start : start + 100], filter_string, view, max_results=max_results, page_token=token
                )
                yield from page
                token = page.token
                if not token:
                    break

    def count(self) -> int:
        return len(self.plan())

    def jobs(self) -> Iterator[JobRecord]:
        plan = self.plan()
        for start in range(0, len(plan), FETCH):
            yield from self._records(plan[start : start + FETCH])

    def sample(self, n: int) -> Iterator[tuple[JobRecord, int]]:
        plan = self.plan()
        siblings = Counter(node.parent_id for node in plan if node.parent_id)
        for job in self._records(spread(plan, n)):
            yield job, siblings[job.parent_id] if job.parent_id else 0

    def _records(self, chunk: list[Node]) -> Iterator[JobRecord]:
        """These planned runs as records, read together (at most FETCH)."""
        names = {e.source_id: e.name for e in self.experiments()}
        runs = {r.info.run_id: r for r in self._by_ids([n.run_id for n in chunk])}
        self._histories.prefetch({run_id: sorted(run.data.metrics) for run_id, run in runs.items()})
        evaluated = self._model_inputs.fill(runs) if self.reads_model_inputs else {}  # search pages carry no model inputs: get_run, where models exist
        for node in chunk:
            run = runs.get(node.run_id)
            if run is not None:  # deleted between the two passes: nothing to copy
                self._remember(run)
                record = to_record(run, node, names[node.experiment_id])
                record.model_inputs = evaluated.get(node.run_id, [])
                yield record

    # -- one run's contents -----------------------------------------------------------------

    def metrics(self, job: JobRecord) -> Iterator[MetricPoint]:
        for key in sorted(job.latest_metrics):
            fetched = self._histories.take(job.source_id, key)
            yield from fetched if fetched is not None else metric_history(self.client, job.source_id, key)

    def artifacts(self, job: JobRecord) -> Iterator[ArtifactRef]:
        repo = self._artifact_repo(job.source_id)
        pending = [""]
        while pending:
            folder = pending.pop()
            for info in repo.list_artifacts(folder or None):
                if info.is_dir:
                    pending.append(info.path)
                else:
                    yield ArtifactRef(path=info.path, size=info.file_size or 0)

    @contextmanager
    def fetch_artifact(self, job: JobRecord, ref: ArtifactRef, scratch: Path):
        folder = Path(tempfile.mkdtemp(dir=scratch))
        try:
            yield download_file(self._artifact_repo(job.source_id), ref.path, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- artifact access without a run lookup per call ----------------------------------------

    def _remember(self, run) -> None:
        with self._lock:
            self._artifact_uris[run.info.run_id] = run.info.artifact_uri
            while len(self._artifact_uris) > ARTIFACT_URIS:
                self._artifact_uris.popitem(last=False)

    def artifact_uri(self, job: JobRecord) -> str:
        """The run's artifact root (runner.files copies a blob root server-side)."""
        with self._lock:
            uri = self._artifact_uris.get(job.source_id)
        return uri or self.client.get_run(job.source_id).info.artifact_uri

    def _artifact_repo(self, run_id: str):
        """The run's artifact store, opened from the artifact URI its search result carried.

        MlflowClient.list_artifacts and download_artifacts look the run up again on every call
        (download_artifacts through `runs:/`, which also searches the run's logged models): three
        to four extra requests per run that the search page already answered.
        """
        with self._lock:
            uri = self._artifact_uris.get(run_id)
        if uri is None:  # a job that did not come through jobs(), or one evicted: look it up
            uri = self.client.get_run(run_id).info.artifact_uri
        return artifact_repository(uri, self.client.tracking_uri)


def artifact_repository(artifact_uri: str, tracking_uri: str):
    """The artifact repository MlflowClient would open for a run with this artifact URI."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

    repo = get_artifact_repository(add_databricks_profile_info_to_artifact_uri(artifact_uri, tracking_uri), tracking_uri=tracking_uri)
    share_server_capabilities(repo)
    return repo


_CAPABILITIES: dict[str, dict] = {}  # artifact server -> its multipart capabilities


def share_server_capabilities(repo) -> None:
    """Ask an mlflow-artifacts server for its capabilities once, not once per run.

    mlflow's repository for `mlflow-artifacts:` roots asks `/server-info` before its first
    download and remembers the answer on the repository object, that is per run here; the
    answer belongs to the server.
    """
    if not hasattr(repo, "_fetch_server_capabilities"):
        return
    server = repo.artifact_uri.partition("/api/2.0/mlflow-artifacts/artifacts")[0]
    known = _CAPABILITIES.get(server)
    if known is None:
        known = _CAPABILITIES.setdefault(server, repo._fetch_server_capabilities())
    repo._server_capabilities = known


def download_file(repo, path: str, folder: Path) -> Path:
    """One listed file into `folder`, kept under its relative path.

    download_artifacts first asks the store whether the path is a folder (one more request per
    file) and hands the copy to a thread pool; the path came from a listing, so it is a file.
    """
    local = (folder / path).resolve()
    if not local.is_relative_to(folder.resolve()):  # a listing with ".." must not escape scratch
        raise ValueError(f"artifact path {path!r} leaves its run's folder")
    local.parent.mkdir(parents=True, exist_ok=True)
    repo._download_file(remote_file_path=path, local_path=str(local))
    return local


def walk(root: Node, children: dict[str, list[Node]], order_key, keep=None) -> Iterator[Node]:
    """Depth-first, parents before children, siblings in start order; `keep(child, depth)` False
    leaves that child and its whole subtree out (--exclude, --max-depth)."""
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        node.depth, node.root_id = depth, root.run_id
        yield node
        for child in sorted(children.get(node.run_id, []), key=order_key, reverse=True):
            if keep is None or keep(child, depth + 1):
                stack.append((child, depth + 1))


def to_record(run, node: Node, experiment: str) -> JobRecord:
    info, data = run.info, run.data
    return JobRecord(
        source_id=info.run_id,
        experiment=experiment,
        name=info.run_name or "",
        status=info.status,
        start_time=info.start_time,
        end_time=info.end_time,
        parent_id=node.parent_id if node.depth else None,
        root_id=node.root_id,
        depth=node.depth,
        lifecycle_stage=info.lifecycle_stage,
        user_id=info.user_id or "",
        params=dict(data.params),
        tags=dict(data.tags),
        latest_metrics=dict(data.metrics),
        datasets=run_inputs.read_datasets(run),
    )


def list_experiments(client, filters: Filters, where: str) -> list[Experiment]:
    """The experiments `filters` selects in an MLflow store; an unknown plain name is an error."""
    from mlflow.entities import ViewType

    view = ViewType.ALL if filters.include_deleted else ViewType.ACTIVE_ONLY
    found, token = [], None
    while True:
        page = client.search_experiments(view_type=view, max_results=PAGE, page_token=token)
        found += page
        token = page.token
        if not token:
            break
    names = sorted(e.name for e in found)
    for pattern in filters.experiments:
        if not any(ch in pattern for ch in "*?[") and pattern not in names:
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise UsageError(f"unknown experiment {pattern!r} in {where}; it has: {shown}")
    return [
        Experiment(name=e.name, source_id=e.experiment_id, tags=dict(e.tags), lifecycle_stage=e.lifecycle_stage)
        for e in found
        if filters.wants_experiment(e.name)
    ]


def run_or_none(client, run_id: str):
    """The run as the store holds it now (runs/get); None when the store has it no more (deleted for good)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def metric_history(client, run_id: str, key: str) -> Iterator[MetricPoint]:
    """Every point of one metric, page by page, so a million-point history never sits in memory.

    MlflowClient.get_metric_history gathers all pages into one list; the store pages. AzureML's
    MLflow endpoint wants pages below 1000 points.
    """
    store = client._tracking_client.store
    page = 900 if uris.is_azureml_endpoint(client) else 25_000
    token = None
    while True:
        batch = store.get_metric_history(run_id, key, max_results=page, page_token=token)
        for m in batch:
            yield MetricPoint(m.key, m.value, m.timestamp, m.step)
        token = getattr(batch, "token", None)
        if not token:
            return
