"""MLflow 3 logged models of the selected experiments, copied after the runs (direct target).

Each source logged model gets one copy in the target experiment: name, model type, params, user
tags, files, metrics (with their model id, dataset name and digest, step and timestamp, on the
replayed run), the replayed run as its source run and as a run output at the source's step, and
last its status (READY or FAILED): the completion mark. The copy carries `original_model_id` and
`original_workspace`, as the registry's copies do (runner.mlflow.model_copy), so either finds the
other's copy. A copy left PENDING by an interrupted run is completed: missing params, tags, files
and metrics added. A finished copy is brought level with a source model changed since: new and
changed tags, new params, new metric points and a new status; a tag removed in the source is
removed. Files of a finished copy are not listed again (a rerun would pay two listings per
model); verify names a file that differs.

Under run filters only models whose source run was selected come (runner.engine.selection). Once
the models are there, the model inputs of the selected runs are written (runner.mlflow.model_inputs).

Models are read from a live MLflow store (LiveModels) or a manifest (runner.engine.manifest_models):
both give ModelRecords. A source store without logged models (MLflow before 3, an endpoint without
the route) has none to copy; a target without them gets one warning and the summary counts what
was left out.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from loguru import logger

from runner.core.errors import ReplayerError
from runner.core.records import ModelMetric, ModelRecord
from runner.engine import manifest_models
from runner.engine.ledger import ORIGINAL_MODEL_ID, ORIGINAL_WORKSPACE
from runner.engine.manifest import ManifestSource
from runner.engine.selection import Selection
from runner.files.copier import copy_artifacts
from runner.files.roots import open_store
from runner.mlflow import model_inputs
from runner.mlflow.registry import MODEL_VERSIONS_TAG, user_tags
from runner.mlflow.uris import is_azureml_endpoint, missing_route

PAGE = 100
SETTLED = ("READY", "FAILED")  # a copy in one of these is finished: the status is written last


@dataclass
class ModelsSummary:
    copied: int = 0
    completed: int = 0  # copies an interrupted migration left PENDING, finished now
    updated: int = 0  # finished copies brought level with a source model changed since
    skipped: int = 0
    left_out: int = 0  # the target has no logged-model API
    inputs_added: int = 0  # model inputs written on replayed runs
    inputs_left_out: int = 0  # model inputs whose model has no copy in the target
    failures: list[tuple[str, str]] = field(default_factory=list)  # (what: a model or an experiment's listing, why)

    def line(self) -> str:
        return (f"logged models: copied {self.copied}, completed {self.completed}, updated {self.updated}, "
                f"skipped {self.skipped}, failed {len(self.failures)}"
                + (f"; model inputs added {self.inputs_added}" if self.inputs_added else ""))


def status_name(status) -> str:
    return str(getattr(status, "name", None) or getattr(status, "value", status)).upper().removeprefix("LOGGEDMODELSTATUS.")


def readable(source) -> bool:
    """An MLflow source whose store may hold logged models. Azure ML's MLflow endpoint is left out:
    no answer of it to the logged-model routes is recorded (tests/recordings), so none is assumed."""
    client = getattr(source, "client", None)
    return hasattr(client, "search_logged_models") and not is_azureml_endpoint(client)


def reader_for(source):
    """Where the source's logged models are read: a manifest's reader, a live MLflow store's, or
    None (a source without logged models: Azure ML jobs, a manifest without any)."""
    if isinstance(source, ManifestSource):
        return manifest_models.reader(source)
    return LiveModels(source.client) if readable(source) else None


def source_models(client, experiment_id: str):
    """Every logged model of one source experiment; none where the store has no such route."""
    token = None
    while True:
        try:
            page = client.search_logged_models([experiment_id], max_results=PAGE, page_token=token)
        except Exception as error:  # noqa: BLE001 - only a missing route means "none here"
            if not missing_route(error):
                raise
            logger.debug("source has no logged models API: {}", error)
            return
        yield from page
        token = page.token
        if not token:
            return


class LiveModels:
    """The logged models of a live MLflow store, as ModelRecords."""

    def __init__(self, client):
        self.client = client
        self.tracking_uri = client.tracking_uri

    def models(self, experiment):
        for model in source_models(self.client, experiment.source_id):
            yield to_record(model, experiment.name)

    def output_steps(self, record: ModelRecord) -> list[int]:
        """The steps the source run logged this model at as an output (one get_run, when asked)."""
        if record.output_steps is None:
            outputs = getattr(self.client.get_run(record.source_run_id), "outputs", None) if record.source_run_id else None
            record.output_steps = [o.step for o in getattr(outputs, "model_outputs", None) or [] if o.model_id == record.model_id]
        return record.output_steps


def to_record(model, experiment: str) -> ModelRecord:
    return ModelRecord(
        model_id=model.model_id, experiment=experiment, name=model.name, model_type=model.model_type or "",
        status=status_name(model.status), source_run_id=model.source_run_id or None, params=dict(model.params or {}),
        tags=dict(model.tags or {}), metrics=[to_metric(m) for m in model.metrics or []], files=model.artifact_location,
    )


def to_metric(m) -> ModelMetric:
    return ModelMetric(m.key, m.value, m.timestamp, m.step, m.run_id, m.dataset_name or None, m.dataset_digest or None)


class LoggedModelCopier:
    def __init__(self, source, target, mapping, selection: Selection | None = None, parallel: int = 8):
        self.source, self.target, self.mapping = source, target, mapping
        self.reader, self.client = reader_for(source), target.client
        self.selection = selection or Selection()
        self.parallel = parallel
        self.workspace = source.workspace
        self.summary = ModelsSummary()
        self.copies: dict[str, str] = {}  # source model id -> its copy's id
        self._ledger = None  # read once, and only when there is a model to copy
        self._lock = threading.Lock()

    def run(self) -> ModelsSummary:
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="models") as pool:
            for experiment in self.source.experiments():
                try:
                    chosen = list(self.selection.chosen(self.reader.models(experiment)))
                except Exception as error:  # noqa: BLE001 - a listing that fails costs that experiment's models only
                    logger.error("failed listing the logged models of experiment {}: {}", experiment.name, error)
                    self.summary.failures.append((f"experiment {experiment.name}", str(error)))
                    continue
                list(pool.map(lambda model: self.each(model, experiment), chosen))
        self.link_inputs()
        s = self.summary
        if s.copied or s.completed or s.updated or s.failures or s.inputs_added:
            logger.info(s.line())
        return s

    def each(self, model: ModelRecord, experiment) -> None:
        if self.summary.left_out:  # the target said it has no such API: do not ask again per model
            self.count("left_out")
            return
        try:
            self.one(model, experiment)
        except Exception as error:  # noqa: BLE001 - one model's failure must not stop the others
            if not missing_route(error):
                logger.opt(exception=error).debug("logged model {} failed", model.model_id)
                logger.error("failed logged model {} ({}): {}", model.name, model.model_id, error)
                with self._lock:
                    self.summary.failures.append((f"logged model {model.model_id}", str(error)))
                return
            with self._lock:
                first = not self.summary.left_out
                self.summary.left_out += 1
            if first:
                why = ("Azure ML's MLflow endpoint does not implement them" if is_azureml_endpoint(self.client)
                       else "an MLflow server before 3?")
                logger.warning("target {} has no logged-model API ({}): logged models and model inputs are not copied; runs are",
                               self.client.tracking_uri, why)

    def count(self, what: str, by: int = 1) -> None:
        with self._lock:
            setattr(self.summary, what, getattr(self.summary, what) + by)

    def run_link(self, source_run_id: str | None) -> str | None:
        if not source_run_id:
            return None
        with self._lock:
            if self._ledger is None:
                self._ledger = self.target.ledger(self.workspace)
        found = self._ledger.find(source_run_id)
        return found.run_id if found else None

    def one(self, model: ModelRecord, experiment) -> None:
        experiment_id = self.target.ensure_experiment(self.mapping.target_experiment(experiment))
        copy = find_copy(self.client, experiment_id, model.model_id, self.workspace)
        if copy is not None and status_name(copy.status) in SETTLED:
            with self._lock:
                self.copies[model.model_id] = copy.model_id
            self.count("updated" if self.update(model, copy) else "skipped")
            return
        run_link = self.run_link(model.source_run_id)
        resumed = copy is not None
        if resumed:
            self.fill(model, copy)
        else:
            copy = self.create(model, experiment_id, run_link)
        with self._lock:
            self.copies[model.model_id] = copy.model_id
        self.copy_files(model, copy, fresh=not resumed)
        self.copy_metrics(model, copy)
        self.copy_output(model, copy, run_link)
        if model.status in SETTLED:
            self.client.finalize_logged_model(copy.model_id, model.status)  # the completion mark: last
        self.count("completed" if resumed else "copied")

    def create(self, model: ModelRecord, experiment_id: str, run_link: str | None):
        tags = {**model_tags(model), ORIGINAL_MODEL_ID: model.model_id, ORIGINAL_WORKSPACE: self.workspace}
        return self.client.create_logged_model(
            experiment_id, name=model.name, source_run_id=run_link, tags=tags,
            params=dict(model.params) or None, model_type=model.model_type or None,
        )

    def fill(self, model: ModelRecord, copy) -> None:
        """Params and tags the copy lacks or holds otherwise (a tag removed in the source goes)."""
        missing = {k: v for k, v in model.params.items() if k not in (copy.params or {})}
        if missing:
            self.client.log_model_params(copy.model_id, missing)
        want, have = model_tags(model), model_tags(copy)
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        if changed:
            self.client.set_logged_model_tags(copy.model_id, changed)
        for key in sorted(set(have) - set(want)):
            self.client.delete_logged_model_tag(copy.model_id, key)

    def update(self, model: ModelRecord, copy) -> bool:
        """A finished copy of a model changed in the source since: tags, params, metrics, status.
        Returns whether anything was written."""
        changed = {what for what, _, _ in differences(model, copy)}
        if not changed:
            return False
        if "name" in changed or "model_type" in changed:
            logger.warning("logged model {}: its {} changed in the source; a copy keeps the one it was created with",
                           model.model_id, " and ".join(sorted(changed & {"name", "model_type"})))
        if changed & {"params", "tags"}:
            self.fill(model, copy)
        if "metrics" in changed:
            self.copy_metrics(model, copy)
        if "status" in changed and model.status in SETTLED:
            self.client.finalize_logged_model(copy.model_id, model.status)
        return bool(changed - {"name", "model_type"})

    def copy_files(self, model: ModelRecord, copy, fresh: bool) -> None:
        options = self.target.artifact_options
        src = open_store(model.files, self.reader.tracking_uri, options.auth)
        dst = open_store(copy.artifact_location, self.client.tracking_uri, options.auth)
        stats = copy_artifacts(src, dst, None, options, fresh=fresh, label=f"files of logged model {model.model_id}")
        if stats.failed:
            path, reason = stats.failed[0]
            raise ReplayerError(f"{len(stats.failed)} files not copied (first: {path}: {reason}); rerun to resume")

    def copy_metrics(self, model: ModelRecord, copy) -> None:
        """The model's metrics on the replayed run they were logged on. A point the run already
        holds (its history was copied with the run) is not added twice by the store."""
        have = {metric_identity(m) for m in (copy.metrics or [])}
        for m in model.metrics:
            run_link = self.run_link(m.run_id)
            if run_link is None or metric_identity(m) in have:
                continue
            self.client.log_metric(run_link, m.key, m.value, timestamp=m.timestamp, step=m.step, model_id=copy.model_id,
                                   dataset_name=m.dataset_name, dataset_digest=m.dataset_digest)

    def copy_output(self, model: ModelRecord, copy, run_link: str | None) -> None:
        """The source run's output naming this model (the step it was logged at), on the replayed run."""
        from mlflow.entities import LoggedModelOutput

        if run_link is None:
            return
        steps = self.reader.output_steps(model)
        done = getattr(self.client.get_run(run_link), "outputs", None)
        if steps and not any(o.model_id == copy.model_id for o in getattr(done, "model_outputs", None) or []):
            self.client.log_outputs(run_link, [LoggedModelOutput(copy.model_id, step) for step in steps])

    def link_inputs(self) -> None:
        """Model inputs of the selected runs, pointing at the copies: after the models, which must exist."""
        for source_run, evaluated in sorted(self.selection.model_inputs.items()):
            if self.summary.left_out:
                self.count("inputs_left_out", len(evaluated))
                continue
            run_link = self.run_link(source_run)
            if run_link is None:  # the run failed or was not copied: counted with the runs
                continue
            linked = [self.copy_of(model_id) for model_id in evaluated]
            if None in linked:
                self.count("inputs_left_out", linked.count(None))
                logger.warning("run {}: {} model inputs name a logged model with no copy in the target (an experiment "
                               "not selected?); verify lists them", source_run, linked.count(None))
            try:
                self.count("inputs_added", model_inputs.write(self.client, run_link, [m for m in linked if m]))
            except Exception as error:  # noqa: BLE001 - one run's inputs must not stop the others
                logger.error("failed the model inputs of run {}: {}", source_run, error)
                self.summary.failures.append((source_run, f"model inputs: {error}"))

    def copy_of(self, source_model_id: str) -> str | None:
        """The copy's id: from this pass, else looked up in every target experiment (a model of an
        experiment outside this selection, copied by an earlier migration)."""
        if source_model_id in self.copies:
            return self.copies[source_model_id]
        from mlflow.entities import ViewType

        ids = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        found = find_copy(self.client, ids, source_model_id, self.workspace) if ids else None
        return found.model_id if found else None


def model_tags(model) -> dict[str, str]:
    """User tags; the server writes `mlflow.modelVersions` itself when a version links the model."""
    return {k: v for k, v in user_tags(dict(model.tags or {})).items() if k != MODEL_VERSIONS_TAG}


def differences(model, copy) -> list[tuple[str, object, object]]:
    pairs = [
        ("name", model.name, copy.name),
        ("model_type", model.model_type or "", copy.model_type or ""),
        ("status", status_name(model.status), status_name(copy.status)),
        ("params", dict(sorted((model.params or {}).items())), dict(sorted((copy.params or {}).items()))),
        ("tags", dict(sorted(model_tags(model).items())), dict(sorted(model_tags(copy).items()))),
        ("metrics", sorted(map(metric_identity, model.metrics or [])), sorted(map(metric_identity, copy.metrics or []))),
    ]
    return [(what, a, b) for what, a, b in pairs if a != b]


def metric_identity(m) -> tuple:
    return (m.key, repr(m.value), m.step, m.timestamp, m.dataset_name or "", m.dataset_digest or "")


def find_copy(client, experiment_ids, model_id: str, workspace: str):
    query = f"tags.{ORIGINAL_MODEL_ID} = '{model_id}' AND tags.{ORIGINAL_WORKSPACE} = '{workspace}'"
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    page = client.search_logged_models(ids, filter_string=query, max_results=10)
    return page[0] if page else None
