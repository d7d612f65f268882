"""One declarative YAML for a whole migration; CLI flags override it.

    source: http://src:5000          # or {uri: ..., workspace: a-stable-name}
    target: sqlite:///target.db
    filters: {experiments: [demo-*], since: 2024-01-01, status: [FINISHED], limit: 100}
    options: {parallel: 8}

Any tracking URI may also be given as the path of such a file: its `source` (or `target`) is used.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from runner.core.errors import UsageError

TOP_KEYS = ("source", "target", "workspace", "filters", "options")
FILTER_KEYS = ("experiments", "include", "include_file", "since", "until", "status", "limit", "include_deleted", "shard",
               "tags", "max_depth", "exclude")
OPTION_KEYS = ("parallel", "dry_run", "report", "verbose", "retries", "credential", "client_id",
               "models", "models_only", "rename_file", "import_source_tags", "use_source_user")
ARTIFACT_KEYS = ("artifacts", "max_artifact_size", "artifact_include", "artifact_exclude")  # runner.files.options.ArtifactOptions
OPTION_KEYS += ARTIFACT_KEYS
OPTION_KEYS += ("max_tags", "max_metric_keys")  # override the target kind's caps (runner.mlflow.target.Limits)
OPTION_KEYS += ("skip_traces",)  # runner.mlflow.traces
OPTION_KEYS += ("skip_logged_models",)  # runs only: no MLflow 3 logged models, nor model inputs
OPTION_KEYS += ("verify",)  # migrate / replay: verify's full check in the same pass (runner.engine.migrate_verify)


@dataclass
class MigrationConfig:
    source: str | None = None
    target: str | None = None
    workspace: str | None = None
    filters: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def is_config_path(value) -> bool:
    return isinstance(value, str) and value.endswith((".yml", ".yaml"))


def text_dates_loader():
    """YAML's safe loader, with dates left as text: `since: 2024-13-45` then reaches the filters,
    which name the key and the forms they take, instead of failing inside PyYAML."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return Loader


def load(path: str) -> MigrationConfig:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file {path} not found; check the path")
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=text_dates_loader())
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UsageError(f"{path}{where}: malformed YAML: {problem}; fix the file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    check_keys(data, TOP_KEYS, path, "")
    for section, allowed in (("filters", FILTER_KEYS), ("options", OPTION_KEYS)):
        value = data.get(section) or {}
        if not isinstance(value, dict):
            raise UsageError(f"{path}: `{section}` must be a mapping")
        check_keys(value, allowed, path, f"{section}.")
    source, workspace = endpoint(data.get("source"), path, "source")
    target, _ = endpoint(data.get("target"), path, "target")
    return MigrationConfig(
        source=source,
        target=target,
        workspace=data.get("workspace") or workspace,
        filters=dict(data.get("filters") or {}),
        options=dict(data.get("options") or {}),
    )


def endpoint(value, path: str, name: str) -> tuple[str | None, str | None]:
    """`source: URI` or `source: {uri: URI, workspace: NAME}`."""
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        check_keys(value, ("uri", "workspace"), path, f"{name}.")
        return value.get("uri"), value.get("workspace")
    raise UsageError(f"{path}: `{name}` must be a URI string or a mapping with `uri`")


def check_keys(data: dict, allowed, path: str, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"
            raise UsageError(f"{path}: unknown key '{prefix}{key}'{hint}")
