"""Registered models and versions copied (`--models`): the registry's copier, resumable and idempotent
like runs. Reading and writing a registry: runner.mlflow.registry."""

import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from runner.mlflow import uris
from runner.core.errors import ReplayerError, UsageError
from runner.engine.ledger import COMPLETE, ORIGINAL_MODEL_ID, ORIGINAL_WORKSPACE, Ledger
from runner.engine.mapping import Mapping
from runner.core.records import Experiment
from runner.core.progress import Progress
from runner.mlflow.registry import (
    ALIASES_TAG, Files, MODEL_VERSIONS_TAG, ModelRecord, NO_STAGE,
    ORIGINAL_SOURCE, ORIGINAL_VERSION, PLACEHOLDER, READY_TIMEOUT, Registry, SIGILS, STAGE_TAG,
    VersionRecord, reason, settled, target_aliases, target_stage, user_tags,
    version_lineage,
)
from runner.mlflow.uris import missing_route


# -- the copy ------------------------------------------------------------------------------


@dataclass
class RegistryOptions:
    models: list[str]  # names or globs; "all" for every model
    dry_run: bool = False
    parallel: int = 8
    mapping: Mapping = field(default_factory=Mapping)


@dataclass
class RegistrySummary:
    models_created: int = 0
    models_updated: int = 0
    models_skipped: int = 0
    versions_created: int = 0
    versions_repaired: int = 0
    versions_skipped: int = 0
    versions_failed: int = 0
    logged_models_copied: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def line(self, dry_run: bool = False) -> str:
        if dry_run:
            return (
                f"models dry run: would create {self.models_created} models and {self.versions_created} versions, "
                f"update {self.models_updated} models, repair {self.versions_repaired} versions, skip {self.versions_skipped}; nothing written"
            )
        return (
            f"models: created {self.models_created}, updated {self.models_updated}, skipped {self.models_skipped}; "
            f"versions: created {self.versions_created}, repaired {self.versions_repaired}, skipped {self.versions_skipped}, "
            f"failed {self.versions_failed}; logged models copied {self.logged_models_copied}; {self.seconds:.1f}s"
        )


def source_registry(source) -> Registry:
    client = getattr(source, "client", None)
    if client is None or not hasattr(client, "search_registered_models"):
        raise UsageError("--models needs a live MLflow source (a tracking URI); a manifest folder holds no registry")
    return Registry(client)


def migrate_models(source, target, options: RegistryOptions) -> RegistrySummary:
    """Copy the selected registered models into the target; safe to rerun at any point."""
    started = time.monotonic()
    reader = source_registry(source)
    models = reader.models(options.models)
    ledger = target.ledger(source.workspace)
    if target.client is not None and not uris.is_remote(target.client.tracking_uri):
        # MLflow's sqlite registry resolves `models:/m-...` sources with a client on the global
        # tracking URI (its own TODO): make that the target, the only store this process writes.
        import mlflow

        mlflow.set_tracking_uri(target.client.tracking_uri)
    copier = ModelCopier(reader, target, ledger, source.workspace, options)
    if options.dry_run:
        print("models plan (+ create, * repair or update, = skip):")
        for model in models:
            copier.plan(model)
    else:
        progress = Progress("models", len(models), unit="models")
        with tempfile.TemporaryDirectory(prefix="replayer-models-") as scratch, ThreadPoolExecutor(
            options.parallel, thread_name_prefix="models"
        ) as pool:
            for future in [pool.submit(copier.one, model, Path(scratch), progress) for model in models]:
                future.result()
    copier.summary.seconds = time.monotonic() - started
    return copier.summary


def finish_models(summary: RegistrySummary, dry_run: bool, report: str | None = None) -> int:
    from runner.core.errors import EXIT_DIFFERENCES, EXIT_OK

    logger.info("summary: {}", summary.line(dry_run))
    for what, reason in summary.failures[:20]:
        logger.info("  failed {}: {}", what, reason)
    if report:  # beside the runs' summary in the same JSON file
        import dataclasses

        path = Path(report)
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"dry_run": dry_run}
        data["models"] = dataclasses.asdict(summary)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return EXIT_DIFFERENCES if summary.versions_failed else EXIT_OK


def pair(versions: list[VersionRecord], workspace: str):
    """Target versions -> (ours by original version, placeholders, duplicates, foreign versions)."""
    ours: dict[str, VersionRecord] = {}
    placeholders, duplicates, foreign = [], [], []
    for v in versions:  # ascending: of two copies of one original, the first made is kept
        mine = v.tags.get(ORIGINAL_WORKSPACE) == workspace
        if mine and v.tags.get(PLACEHOLDER):
            placeholders.append(v)
        elif mine and ORIGINAL_VERSION in v.tags:
            original = v.tags[ORIGINAL_VERSION]
            if original in ours:
                duplicates.append(v)
            else:
                ours[original] = v
        else:
            foreign.append(v)
    return ours, placeholders, duplicates, foreign


class ModelCopier:
    def __init__(self, reader: Registry, target, ledger: Ledger, workspace: str, options: RegistryOptions):
        self.reader, self.target, self.ledger, self.workspace, self.options = reader, target, ledger, workspace, options
        self.client = target.client
        self.writer = Registry(self.client) if self.client is not None else None
        self.summary = RegistrySummary()
        self._lock = threading.Lock()
        self._model_locks: dict[str, threading.Lock] = {}
        self._copied: dict[str, object] = {}  # source logged model id (or holder key) -> target LoggedModel
        self._warned: set[str] = set()

    def count(self, name: str, by: int = 1) -> None:
        with self._lock:
            setattr(self.summary, name, getattr(self.summary, name) + by)

    # -- dry run -----------------------------------------------------------------------------

    def plan(self, model: ModelRecord) -> None:
        versions = self.reader.versions(model.name)
        existing = self.writer.model(model.name) if self.writer else None
        ours = pair(self.writer.versions(model.name), self.workspace)[0] if existing else {}
        action = "create" if existing is None else ("update" if self.model_changes(model, existing) else "skip")
        self.count({"create": "models_created", "update": "models_updated", "skip": "models_skipped"}[action])
        print(f"{SIGILS[action]} model {model.name} ({len(versions)} versions)")
        for v in versions:
            have = ours.get(v.version)
            act = "create" if have is None else ("skip" if settled(v, have, self.workspace) else "repair")
            self.count({"create": "versions_created", "repair": "versions_repaired", "skip": "versions_skipped"}[act])
            stage = f" [{v.stage}]" if v.stage not in NO_STAGE else ""
            print(f"{SIGILS[act]}   {model.name} v{v.version}{stage} <- {v.source}")

    # -- one model, its versions in order, then its aliases ------------------------------------

    def one(self, model: ModelRecord, scratch: Path, progress: Progress) -> None:
        try:
            self._one(model, scratch)
        except Exception as error:  # noqa: BLE001 - one model's failure must not stop the others
            logger.opt(exception=error).debug("model {} failed", model.name)
            self.fail(f"model {model.name}", reason(error))
        progress.tick()

    def _one(self, model: ModelRecord, scratch: Path) -> None:
        from mlflow.exceptions import MlflowException

        versions = self.reader.versions(model.name)
        existing = self.writer.model(model.name)
        if existing is None:
            try:
                self.client.create_registered_model(model.name, tags=user_tags(model.tags), description=model.description or None)
                self.count("models_created")
            except MlflowException as error:  # a retried create whose first answer was lost
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                existing = self.writer.model(model.name)
        if existing is not None:
            self.count("models_updated" if self.update_model(model, existing) else "models_skipped")
        target_versions = self.writer.versions(model.name) if existing is not None else []
        ours, placeholders, duplicates, _ = pair(target_versions, self.workspace)
        for extra in placeholders + duplicates:  # left by an interrupted gap fill or a retried create
            logger.info("model {}: removing leftover version {} (placeholder or duplicate)", model.name, extra.version)
            self.client.delete_model_version(model.name, extra.version)
        highest = max((int(v.version) for v in target_versions), default=0)
        mapped: dict[str, str] = {}
        broken = ""
        for v in versions:
            what = f"{model.name} v{v.version}"
            if broken:
                self.fail(what, f"v{broken} before it failed; versions are copied in order")
                continue
            try:
                mapped[v.version] = self.one_version(v, ours.get(v.version), highest, scratch)
            except Exception as error:  # noqa: BLE001
                logger.opt(exception=error).debug("version {} failed", what)
                self.fail(what, reason(error))
                broken = v.version
                continue
            highest = max(highest, int(mapped[v.version]))
        ours_numbers = {v.version for v in ours.values()} | set(mapped.values())
        self.sync_aliases(model, existing or ModelRecord(model.name), mapped, ours_numbers)

    def model_changes(self, model: ModelRecord, existing: ModelRecord) -> bool:
        return model.description != existing.description or user_tags(model.tags) != user_tags(existing.tags)

    def update_model(self, model: ModelRecord, existing: ModelRecord) -> bool:
        """Make the target model's description and user tags the source's; True if anything changed."""
        if not self.model_changes(model, existing):
            return False
        if model.description != existing.description:
            self.client.update_registered_model(model.name, description=model.description)
        want, have = user_tags(model.tags), user_tags(existing.tags)
        for key, value in want.items():
            if have.get(key) != value:
                self.client.set_registered_model_tag(model.name, key, value)
        for key in have.keys() - want.keys():
            self.client.delete_registered_model_tag(model.name, key)
        return True

    def sync_aliases(self, model: ModelRecord, existing: ModelRecord, mapped: dict[str, str], ours: set[str]) -> None:
        """Source aliases onto the copied versions; aliases of ours the source no longer has go."""
        desired = {alias: mapped[v] for alias, v in model.aliases.items() if v in mapped}
        current = existing.aliases
        if ALIASES_TAG in existing.tags:  # a store without aliases, found so on an earlier run
            if target_aliases(existing) != desired:
                self.client.set_registered_model_tag(model.name, ALIASES_TAG, json.dumps(desired, sort_keys=True))
            return
        try:
            for alias, number in desired.items():
                if current.get(alias) != number:
                    self.client.set_registered_model_alias(model.name, alias, number)
            for alias, number in current.items():
                if alias not in desired and number in ours and alias not in model.aliases:
                    self.client.delete_registered_model_alias(model.name, alias)
        except Exception as error:
            if not missing_route(error):
                raise
            self.warn_once("aliases", f"the target registry has no aliases ({error.error_code}): each model's aliases are kept in its {ALIASES_TAG} tag")
            self.client.set_registered_model_tag(model.name, ALIASES_TAG, json.dumps(desired, sort_keys=True))

    # -- one version -----------------------------------------------------------------------------

    def one_version(self, v: VersionRecord, have: VersionRecord | None, highest: int, scratch: Path) -> str:
        """Create, repair or skip one version; returns its target version number."""
        fingerprint = v.fingerprint()
        if have is not None and settled(v, have, self.workspace):
            self.count("versions_skipped")
            return have.version
        if have is not None:
            logger.info("repairing {} v{} (target v{})", v.model, v.version, have.version)
            self.repair_version(v, have, fingerprint)
            self.count("versions_repaired")
            return have.version
        run_link = self.run_link(v)
        files = self.reader.locate(v)
        source, model_id = self.target_source(v, files, run_link, scratch)
        lineage = version_lineage(v, self.workspace)
        self.fill_gap(v, highest, source, run_link)
        staged = v.stage not in NO_STAGE
        tags = {**user_tags(v.tags), **lineage, **({} if staged else {COMPLETE: fingerprint})}
        created = self.client.create_model_version(
            v.model, source, run_id=run_link, tags=tags, description=v.description or None, await_creation_for=0, model_id=model_id
        )
        self.wait_ready(v.model, created)
        if staged:
            self.set_stage(v.model, str(created.version), v.stage)
            self.client.set_model_version_tag(v.model, created.version, COMPLETE, fingerprint)
        self.count("versions_created")
        return str(created.version)

    def repair_version(self, v: VersionRecord, have: VersionRecord, fingerprint: str) -> None:
        if have.tags.get(COMPLETE):
            self.client.delete_model_version_tag(v.model, have.version, COMPLETE)  # incomplete until done
        for key, value in version_lineage(v, self.workspace).items():  # copies made before a lineage tag existed
            if have.tags.get(key) != value:
                self.client.set_model_version_tag(v.model, have.version, key, value)
        if (have.description or "") != v.description:
            self.client.update_model_version(v.model, have.version, description=v.description)
        want, current = user_tags(v.tags), user_tags(have.tags)
        for key, value in want.items():
            if current.get(key) != value:
                self.client.set_model_version_tag(v.model, have.version, key, value)
        for key in current.keys() - want.keys():
            self.client.delete_model_version_tag(v.model, have.version, key)
        if target_stage(have) != v.stage:
            self.set_stage(v.model, have.version, v.stage)
        self.client.set_model_version_tag(v.model, have.version, COMPLETE, fingerprint)

    def set_stage(self, name: str, version: str, stage: str) -> None:
        """The version's stage; kept in STAGE_TAG where the target's registry has no stages."""
        try:
            self.client.transition_model_version_stage(name, version, stage, archive_existing_versions=False)
        except Exception as error:
            if not missing_route(error):
                raise
            self.warn_once("stages", f"the target registry has no stages ({error.error_code}): each version's stage is kept in its {STAGE_TAG} tag")
            self.client.set_model_version_tag(name, version, STAGE_TAG, stage)

    def warn_once(self, what: str, message: str) -> None:
        with self._lock:
            if what in self._warned:
                return
            self._warned.add(what)
        logger.warning("{}", message)

    def run_link(self, v: VersionRecord) -> str | None:
        """The replayed run standing for the version's source run; None when the source has none."""
        if not v.run_id:
            return None
        found = self.ledger.find(v.run_id)
        if found is not None and found.complete:
            return found.run_id
        if found is not None:
            raise ReplayerError(f"its run {v.run_id} was not completely replayed (interrupted); rerun migrate with runs")
        experiment = self.reader.run_experiment(v.run_id)
        if experiment is not None:
            raise ReplayerError(
                f"its run {v.run_id} is not in the target: migrate that run first (select its experiment "
                f"{experiment.name!r}; --include-deleted if the run is deleted)"
            )
        logger.warning("{} v{}: run {} no longer exists in the source; the copy has no run link", v.model, v.version, v.run_id)
        return None

    def target_source(self, v: VersionRecord, files: Files, run_link: str | None, scratch: Path) -> tuple[str, str | None]:
        """The target version's `source` (same form as the source's) and its logged model id."""
        if files.kind == "run":
            if run_link is None:
                raise ReplayerError(f"its files are artifacts of run {files.run_id}, which is not in the target")
            if files.run_id and files.run_id != v.run_id:
                raise ReplayerError(f"its source names run {files.run_id}, not its own run {v.run_id}")
            suffix = f"/{files.path}" if files.path else ""
            if files.form == "runs":
                return f"runs:/{run_link}{suffix}", None
            root = self.writer.run_artifact_uri(run_link)
            return root.rstrip("/") + suffix, None
        model = self.copy_logged_model(v, files, run_link, scratch)
        suffix = f"/{files.path}" if files.path else ""
        if files.kind == "model" and files.form == "runs" and run_link:
            return f"runs:/{run_link}/{model.name}{suffix}", model.model_id
        if files.kind == "model" and files.form == "uri":
            return model.artifact_location.rstrip("/") + suffix, model.model_id
        return f"models:/{model.model_id}", model.model_id

    def copy_logged_model(self, v: VersionRecord, files: Files, run_link: str | None, scratch: Path):
        """The target's copy of the logged model holding a version's files (made once, then found)."""
        key = files.model_id or f"{v.model}/{v.version}"
        with self._lock:
            lock = self._model_locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._copied:
                return self._copied[key]
            if files.kind == "model":
                source_model = self.reader.logged_model(files.model_id)
                experiment = self.reader.experiment(source_model.experiment_id)
                name, uri = source_model.name, source_model.artifact_location
                tags = {k: v for k, v in user_tags(dict(source_model.tags)).items() if k != MODEL_VERSIONS_TAG}
                params, model_type = dict(source_model.params or {}), source_model.model_type
            else:
                # The replayed run's experiment (a target one already: no rename, no tags to add).
                experiment = Experiment(name=self.writer.run_experiment(run_link).name) if run_link else Experiment(name="Default")
                name, uri, params, model_type = v.model, files.uri, {}, None
                tags = {ORIGINAL_SOURCE: files.uri}
            experiment_id = self.target.ensure_experiment(self.options.mapping.target_experiment(experiment))
            try:
                model = self.find_copy(experiment_id, key)
                if model is None:
                    tags.update({ORIGINAL_MODEL_ID: key, ORIGINAL_WORKSPACE: self.workspace})
                    model = self.client.create_logged_model(
                        experiment_id, name=name, source_run_id=run_link, tags=tags, params=params or None, model_type=model_type
                    )
            except Exception as error:
                if not missing_route(error):
                    raise
                raise ReplayerError(
                    f"its files ({v.source}) need an MLflow 3 logged model in the target, whose store has none "
                    f"({error.error_code}); register that version from its run's artifacts (runs:/RUN/path) instead"
                ) from None
            if str(getattr(model.status, "value", model.status)) != "READY":
                local = self.reader.download(uri, scratch)
                try:
                    if local.is_file():
                        holder = local.parent / ".upload"
                        holder.mkdir()
                        shutil.move(str(local), holder / local.name)
                        local = holder
                    self.client.log_model_artifacts(model.model_id, str(local))
                finally:
                    shutil.rmtree(local, ignore_errors=True)
                model = self.client.finalize_logged_model(model.model_id, "READY")  # the completion mark
                self.count("logged_models_copied")
            self._copied[key] = model
            return model


    def find_copy(self, experiment_id: str, key: str):
        query = f"tags.{ORIGINAL_MODEL_ID} = '{key}' AND tags.{ORIGINAL_WORKSPACE} = '{self.workspace}'"
        page = self.client.search_logged_models([experiment_id], filter_string=query, max_results=10)
        return page[0] if page else None

    def fill_gap(self, v: VersionRecord, highest: int, source: str, run_link: str | None) -> None:
        """Make the next version number the source's by spending numbers on deleted placeholders."""
        wanted = int(v.version)
        while highest + 1 < wanted:
            placeholder = self.client.create_model_version(
                v.model, source, run_id=run_link, tags={PLACEHOLDER: "true", ORIGINAL_WORKSPACE: self.workspace}, await_creation_for=0
            )
            self.client.delete_model_version(v.model, placeholder.version)
            if int(placeholder.version) <= highest:
                break  # this store reuses numbers: gaps cannot be kept
            highest = int(placeholder.version)

    def wait_ready(self, name: str, version) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        status = str(version.status)
        while status != "READY":
            if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise ReplayerError(f"target version {version.version} of {name} is {status}")
            time.sleep(1)
            status = str(self.client.get_model_version(name, version.version).status)

    def fail(self, what: str, reason: str) -> None:
        logger.error("failed {}: {}", what, reason)
        with self._lock:
            self.summary.versions_failed += 1
            self.summary.failures.append((what, reason))


# -- verify ----------------------------------------------------------------------------------
