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
  requested here, token by token, with the SDK's own run history client and request builder;
- step names and the edges between steps: the parent's pipeline graph (the root PipelineJob's
  `jobs`, or for a nested sub-pipeline the pipeline component its node points at,
  `MLClient.components.get`); a child run is matched to its node by display name, which the
  service sets to the node name unless the user gave the node a display name (matched too);
- params, tags, start/end times and full metric histories: MLflow through azureml-mlflow, at the
  workspace's `mlflow_tracking_uri`, where the run id is the job name.

Statuses map to MLflow's words (Completed -> FINISHED, Failed -> FAILED, Canceled -> KILLED,
queued/preparing -> SCHEDULED, running/finalizing -> RUNNING); the original word is kept in
`JobRecord.source_status`.

The workspace is named by `azureml://subscriptions/S/resourcegroups/R/workspaces/W` or by the
path of a `config.json` (subscription_id, resource_group, workspace_name, optional tenant_id).
The credential comes from `runner.azureml.credentials` (`--credential managed|cli|default|obo`).
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from loguru import logger

from runner.mlflow import uris
from runner.azureml.credentials import CREDENTIAL_HINTS, workspace_credential
from runner.core.errors import EndpointError, ReplayerError, UsageError, first_line
from runner.core.filters import Filters
from runner.core.records import ArtifactRef, Experiment, JobRecord, MetricPoint
from runner.mlflow.source import list_experiments, metric_history
from runner.azureml.run_history import storage_reason

URI_RE = re.compile(
    r"^azureml://subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/"
    r"(?:providers/microsoft\.machinelearningservices/)?workspaces/(?P<ws>[^/?#]+)/?$",
    re.IGNORECASE,
)
CONFIG_KEYS = ("subscription_id", "resource_group", "workspace_name")

STATUS = {
    "completed": "FINISHED",
    "failed": "FAILED",
    "canceled": "KILLED",
    "cancelled": "KILLED",
    "notstarted": "SCHEDULED",
    "queued": "SCHEDULED",
    "preparing": "SCHEDULED",
    "provisioning": "SCHEDULED",
    "starting": "SCHEDULED",
    "running": "RUNNING",
    "finalizing": "RUNNING",
    "cancelrequested": "RUNNING",
    "notresponding": "RUNNING",
    "paused": "RUNNING",
}
KINDS = {"command": "command", "pipeline": "pipeline", "sweep": "sweep", "automl": "automl"}
CONTAINER_KINDS = ("pipeline", "sweep", "automl")
# Run history run types of jobs that never have children: their children are not listed.
LEAF_RUN_TYPES = ("azureml.steprun", "azureml.scriptrun", "azureml.commandrun")


def map_status(status: str | None) -> str:
    """AzureML's status word -> the model's (MLflow's) word; unknown words count as RUNNING."""
    return STATUS.get(str(status or "").replace(" ", "").lower(), "RUNNING")


# -- naming the workspace -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceRef:
    subscription_id: str
    resource_group: str
    workspace_name: str
    tenant_id: str | None = None

    @property
    def uri(self) -> str:
        return f"azureml://subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group}/workspaces/{self.workspace_name}"


def is_azureml(uri: str) -> bool:
    """An azureml:// workspace URI or the path of a workspace config.json."""
    text = str(uri)
    if text.lower().startswith("azureml://subscriptions/"):
        return True
    return text.endswith(".json") and Path(text).is_file()


def parse_workspace(uri: str) -> WorkspaceRef:
    text = str(uri).strip()
    match = URI_RE.match(text)
    if match:
        return WorkspaceRef(match.group("sub"), match.group("rg"), match.group("ws"))
    if text.lower().startswith("azureml://"):
        raise UsageError(f"{text}: not a workspace URI; use azureml://subscriptions/SUB/resourcegroups/RG/workspaces/NAME or a config.json")
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"{text}: no such workspace config file; give a config.json or an azureml:// workspace URI")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{text}: not valid JSON ({error}); download config.json again from the workspace page") from None
    if not isinstance(data, dict):
        raise UsageError(f"{text}: expected a JSON object with {', '.join(CONFIG_KEYS)}")
    # The portal's config.json uses these keys; `resourceGroup`-style spellings appear in older ones.
    aliases = {"subscription_id": ("subscriptionId",), "resource_group": ("resourceGroup", "resource_group_name"), "workspace_name": ("workspaceName",)}
    values = {}
    for key in CONFIG_KEYS:
        value = data.get(key) or next((data.get(a) for a in aliases[key] if data.get(a)), None)
        if not value:
            raise UsageError(f"{text}: missing `{key}`; a workspace config.json holds {', '.join(CONFIG_KEYS)} (and optionally tenant_id)")
        values[key] = str(value)
    tenant = data.get("tenant_id") or data.get("tenantId")
    return WorkspaceRef(values["subscription_id"], values["resource_group"], values["workspace_name"], str(tenant) if tenant else None)


# -- the plan -------------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    parent: str | None
    root: str
    depth: int
    kind: str
    status: str  # AzureML's word
    display_name: str
    experiment: str
    created: int | None = None
    start: int | None = None
    end: int | None = None
    step: str = ""
    run_type: str = ""
    facts: dict[str, Any] = field(default_factory=dict)  # description, created_by, compute, ... for the record
    graph: dict[str, dict] | None = None  # pipeline nodes: step name -> its REST node, while walking


def ms(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


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
        self._history_lock = threading.Lock()
        self._components: dict[str, dict[str, dict] | None] = {}
        self._component_locks: dict[str, threading.Lock] = {}
        self._experiments: list[Experiment] | None = None
        self._plan: list[Node] | None = None
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
        window: deque = deque()
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="azureml-read") as pool:
            for node in plan:
                window.append(pool.submit(self._record, node))
                if len(window) >= 4 * self.parallel:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

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
                node = self._root_node(job)
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
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="azureml-walk") as pool:
            trees = list(pool.map(self._walk, roots))
        # A job listed at the top level that is also some tree's descendant is that tree's child.
        descendants = {n.name for tree in trees for n in tree[1:]}
        ordered: list[Node] = []
        taken = 0
        for root, tree in zip(roots, trees):
            if root.name in descendants:
                continue
            if f.include and not any(f.named(n.name, n.display_name) for n in tree):
                continue
            ordered += tree
            taken += 1
            if f.limit and taken >= f.limit:
                break
        return ordered

    def _fill_start_times(self, roots: list[Node]) -> None:
        def start(node: Node) -> None:
            run = self._mlflow_run(node.name)
            node.start = run.info.start_time if run is not None else None

        with ThreadPoolExecutor(self.parallel, thread_name_prefix="azureml-times") as pool:
            list(pool.map(start, roots))

    def _root_node(self, job) -> Node:
        kind = KINDS.get(str(getattr(job, "type", "") or "").lower(), "run")
        creation = getattr(job, "creation_context", None)
        node = Node(
            name=job.name,
            parent=None,
            root=job.name,
            depth=0,
            kind=kind,
            status=str(getattr(job.status, "value", job.status) or ""),
            display_name=job.display_name or job.name,
            experiment=job.experiment_name,
            created=ms(getattr(creation, "created_at", None)),
        )
        trial = getattr(job, "trial", None)  # a sweep's trial command
        command = getattr(job, "command", None) or getattr(trial, "command", None)
        environment = getattr(job, "environment", None) or getattr(trial, "environment", None)
        inputs = {k: describe_io(v) for k, v in (getattr(job, "inputs", None) or {}).items()}
        if kind == "automl":
            for key in ("training_data", "validation_data", "test_data"):
                value = getattr(job, key, None)
                if value is not None:
                    inputs[key] = describe_io(value)
        node.facts = {
            "description": job.description or "",
            "created_by": getattr(creation, "created_by", None) or "",
            "compute": compute_name(getattr(job, "compute", None)),
            "environment": environment_name(environment),
            "command": command or "",
            "properties": {k: str(v) for k, v in (job.properties or {}).items()},
            "tags": {k: str(v) for k, v in (job.tags or {}).items()},
            "inputs": {k: v for k, v in inputs.items() if v},
            "outputs": {k: v for k, v in ((k, describe_io(v)) for k, v in (getattr(job, "outputs", None) or {}).items()) if v},
        }
        if kind == "pipeline":
            node.graph = {name: rest_node(step) for name, step in (getattr(job, "jobs", None) or {}).items()}
        return node

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
        run_type = str(run.run_type or "")
        properties = {k: str(v) for k, v in (run.properties or {}).items()}
        node = Node(
            name=run.run_id,
            parent=parent.name,
            root=parent.root,
            depth=parent.depth + 1,
            kind=child_kind(run_type, properties),
            status=str(run.status or ""),
            display_name=run.display_name or run.run_id,
            experiment=parent.experiment,
            created=ms(run.created_utc),
            start=ms(run.start_time_utc),
            end=ms(run.end_time_utc),
            run_type=run_type,
        )
        compute = run.compute.target if run.compute is not None and run.compute.target else (run.target or "")
        created_by = run.created_by.user_name if run.created_by is not None else ""
        inputs = {k: asset_io(v) for k, v in (run.inputs or {}).items()}
        outputs = {k: asset_io(v) for k, v in (run.outputs or {}).items()}
        if parent.kind == "pipeline" and parent.graph:
            step, spec = match_step(parent.graph, node.display_name)
            if step:
                node.step = step
                inputs.update({k: v for k, v in ((k, rest_io(v)) for k, v in (spec.get("inputs") or {}).items()) if v})
                outputs.update({k: v for k, v in ((k, rest_io(v)) for k, v in (spec.get("outputs") or {}).items()) if v})
                if node.kind == "pipeline":
                    node.graph = self._component_graph(spec.get("componentId"))
        # What a child ran is in its run history record's runDefinition (the SDK's job entities are
        # not given for children); a sub-pipeline or an AutoML trial has none.
        definition = run_definition(run)
        node.facts = {
            "description": run.description or "",
            "created_by": created_by or "",
            "compute": "" if node.kind == "pipeline" else compute_name(compute),
            "environment": environment_name(definition.get("environment")),
            "command": str(definition.get("command") or ""),
            "properties": properties,
            "tags": {k: str(v) for k, v in (run.tags or {}).items()},
            "inputs": inputs,
            "outputs": outputs,
        }
        return node

    # -- control-plane reads -------------------------------------------------------------------

    def _history_client(self):
        with self._history_lock:
            if self._history is None:
                from runner.core import retry
                from runner.azureml import credentials
                from azure.ai.ml._restclient.runhistory import RunHistoryClient

                answer = retry.get_with_retries(self.discovery_url, timeout=30)
                if answer.status_code != 200:
                    raise EndpointError(f"workspace discovery {self.discovery_url} answered HTTP {answer.status_code}")
                # The `api` host, as azure-ai-ml's jobs operations (WorkspaceDiscoveryUrlKey.API): not `history`.
                self._api_url = answer.json()["api"].rstrip("/")
                # RunHistoryClient's own default scope (ml.azure.com) is not what azure-ai-ml sends.
                scope = credentials.management_scope(getattr(self.ml, "_cloud", None))
                self._history = RunHistoryClient(self.credential, base_url=self._api_url, credential_scopes=[scope], **self._retry)
            return self._history

    def _children(self, name: str) -> Iterator:
        """Child runs, every page: the service pages with continuationToken (and no nextLink)."""
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
                yield Run(value)
            token = body.get("continuationToken")
            if not token:
                return

    def _component_graph(self, component_id: str | None) -> dict[str, dict] | None:
        """Steps of the pipeline component a sub-pipeline node runs, by step name (cached)."""
        if not component_id:
            return None
        with self._history_lock:
            lock = self._component_locks.setdefault(component_id, threading.Lock())
        with lock:  # one read per component, even when sibling trees reach it at once
            if component_id not in self._components:
                self._components[component_id] = self._read_component(component_id)
            return self._components[component_id]

    def _read_component(self, component_id: str) -> dict[str, dict] | None:
        name_version = component_name(component_id)
        graph = None
        if name_version is None:
            logger.warning("cannot read pipeline component {}: its steps are listed without step names and edges", component_id)
        else:
            with self._azure_errors(f"read pipeline component {component_id}"):
                component = self.ml.components.get(name=name_version[0], version=name_version[1])
            graph = {name: rest_node(step) for name, step in (getattr(component, "jobs", None) or {}).items()}
        return graph

    # -- MLflow reads --------------------------------------------------------------------------

    def _mlflow_run(self, name: str):
        from mlflow.exceptions import MlflowException

        with self._mlflow_errors(f"read job {name}"):
            try:
                return self.client.get_run(name)
            except MlflowException as error:
                if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise

    def _record(self, node: Node) -> JobRecord:
        run = self._mlflow_run(node.name)
        facts = node.facts
        if run is None:
            logger.warning("job {} has no MLflow run: copying its control-plane record without params or metrics", node.name)
        info = run.info if run is not None else None
        data = run.data if run is not None else None
        tags = {**facts["tags"], **(dict(data.tags) if data else {})}
        return JobRecord(
            source_id=node.name,
            experiment=node.experiment,
            name=node.display_name,
            kind=node.kind,
            status=map_status(node.status),
            start_time=info.start_time if info and info.start_time else node.start,
            end_time=info.end_time if info and info.end_time else node.end,
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


def child_kind(run_type: str, properties: dict[str, str]) -> str:
    """What a child run is, from run history's run type (the SDK's job types are not given for children)."""
    kind = run_type.lower()
    if kind == "azureml.pipelinerun":
        return "pipeline"
    if kind == "hyperdrive":
        return "sweep"
    if kind == "automl":
        return "run" if properties.get("runTemplate", "").lower() == "automl_child" else "automl"
    if kind in LEAF_RUN_TYPES:
        return "command"
    return "run"


def match_step(graph: dict[str, dict], display_name: str) -> tuple[str, dict]:
    """The pipeline step a child run executes: by node name, else by the node's display name."""
    if display_name in graph:
        return display_name, graph[display_name]
    for name, spec in graph.items():
        if spec.get("display_name") == display_name or spec.get("displayName") == display_name:
            return name, spec
    return "", {}


def rest_node(step) -> dict:
    """A pipeline step as its REST dict (how the service stored it), or {} when it cannot be read."""
    try:
        rest = step._to_rest_object()
    except Exception as error:  # noqa: BLE001 - one odd step must not stop the extraction
        logger.debug("cannot read pipeline step {}: {}", getattr(step, "name", "?"), error)
        return {}
    return dict(rest) if isinstance(rest, dict) else {}


def component_name(component_id) -> tuple[str, str] | None:
    """(name, version) of a workspace component id: ARM id, azureml:name:version or name:version."""
    text = str(component_id)
    match = re.search(r"/components/([^/]+)/versions/([^/]+)$", text)
    if match and "/registries/" not in text:
        return match.group(1), match.group(2)
    text = text.removeprefix("azureml:")
    if "/" not in text and text.count(":") == 1:
        name, version = text.split(":")
        return name, version
    return None


def compute_name(value) -> str:
    if not value:
        return ""
    text = str(value)
    return text.rsplit("/computes/", 1)[-1] if "/computes/" in text else text


def run_definition(run) -> dict:
    """A run history record's `runDefinition` (an object; older answers send it as JSON text)."""
    value = run.get("runDefinition") if hasattr(run, "get") else None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def environment_name(value) -> str:
    """`azureml:name:version` for a registered environment, whatever form the SDK or the service handed back."""
    if not value:
        return ""
    if isinstance(value, dict):  # runDefinition.environment: {name, version, assetId?, docker: {baseImage}}
        name, version = value.get("name"), value.get("version")
        if name and version:
            return f"azureml:{name}:{version}"
        return str(value.get("assetId") or (value.get("docker") or {}).get("baseImage") or name or "")
    if not isinstance(value, str):
        name, version = getattr(value, "name", None), getattr(value, "version", None)
        if name and version:
            return f"azureml:{name}:{version}"
        return getattr(value, "image", None) or str(name or "")
    match = re.search(r"/environments/([^/]+)/versions/([^/]+)$", value)
    if match and "/registries/" not in value:
        return f"azureml:{match.group(1)}:{match.group(2)}"
    if "/" not in value and value.count(":") == 1 and not value.startswith("azureml:"):
        return f"azureml:{value}"
    return value


def clean(values: dict) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v not in (None, "")}


def describe_io(value) -> dict[str, str]:
    """A job input/output entity (Input, Output, NodeInput, a literal) as a plain binding dict."""
    data = value
    for _ in range(4):  # NodeInput / NodeOutput / PipelineInput wrap the real value in `_data`
        inner = getattr(data, "_data", None)
        if inner is None or inner is data:
            break
        data = inner
    if data is None or data is value and hasattr(value, "_data"):
        kind = getattr(value, "type", None)
        return clean({"type": kind}) if isinstance(kind, str) else {}
    if isinstance(data, str):
        return {"binding": data} if data.strip().startswith("${{") else {"type": "literal", "value": data}
    if isinstance(data, (bool, int, float)):
        return {"type": "literal", "value": str(data)}
    binding = getattr(data, "_data_binding", None)
    if callable(binding) and not hasattr(data, "path"):
        return {"binding": str(binding())}
    if isinstance(data, dict):
        return rest_io(data)
    return clean({"type": getattr(data, "type", None), "path": getattr(data, "path", None), "mode": getattr(data, "mode", None)})


def rest_io(value) -> dict[str, str]:
    """A REST input/output dict (`{"value": "${{...}}", "job_input_type": "literal"}`, `{"uri": ...}`)."""
    if not isinstance(value, dict):
        return describe_io(value)
    kind = next((value[k] for k in ("job_input_type", "jobInputType", "job_output_type", "jobOutputType", "type") if value.get(k)), None)
    literal = value.get("value")
    if isinstance(literal, str) and literal.strip().startswith("${{"):
        return {"binding": literal}
    if str(kind).lower() == "literal":
        return {"type": "literal", "value": str(literal)}
    return clean({"type": kind, "path": value.get("uri") or value.get("path"), "mode": value.get("mode")})


def asset_io(value) -> dict[str, str]:
    """Run history's TypedAssetReference (assetId, type)."""
    get = value.get if isinstance(value, dict) else lambda k, d=None: getattr(value, {"assetId": "asset_id"}.get(k, k), d)
    return clean({"type": get("type"), "path": get("assetId")})


def _quiet_sdk_loggers() -> None:
    """azure-ai-ml and azureml-mlflow log to stdlib logging; keep their chatter out of our output."""
    import logging

    for name in ("azure", "azureml", "azure.ai.ml", "msal", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
