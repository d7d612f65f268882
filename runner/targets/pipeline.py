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

import hashlib
import json
import random
import re
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from loguru import logger

from runner.errors import EXIT_DIFFERENCES, EXIT_OK, UsageError
from runner.mapping import Mapping
from runner.ledger import ORIGINAL_DEPTH, ORIGINAL_EXPERIMENT, ORIGINAL_JOB_ID, ORIGINAL_WORKSPACE, is_own_tag
from runner.model import TERMINAL_STATUSES, JobRecord
from runner.step import ORIGINAL_STEP, mirrors_failure

ROOT = Path(__file__).resolve().parents[2]
# replay_step.yml ships inside the package (pyproject package data; the image copies components/
# into runner/components), so an installed `replayer` finds it from any folder; a checkout has
# it in components/.
COMPONENT_CANDIDATES = (Path(__file__).resolve().parents[1] / "components" / "replay_step.yml", ROOT / "components" / "replay_step.yml")
SERVERLESS = "serverless"
TRIAL_PARENTS = ("sweep", "automl")
SAMPLINGS = ("best", "first", "random")
MAX_NAME = 64
# Ports of replay_step itself; an original port of the same name is renamed orig_<name>.
RESERVED_PORTS = ("manifest", "job_id", "tags", "mirror_status", "credential", "client_id", "original_logs", "artifacts")
SIBLING = re.compile(r"^\$\{\{\s*parent\.jobs\.([^.\s]+)\.outputs\.([^.\s}]+)\s*\}\}$")
PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([^.\s}]+)\s*\}\}$")
PARENT_OUTPUT = re.compile(r"^\$\{\{\s*parent\.outputs\.([^.\s}]+)\s*\}\}$")
OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]")
INPUT_REF = re.compile(r"\$\{\{\s*inputs\.(\w+)\s*\}\}")
LOWER_IS_BETTER = ("loss", "error", "mae", "mse", "rmse", "mape", "log_loss")
REPLAY_MODE = "replay.mode"

# Cost estimate: each step job pays for start-up (image pull, mounts) and then for its logging
# (at most 250 metric rows per request) and file copy. Rough, and said so where it is printed.
STEP_OVERHEAD_MINUTES = 2.0
POINTS_PER_MINUTE = 100_000
BYTES_PER_MINUTE = 3_000_000_000


@dataclass
class PipelineOptions:
    compute: str = SERVERLESS
    environment: str | None = None  # default: the component's, i.e. environments/replayer.yml
    component: str | None = None  # the replay_step component YAML (default components/replay_step.yml)
    manifest_uri: str | None = None  # where the jobs read the manifest; default: the local folder, uploaded by azure-ai-ml
    expand_trials: bool = False
    trial_sampling: str = "best"
    max_trials: int | None = None
    trial_metric: str | None = None
    seed: int = 0
    mirror_status: bool = True
    parallel: int = 4
    mapping: Mapping = field(default_factory=Mapping)  # --rename-file, --import-source-tags, --use-source-user

    def check(self) -> "PipelineOptions":
        if self.trial_sampling not in SAMPLINGS:
            raise UsageError(f"--trial-sampling {self.trial_sampling!r}: expected one of {', '.join(SAMPLINGS)}")
        if self.max_trials is not None and (not isinstance(self.max_trials, int) or self.max_trials < 1):
            raise UsageError(f"--max-trials {self.max_trials!r}: expected a positive whole number")
        if not self.compute:
            raise UsageError("--compute: give a compute cluster name or `serverless`")
        return self


# -- the plan: one tree of steps per root ----------------------------------------------------------


@dataclass
class Port:
    kind: str  # "data" (uri_folder) or "string"
    value: str  # a ${{parent...}} binding or a literal


@dataclass
class Step:
    """A node of the replayed tree: a container (pipeline component / the root pipeline) or a leaf."""

    record: JobRecord
    name: str
    role: str  # pipeline | step | parent | trial | pipeline_run | parent_run
    children: list["Step"] = field(default_factory=list)
    inputs: dict[str, Port] = field(default_factory=dict)
    outputs: dict[str, str | None] = field(default_factory=dict)  # port -> ${{parent.outputs.Q}} or None
    tags: dict[str, str] = field(default_factory=dict)  # extra tags for the replayed run (automl_*)
    mirror_failure: bool = False
    trials: tuple[int, int] | None = None  # (total, expanded) for a sweep/AutoML group
    ranking: str = ""  # how trials were ranked, for --debug-hierarchy
    dropped: list[str] = field(default_factory=list)  # bindings that could not be rebuilt

    @property
    def container(self) -> bool:
        return self.role == "pipeline"

    def walk(self, depth: int = 0) -> Iterator[tuple[int, "Step"]]:
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)

    def leaves(self) -> list["Step"]:
        return [s for _, s in self.walk() if not s.container]


@dataclass
class RootPlan:
    record: JobRecord
    tree: Step
    action: str = "submit"  # submit | skip (already in the target) | pending (not finished at the source)
    existing: str = ""  # the target job holding it, when skipped
    minutes: float = 0.0

    @property
    def kind(self) -> str:
        return "pipeline job" if self.tree.container else "command job"

    def edges(self) -> list[str]:
        found = []
        for _, step in self.tree.walk():
            for child in step.children:
                for port, value in child.inputs.items():
                    match = SIBLING.match(value.value)
                    if match:
                        found.append(f"{step.name}: {match.group(1)}.{match.group(2)} -> {child.name}.{port}")
        return found


def safe_name(text: str, taken: set[str] | None = None) -> str:
    """A pipeline step name matching ^[a-z_][a-z0-9_]*, unique among `taken` (which it joins)."""
    name = re.sub(r"[^a-z0-9_]+", "_", str(text).lower()).strip("_") or "step"
    name = re.sub(r"_+", "_", name)
    if not re.match(r"[a-z_]", name):
        name = f"s_{name}"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}_{hashlib.sha1(str(text).encode()).hexdigest()[:8]}"
    if taken is not None:
        base, n = name, 2
        while name in taken:
            name = f"{base[: MAX_NAME - 4]}_{n}"
            n += 1
        taken.add(name)
    return name


def port_name(text: str) -> str:
    """An input/output name azure-ai-ml accepts; replay_step's own port names are kept free."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", str(text)).strip("_") or "port"
    if not re.match(r"[A-Za-z_]", name):
        name = f"p_{name}"
    return f"orig_{name}" if name in RESERVED_PORTS else name


def user_tags(job: JobRecord) -> dict[str, str]:
    """The original's own tags for a job or node (MLflow system tags and our own prefixes left out)."""
    return {k: v for k, v in job.tags.items() if not k.startswith("mlflow.") and not is_own_tag(k)}


class Planner:
    """Turns the records of one root tree into a Step tree (no Azure calls)."""

    def __init__(self, options: PipelineOptions):
        self.options = options

    def plan(self, root: JobRecord, members: list[JobRecord]) -> RootPlan:
        kids: dict[str, list[JobRecord]] = defaultdict(list)
        for job in members:
            if job.parent_id and job is not root:
                kids[job.parent_id].append(job)
        self.kids = kids
        self._fed: dict[str, set[str]] = {}
        name = safe_name(root.name or root.source_id)
        if self._is_container(root):
            tree = Step(root, name, "pipeline", inputs=self._root_inputs(root))
            self._fill(tree, [])
        else:
            tree = Step(root, name, "step")
            tree.inputs = self._ports(root, None, {}, tree)
            tree.outputs = {port_name(p): None for p in root.outputs}
            tree.mirror_failure = self.options.mirror_status and mirrors_failure(root.status, [])
        return RootPlan(root, tree)

    def _is_container(self, job: JobRecord) -> bool:
        return job.kind in TRIAL_PARENTS or bool(self.kids.get(job.source_id)) or (job.kind == "pipeline" and self._has_history(job))

    @staticmethod
    def _has_history(job: JobRecord) -> bool:
        return bool(job.params or job.latest_metrics)

    def _root_inputs(self, root: JobRecord) -> dict[str, Port]:
        """A root pipeline's inputs: literals keep their value, source data becomes a string naming it."""
        ports = {}
        for port, spec in root.inputs.items():
            value = spec.get("value") if spec.get("type") == "literal" else spec.get("path")
            if value is not None:
                ports[port_name(port)] = Port("string", str(value))
        return ports

    def _members(self, container: Step) -> list[tuple[str, JobRecord, dict[str, str]]]:
        """(role, record, extra tags) of the steps inside a container, in order."""
        job = container.record
        children = self.kids.get(job.source_id, [])
        if job.kind in TRIAL_PARENTS:
            return self._trial_group(container, job, children)
        members = []
        if self._has_history(job):  # the container's own params/metrics need a step of their own
            members.append(("pipeline_run" if job.kind == "pipeline" else "parent_run", job, {}))
        return members + [("step", child, {}) for child in children]

    def _fill(self, container: Step, ancestors: list[str]) -> None:
        """Build a container's steps: names first, then edges, then outputs, then sub-containers."""
        statuses = [container.record.status, *ancestors]
        taken: set[str] = set()
        steps: list[Step] = []
        by_original: dict[str, Step] = {}
        for role, job, extra in self._members(container):
            own = job is container.record
            name = safe_name(role if own else (job.step_name or job.name or job.source_id), taken)
            step = Step(job, name, "pipeline" if (not own and self._is_container(job)) else role, tags=extra)
            steps.append(step)
            if not own:
                by_original.setdefault(job.step_name or job.name or job.source_id, step)
        for step in steps:
            own = step.record is container.record
            if own:  # the container's own history: no ports, it is not a step of the original graph
                step.mirror_failure = self.options.mirror_status and mirrors_failure(step.record.status, ancestors)
                continue
            step.inputs = self._ports(step.record, container, by_original, step)
            if not step.container:
                step.mirror_failure = self.options.mirror_status and mirrors_failure(step.record.status, statuses)
        for step in steps:
            if step.record is container.record:
                continue
            for port, spec in step.record.outputs.items():
                binding = PARENT_OUTPUT.match(spec.get("binding", ""))
                name = port_name(port)
                if step.container and name not in self._fed_outputs(step.record):
                    if binding:
                        step.dropped.append(f"out {port}: {spec['binding']} (nothing inside feeds it)")
                    continue
                step.outputs[name] = f"${{{{parent.outputs.{port_name(binding.group(1))}}}}}" if binding else step.outputs.get(name)
                if binding:
                    container.outputs.setdefault(port_name(binding.group(1)), None)
        container.children = steps
        for step in steps:
            if step.container:
                self._fill(step, statuses)

    def _ports(self, job: JobRecord, container: Step | None, siblings: dict[str, Step], step: Step) -> dict[str, Port]:
        """The inputs of a step, rebuilt from its bindings (see the module docstring)."""
        ports: dict[str, Port] = {}
        for port, spec in job.inputs.items():
            name = port_name(port)
            binding = spec.get("binding")
            if binding:
                sibling = SIBLING.match(binding)
                parent = PARENT_INPUT.match(binding)
                if sibling and sibling.group(1) in siblings:
                    source = siblings[sibling.group(1)]
                    out = port_name(sibling.group(2))
                    if source.container and out not in self._fed_outputs(source.record):
                        step.dropped.append(f"in {port}: {binding} (that sub-pipeline output is fed by nothing)")
                        continue
                    source.outputs.setdefault(out, None)
                    ports[name] = Port("data", f"${{{{parent.jobs.{source.name}.outputs.{out}}}}}")
                elif parent and container is not None and port_name(parent.group(1)) in container.inputs:
                    outer = container.inputs[port_name(parent.group(1))]
                    ports[name] = Port(outer.kind, f"${{{{parent.inputs.{port_name(parent.group(1))}}}}}")
                else:
                    step.dropped.append(f"in {port}: {binding}")
            elif spec.get("type") == "literal" and spec.get("value") is not None:
                ports[name] = Port("string", str(spec["value"]))
            elif spec.get("path"):
                ports[name] = Port("string", str(spec["path"]))
        return ports

    def _fed_outputs(self, job: JobRecord) -> set[str]:
        """Outputs of a sub-pipeline that some step inside feeds (`${{parent.outputs.Q}}`)."""
        if job.source_id not in self._fed:
            self._fed[job.source_id] = set()  # guards against cycles in damaged records
            fed = set()
            for child in self.kids.get(job.source_id, []):
                for port, spec in child.outputs.items():
                    binding = PARENT_OUTPUT.match(spec.get("binding", ""))
                    if binding and (not self._is_container(child) or port_name(port) in self._fed_outputs(child)):
                        fed.add(port_name(binding.group(1)))
            self._fed[job.source_id] = fed
        return self._fed[job.source_id]

    # -- sweep / AutoML trials ----------------------------------------------------------------

    def _trial_group(self, container: Step, job: JobRecord, trials: list[JobRecord]):
        options = self.options
        metric, goal = trial_metric(job, trials, options.trial_metric)
        ranked = rank_trials(trials, metric, goal)
        rank = {t.source_id: i + 1 for i, t in enumerate(ranked)}
        best = ranked[0].source_id if ranked and metric and metric in ranked[0].latest_metrics else ""
        chosen = sample_trials(trials, ranked, options) if options.expand_trials else []
        container.trials = (len(trials), len(chosen))
        container.ranking = f"{options.trial_sampling if options.expand_trials else 'not expanded'}; ranked by {metric or '(no metric)'} ({goal})"
        common = {"automl_parent_id": job.source_id, "automl_total_trials": str(len(trials)), "automl_expanded_trials_count": str(len(chosen))}
        members = [("parent", job, {**common, "automl_role": "parent", "automl_best_trial": best})]
        for trial in chosen:
            members.append(("trial", trial, {
                **common, "automl_role": "trial", "automl_trial_rank": str(rank[trial.source_id]),
                "automl_best_trial": str(trial.source_id == best).lower(),
            }))
        return members


def trial_metric(parent: JobRecord, trials: list[JobRecord], given: str | None) -> tuple[str, str]:
    """(metric, goal) to rank trials by: given, else the sweep's primary metric, AutoML's, or the most common one."""
    name, goal = given or "", ""
    if not name:
        config = parent.properties.get("primary_metric_config")
        if config:
            try:
                data = json.loads(config)
                name, goal = str(data.get("name") or ""), str(data.get("goal") or "").lower()
            except (json.JSONDecodeError, AttributeError):
                pass
    if not name:
        name = parent.properties.get("primary_metric") or parent.properties.get("primaryMetric") or ""
    if not name:
        counts: dict[str, int] = defaultdict(int)
        for trial in trials:
            for key in trial.latest_metrics:
                counts[key] += 1
        name = max(sorted(counts), key=lambda k: counts[k]) if counts else ""
    if goal not in ("maximize", "minimize"):
        goal = "minimize" if any(word in name.lower() for word in LOWER_IS_BETTER) else "maximize"
    return name, goal


def rank_trials(trials: list[JobRecord], metric: str, goal: str) -> list[JobRecord]:
    """Best first by `metric`; trials without it (or NaN) after, in start order."""
    def key(trial: JobRecord):
        value = trial.latest_metrics.get(metric) if metric else None
        scored = value is not None and value == value
        return (0 if scored else 1, (-value if goal == "maximize" else value) if scored else 0, trial.start_time or 0, trial.source_id)

    return sorted(trials, key=key)


def sample_trials(trials: list[JobRecord], ranked: list[JobRecord], options: PipelineOptions) -> list[JobRecord]:
    limit = options.max_trials or len(trials)
    if options.trial_sampling == "best":
        return ranked[:limit]
    in_order = sorted(trials, key=lambda t: (t.start_time or 0, t.created_time or 0, t.source_id))
    if options.trial_sampling == "first":
        return in_order[:limit]
    picked = set(t.source_id for t in random.Random(options.seed).sample(in_order, min(limit, len(in_order))))
    return [t for t in in_order if t.source_id in picked]


def group_roots(source) -> Iterator[tuple[JobRecord, list[JobRecord]]]:
    """(root, its whole tree) for every root of the source, in source order."""
    trees: dict[str, list[JobRecord]] = {}
    order: list[str] = []
    for job in source.jobs():
        root = job.source_id if not job.parent_id else (job.root_id or job.parent_id)
        if root not in trees:
            trees[root] = []
            order.append(root)
        trees[root].append(job)
    for root in order:
        members = trees.pop(root)
        yield members[0], members


def estimate_minutes(source, tree: Step) -> float:
    """Compute-minutes a tree's step jobs will bill, roughly (see the constants above)."""
    total = 0.0
    for leaf in tree.leaves():
        points = sum(1 for _ in source.metrics(leaf.record))
        size = sum(ref.size for ref in source.artifacts(leaf.record))
        total += STEP_OVERHEAD_MINUTES + points / POINTS_PER_MINUTE + size / BYTES_PER_MINUTE
    return total


# -- azure-ai-ml entities -----------------------------------------------------------------------


def default_component() -> Path:
    """The shipped replay_step component: the package's copy, else the checkout's."""
    return next((path for path in COMPONENT_CANDIDATES if path.is_file()), COMPONENT_CANDIDATES[-1])


class JobBuilder:
    """Fresh azure-ai-ml job objects for RootPlans (never a fetched job: that only patches tags)."""

    def __init__(self, options: PipelineOptions, manifest_uri: str, workspace: str, experiments: dict | None = None):
        from azure.ai.ml import load_component

        self.options, self.manifest_uri, self.workspace = options, manifest_uri, workspace
        self.experiments = experiments or {}  # source experiment name -> Experiment (for source facts)
        path = Path(options.component) if options.component else default_component()
        if not path.is_file():
            raise UsageError(f"replay_step component {path} not found; give --component PATH (components/replay_step.yml of this repository)")
        self.base = load_component(path)
        self.environment = options.environment or self.base.environment
        self._leaf_cache: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def build(self, plan: RootPlan):
        """A Command node (submitted as a command job) or a PipelineJob for one root."""
        from azure.ai.ml import Input
        from azure.ai.ml.entities import PipelineJob, PipelineJobSettings

        tree, job = plan.tree, plan.record
        manifest = Input(type="uri_folder", path=self.manifest_uri, mode="ro_mount")
        tags = {**user_tags(job), **self.lineage(job), REPLAY_MODE: "pipeline", **self.mapped(job)}
        if not tree.container:
            return self._command_job(tree, manifest, tags)
        jobs = self._nodes(tree)
        settings = PipelineJobSettings(default_compute=self.options.compute, force_rerun=True)
        if any(leaf.mirror_failure for leaf in tree.leaves()):
            settings.continue_on_step_failure = True  # a mirrored failure must not cancel its siblings
        return PipelineJob(
            jobs=jobs,
            inputs={"manifest": manifest, **{k: p.value for k, p in tree.inputs.items()}},
            outputs=self._outputs(tree),
            settings=settings,
            experiment_name=self.options.mapping.experiment_name(job.experiment),
            display_name=job.name or job.source_id,
            description=job.description or None,
            tags=tags,
        )

    def lineage(self, job: JobRecord) -> dict[str, str]:
        tags = {ORIGINAL_JOB_ID: job.source_id, ORIGINAL_WORKSPACE: self.workspace, ORIGINAL_EXPERIMENT: job.experiment, ORIGINAL_DEPTH: str(job.depth)}
        if job.step_name:
            tags[ORIGINAL_STEP] = job.step_name
        return tags

    def mapped(self, job: JobRecord) -> dict[str, str]:
        """Source facts and the source user as tags on a job (Azure ML's own user is the submitter)."""
        return self.options.mapping.job_tags(job, self.experiments.get(job.experiment))

    @staticmethod
    def _outputs(step: Step) -> dict:
        from azure.ai.ml import Output

        return {q: Output(type="uri_folder") for q in step.outputs}

    def _nodes(self, container: Step) -> dict:
        jobs = {}
        for child in container.children:
            if child.container:
                node = self._pipeline_component(child)(manifest="${{parent.inputs.manifest}}", **{k: p.value for k, p in child.inputs.items()})
            else:
                node = self._leaf_node(child, "${{parent.inputs.manifest}}")
            node.display_name = child.record.name or child.record.source_id
            if not child.container and self.options.compute != SERVERLESS:
                node.compute = self.options.compute  # the named cluster on every step, not only as the default
            node.tags = {**self.lineage(child.record), **child.tags, **self.mapped(child.record)}
            for port, binding in child.outputs.items():
                if binding:
                    node.outputs[port] = binding
            jobs[child.name] = node
        return jobs

    def _pipeline_component(self, step: Step):
        from azure.ai.ml import Input
        from azure.ai.ml.entities import PipelineComponent

        inputs = {"manifest": Input(type="uri_folder")}
        inputs.update({k: Input(type="uri_folder" if p.kind == "data" else "string") for k, p in step.inputs.items()})
        return PipelineComponent(
            display_name=step.record.name or step.record.source_id,
            description=step.record.description or None,
            tags=user_tags(step.record),
            inputs=inputs,
            outputs=self._outputs(step),
            jobs=self._nodes(step),
        )

    def _leaf_component(self, inputs: dict[str, str], outputs: tuple[str, ...]):
        """replay_step with the original's ports added (edges and literals); cached by shape."""
        from azure.ai.ml import Input, Output
        from azure.ai.ml.entities import CommandComponent

        key = (tuple(sorted(inputs.items())), outputs)
        with self._lock:
            if key not in self._leaf_cache:
                base = self.base
                command = base.command
                if outputs:  # a marker file in each edge output: the step downstream mounts an existing folder
                    command += " --mark-outputs " + ",".join(f"'${{{{outputs.{o}}}}}'" for o in outputs)
                self._leaf_cache[key] = CommandComponent(
                    display_name=base.display_name,
                    description=base.description,
                    tags=dict(base.tags or {}),
                    command=command,
                    environment=self.environment,
                    is_deterministic=False,  # never reuse an earlier run's result: the step's work is its logging
                    inputs={**dict(base.inputs), **{k: Input(type="uri_folder" if kind == "data" else "string") for k, kind in inputs.items()}},
                    outputs={**dict(base.outputs), **{o: Output(type="uri_folder") for o in outputs}},
                )
            return self._leaf_cache[key]

    def _leaf_values(self, step: Step, manifest) -> tuple[object, dict]:
        component = self._leaf_component({k: p.kind for k, p in step.inputs.items()}, tuple(sorted(step.outputs)))
        values = {"manifest": manifest, "job_id": step.record.source_id, "mirror_status": self.options.mirror_status}
        if step.tags:
            values["tags"] = json.dumps(step.tags, sort_keys=True).replace("'", "\\u0027")
        values.update({k: p.value for k, p in step.inputs.items()})
        return component, values

    def _leaf_node(self, step: Step, manifest):
        component, values = self._leaf_values(step, manifest)
        return component(**values)

    def _command_job(self, step: Step, manifest, tags: dict[str, str]):
        """A standalone job: replay_step's command as a command job (no component defaults apply there).

        A Command node, which azure-ai-ml submits as a command job (it refuses CommandJob objects).
        """
        from azure.ai.ml import Output, command

        component, values = self._leaf_values(step, manifest)
        values["mirror_status"] = str(self.options.mirror_status).lower()
        values["credential"] = component.inputs["credential"].default
        job = step.record
        return command(
            command=resolve_optional(component.command, values),
            environment=self.environment,
            inputs=values,
            outputs={name: Output(type="uri_folder") for name in component.outputs},
            compute=None if self.options.compute == SERVERLESS else self.options.compute,
            experiment_name=self.options.mapping.experiment_name(job.experiment),
            display_name=job.name or job.source_id,
            description=job.description or None,
            tags=tags,
        )


def resolve_optional(command: str, values: dict) -> str:
    """A component command's `$[[...]]` blocks for a command job: kept when all their inputs are given."""
    def block(match: re.Match) -> str:
        return match.group(1) if all(values.get(n) is not None for n in INPUT_REF.findall(match.group(1))) else ""

    return re.sub(r"\s+", " ", OPTIONAL_BLOCK.sub(block, command)).strip()


# -- emitting YAML ----------------------------------------------------------------------------------


def emit(job, folder: Path) -> Path:
    """Write `job` as YAML that `az ml job create -f` (and `load_job`) reads: sub-pipelines as files.

    azure-ai-ml's own dump drops node display names and tags, writes booleans as 1, and inlines
    pipeline components, which its loader refuses; all three are put right here.
    """
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1, 1_000_000))

    def nodes(jobs: dict, entities: dict, here: Path, prefix: str) -> None:
        for name, node in (jobs or {}).items():
            entity = entities[name]
            node["display_name"] = entity.display_name or name
            if entity.tags:
                node["tags"] = dict(entity.tags)
            if isinstance(node.get("inputs", {}).get("mirror_status"), int):
                node["inputs"]["mirror_status"] = bool(node["inputs"]["mirror_status"])
            component = node.get("component")
            if not isinstance(component, dict):
                continue
            for key in ("name", "version"):
                component.pop(key, None)
            if node.get("type") == "pipeline":
                file = folder / "components" / f"{next(counter):03d}_{prefix}{name}.yml"
                file.parent.mkdir(exist_ok=True)
                nodes(component.get("jobs"), entity.component.jobs, file.parent, f"{prefix}{name}__")
                component = {"$schema": "https://azuremlschemas.azureedge.net/latest/pipelineComponent.schema.json", **component}
                file.write_text(yaml.safe_dump(component, sort_keys=False, allow_unicode=True), encoding="utf-8")
                node["component"] = "./" + file.relative_to(here).as_posix()

    from azure.ai.ml.entities import Command

    data = json.loads(json.dumps((job._to_job() if isinstance(job, Command) else job)._to_dict()))
    schema = "pipelineJob" if data.get("type") == "pipeline" else "commandJob"
    nodes(data.get("jobs"), getattr(job, "jobs", {}), folder, "")
    data = {"$schema": f"https://azuremlschemas.azureedge.net/latest/{schema}.schema.json", **data}
    path = folder / "job.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# -- the target workspace -----------------------------------------------------------------------


class PipelineTarget:
    """An Azure ML workspace to submit jobs to, and its ledger of replayed roots."""

    def __init__(self, uri: str, credential=None):
        from runner import retry
        from runner.sources.azureml import _quiet_sdk_loggers, parse_workspace, workspace_credential

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
        from runner.sources.azureml import AzuremlSource

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

        from runner.sources.azureml import first_line

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


def plan_roots(source, options: PipelineOptions, ledger: dict[str, str]) -> Iterator[RootPlan]:
    planner = Planner(options)
    for root, members in group_roots(source):
        plan = planner.plan(root, members)
        if root.source_id in ledger:
            plan.action, plan.existing = "skip", ledger[root.source_id]
        elif root.status not in TERMINAL_STATUSES:
            plan.action = "pending"
        else:
            plan.minutes = estimate_minutes(source, plan.tree)
        yield plan


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
