"""Pipeline replay, the jobs: a plan (runner.azureml.pipeline_plan) built into fresh azure-ai-ml
entities, every leaf the `replay_step` component, and written out as YAML."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path


from runner.core.errors import UsageError
from runner.engine.ledger import ORIGINAL_DEPTH, ORIGINAL_EXPERIMENT, ORIGINAL_JOB_ID, ORIGINAL_WORKSPACE
from runner.core.records import JobRecord
from runner.azureml.step import ORIGINAL_STEP

from runner.azureml.pipeline_plan import (
    COMPONENT_CANDIDATES, INPUT_REF, OPTIONAL_BLOCK, REPLAY_MODE, SERVERLESS, PipelineOptions, RootPlan, Step, user_tags,
)


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
