"""Pipeline replay: every root of a manifest becomes a real Azure ML job in the target workspace.

Where the direct target writes runs through MLflow, this target rebuilds the *shape* of the
original jobs with azure-ai-ml entities, always fresh objects (re-submitting a fetched job only
patches its tags):

- a standalone job becomes a command job running the `replay_step` component
  (components/replay_step.yml, `replayer step`, runner/step.py);
- a pipeline becomes one pipeline job; each nested sub-pipeline is a pipeline component inside it
  (the whole tree stays one job, neither flattened nor split), each step a `replay_step` node;
- edges come back from the bindings in `JobRecord.inputs` / `outputs`:
  `${{parent.jobs.A.outputs.B}}` wires sibling A's output B to the input, `${{parent.inputs.Z}}`
  and `${{parent.outputs.Q}}` cross a sub-pipeline's boundary; every rebuilt data port is a
  `uri_folder`; literal inputs stay string inputs with their values, and data the original read
  from its own workspace (`azureml:fraud-raw:5`) is kept as a string naming it, since that asset
  is not in the target;
- a sweep or AutoML job becomes a pipeline (component) holding a `parent` step (the sweep's own
  history) and, with `expand_trials`, one step per sampled trial (best | first | random, at most
  `max_trials`), tagged `automl_*`;
- step names are mapped onto `^[a-z_][a-z0-9_]*` deterministically (the original name stays in
  the `original_step_name` tag), display names are kept.

The target workspace is its own ledger: a root already there (a job whose `original_job_id` and
`original_workspace` tags match) is skipped, so submitting again creates nothing twice.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from runner.core.errors import EXIT_DIFFERENCES, EXIT_OK, UsageError
from runner.engine.ledger import ORIGINAL_JOB_ID, ORIGINAL_WORKSPACE

from runner.azureml.pipeline_jobs import JobBuilder, emit
from runner.azureml.pipeline_plan import (
    PARENT_INPUT, SERVERLESS, SIBLING, PipelineOptions, Port, RootPlan, plan_roots, safe_name,
)


class PipelineTarget:
    """An Azure ML workspace to submit jobs to, and its ledger of replayed roots."""

    def __init__(self, uri: str, credential=None):
        from runner.core import retry
        from runner.azureml.credentials import workspace_credential
        from runner.azureml.source import _quiet_sdk_loggers
        from runner.azureml.workspace import parse_workspace

        self.ref = parse_workspace(uri)
        self.credential_name, self.credential = workspace_credential(self.ref, credential)
        retry.configure()
        from azure.ai.ml import MLClient

        _quiet_sdk_loggers()
        with self.errors("open the target workspace"):
            self.ml = MLClient(
                self.credential, self.ref.subscription_id, self.ref.resource_group, self.ref.workspace_name,
                enable_telemetry=False, show_progress=False, **retry.azure_retry_kwargs(),
            )
            self.ml.workspaces.get(self.ref.workspace_name)

    def errors(self, doing: str):
        """The AzureML source's one-line errors for the usual failures (same workspace naming)."""
        from runner.azureml.source import AzuremlSource

        return AzuremlSource._azure_errors(self, doing)

    # What AzureML source's error messages name; the same workspace reference here.
    _tenant = property(lambda self: self.ref.tenant_id or "(the credential's default)")
    _where = property(lambda self: f"workspace {self.ref.workspace_name} (resource group {self.ref.resource_group}, subscription {self.ref.subscription_id})")

    def describe(self) -> dict:
        return {"kind": "azureml-pipeline", "uri": self.ref.uri}

    def check_compute(self, name: str) -> None:
        """A named compute must exist in the target before anything is submitted (serverless needs none)."""
        from azure.core.exceptions import ResourceNotFoundError

        with self.errors(f"look up compute {name}"):
            try:
                self.ml.compute.get(name)
            except ResourceNotFoundError:
                raise UsageError(
                    f"--compute {name}: no such compute in workspace {self.ref.workspace_name}; "
                    "give the name of a cluster there, create it first, or use --compute serverless"
                ) from None

    def ledger(self, workspace: str) -> dict[str, str]:
        """original_job_id -> target job name, for roots replayed from `workspace` (archived ones too)."""
        from azure.ai.ml.constants import ListViewType

        found = {}
        with self.errors("list the target's replayed jobs"):
            for job in self.ml.jobs.list(list_view_type=ListViewType.ALL, tag=ORIGINAL_JOB_ID):
                tags = (job.tags or {}) if job is not None else {}
                if tags.get(ORIGINAL_WORKSPACE) == workspace and tags.get(ORIGINAL_JOB_ID):
                    found.setdefault(tags[ORIGINAL_JOB_ID], job.name)
        return found

    def submit(self, job) -> tuple[str, str]:
        """(job name, Studio URL) of the created job."""
        with self.errors(f"submit {getattr(job, 'display_name', '')}"):
            created = self.ml.jobs.create_or_update(job)
        url = created.studio_url or (
            f"https://ml.azure.com/runs/{created.name}?wsid=/subscriptions/{self.ref.subscription_id}"
            f"/resourcegroups/{self.ref.resource_group}/workspaces/{self.ref.workspace_name}"
        )
        return created.name, url

    def upload_manifest(self, folder: Path) -> str:
        """The manifest folder on the workspace's blob datastore, uploaded once for every job:
        azureml://datastores/workspaceblobstore/paths/LocalUpload/<hash>/<folder>. Left to azure-ai-ml, each job's
        creation would upload it again, and without a progress bar azure-ai-ml never reads a failed
        file's result and waits forever; with one, the failure is raised here."""
        from azure.ai.ml._artifacts._artifact_utilities import _upload_and_generate_remote_uri
        from azure.ai.ml.exceptions import MlException
        from azure.core.exceptions import AzureError

        from runner.azureml.source import first_line

        try:
            uri = _upload_and_generate_remote_uri(self.ml._operation_scope, self.ml.datastores, str(folder), show_progress=True)
        except (AzureError, MlException) as error:
            raise UsageError(
                f"could not upload the manifest {folder} to datastore workspaceblobstore of workspace {self.ref.workspace_name}: "
                f"{type(error).__name__}: {first_line(error)}; grant this identity Storage Blob Data Contributor on the "
                "workspace's storage account, or upload the folder yourself and give --manifest-uri azureml://datastores/D/paths/P"
            ) from None
        logger.info("manifest {} uploaded to {}", folder, uri)
        return uri


def is_local_folder(uri: str) -> bool:
    return "://" not in uri and Path(uri).is_dir()


# -- the command ------------------------------------------------------------------------------------


@dataclass
class SubmitSummary:
    submitted: list[dict] = field(default_factory=list)
    skipped: int = 0
    pending: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    step_jobs: int = 0
    minutes: float = 0.0

    def line(self, dry_run: bool) -> str:
        verb = "would submit" if dry_run else "submitted"
        return (
            f"{verb} {len(self.submitted)} root jobs ({self.step_jobs} step jobs, ~{self.minutes:.0f} compute-minutes estimated), "
            f"skipped {self.skipped} already in the target, {self.pending} not finished at the source, failed {len(self.failed)}"
        )

    @property
    def exit_code(self) -> int:
        return EXIT_DIFFERENCES if self.failed else EXIT_OK


SIGILS = {"submit": "+", "skip": "=", "pending": "~"}


def describe_plan(plan: RootPlan) -> str:
    job, tree = plan.record, plan.tree
    containers = sum(1 for _, s in tree.walk() if s.container) - (1 if tree.container else 0)
    what = {
        "submit": f"{plan.kind}, {len(tree.leaves())} step jobs, {containers} pipeline components, {len(plan.edges())} edges, ~{plan.minutes:.1f} compute-minutes",
        "skip": f"already in the target as {plan.existing}",
        "pending": f"{job.status} at the source: submit again once it has finished",
    }[plan.action]
    return f"{SIGILS[plan.action]} {job.experiment} / {job.name or job.source_id} {job.source_id}: {what}"


def print_hierarchy(plan: RootPlan) -> None:
    for depth, step in plan.tree.walk():
        kind = "pipeline" if step.container else step.role
        parts = [f"    d{depth} {kind:<12} {step.name:<24} {step.record.kind}:{step.record.source_id} [{step.record.status}]"]
        ins = [f"{p} <- {describe_port(v)}" for p, v in step.inputs.items()]
        outs = [f"{p} -> {b.split('.')[-1].rstrip('}')}" if b else p for p, b in step.outputs.items()]
        if ins:
            parts.append("in: " + ", ".join(ins))
        if outs:
            parts.append("out: " + ", ".join(outs))
        if step.trials:
            parts.append(f"trials: {step.trials[1]} of {step.trials[0]} expanded ({step.ranking})")
        if step.mirror_failure:
            parts.append("ends failed (mirrored)")
        for note in step.dropped:
            parts.append(f"not rebuilt: {note}")
        print("  ".join(parts))
    for edge in plan.edges():
        print(f"    edge {edge}")


def describe_port(port: Port) -> str:
    sibling, parent = SIBLING.match(port.value), PARENT_INPUT.match(port.value)
    if sibling:
        return f"{sibling.group(1)}.{sibling.group(2)}"
    if parent:
        return f"parent.{parent.group(1)}"
    return repr(port.value)


def submit(source, target: PipelineTarget | None, options: PipelineOptions, *, manifest_uri: str, dry_run: bool = False,
           debug_hierarchy: bool = False, emit_dir: str | None = None) -> SubmitSummary:
    """Plan every root of `source`; print, emit and (unless dry_run) submit the new ones."""
    options.check()
    if target is not None and options.compute != SERVERLESS:
        target.check_compute(options.compute)
    ledger = target.ledger(source.workspace) if target is not None else {}
    experiments = {e.name: e for e in source.experiments()}
    options.mapping.check_against(list(experiments.values()))
    builder = JobBuilder(options, manifest_uri, source.workspace, experiments) if (emit_dir or not dry_run) else None
    summary = SubmitSummary()
    lock = threading.Lock()
    print(f"plan for {'a dry run' if dry_run else 'submission'} (+ submit, = already in the target, ~ not finished at the source):")

    def one(plan: RootPlan, job) -> None:
        try:
            name, url = target.submit(job)
        except Exception as error:  # noqa: BLE001 - one root's failure must not stop the others
            logger.opt(exception=error).debug("submission detail for {}", plan.record.source_id)
            with lock:
                summary.failed.append((plan.record.source_id, f"{type(error).__name__}: {error}"))
            logger.error("failed to submit {}: {}", plan.record.source_id, error)
            return
        with lock:
            summary.submitted.append({"original_job_id": plan.record.source_id, "name": name, "studio_url": url})
        print(f"submitted {plan.record.source_id} as {name}: {url}", flush=True)

    with ThreadPoolExecutor(max(1, options.parallel), thread_name_prefix="submit") as pool:
        for index, plan in enumerate(plan_roots(source, options, ledger)):
            print(describe_plan(plan))
            if debug_hierarchy:
                print_hierarchy(plan)
            if plan.action != "submit":
                summary.skipped += plan.action == "skip"
                summary.pending += plan.action == "pending"
                continue
            summary.step_jobs += len(plan.tree.leaves())
            summary.minutes += plan.minutes
            if not dry_run and builder is not None and is_local_folder(builder.manifest_uri):  # once, before the first job
                builder.manifest_uri = target.upload_manifest(Path(builder.manifest_uri))
            job = builder.build(plan) if builder is not None else None
            if emit_dir:
                path = emit(job, Path(emit_dir) / f"{index:04d}_{safe_name(plan.record.source_id)}")
                print(f"  wrote {path}")
            if dry_run:
                summary.submitted.append({"original_job_id": plan.record.source_id, "name": "", "studio_url": ""})
            else:
                pool.submit(one, plan, job)
    return summary
