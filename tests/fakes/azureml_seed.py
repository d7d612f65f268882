"""The fixture workspace behind the fake AzureML control plane, seeded deterministically.

One declarative list of `Spec` (what a correct extraction must report for each job) drives both
halves of the fake:
- the control plane: top-level jobs as azure-ai-ml REST `JobBase` objects, built the way the SDK
  submits them (`command()`, `dsl.pipeline`, `.sweep()`, `automl.classification()` then
  `_to_rest_object()`), plus the read-only fields the service adds; a run history `Run` for every
  job; pipeline components for the nested sub-pipelines;
- the MLflow half: a real mlflow sqlite store whose run ids are the job names (as in AzureML),
  with params, tags and full metric histories, written before its `mlflow server` starts.

Contents (38 jobs): three standalone command jobs (completed with a 2,500-point loss history,
failed, canceled) and a running one; a pipeline with two levels of nested sub-pipelines and edges
between steps; a failed pipeline (one failed step, one canceled); a sweep with 8 trials (one failed,
one canceled); an AutoML classification with 12 trials. Files and logs (`FILES`) on a standalone
job, a pipeline step and a sweep trial, stored by tests/fakes/azureml_artifacts.py when a test gives
the workspace an artifact store (`upload_files`).
"""
from __future__ import annotations

import contextlib
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from fakes.azureml_control_plane import FakeWorkspace

T0 = 1_709_251_200_000  # 2024-03-01T00:00:00Z
HOUR = 3_600_000
USER = "Ada Lovelace"
USER_OID = "5b0a7c1e-0000-4000-8000-0000000000ad"
ENV = "azureml:fraud-env:3"
COMPUTE = "cpu-cluster"
SWEEP_TRIAL_COMMAND = "python train.py --lr ${{inputs.lr}} --bs ${{inputs.bs}}"
STATUS_TO_MLFLOW = {"Completed": "FINISHED", "Failed": "FAILED", "Canceled": "KILLED", "Running": "RUNNING"}


@dataclass
class Spec:
    """One job as the fixture holds it, and as a correct extraction must report it."""

    name: str
    experiment: str
    kind: str  # what the source must report: command|pipeline|sweep|automl|run
    status: str  # AzureML status
    display_name: str
    created: int
    start: int | None
    end: int | None
    parent: str | None = None
    root: str = ""
    depth: int = 0
    step: str = ""  # node name inside the parent pipeline
    run_type: str = "azureml.scriptrun"
    compute: str = COMPUTE
    environment: str = ""
    command: str = ""
    description: str = ""
    created_by: str = USER
    tags: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)  # key -> (step, ts, value)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # path -> bytes, in the workspace's artifact store
    unhashed: tuple[str, ...] = ()  # files uploaded in blocks: the store keeps no md5 for them

    @property
    def mlflow_status(self) -> str:
        return STATUS_TO_MLFLOW[self.status]


def history(rng: random.Random, start: int, steps: int, base: float, drift: float) -> list[tuple[int, int, float]]:
    return [(s, start + 1000 * s + rng.randrange(0, 900), round(base + drift * s + rng.uniform(-0.01, 0.01), 6)) for s in range(steps)]


def step_command(name: str, inputs, outputs) -> str:
    """The command line of a pipeline step's component: `python NAME.py --in ${{inputs.in}} --out ${{outputs.out}}`."""
    args = [f"--{k} ${{{{inputs.{k}}}}}" for k in inputs] + [f"--{k} ${{{{outputs.{k}}}}}" for k in outputs]
    return " ".join(["python", f"{name}.py", *args])


def iso(ms: int | None):
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


# -- the specs ---------------------------------------------------------------------------------


def build_specs(seed: int = 7) -> tuple[list[Spec], dict]:
    """(specs parents-first, builders) for the fixture workspace."""
    rng = random.Random(seed)
    specs: list[Spec] = []
    builders: dict[str, object] = {}
    hour = iter(range(1, 1000))

    def times(status: str, duration: int = 600_000):
        created = T0 + next(hour) * HOUR
        start = created + 60_000
        end = None if status == "Running" else start + duration
        return created, start, end

    # Standalone command jobs.
    for name, display, status, loss_steps in (
        ("bright_kiwi_01", "baseline-logreg", "Completed", 2500),
        ("calm_river_02", "baseline-xgb", "Failed", 10),
        ("dusty_moon_03", "baseline-rf", "Canceled", 0),
        ("icy_peak_08", "nightly-refresh", "Running", 30),
    ):
        created, start, end = times(status)
        experiment = "misc" if name == "icy_peak_08" else "fraud-baseline"
        spec = Spec(
            name, experiment, "command", status, display, created, start, end,
            environment=ENV, command="python train.py --lr ${{inputs.lr}} --data ${{inputs.data}} --model ${{outputs.model}}",
            description=f"{display} on the March snapshot", tags={"team": "risk", "model": display.split("-")[1]},
            properties={"azureml.git.branch": "main"}, params={"lr": "0.01", "epochs": str(max(loss_steps, 1))},
            inputs={"lr": {"type": "literal", "value": "0.01"}, "data": {"type": "uri_folder", "path": "azureml:fraud-data:2", "mode": "ro_mount"}},
            outputs={"model": {"type": "mlflow_model", "mode": "rw_mount"}},
        )
        if loss_steps:
            spec.metrics["loss"] = history(rng, start, loss_steps, 1.0, -0.0003)
            spec.metrics["accuracy"] = history(rng, start, min(loss_steps, 50), 0.6, 0.005)
        specs.append(spec)
        builders[name] = "command"

    # A pipeline with two levels of nested sub-pipelines and edges between steps.
    created, start, end = times("Completed", 3_600_000)
    root = Spec(
        "eager_owl_04", "fraud-pipelines", "pipeline", "Completed", "fraud-training-pipeline", created, start, end,
        run_type="azureml.PipelineRun", description="prep, nested train block, evaluate", tags={"team": "risk", "pipeline": "v2"},
        inputs={"raw_data": {"type": "uri_folder", "path": "azureml:fraud-raw:5"}},
        outputs={},
    )
    specs.append(root)
    builders[root.name] = "pipeline"
    step_no = iter(range(1, 100))

    def step(parent: Spec, node: str, kind: str, status: str, inputs: dict, outputs: dict, depth: int, offset: int, duration: int = 300_000, **extra) -> Spec:
        name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{parent.name}/{node}/{next(step_no)}"))
        begin = (parent.start or 0) + offset
        spec = Spec(
            name, parent.experiment, kind, status, node, begin - 5_000, begin, begin + duration if status != "Running" else None,
            parent=parent.name, root=parent.root or parent.name, depth=depth, step=node,
            run_type="azureml.PipelineRun" if kind == "pipeline" else "azureml.StepRun",
            inputs=inputs, outputs=outputs, **extra,
        )
        if kind == "pipeline":
            spec.compute = ""  # a sub-pipeline runs nowhere itself
        else:  # what the step's run history record says it ran (its runDefinition)
            spec.command, spec.environment = step_command(node, inputs, outputs), ENV
        specs.append(spec)
        return spec

    bind = lambda text: {"binding": text}  # noqa: E731
    prep = step(root, "prep_data", "command", "Completed", {"raw": bind("${{parent.inputs.raw_data}}")}, {"clean": {"type": "uri_folder"}}, 1, 0,
                params={"sample": "0.25"}, metrics={"rows": [(0, start + 10_000, 184_467.0)]}, tags={"stage": "prep"})
    block = step(root, "train_block", "pipeline", "Completed", {"data": bind("${{parent.jobs.prep_data.outputs.clean}}")}, {"model": {"type": "mlflow_model"}}, 1, 400_000, 2_000_000)
    feat = step(block, "featurize", "command", "Completed", {"data": bind("${{parent.inputs.data}}")}, {"features": {"type": "uri_folder"}}, 2, 10_000,
                metrics={"n_features": [(0, start + 420_000, 312.0)]})
    fit_block = step(block, "fit_block", "pipeline", "Completed", {"features": bind("${{parent.jobs.featurize.outputs.features}}")}, {"model": bind("${{parent.outputs.model}}")}, 2, 400_000, 1_500_000)
    fit = step(fit_block, "fit", "command", "Completed", {"features": bind("${{parent.inputs.features}}"), "lr": {"type": "literal", "value": "0.05"}}, {"model": bind("${{parent.outputs.model}}")}, 3, 10_000,
               params={"lr": "0.05", "max_depth": "6"}, metrics={"train_loss": history(rng, start + 800_000, 400, 0.9, -0.001)}, tags={"stage": "fit"})
    step(fit_block, "score", "command", "Completed", {"model": bind("${{parent.jobs.fit.outputs.model}}")}, {"report": {"type": "uri_file"}}, 3, 900_000,
         metrics={"auc": [(0, start + 1_800_000, 0.912)]})
    step(root, "evaluate", "command", "Completed", {"model": bind("${{parent.jobs.train_block.outputs.model}}")}, {}, 1, 2_500_000,
         metrics={"precision": [(0, start + 2_900_000, 0.83)], "recall": [(0, start + 2_900_000, 0.77)]})

    # A failed pipeline: the train step failed, evaluate was canceled.
    created, start, end = times("Failed", 900_000)
    failed = Spec("fuzzy_fox_05", "fraud-pipelines", "pipeline", "Failed", "fraud-training-pipeline", created, start, end,
                  run_type="azureml.PipelineRun", tags={"team": "risk"}, inputs={"raw_data": {"type": "uri_folder", "path": "azureml:fraud-raw:6"}})
    specs.append(failed)
    builders[failed.name] = "flat-pipeline"
    step(failed, "prep", "command", "Completed", {"raw": bind("${{parent.inputs.raw_data}}")}, {"clean": {"type": "uri_folder"}}, 1, 0)
    step(failed, "train", "command", "Failed", {"data": bind("${{parent.jobs.prep.outputs.clean}}")}, {"model": {"type": "mlflow_model"}}, 1, 300_000,
         metrics={"train_loss": history(rng, start + 300_000, 25, 0.9, -0.002)})
    step(failed, "evaluate", "command", "Canceled", {"model": bind("${{parent.jobs.train.outputs.model}}")}, {}, 1, 600_000)

    # A sweep with 8 trials.
    created, start, end = times("Completed", 5_000_000)
    sweep = Spec("gentle_gale_06", "fraud-hyperopt", "sweep", "Completed", "lr-sweep", created, start, end, run_type="hyperdrive",
                 environment=ENV, command="python train.py --lr ${{search_space.lr}} --bs ${{search_space.bs}}",
                 tags={"team": "risk", "sweep": "random"}, properties={"primary_metric_config": '{"name": "accuracy", "goal": "maximize"}'},
                 inputs={"data": {"type": "uri_folder", "path": "azureml:fraud-data:2"}},
                 metrics={"best_child_by_primary_metric": [(0, start + 4_000_000, 0.93)]})
    specs.append(sweep)
    builders[sweep.name] = "sweep"
    for i in range(8):
        status = {5: "Failed", 7: "Canceled"}.get(i, "Completed")
        begin = start + 60_000 + i * 300_000
        lr, bs = round(0.001 + 0.012 * i, 4), (16, 32)[i % 2]
        trial = Spec(f"{sweep.name}_{i}", sweep.experiment, "command", status, f"{sweep.name}_{i}", begin - 2_000, begin, begin + 250_000,
                     parent=sweep.name, root=sweep.name, depth=1, run_type="azureml.scriptrun",
                     command=SWEEP_TRIAL_COMMAND, environment=ENV,
                     params={"lr": str(lr), "bs": str(bs)}, tags={"hyperparameters": f'{{"lr": {lr}, "bs": {bs}}}'},
                     properties={"_azureml.ComputeTargetType": "amlctrain"})
        if status != "Canceled":
            trial.metrics["accuracy"] = history(rng, begin, 20 if status == "Completed" else 4, 0.7 + 0.01 * i, 0.004)
        specs.append(trial)

    # An AutoML classification with 12 trials.
    created, start, end = times("Completed", 7_000_000)
    automl = Spec("humble_hawk_07", "fraud-automl", "automl", "Completed", "automl-fraud", created, start, end, run_type="automl",
                  tags={"team": "risk"}, properties={"runTemplate": "AutoML", "primary_metric": "AUC_weighted"},
                  inputs={"training_data": {"type": "mltable", "path": "azureml:fraud-train:1"}},
                  metrics={"AUC_weighted": [(0, start + 6_900_000, 0.951)]})
    specs.append(automl)
    builders[automl.name] = "automl"
    algorithms = ["LightGBM", "XGBoostClassifier", "LogisticRegression", "RandomForest", "ExtremeRandomTrees", "SGD",
                  "LightGBM", "XGBoostClassifier", "KNN", "LinearSVM", "VotingEnsemble", "StackEnsemble"]
    for i, algorithm in enumerate(algorithms):
        status = "Canceled" if i == 11 else "Completed"
        begin = start + 120_000 + i * 400_000
        trial = Spec(f"{automl.name}_{i}", automl.experiment, "run", status, f"{automl.name}_{i}", begin - 1_000, begin, begin + 350_000,
                     parent=automl.name, root=automl.name, depth=1, run_type="automl",
                     properties={"runTemplate": "automl_child", "run_algorithm": algorithm, "iteration": str(i)},
                     tags={"model_explain_run": "best_run" if i == 10 else "none"}, params={"algorithm": algorithm})
        if status == "Completed":
            trial.metrics = {"AUC_weighted": [(0, begin + 340_000, round(0.9 + 0.004 * i, 4))], "accuracy": [(0, begin + 340_000, round(0.85 + 0.005 * i, 4))]}
        specs.append(trial)

    for spec in specs:
        spec.root = spec.root or spec.name
    fit_name = next(s.name for s in specs if s.step == "fit")
    for name, files in FILES.items():
        spec = next(s for s in specs if s.name == name or (name == "fit" and s.name == fit_name))
        spec.files = dict(files)
        spec.unhashed = tuple(p for p in files if p in UNHASHED)
    return specs, builders


# What each job wrote: outputs, logs of every family, an empty file, unicode and spaces in names.
FILES = {
    "bright_kiwi_01": {
        "outputs/model.pkl": bytes(range(256)) * 40,
        "outputs/metrics/r\u00e4port v1.json": b'{"auc": 0.91}',
        "outputs/empty.txt": b"",
        "user_logs/std_log.txt": b"epoch 1 loss 0.9\nepoch 2 loss 0.7\n",
        "system_logs/lifecycler/execution-wrapper.log": b"[2024-03-01T01:01:00Z] starting\n",
        "azureml-logs/20_image_build_log.txt": b"image built\n",
    },
    "fit": {
        "outputs/model/MLmodel": b"flavors:\n  sklearn: {}\n",
        "outputs/model/model.pkl": b"\x80\x04" + b"weights" * 300,
        "logs/azureml/executionlogs.txt": b"fit step ran\n",
    },
    "gentle_gale_06_2": {"user_logs/std_log.txt": b"trial 2\n"},
}
UNHASHED = {"outputs/model/model.pkl"}


@contextlib.contextmanager
def fixture_workspace(base: Path, subscription: str, resource_group: str, workspace: str):
    """The fixture's jobs (`build_specs`) in `workspace` of a started HTTPS fake over a real mlflow server
    holding their runs; yields (fake, ws, specs) and stops both after."""
    from fakes.azureml_control_plane import FakeControlPlane
    from servers import MlflowServer

    specs, builders = build_specs()
    seed_mlflow(base / "mlflow", specs)
    server = MlflowServer(base / "mlflow").start()
    try:
        fake = FakeControlPlane(base / "fake", server.uri).start()
        try:
            ws = fake.add(FakeWorkspace(subscription, resource_group, workspace))
            install(ws, specs, builders)
            yield fake, ws, specs
        finally:
            fake.stop()
    finally:
        server.stop()


def upload_files(store, specs: list[Spec]) -> int:
    """Put every spec's files into a workspace artifact store (tests/fakes/azureml_artifacts.py)."""
    count = 0
    for spec in specs:
        for path, data in spec.files.items():
            store.upload(spec.name, path, data, with_md5=path not in spec.unhashed)
            count += 1
    return count


# -- the control-plane half ------------------------------------------------------------------


def install(ws: FakeWorkspace, specs: list[Spec], builders: dict) -> None:
    """Fill the fake workspace with REST objects for `specs`."""
    by_name = {s.name: s for s in specs}
    experiment_ids = {}
    for spec in specs:
        experiment_ids.setdefault(spec.experiment, str(uuid.uuid5(uuid.NAMESPACE_DNS, spec.experiment)))
        ws.runs[spec.name] = history_run(ws, spec, experiment_ids[spec.experiment], by_name)
        if spec.parent:
            ws.children.setdefault(spec.parent, []).append(spec.name)
    for spec in specs:
        if spec.parent is None:
            ws.roots[spec.name] = root_job(ws, spec, builders[spec.name], specs)


def history_run(ws: FakeWorkspace, spec: Spec, experiment_id: str, by_name: dict):
    from azure.ai.ml._restclient.runhistory.models import Compute, Run, TypedAssetReference, User

    def assets(bindings: dict) -> dict:
        return {k: TypedAssetReference(asset_id=v["path"], type=v.get("type")) for k, v in bindings.items() if "path" in v}

    run = Run(
        run_id=spec.name,
        name=spec.name,
        run_uuid=str(uuid.uuid5(uuid.NAMESPACE_OID, spec.name)),
        parent_run_id=spec.parent,
        root_run_id=spec.root,
        experiment_id=experiment_id,
        status=spec.status,
        created_utc=iso(spec.created),
        start_time_utc=iso(spec.start),
        end_time_utc=iso(spec.end),
        created_by=User(user_name=spec.created_by, user_object_id=USER_OID, user_tenant_id=ws.tenant),  # upn: null in every recorded run
        display_name=spec.display_name,
        description=spec.description or None,
        run_type=spec.run_type,
        properties=dict(spec.properties),
        tags=dict(spec.tags),
        target=spec.compute,
        compute=Compute(target=spec.compute, target_type="AmlCompute") if spec.compute else None,
        hidden=False,
        inputs=assets(spec.inputs) or None,
        outputs=assets(spec.outputs) or None,
    )
    if spec.parent and spec.command:
        # A child's run history record carries what it ran: its runDefinition (command, environment).
        env_name, env_version = spec.environment.split(":")[1:]
        run["runDefinition"] = {"command": spec.command, "environment": {"name": env_name, "version": env_version}, "target": spec.compute}
    return run


def root_job(ws: FakeWorkspace, spec: Spec, builder: str, specs: list[Spec]):
    """A top-level job as the service returns it: the SDK's submission body plus read-only fields."""
    from azure.ai.ml import Input, Output, automl, command
    from azure.ai.ml._restclient.arm_ml_service.models import SystemData

    def literal_inputs(bindings: dict) -> dict:
        out = {}
        for key, value in bindings.items():
            if value.get("type") == "literal":
                out[key] = value["value"]
            else:
                out[key] = Input(type=value["type"], path=value.get("path"), mode=value.get("mode"))
        return out

    outputs = {k: Output(type=v["type"], mode=v.get("mode")) for k, v in spec.outputs.items() if "type" in v}
    if builder == "command":
        entity = command(command=spec.command, environment=spec.environment, compute=spec.compute, inputs=literal_inputs(spec.inputs), outputs=outputs)._to_job()
    elif builder == "sweep":
        from azure.ai.ml.sweep import Choice, Uniform

        trial = command(command=SWEEP_TRIAL_COMMAND, environment=spec.environment, compute=spec.compute,
                        inputs={"lr": 0.01, "bs": 16, **literal_inputs(spec.inputs)})
        node = trial(lr=Uniform(0.001, 0.1), bs=Choice([16, 32])).sweep(sampling_algorithm="random", primary_metric="accuracy", goal="maximize", compute=spec.compute)
        node.set_limits(max_total_trials=8, max_concurrent_trials=2)
        entity = node._to_job()
    elif builder == "automl":
        entity = automl.classification(compute=spec.compute, training_data=literal_inputs(spec.inputs)["training_data"], target_column_name="is_fraud", primary_metric="AUC_weighted")
        entity.set_limits(max_trials=12)
    elif builder == "pipeline":
        entity = nested_pipeline(ws, spec)
    elif builder == "flat-pipeline":
        entity = flat_pipeline(ws, spec)
    else:
        raise ValueError(builder)
    entity.experiment_name = spec.experiment
    entity.display_name = spec.display_name
    entity.description = spec.description or None
    entity.tags = dict(spec.tags)
    entity.properties = dict(spec.properties)
    rest = entity._to_rest_object()
    props = rest.properties
    # What the service does with a submission: ARM ids for compute/environment, status, identity.
    if spec.compute:
        props.compute_id = f"/subscriptions/{ws.subscription}/resourceGroups/{ws.resource_group}/providers/Microsoft.MachineLearningServices/workspaces/{ws.name}/computes/{spec.compute}"
    if getattr(props, "environment_id", None):
        env_name, env_version = spec.environment.split(":")[1:]
        props.environment_id = f"{ws.scope}/environments/{env_name}/versions/{env_version}"
    props["status"] = spec.status
    # The service answers null for what was not sent (tests/recordings): a description, and each
    # output's description and uri (a pipeline's named outputs keep `"uri": null`).
    props["description"] = props.get("description")
    for output in (props.get("outputs") or {}).values():
        for key in ("description", "uri"):
            output[key] = output.get(key)
    rest["id"] = ws.arm_id("jobs", spec.name)
    rest["name"] = spec.name
    rest["type"] = "Microsoft.MachineLearningServices/workspaces/jobs"
    # A job's systemData has no lastModifiedAt (tests/recordings: createdAt, createdBy, createdByType only).
    rest["systemData"] = SystemData(created_by=spec.created_by, created_by_type="User", created_at=iso(spec.created)).as_dict()
    return rest


def _register(ws: FakeWorkspace, component, name: str) -> str:
    """Register a sub-pipeline as a pipeline component version and return its ARM id."""
    from azure.ai.ml._restclient.arm_ml_service.models import ComponentVersion

    _resolve_nodes(ws, component)
    component.name, component.version = name, "1"
    rest = component._to_rest_object()
    arm = f"{ws.scope}/components/{name}/versions/1"
    body = ComponentVersion(rest.as_dict() if hasattr(rest, "as_dict") else rest)
    body["id"], body["name"] = arm, "1"
    ws.components[(name, "1")] = body
    return arm


def _resolve_nodes(ws: FakeWorkspace, pipeline) -> None:
    """What `jobs.create_or_update` does before submitting: components become ARM ids."""
    from azure.ai.ml.entities import PipelineComponent

    for node_name, node in pipeline.jobs.items():
        component = node._component
        if isinstance(component, PipelineComponent):
            node._component = _register(ws, component, component.name or node_name)
        elif not isinstance(component, str):
            node._component = f"{ws.scope}/components/azureml_anonymous/versions/{uuid.uuid5(uuid.NAMESPACE_URL, node_name)}"


def nested_pipeline(ws: FakeWorkspace, spec: Spec):
    from azure.ai.ml import Input, Output, command, dsl

    def component(name: str, ins: dict, outs: dict, literal: dict | None = None):
        return command(name=name, command=step_command(name, [*ins, *(literal or {})], outs), environment=ENV, compute=COMPUTE,
                       inputs={**{k: Input(type=t) for k, t in ins.items()}, **(literal or {})}, outputs={k: Output(type=t) for k, t in outs.items()})

    prep_c = component("prep_data", {"raw": "uri_folder"}, {"clean": "uri_folder"})
    featurize_c = component("featurize", {"data": "uri_folder"}, {"features": "uri_folder"})
    fit_c = component("fit", {"features": "uri_folder"}, {"model": "mlflow_model"}, {"lr": 0.05})
    score_c = component("score", {"model": "mlflow_model"}, {"report": "uri_file"})
    evaluate_c = component("evaluate", {"model": "mlflow_model"}, {})

    # Node names come from the variable names, as when a user writes the DSL.
    @dsl.pipeline(name="fit_block_pipeline")
    def fit_block_pipeline(features):
        fit = fit_c(features=features, lr=0.05)
        score = score_c(model=fit.outputs.model)  # noqa: F841
        return {"model": fit.outputs.model}

    @dsl.pipeline(name="train_block_pipeline")
    def train_block_pipeline(data):
        featurize = featurize_c(data=data)
        fit_block = fit_block_pipeline(features=featurize.outputs.features)
        return {"model": fit_block.outputs.model}

    @dsl.pipeline(name="fraud_training", compute=COMPUTE)
    def fraud_training(raw_data):
        prep_data = prep_c(raw=raw_data)
        train_block = train_block_pipeline(data=prep_data.outputs.clean)
        evaluate = evaluate_c(model=train_block.outputs.model)  # noqa: F841

    job = fraud_training(raw_data=Input(type="uri_folder", path=spec.inputs["raw_data"]["path"]))
    _resolve_nodes(ws, job)
    return job


def flat_pipeline(ws: FakeWorkspace, spec: Spec):
    from azure.ai.ml import Input, Output, command, dsl

    prep_c = command(name="prep", command="python prep.py --raw ${{inputs.raw}} --clean ${{outputs.clean}}", environment=ENV, compute=COMPUTE,
                   inputs={"raw": Input(type="uri_folder")}, outputs={"clean": Output(type="uri_folder")})
    train_c = command(name="train", command="python train.py --data ${{inputs.data}} --model ${{outputs.model}}", environment=ENV, compute=COMPUTE,
                    inputs={"data": Input(type="uri_folder")}, outputs={"model": Output(type="mlflow_model")})
    evaluate_c = command(name="evaluate", command="python evaluate.py --model ${{inputs.model}}", environment=ENV, compute=COMPUTE,
                       inputs={"model": Input(type="mlflow_model")})

    @dsl.pipeline(name="fraud_training_flat", compute=COMPUTE)
    def flat(raw_data):
        prep = prep_c(raw=raw_data)
        train = train_c(data=prep.outputs.clean)
        evaluate = evaluate_c(model=train.outputs.model)  # noqa: F841

    job = flat(raw_data=Input(type="uri_folder", path=spec.inputs["raw_data"]["path"]))
    _resolve_nodes(ws, job)
    return job


# -- the MLflow half ---------------------------------------------------------------------------


@contextlib.contextmanager
def _run_id(run_id: str):
    """Make the sqlite store give the next run this id (AzureML's MLflow run id is the job name)."""
    import mlflow.store.tracking.sqlalchemy_store as module

    real = module.uuid
    module.uuid = SimpleNamespace(uuid4=lambda: SimpleNamespace(hex=run_id), UUID=real.UUID)
    try:
        yield
    finally:
        module.uuid = real


def seed_mlflow(folder: Path, specs: list[Spec]) -> None:
    """Write `specs` into `folder/mlflow.db` (to be served by `mlflow server` afterwards)."""
    from mlflow.entities import Metric, Param, RunStatus, RunTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder.mkdir(parents=True, exist_ok=True)
    store = SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", "mlflow-artifacts:/")
    experiments = {}
    for spec in specs:
        if spec.experiment not in experiments:
            experiments[spec.experiment] = store.create_experiment(spec.experiment, tags=[RunTag("team", "risk")] if spec.experiment != "misc" else [])
        tags = [RunTag(k, v) for k, v in spec.tags.items()] + [RunTag("mlflow.user", spec.created_by)]
        if spec.parent:
            tags.append(RunTag("mlflow.parentRunId", spec.parent))
        with _run_id(spec.name):
            run = store.create_run(experiments[spec.experiment], USER_OID, spec.start, tags, spec.display_name)
        assert run.info.run_id == spec.name
        params = [Param(k, v) for k, v in spec.params.items()]
        points = [Metric(k, v, ts, s) for k, rows in spec.metrics.items() for s, ts, v in rows]
        store.log_batch(spec.name, metrics=[], params=params, tags=[])
        for i in range(0, len(points), 1000):
            store.log_batch(spec.name, metrics=points[i : i + 1000], params=[], tags=[])
        if spec.status != "Running":
            store.update_run_info(spec.name, RunStatus.from_string(spec.mlflow_status), spec.end, None)


def clone_specs(specs: list[Spec], builders: dict, copies: int, spacing: int = 12 * HOUR) -> tuple[list[Spec], dict]:
    """`copies` renamed copies of the fixture (times shifted), for benchmarks at scale."""
    import dataclasses

    out: list[Spec] = []
    out_builders: dict[str, object] = {}
    for i in range(copies):
        def rename(name: str | None) -> str | None:
            if name is None:
                return None
            try:
                uuid.UUID(name)
                return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{i}"))
            except ValueError:
                return f"{name}_c{i}"

        shift = i * spacing
        for spec in specs:
            copy = dataclasses.replace(
                spec,
                name=rename(spec.name), parent=rename(spec.parent), root=rename(spec.root),
                display_name=spec.display_name if spec.parent and spec.step else rename(spec.display_name),
                created=spec.created + shift, start=None if spec.start is None else spec.start + shift,
                end=None if spec.end is None else spec.end + shift,
                tags={k: v.replace(spec.parent, rename(spec.parent)) if spec.parent else v for k, v in spec.tags.items()},
                metrics={k: [(s, ts + shift, v) for s, ts, v in rows] for k, rows in spec.metrics.items()},
            )
            out.append(copy)
            if spec.name in builders:
                out_builders[copy.name] = builders[spec.name]
    return out, out_builders
