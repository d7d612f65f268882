"""Read job history from an Azure Machine Learning workspace.

Where each part comes from:
- top-level jobs (command, pipeline, sweep, AutoML, ...): `MLClient.jobs.list()`, the SDK's own
  entities, so kind, status, compute, environment, command, inputs/outputs and the pipeline graph
  are the SDK's reading of the service's answer;
- every descendant (pipeline steps, nested sub-pipelines and their steps, sweep trials, AutoML
  children): the workspace's run history service, `GET .../runs/{id}/children`, reached through
  the workspace discovery URL. This is the route `jobs.list(parent_job_name=...)` takes, but that
  SDK call (azure-ai-ml 1.35.2) returns only the first page: the service pages children with a
  `continuationToken` and no nextLink, and the generated pager follows nextLink only. So pages are
  requested here, token by token, with the SDK's own run history client and request builder.
  Children marked `"hidden": true` are left out, as azureml-core leaves them out;
- step names and the edges between steps: the parent's pipeline graph (the root PipelineJob's
  `jobs`, or for a nested sub-pipeline the pipeline component its node points at,
  `MLClient.components.get`); a child run is matched to its node by display name, which the
  service sets to the node name unless the user gave the node a display name (matched too);
- a pipeline step's command and environment: run history gives steps `"runDefinition": null`, so
  they are its component's (`MLClient.components.get` of the node's componentId, else of the
  step's `azureml.moduleName`/`moduleVersion`), read once per component version;
- params, tags, start/end times and full metric histories: MLflow through azureml-mlflow, at the
  workspace's `mlflow_tracking_uri`, where the run id is the job name. A root MLflow has no times
  for takes them from the job answer (runner.azureml.job_fields.job_times), else from run history;
- a failed job's error message: run history (a child's record; a failed root's `runs/{id}`).

Root filters, `--include` and `--limit` included, narrow the roots before any child is listed,
so one unselected root whose children cannot be listed does not stop the extraction. The
service's system tags (`_aml_system_*`, `azureml.nodeid`, ...) are not the user's: they are kept
in `JobRecord.properties` as `original_system.<name>` (see job_fields.split_tags).

Statuses map to MLflow's words (Completed -> FINISHED, Failed -> FAILED, Canceled -> KILLED,
queued/preparing -> SCHEDULED, running/finalizing -> RUNNING); the original word is kept in
`JobRecord.source_status`.

The workspace is named by `azureml://subscriptions/S/resourcegroups/R/workspaces/W` or by the
path of a `config.json` (subscription_id, resource_group, workspace_name, optional tenant_id).
The credential comes from `runner.azureml.credentials` (`--credential managed|cli|default|obo`).
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from loguru import logger

from runner.mlflow import uris
from runner.azureml.credentials import CREDENTIAL_HINTS, workspace_credential
from runner.core.errors import EndpointError, ReplayerError, UsageError, first_line
from runner.core.filters import Filters, spread
from runner.core.records import ArtifactRef, Experiment, JobRecord, MetricPoint
from runner.mlflow.source import list_experiments, metric_history, run_or_none
from runner.azureml.sibling_runs import SiblingRuns, planned_children
from runner.azureml.run_history import storage_reason
from runner.azureml.workspace import WorkspaceRef, is_azureml, parse_workspace  # noqa: F401  (importers find them here)
from runner.azureml.job_fields import (  # noqa: F401  (map_status: part of this module's interface)
    CONTAINER_KINDS, LEAF_RUN_TYPES, Node, child_node, component_facts, component_name, error_message, is_system_tag,
    map_status, match_step, ms, root_node, step_component,
)

class AzuremlSource:
    def __init__(self, uri: str, filters: Filters | None = None, workspace: str | None = None, credential=None, parallel: int = 8):
        from runner.core import retry

        self.ref = parse_workspace(uri)
        self.filters = filters or Filters()
        self.parallel = max(1, int(parallel or 1))
        self.workspace = workspace or self.ref.uri.lower()  # ARM names are case-insensitive: one ledger key per workspace
        self.credential_name, self.credential = workspace_credential(self.ref, credential)
        credential = self.credential
        retry.configure()
        self._retry = retry.azure_retry_kwargs()
        from azure.ai.ml import MLClient

        _quiet_sdk_loggers()  # after the import: importing azure.ai.ml sets its logger to INFO on stderr

        with self._azure_errors("open the workspace"):
            self.ml = MLClient(
                credential, self.ref.subscription_id, self.ref.resource_group, self.ref.workspace_name,
                enable_telemetry=False, show_progress=False, **self._retry,
            )
            ws = self.ml.workspaces.get(self.ref.workspace_name)
        if not ws.mlflow_tracking_uri:
            raise EndpointError(f"workspace {self.ref.workspace_name} has no MLflow tracking URI; is it an Azure ML workspace (not a hub)?")
        from mlflow import MlflowClient

        from runner.azureml import auth

        self.tracking_uri = ws.mlflow_tracking_uri
        auth.use_credential(self.tracking_uri, credential, self.credential_name)  # MLflow calls: this credential, not azureml-mlflow's own chain
        self.discovery_url = ws.discovery_url
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self._history = None
        self._api_url: str | None = None  # run history's host, from the discovery document on first use
        self._history_lock = threading.Lock()
        self._components: dict[str, dict[str, dict] | None] = {}
        self._component_locks: dict[str, threading.Lock] = {}
        self._experiments: list[Experiment] | None = None
        self._plan: list[Node] | None = None
        self._siblings: SiblingRuns | None = None
        self.skipped_unreadable = 0

    # -- errors ------------------------------------------------------------------------------

    @contextmanager
    def _azure_errors(self, doing: str):
        """One clear line for the usual ways reaching a workspace fails."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError, ServiceRequestError

        tenant, where = self._tenant, self._where
        try:
            yield
        except ReplayerError:
            raise
        except ClientAuthenticationError as error:
            if getattr(error, "response", None) is not None:
                raise UsageError(
                    f"{where} refused the token of credential '{self.credential_name}' for tenant {tenant} "
                    f"(HTTP {error.status_code}: {first_line(error)}); check the tenant_id and that this identity has access"
                ) from None
            raise UsageError(
                f"could not get a token for tenant {tenant} with credential '{self.credential_name}' to {doing}: "
                f"{first_line(error)}; {CREDENTIAL_HINTS.get(self.credential_name, 'check --credential')}"
            ) from None
        except ResourceNotFoundError as error:
            raise UsageError(f"{where} not found (HTTP 404: {first_line(error)}); check the names in config.json or the azureml:// URI") from None
        except HttpResponseError as error:
            if error.status_code in (401, 403):
                raise UsageError(
                    f"{where} refused credential '{self.credential_name}' for tenant {tenant} (HTTP {error.status_code}: {first_line(error)}); "
                    "grant this identity a role on the workspace (AzureML Data Scientist or Reader)"
                ) from None
            raise EndpointError(f"{where}: could not {doing}: HTTP {error.status_code}: {first_line(error)}") from None
        except ServiceRequestError as error:
            raise EndpointError(f"cannot reach {where}: {first_line(error)}; check the network and the cloud") from None

    @property
    def _tenant(self) -> str:
        return self.ref.tenant_id or "(the credential's default)"

    @property
    def _where(self) -> str:
        return f"workspace {self.ref.workspace_name} (resource group {self.ref.resource_group}, subscription {self.ref.subscription_id})"

    @contextmanager
    def _mlflow_errors(self, doing: str):
        """A token refused midway (expired, revoked, a role removed) stops everything with one line.

        It is not one job's failure: every later request would be refused the same way.
        """
        with uris.auth_refusals(lambda status, reason: UsageError(
            f"{self._where}: its MLflow endpoint refused credential '{self.credential_name}' for tenant {self._tenant} "
            f"while trying to {doing} (HTTP {status}: {reason}); the token expired or was revoked, or the identity lost "
            "its role on the workspace: sign in again (or restore the role), then rerun the command (an unfinished manifest folder must be emptied first)"
        )):
            yield

    # -- what the protocol asks for ----------------------------------------------------------

    def describe(self) -> dict:
        return {"kind": "azureml", "uri": self.ref.uri, "workspace": self.workspace, "tenant_id": self.ref.tenant_id or ""}

    def experiments(self) -> list[Experiment]:
        if self._experiments is None:
            self._experiments = self._list_experiments()
        return self._experiments

    def _list_experiments(self) -> list[Experiment]:
        return sorted(list_experiments(self.client, self.filters, self.ref.uri), key=lambda e: e.name)

    def count(self) -> int:
        return len(self.plan())

    def plan(self) -> list[Node]:
        """Every selected job, parents first; computed once."""
        if self._plan is None:
            self._plan = self._build_plan()
        return self._plan

    def jobs(self) -> Iterator[JobRecord]:
        """Full records in plan order; MLflow reads run `parallel` at a time, a bounded window ahead."""
        plan = self.plan()
        ids = {e.name: e.source_id for e in self.experiments()}
        self._siblings = SiblingRuns(self.client, ids.get, planned_children(plan))  # a parent's children: one search
        window: deque = deque()
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="azureml-read") as pool:
            for node in plan:
                window.append(pool.submit(self._record, node))
                if len(window) >= 4 * self.parallel:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def sample(self, n: int) -> Iterator[tuple[JobRecord, int]]:
        """`n` jobs spread over the plan, each read alone (a child by its own `runs/get`), with its siblings."""
        plan = self.plan()
        siblings = Counter(node.parent for node in plan if node.depth)
        for node in spread(plan, n):
            yield self._record(node), siblings[node.parent] if node.depth else 0

    def metrics(self, job: JobRecord) -> Iterator[MetricPoint]:
        with self._mlflow_errors(f"read the metrics of job {job.source_id}"):
            for key in sorted(job.latest_metrics):
                yield from metric_history(self.client, job.source_id, key)

    def artifacts(self, job: JobRecord) -> Iterator[ArtifactRef]:
        """The job's files and logs (`outputs/...`, `user_logs/...`, `system_logs/...`, `azureml-logs/...`).

        Paths come from run history's artifact listing, the route azureml-mlflow's
        `list_artifacts` takes (it reports every size as -1: the service keeps none). Size and md5
        come from the blob itself: its content URI (`.../artifacts/contentinfo`, what azureml-mlflow
        downloads from) answers a HEAD with Content-Length and Content-MD5 (where the upload set
        one), so no byte is read. That URI carries a SAS: it is used for that one request and kept
        nowhere, not in the record, a log line or an error message. A listed path without a blob
        (an upload the job never finished) is left out. (runner.azureml.run_history does the reading.)
        """
        return self.artifact_store(job).list()

    @contextmanager
    def fetch_artifact(self, job: JobRecord, ref: ArtifactRef, scratch: Path):
        """The file's bytes, streamed from its blob into a scratch file."""
        from azure.core.exceptions import AzureError

        folder = Path(tempfile.mkdtemp(dir=scratch))
        local = folder / "file"
        try:
            try:
                with self.artifact_store(job).open(ref.path) as reader, open(local, "wb") as out:
                    shutil.copyfileobj(reader, out, 1 << 20)
            except AzureError as error:  # the message of a storage error can quote the URL: say what failed, not where
                raise EndpointError(f"cannot download {ref.path} of job {job.source_id}: {storage_reason(error)}") from None
            yield local
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def artifact_store(self, job: JobRecord):
        """The job's files as a copy store (runner.azureml.run_history): blob-backed, so a copy into another
        workspace's run history or a blob container happens server-side."""
        from runner.azureml.run_history import RunHistoryStore

        return RunHistoryStore(self._run_history(), job.experiment, job.source_id, f"{self._where} job {job.source_id}")

    def _run_history(self):
        from runner.azureml.run_history import RunHistory

        return RunHistory(self._history_client, self.ref.subscription_id, self.ref.resource_group, self.ref.workspace_name,
                          self._azure_errors, self._retry)

    # -- building the plan ---------------------------------------------------------------------

    def _build_plan(self) -> list[Node]:
        """Every selected tree, parents first. Root filters (--include and --limit too) narrow the
        roots before any children are listed: an unselected root's children are never asked for."""
        f = self.filters
        roots = self._narrow(self._selected_roots())
        ordered: list[Node] = []
        taken = 0
        descendants: set[str] = set()
        # With --limit, trees are walked a few at a time, only until enough are taken.
        step = max(self.parallel, 1) if f.limit else max(len(roots), 1)
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="azureml-walk") as pool:
            for at in range(0, len(roots), step):
                batch = roots[at : at + step]
                trees = list(pool.map(self._walk, batch))
                # A job listed at the top level that is also some tree's descendant is that tree's child.
                descendants |= {n.name for tree in trees for n in tree[1:]}
                for root, tree in zip(batch, trees):
                    if root.name in descendants or (f.include and not any(f.named(n.name, n.display_name) for n in tree)):
                        continue
                    ordered += tree
                    taken += 1
                    if f.limit and taken >= f.limit:
                        return ordered
        return ordered

    def _selected_roots(self) -> list[Node]:
        """Top-level jobs that pass the root filters, in creation order; no child listed yet."""
        from azure.ai.ml.constants import ListViewType

        f = self.filters
        wanted = {e.name for e in self.experiments()}
        view = ListViewType.ALL if f.include_deleted else ListViewType.ACTIVE_ONLY
        roots: list[Node] = []
        seen: set[str] = set()
        with self._azure_errors("list jobs"):
            for job in self.ml.jobs.list(list_view_type=view):
                if job is None:  # the SDK could not parse this job (JobParsingError): it has no name to give
                    self.skipped_unreadable += 1
                    continue
                if job.name in seen or job.experiment_name not in wanted:
                    continue
                seen.add(job.name)
                node = root_node(job)
                if not in_shard(f, node.name) or (f.status and map_status(node.status) not in f.status):
                    continue
                if not f.wants_tags(node.facts["tags"]) or f.excludes(node.name, node.display_name):
                    continue
                roots.append(node)
        if self.skipped_unreadable:
            logger.warning("{} jobs in {} could not be read by azure-ai-ml and are not extracted", self.skipped_unreadable, self.ref.workspace_name)
        if f.since is not None or f.until is not None:
            self._fill_start_times(roots)
            roots = [r for r in roots if f.wants_root(r.start, map_status(r.status))]
        roots.sort(key=lambda n: (n.created or 0, n.name))
        return roots

    def _narrow(self, roots: list[Node]) -> list[Node]:
        """--include: the roots it names, and the roots of the descendants it names by id (run
        history's `runs/{id}` knows a run's rootRunId). A name it cannot place that way (a child's
        display name) can only be found by walking: then every root is walked, as before."""
        f = self.filters
        if not f.include:
            return roots
        keep = {r.name for r in roots if f.named(r.name, r.display_name)}
        placed = {r.name for r in roots if r.name in keep} | {r.display_name for r in roots if r.name in keep}
        names = {r.name for r in roots}
        for ident in (i for i in f.include if i not in placed):
            run = self._run_history().request_json(self.run_request(ident), f"find job {ident}", missing_ok=True)
            if not run:
                logger.info("--include {}: not a job id this workspace knows; walking every selected root to find it by name", ident)
                return roots
            if run.get("rootRunId") in names:  # else its tree is not selected (another experiment, shard, ...)
                keep.add(run["rootRunId"])
        return [r for r in roots if r.name in keep]

    def run_request(self, name: str):
        from azure.ai.ml._restclient.runhistory.operations._operations import build_runs_get_request

        return build_runs_get_request(subscription_id=self.ref.subscription_id, resource_group_name=self.ref.resource_group,
                                      workspace_name=self.ref.workspace_name, run_id=name)

    def _fill_start_times(self, roots: list[Node]) -> None:
        def start(node: Node) -> None:
            run = self._mlflow_run(node.name)
            if run is not None and run.info.start_time:  # else the job answer's own time (job_times), if any
                node.start = run.info.start_time

        with ThreadPoolExecutor(self.parallel, thread_name_prefix="azureml-times") as pool:
            list(pool.map(start, roots))

    def _walk(self, root: Node) -> list[Node]:
        """The root and every descendant, depth first, parents before children, siblings in start order."""
        f = self.filters
        out: list[Node] = []
        seen: set[str] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            out.append(node)
            if may_have_children(node) and f.within_depth(node.depth + 1):  # --max-depth: not even listed
                kids = [self._child_node(run, node) for run in self._children(node.name)]
                kids = [k for k in kids if not f.excludes(k.name, k.display_name, k.step)]  # --exclude drops the subtree
                kids.sort(key=lambda n: (n.start or n.created or 0, n.name), reverse=True)
                stack += kids
            node.graph = None  # only needed to name this node's children
        return out

    def _child_node(self, run, parent: Node) -> Node:
        step, spec = match_step(parent.graph, run.display_name or run.run_id) if parent.kind == "pipeline" and parent.graph else ("", {})
        node = child_node(run, parent, step, spec)
        if node.kind == "pipeline" and spec:
            node.graph = self._component(spec.get("componentId"))["graph"]
        if node.kind == "command" and not node.facts["command"]:
            # Run history gives pipeline steps `"runDefinition": null`: what a step ran is its
            # component's, read as azure-ai-ml reads it (one GET per component version, cached).
            component = self._component(step_component(spec, node.facts["properties"]))
            node.facts["command"], node.facts["environment"] = component["command"], component["environment"]
        return node

    # -- control-plane reads -------------------------------------------------------------------

    def _history_client(self):
        with self._history_lock:
            if self._history is None:
                self._history = self.history_client(**self._retry)
            return self._history

    def history_client(self, **retry):
        """A run history client for this workspace with azure-core's retry settings `retry` (the source's
        own, or none for `replayer estimate`'s probe, which must see the 429s)."""
        from runner.core import retry as policy
        from runner.azureml import credentials
        from azure.ai.ml._restclient.runhistory import RunHistoryClient

        if self._api_url is None:
            answer = policy.get_with_retries(self.discovery_url, timeout=30)
            if answer.status_code != 200:
                raise EndpointError(f"workspace discovery {self.discovery_url} answered HTTP {answer.status_code}")
            # The `api` host, as azure-ai-ml's jobs operations (WorkspaceDiscoveryUrlKey.API): not `history`.
            self._api_url = answer.json()["api"].rstrip("/")
        # RunHistoryClient's own default scope (ml.azure.com) is not what azure-ai-ml sends.
        scope = credentials.management_scope(getattr(self.ml, "_cloud", None))
        return RunHistoryClient(self.credential, base_url=self._api_url, credential_scopes=[scope], **retry)

    def _children(self, name: str) -> Iterator:
        """Child runs, every page: the service pages with continuationToken (and no nextLink).
        Hidden children (`"hidden": true`) are left out, as azureml-core leaves them out."""
        from azure.ai.ml._restclient.runhistory.models import Run
        from azure.ai.ml._restclient.runhistory.operations._operations import build_runs_get_child_request

        token = None
        while True:
            request = build_runs_get_child_request(
                subscription_id=self.ref.subscription_id, resource_group_name=self.ref.resource_group,
                workspace_name=self.ref.workspace_name, run_id=name, continuationtoken=token,
            )
            body = self._run_history().request_json(request, f"list the children of {name}")
            for value in body.get("value") or []:
                if not value.get("hidden"):
                    yield Run(value)
            token = body.get("continuationToken")
            if not token:
                return

    def _component(self, component_id: str | None) -> dict:
        """A component version's steps (pipeline components), command and environment; read once
        per name and version, even when sibling trees reach it at once."""
        key = component_name(component_id) if component_id else None
        if key is None:
            if component_id:
                logger.warning("cannot read component {}: its steps, command and environment stay unknown", component_id)
            return {"graph": None, "command": "", "environment": ""}
        with self._history_lock:
            lock = self._component_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._components:
                with self._azure_errors(f"read component {component_id}"):
                    self._components[key] = component_facts(self.ml.components.get(name=key[0], version=key[1]))
            return self._components[key]

    # -- MLflow reads --------------------------------------------------------------------------

    def _mlflow_run(self, name: str):
        with self._mlflow_errors(f"read job {name}"):
            return run_or_none(self.client, name)

    def _root_history(self, node: Node, start: int | None) -> dict:
        """Run history's record of a root, asked only for what the job answer lacks: times (MFE job
        answers carry none; MLflow had none) and a failure's message (only run history has it)."""
        if node.depth or (start is not None and node.status.lower() != "failed"):
            return {}
        return self._run_history().request_json(self.run_request(node.name), f"read job {node.name}", missing_ok=True) or {}

    def _record(self, node: Node) -> JobRecord:
        found = self._siblings.take(node.parent if node.depth else None, node.experiment, node.name) if self._siblings else None
        run = found if found is not None else self._mlflow_run(node.name)
        facts = node.facts
        if run is None:
            logger.warning("job {} has no MLflow run: copying its control-plane record without params or metrics", node.name)
        info = run.info if run is not None else None
        data = run.data if run is not None else None
        # Azure's MLflow answers carry the service's system tags too: they stay out of the user's tags.
        tags = {**facts["tags"], **{k: v for k, v in (dict(data.tags) if data else {}).items() if not is_system_tag(k)}}
        start = info.start_time if info and info.start_time else node.start
        end = info.end_time if info and info.end_time else node.end
        history = self._root_history(node, start)
        return JobRecord(
            source_id=node.name,
            experiment=node.experiment,
            name=node.display_name,
            kind=node.kind,
            status=map_status(node.status),
            start_time=start if start is not None else ms(history.get("startTimeUtc")),
            end_time=end if end is not None else ms(history.get("endTimeUtc")),
            parent_id=node.parent if node.depth else None,
            root_id=node.root,
            depth=node.depth,
            step_name=node.step,
            lifecycle_stage=info.lifecycle_stage if info else "active",
            user_id=(info.user_id or "") if info else "",
            params=dict(data.params) if data else {},
            tags=tags,
            latest_metrics=dict(data.metrics) if data else {},
            source_status=node.status,
            description=facts["description"],
            created_by=facts["created_by"],
            created_time=node.created,
            compute=facts["compute"],
            environment=facts["environment"],
            command=facts["command"],
            properties=facts["properties"],
            inputs=facts["inputs"],
            outputs=facts["outputs"],
            error=facts["error"] or error_message(history.get("error")),
        )


def in_shard(filters: Filters, root_id: str) -> bool:
    check = getattr(filters, "in_shard", None)
    return check(root_id) if check else True


def may_have_children(node: Node) -> bool:
    """Whether to ask run history for children: containers yes, known leaves no, unknown run types yes."""
    if node.kind in CONTAINER_KINDS:
        return True
    if node.kind == "command" or node.depth == 0:
        return False
    return node.run_type.lower() not in LEAF_RUN_TYPES + ("automl",)


def _quiet_sdk_loggers() -> None:
    """azure-ai-ml and azureml-mlflow log to stdlib logging; keep their chatter out of our output."""
    import logging

    for name in ("azure", "azureml", "azure.ai.ml", "msal", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
