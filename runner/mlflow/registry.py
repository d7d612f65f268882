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
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse


from runner.core.errors import ReplayerError, UsageError
from runner.engine.ledger import COMPLETE, ORIGINAL_WORKSPACE, is_own_tag
from runner.core.records import Experiment

ORIGINAL_VERSION = "original_model_version"
ORIGINAL_RUN = "original_run_id"
ORIGINAL_SOURCE = "original_source"  # on logged models holding files uploaded from elsewhere
ORIGINAL_CREATED = "original_creation_timestamp"  # what a target sets by itself on a new version:
ORIGINAL_USER = "original_user_id"  # the source's creation time (ms), user and run link (a URL
ORIGINAL_RUN_LINK = "original_run_link"  # into the source workspace) are kept on the copy as tags
PLACEHOLDER = "replay.placeholder"
ALIASES_TAG = "replay.aliases"  # on a model whose store has no aliases: the source's, as JSON
STAGE_TAG = "replay.stage"  # on a version whose store has no stages: the source's stage
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
        from runner.mlflow.source import artifact_repository

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
    from runner.files.hashing import md5_file

    if local.is_file():
        return {local.name: md5_file(local)}
    return {p.relative_to(local).as_posix(): md5_file(p) for p in sorted(local.rglob("*")) if p.is_file()}
