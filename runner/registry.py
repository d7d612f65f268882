"""Registered models: every version, its files and its run link, into the target's registry.

For each selected model (`--models NAME,GLOB|all`): description, tags and aliases, then its
versions in ascending order, each with description, tags, stage (where the store has stages),
files, and a run link to the *replayed* run (found in the target ledger, `original_job_id`).

Files. A version whose files are its run's artifacts (`runs:/RUN/path`, or the run's artifact
URI + path) points at the same path of the replayed run, which holds a copy already. A version of
an MLflow 3 logged model (`models:/m-...`, or `runs:/RUN/name` naming one) gets a copy of that
logged model in the target: name, params, tags, files, source run = the replayed run. Any other
location is downloaded and uploaded into a new logged model that holds it. The target version
keeps the source's form of `source` (runs:/, artifact URI, models:/).

Idempotence (the target is the ledger, as for runs). Every target version carries
`original_model_version` + `original_workspace` (+ `original_run_id`); a rerun pairs the target
model's versions by those tags and creates only what is missing. `replay.complete` (a
fingerprint of description, tags and stage) is written last: a version without it is repaired,
one whose fingerprint differs is brought up to date. Versions are created one after the other in
source order; a gap in the source's numbers (a deleted version) is reproduced by a placeholder
version deleted at once, so `models:/NAME/3` names the same model on both sides when the target
model started empty. Copied logged models carry `original_model_id` and are finalized READY last.
The tool writes nothing on a registered model beyond the source's own description and tags.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from loguru import logger

from runner import stores
from runner.errors import ReplayerError, UsageError
from runner.ledger import COMPLETE, ORIGINAL_WORKSPACE, Ledger, is_own_tag
from runner.mapping import Mapping
from runner.model import Experiment
from runner.progress import Progress

ORIGINAL_VERSION = "original_model_version"
ORIGINAL_RUN = "original_run_id"
ORIGINAL_MODEL_ID = "original_model_id"  # on logged models copied into the target
ORIGINAL_SOURCE = "original_source"  # on logged models holding files uploaded from elsewhere
ORIGINAL_CREATED = "original_creation_timestamp"  # what a target sets by itself on a new version:
ORIGINAL_USER = "original_user_id"  # the source's creation time (ms), user and run link (a URL
ORIGINAL_RUN_LINK = "original_run_link"  # into the source workspace) are kept on the copy as tags
PLACEHOLDER = "replay.placeholder"
ALIASES_TAG = "replay.aliases"  # on a model whose store has no aliases: the source's, as JSON
STAGE_TAG = "replay.stage"  # on a version whose store has no stages: the source's stage
UNSUPPORTED = ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "FEATURE_DISABLED")  # a store without that route
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # written by the server on a logged model when a version links it
NO_STAGE = ("", "None")
PAGE = 1000
READY_TIMEOUT = 300  # seconds to wait for a version the store creates asynchronously
SIGILS = {"create": "+", "repair": "*", "update": "*", "skip": "="}

# Stages are deprecated in MLflow 3 but still what such a store holds: copy them without the noise.
warnings.filterwarnings("ignore", message=".*[Ss]tage.*deprecated.*")


# -- the registry as plain records -----------------------------------------------------------


@dataclass
class ModelRecord:
    name: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version number


@dataclass
class VersionRecord:
    model: str
    version: str
    source: str
    run_id: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    stage: str = "None"
    created: int | None = None  # creation time (ms), user and run link: a target sets its own,
    user_id: str = ""  # so the source's are kept as `original_*` tags on the copy
    run_link: str = ""

    def fingerprint(self) -> str:
        """What can change on a version after it was copied (its source and run cannot)."""
        state = {"description": self.description, "tags": sorted(user_tags(self.tags).items()), "stage": self.stage}
        return hashlib.sha1(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Files:
    """Where a version's files are, and how its `source` names them."""

    kind: str  # "run": the version's run's artifacts; "model": a logged model; "other": anywhere else
    form: str  # "runs" (runs:/RUN/path), "uri" (an artifact URI) or "models" (models:/ID)
    uri: str  # a concrete location to download from
    run_id: str = ""
    path: str = ""  # inside the run's artifacts ("run") or inside the logged model ("model")
    model_id: str = ""  # the source logged model ("model")


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not is_own_tag(k)}


def version_lineage(v: VersionRecord, workspace: str) -> dict[str, str]:
    """The `original_*` tags of a version's copy: what pairs it, and what the target cannot set itself."""
    tags = {ORIGINAL_VERSION: v.version, ORIGINAL_WORKSPACE: workspace}
    for key, value in ((ORIGINAL_RUN, v.run_id), (ORIGINAL_CREATED, v.created), (ORIGINAL_USER, v.user_id), (ORIGINAL_RUN_LINK, v.run_link)):
        if value:
            tags[key] = str(value)
    return tags


def settled(v: VersionRecord, have: VersionRecord, workspace: str) -> bool:
    """A copy that is complete, up to date and carries all its lineage: nothing to do."""
    lineage = version_lineage(v, workspace)
    return have.tags.get(COMPLETE) == v.fingerprint() and all(have.tags.get(k) == value for k, value in lineage.items())


def unsupported(error: Exception) -> bool:
    """The store answered that it has no such route (e.g. an endpoint without aliases)."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in UNSUPPORTED


def target_aliases(model: ModelRecord) -> dict[str, str]:
    """A target model's aliases, or those kept in ALIASES_TAG where its store has none."""
    if not model.aliases and ALIASES_TAG in model.tags:
        return json.loads(model.tags[ALIASES_TAG])
    return model.aliases


def target_stage(copy: VersionRecord) -> str:
    return copy.tags.get(STAGE_TAG, copy.stage) if copy.stage in NO_STAGE else copy.stage


def to_model(entity) -> ModelRecord:
    return ModelRecord(
        name=entity.name,
        description=entity.description or "",
        tags=dict(entity.tags or {}),
        aliases={alias: str(version) for alias, version in (entity.aliases or {}).items()},
    )


def to_version(entity) -> VersionRecord:
    return VersionRecord(
        model=entity.name,
        version=str(entity.version),
        source=entity.source or "",
        run_id=entity.run_id or "",
        description=entity.description or "",
        tags=dict(entity.tags or {}),
        stage=entity.current_stage or "None",
        created=entity.creation_timestamp,
        user_id=entity.user_id or "",
        run_link=entity.run_link or "",
    )


def reason(error: Exception) -> str:
    """One line for the summary: our own messages as they are, anything else with its class."""
    return str(error) if isinstance(error, ReplayerError) else f"{type(error).__name__}: {error}"


def wants(patterns: list[str], name: str) -> bool:
    return any(p == "all" or fnmatch.fnmatchcase(name, p) for p in patterns)


# -- reading a registry ----------------------------------------------------------------------


class Registry:
    """One MLflow registry (source or target) through an MlflowClient: lists, locates, downloads."""

    def __init__(self, client):
        self.client = client
        self.tracking_uri = client.tracking_uri
        self._runs: dict[str, tuple[str, str] | None] = {}  # run id -> (artifact URI, experiment id); None: no such run
        self._models: dict[str, object] = {}  # logged model id -> LoggedModel
        self._experiments: dict[str, Experiment] = {}
        self._lock = threading.Lock()

    def models(self, patterns: list[str]) -> list[ModelRecord]:
        """The registered models matching names or globs (`all` for every one), by name."""
        found, token = [], None
        while True:
            page = self.client.search_registered_models(max_results=PAGE, page_token=token)
            found += page
            token = page.token
            if not token:
                break
        names = sorted(m.name for m in found)
        for pattern in patterns:
            if pattern != "all" and not any(ch in pattern for ch in "*?[") and pattern not in names:
                shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                raise UsageError(f"unknown registered model {pattern!r}; the source registry has: {shown or 'no models'}")
        return sorted((to_model(m) for m in found if wants(patterns, m.name)), key=lambda m: m.name)

    def model(self, name: str) -> ModelRecord | None:
        from mlflow.exceptions import MlflowException

        try:
            return to_model(self.client.get_registered_model(name))
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def versions(self, name: str) -> list[VersionRecord]:
        """Every (not deleted) version of a model, in ascending version order."""
        quoted = "'" not in name
        query = f"name='{name}'" if quoted else None  # a quote in a name: filter here instead
        found, token = [], None
        while True:
            page = self.client.search_model_versions(query, max_results=PAGE, page_token=token)
            found += [v for v in page if quoted or v.name == name]
            token = page.token
            if not token:
                break
        return sorted((to_version(v) for v in found), key=lambda v: int(v.version))

    def run_artifact_uri(self, run_id: str) -> str | None:
        found = self._run(run_id)
        return found[0] if found else None

    def run_experiment(self, run_id: str) -> Experiment | None:
        found = self._run(run_id)
        return self.experiment(found[1]) if found else None

    def _run(self, run_id: str) -> tuple[str, str] | None:
        from mlflow.exceptions import MlflowException

        with self._lock:
            if run_id in self._runs:
                return self._runs[run_id]
        try:
            info = self.client.get_run(run_id).info
            found = (info.artifact_uri, info.experiment_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            found = None
        with self._lock:
            self._runs[run_id] = found
        return found

    def logged_model(self, model_id: str):
        with self._lock:
            if model_id in self._models:
                return self._models[model_id]
        found = self.client.get_logged_model(model_id)
        with self._lock:
            self._models[model_id] = found
        return found

    def experiment(self, experiment_id: str) -> Experiment:
        with self._lock:
            if experiment_id in self._experiments:
                return self._experiments[experiment_id]
        e = self.client.get_experiment(experiment_id)
        found = Experiment(name=e.name, source_id=e.experiment_id, tags=dict(e.tags), lifecycle_stage=e.lifecycle_stage)
        with self._lock:
            self._experiments[experiment_id] = found
        return found

    def locate(self, version: VersionRecord) -> Files:
        """Where a version's files are: its run's artifacts, a logged model, or elsewhere."""
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        source = version.source
        scheme = urlparse(source).scheme
        if scheme == "models":
            ident = source[len("models:") :].strip("/")
            if ident.startswith("m-") and "/" not in ident:
                model = self.logged_model(ident)
                return Files("model", "models", model.artifact_location, run_id=model.source_run_id or "", model_id=ident)
            return Files("other", "models", self.client.get_model_version_download_uri(version.model, version.version))
        if scheme == "runs":
            run_id, path = RunsArtifactRepository.parse_runs_uri(source)
            path = path or ""
            root = self.run_artifact_uri(run_id)
            if root is None:
                raise ReplayerError(f"its source {source} names run {run_id}, which no longer exists")
            if path and self._has_artifact(root, path):
                return Files("run", "runs", f"{root}/{path}", run_id=run_id, path=path)
            name, _, rest = path.partition("/")
            model = self._logged_model_of_run(run_id, name) if name else None
            if model is not None:  # MLflow 3: runs:/RUN/NAME names the run's logged model NAME
                uri = model.artifact_location + (f"/{rest}" if rest else "")
                return Files("model", "runs", uri, run_id=run_id, path=rest, model_id=model.model_id)
            return Files("run", "runs", f"{root}/{path}" if path else root, run_id=run_id, path=path)
        if version.run_id:
            root = self.run_artifact_uri(version.run_id)
            if root and (source == root or source.startswith(root.rstrip("/") + "/")):
                return Files("run", "uri", source, run_id=version.run_id, path=source[len(root) :].strip("/"))
        match = re.search(r"/models/(m-[0-9a-f]+)/artifacts(?:/(.*))?$", source)
        if match:
            model = self.logged_model(match.group(1))
            return Files("model", "uri", source, run_id=model.source_run_id or "", path=match.group(2) or "", model_id=match.group(1))
        return Files("other", "models", source, run_id=version.run_id)

    def _has_artifact(self, root: str, path: str) -> bool:
        from runner.sources.mlflow import artifact_repository

        repo = artifact_repository(root, self.tracking_uri)
        if repo.list_artifacts(path):
            return True  # a folder with files
        parent = str(Path(path).parent)
        return any(info.path == path for info in repo.list_artifacts(None if parent == "." else parent))

    def _logged_model_of_run(self, run_id: str, name: str):
        experiment_id = self._run(run_id)[1]
        quoted = name.replace("'", "\\'")
        token = None
        while True:
            page = self.client.search_logged_models([experiment_id], filter_string=f"name = '{quoted}'", page_token=token)
            for model in page:
                if model.source_run_id == run_id:
                    with self._lock:
                        self._models[model.model_id] = model
                    return model
            token = page.token
            if not token:
                return None

    def download(self, uri: str, scratch: Path) -> Path:
        """The files at `uri` (a folder or one file) in a new folder under `scratch`."""
        import mlflow

        folder = Path(tempfile.mkdtemp(dir=scratch))
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder), tracking_uri=self.tracking_uri))


def checksums(local: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (size, md5) of a downloaded folder (or one file, by its name)."""
    from runner.artifacts import md5_file

    if local.is_file():
        return {local.name: md5_file(local)}
    return {p.relative_to(local).as_posix(): md5_file(p) for p in sorted(local.rglob("*")) if p.is_file()}


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
    if target.client is not None and not stores.is_remote(target.client.tracking_uri):
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
    from runner.errors import EXIT_DIFFERENCES, EXIT_OK

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
            if not unsupported(error):
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
            if not unsupported(error):
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
                if not unsupported(error):
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


def compare_models(source, target, ledger: Ledger, patterns: list[str], scratch: Path) -> tuple[int, list]:
    """Every selected source model against the target: (models compared, differences)."""
    from runner.verify import Difference, show

    reader, writer = source_registry(source), Registry(target.client)
    workspace = source.workspace
    out: list[Difference] = []
    models = reader.models(patterns)
    for model in models:
        where = f"model:{model.name}"
        diff = lambda what, a, b, at=where: out.append(Difference(at, model.name, what, show(a), show(b)))  # noqa: E731
        try:
            have = writer.model(model.name)
            if have is None:
                diff("model", "present", "missing")
                continue
            if model.description != have.description:
                diff("model_description", model.description, have.description)
            if user_tags(model.tags) != user_tags(have.tags):
                diff("model_tags", user_tags(model.tags), user_tags(have.tags))
            target_versions = writer.versions(model.name)
            ours, placeholders, duplicates, foreign = pair(target_versions, workspace)
            if duplicates or placeholders:
                diff("versions", "one copy each", f"{len(duplicates)} duplicates, {len(placeholders)} placeholders")
            mapped, previous = {}, 0
            versions = reader.versions(model.name)
            for v in versions:
                at = f"{where}/v{v.version}"
                copy = ours.get(v.version)
                if copy is None:
                    diff("version", "present", "missing", at)
                    continue
                mapped[v.version] = copy.version
                files, copied = reader.locate(v), writer.locate(copy)
                if copy.tags.get(COMPLETE) != v.fingerprint():
                    diff("version", "complete", "incomplete or outdated (rerun migrate --models)", at)
                pairs = [
                    ("description", v.description, copy.description),
                    ("tags", user_tags(v.tags), user_tags(copy.tags)),
                    ("stage", v.stage, target_stage(copy)),
                    ("lineage", version_lineage(v, workspace), {k: copy.tags.get(k) for k in version_lineage(v, workspace)}),
                    ("run_link", expected_run_link(reader, ledger, v), copy.run_id or None),
                    # runs:/, an artifact URI (whose scheme is the target store's) or models:/; files
                    # from elsewhere are uploaded into a logged model: models:/ on the target.
                    ("source_form", "models" if files.kind == "other" else files.form, copied.form),
                ]
                if not foreign:  # the target model holds only this source's versions: numbers must match
                    pairs.append(("number", v.version, copy.version))
                if int(copy.version) <= previous:
                    pairs.append(("order", f"after v{previous}", f"v{copy.version}"))
                previous = int(copy.version)
                for what, a, b in pairs:
                    if a != b:
                        diff(what, a, b, at)
                out.extend(compare_files(reader, writer, files, copied, copy.model, scratch, at))
            for original, copy in ours.items():
                if original not in {v.version for v in versions}:
                    diff("version", "", f"target only: v{copy.version} (from v{original})", f"{where}/v{original}")
            want_aliases = {a: mapped.get(n, f"(copy of v{n})") for a, n in model.aliases.items()}
            ours_numbers = {c.version for c in ours.values()}
            have_aliases = {a: n for a, n in target_aliases(have).items() if a in model.aliases or n in ours_numbers}
            if want_aliases != have_aliases:
                diff("aliases", want_aliases, have_aliases)
        except Exception as error:  # noqa: BLE001 - a read failure is a difference, not a crash
            logger.opt(exception=error).debug("verify failed on model {}", model.name)
            diff("error", "", reason(error))
    return len(models), out


def expected_run_link(reader: Registry, ledger: Ledger, v: VersionRecord) -> str | None:
    """The replayed run a copy should link to; None when the source version's run is gone."""
    if not v.run_id:
        return None
    found = ledger.find(v.run_id)
    if found is not None:
        return found.run_id
    return f"(replayed {v.run_id})" if reader.run_artifact_uri(v.run_id) is not None else None


def compare_files(reader: Registry, writer: Registry, files: Files, copied: Files, model: str, scratch: Path, at: str) -> list:
    from runner.verify import Difference, show

    mine = checksums(reader.download(files.uri, scratch))
    theirs = checksums(writer.download(copied.uri, scratch))
    out = []
    for path in sorted(set(mine) | set(theirs)):
        if mine.get(path) != theirs.get(path):
            out.append(Difference(at, model, f"file:{path}", show(mine.get(path)), show(theirs.get(path))))
    return out
