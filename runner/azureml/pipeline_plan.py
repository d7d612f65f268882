"""Pipeline replay, the plan: which Azure ML job each source root becomes (steps, sub-pipelines,
edges, trials, names), before any azure-ai-ml object exists. See runner.azureml.pipeline."""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


from runner.core.errors import UsageError
from runner.engine.mapping import Mapping
from runner.engine.ledger import is_own_tag
from runner.core.records import TERMINAL_STATUSES, JobRecord
from runner.azureml.step import mirrors_failure


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
# (at most 250 rows of one metric name and 1,000 rows per request) and file copy. Rough, and said so where it is printed.
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
