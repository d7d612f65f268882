"""MLflow 3 logged models of the selected experiments, copied after the runs (direct target).

Each source logged model gets one copy in the target experiment: name, model type, params, user
tags, files, metrics (with their model id, dataset name and digest, step and timestamp, on the
replayed run), the replayed run as its source run and as a run output at the source's step, and
last its status (READY or FAILED): the completion mark. The copy carries `original_model_id` and
`original_workspace`, as the registry's copies do (runner.mlflow.model_copy), so either finds the
other's copy and a rerun skips a finished one. A copy left PENDING by an interrupted run is
completed: missing params, tags, files and metrics added.

A source store without logged models (MLflow before 3, an endpoint without the route) has none
to copy; a target without them gets one warning and the summary counts what was left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from loguru import logger

from runner.core.errors import ReplayerError
from runner.engine.ledger import ORIGINAL_WORKSPACE
from runner.files.copier import copy_artifacts
from runner.files.roots import open_store
from runner.mlflow.registry import MODEL_VERSIONS_TAG, ORIGINAL_MODEL_ID, unsupported, user_tags

PAGE = 100
SETTLED = ("READY", "FAILED")  # a copy in one of these is finished: the status is written last


@dataclass
class ModelsSummary:
    copied: int = 0
    completed: int = 0  # copies an interrupted migration left PENDING, finished now
    skipped: int = 0
    left_out: int = 0  # the target has no logged-model API
    failures: list[tuple[str, str]] = field(default_factory=list)  # (what: a model or an experiment's listing, why)

    def line(self) -> str:
        return (f"logged models: copied {self.copied}, completed {self.completed}, skipped {self.skipped}, "
                f"failed {len(self.failures)}")


def status_name(status) -> str:
    return str(getattr(status, "name", None) or getattr(status, "value", status)).upper().removeprefix("LOGGEDMODELSTATUS.")


def readable(source) -> bool:
    """An MLflow source whose store may hold logged models. Azure ML's MLflow endpoint is left out:
    no answer of it to the logged-model routes is recorded (tests/recordings), so none is assumed."""
    client = getattr(source, "client", None)
    return hasattr(client, "search_logged_models") and not str(client.tracking_uri).startswith("azureml")


def source_models(client, experiment_id: str):
    """Every logged model of one source experiment; none where the store has no such route."""
    token = None
    while True:
        try:
            page = client.search_logged_models([experiment_id], max_results=PAGE, page_token=token)
        except Exception as error:  # noqa: BLE001 - only a missing route means "none here"
            if not unsupported(error):
                raise
            logger.debug("source has no logged models API: {}", error)
            return
        yield from page
        token = page.token
        if not token:
            return


class LoggedModelCopier:
    def __init__(self, source, target, mapping):
        self.source, self.target, self.mapping = source, target, mapping
        self.reader, self.client = source.client, target.client
        self.workspace = source.workspace
        self.summary = ModelsSummary()
        self._ledger = None  # read once, and only when there is a model to copy

    def run(self) -> ModelsSummary:
        for experiment in self.source.experiments():
            try:
                for model in source_models(self.reader, experiment.source_id):
                    self.each(model, experiment)
            except Exception as error:  # noqa: BLE001 - a listing that fails costs that experiment's models only
                logger.error("failed listing the logged models of experiment {}: {}", experiment.name, error)
                self.summary.failures.append((f"experiment {experiment.name}", str(error)))
        if self.summary.copied or self.summary.completed or self.summary.failures:
            logger.info(self.summary.line())
        return self.summary

    def each(self, model, experiment) -> None:
        if self.summary.left_out:  # the target said it has no such API: do not ask again per model
            self.summary.left_out += 1
            return
        try:
            self.one(model, experiment)
        except Exception as error:  # noqa: BLE001 - one model's failure must not stop the others
            if not unsupported(error):
                logger.opt(exception=error).debug("logged model {} failed", model.model_id)
                logger.error("failed logged model {} ({}): {}", model.name, model.model_id, error)
                self.summary.failures.append((f"logged model {model.model_id}", str(error)))
                return
            logger.warning("target {} has no logged-model API (an MLflow server before 3?): logged models are not "
                           "copied; runs are", self.client.tracking_uri)
            self.summary.left_out += 1

    def run_link(self, source_run_id: str | None) -> str | None:
        if not source_run_id:
            return None
        if self._ledger is None:
            self._ledger = self.target.ledger(self.workspace)
        found = self._ledger.find(source_run_id)
        return found.run_id if found else None

    def one(self, model, experiment) -> None:
        experiment_id = self.target.ensure_experiment(self.mapping.target_experiment(experiment))
        copy = find_copy(self.client, experiment_id, model.model_id, self.workspace)
        if copy is not None and status_name(copy.status) in SETTLED:
            self.summary.skipped += 1
            return
        run_link = self.run_link(model.source_run_id)
        resumed = copy is not None
        if resumed:
            self.fill(model, copy)
        else:
            copy = self.create(model, experiment_id, run_link)
        self.copy_files(model, copy, fresh=not resumed)
        self.copy_metrics(model, copy)
        self.copy_output(model, copy, run_link)
        status = status_name(model.status)
        if status in SETTLED:
            self.client.finalize_logged_model(copy.model_id, status)  # the completion mark: last
        if resumed:
            self.summary.completed += 1
        else:
            self.summary.copied += 1

    def create(self, model, experiment_id: str, run_link: str | None):
        tags = {**model_tags(model), ORIGINAL_MODEL_ID: model.model_id, ORIGINAL_WORKSPACE: self.workspace}
        return self.client.create_logged_model(
            experiment_id, name=model.name, source_run_id=run_link, tags=tags,
            params=dict(model.params or {}) or None, model_type=model.model_type,
        )

    def fill(self, model, copy) -> None:
        """A copy an interrupted migration left PENDING: the params and tags it lacks."""
        missing = {k: v for k, v in (model.params or {}).items() if k not in (copy.params or {})}
        if missing:
            self.client.log_model_params(copy.model_id, missing)
        changed = {k: v for k, v in model_tags(model).items() if (copy.tags or {}).get(k) != v}
        if changed:
            self.client.set_logged_model_tags(copy.model_id, changed)

    def copy_files(self, model, copy, fresh: bool) -> None:
        options = self.target.artifact_options
        src = open_store(model.artifact_location, self.reader.tracking_uri, options.auth)
        dst = open_store(copy.artifact_location, self.client.tracking_uri, options.auth)
        stats = copy_artifacts(src, dst, None, options, fresh=fresh,
                               label=f"files of logged model {model.model_id}")
        if stats.failed:
            path, reason = stats.failed[0]
            raise ReplayerError(f"{len(stats.failed)} files not copied (first: {path}: {reason}); rerun to resume")

    def copy_metrics(self, model, copy) -> None:
        """The model's metrics on the replayed run they were logged on. A point the run already
        holds (its history was copied with the run) is not added twice by the store."""
        have = {metric_identity(m) for m in (copy.metrics or [])}
        for m in model.metrics or []:
            run_link = self.run_link(m.run_id)
            if run_link is None or metric_identity(m) in have:
                continue
            self.client.log_metric(run_link, m.key, m.value, timestamp=m.timestamp, step=m.step, model_id=copy.model_id,
                                   dataset_name=m.dataset_name, dataset_digest=m.dataset_digest)

    def copy_output(self, model, copy, run_link: str | None) -> None:
        """The source run's output naming this model (the step it was logged at), on the replayed run."""
        from mlflow.entities import LoggedModelOutput

        if run_link is None:
            return
        outputs = getattr(self.reader.get_run(model.source_run_id), "outputs", None)
        steps = [o.step for o in getattr(outputs, "model_outputs", None) or [] if o.model_id == model.model_id]
        done = getattr(self.client.get_run(run_link), "outputs", None)
        if steps and not any(o.model_id == copy.model_id for o in getattr(done, "model_outputs", None) or []):
            self.client.log_outputs(run_link, [LoggedModelOutput(copy.model_id, step) for step in steps])


def model_tags(model) -> dict[str, str]:
    """User tags; the server writes `mlflow.modelVersions` itself when a version links the model."""
    return {k: v for k, v in user_tags(dict(model.tags or {})).items() if k != MODEL_VERSIONS_TAG}


def metric_identity(m) -> tuple:
    return (m.key, repr(m.value), m.step, m.timestamp, m.dataset_name or "", m.dataset_digest or "")


def find_copy(client, experiment_id: str, model_id: str, workspace: str):
    query = f"tags.{ORIGINAL_MODEL_ID} = '{model_id}' AND tags.{ORIGINAL_WORKSPACE} = '{workspace}'"
    page = client.search_logged_models([experiment_id], filter_string=query, max_results=10)
    return page[0] if page else None


# -- verify ----------------------------------------------------------------------------------


def compare(source, client, experiment, target_experiment_id: str) -> list[tuple[str, str, str, str, str]]:
    """(source model id, name, field, source's, target's) per way a logged model of `experiment`
    differs from its copy in the target experiment; nothing from a source without logged models."""
    if not readable(source):
        return []
    reader, out = source.client, []
    for model in source_models(reader, experiment.source_id):
        try:
            copy = find_copy(client, target_experiment_id, model.model_id, source.workspace)
        except Exception as error:  # noqa: BLE001 - a target without the route holds no copy
            if not unsupported(error):
                raise
            copy = None
        if copy is None:
            out.append((model.model_id, model.name, "logged_model", "present", "missing"))
            continue
        out += [(model.model_id, model.name, f"logged_model:{what}", str(a), str(b)) for what, a, b in differences(model, copy)]
        out += [(model.model_id, model.name, f"logged_model:file:{path}", a, b)
                for path, a, b in file_differences(model, copy, reader.tracking_uri, client.tracking_uri)]
    return out


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


def file_differences(model, copy, source_uri: str, target_uri: str) -> list[tuple[str, str, str]]:
    """Paths and sizes of the model's files on both sides (no bytes read)."""
    want = {ref.path: str(ref.size) for ref in open_store(model.artifact_location, source_uri).list()}
    have = {ref.path: str(ref.size) for ref in open_store(copy.artifact_location, target_uri).list()}
    return [(path, want.get(path, "(absent)"), have.get(path, "(absent)"))
            for path in sorted(set(want) | set(have)) if want.get(path) != have.get(path)]
