"""MLflow tracking URIs: normalize them, open clients, say clearly when one cannot be reached.

Accepted forms: http(s)://host[:port][/path], sqlite:///path/to/db, or a local folder, which is an
*embedded store*: `<folder>/mlflow.db` (sqlite) with artifacts in `<folder>/artifacts`. A folder
that already holds an MLflow file store (`mlruns` layout) is opened as one.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from loguru import logger

from runner.core.errors import EndpointError, UsageError, first_line
from runner.core.logs import redact_uri as redact  # noqa: F401 - uris.redact: callers name URIs through it

EMBEDDED_DB = "mlflow.db"


REMOTE_SCHEMES = ("http", "https", "azureml", "databricks", "databricks-uc")  # servers MLflow talks to
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql", "sqlite")  # MLflow's SQL backends (dialect+driver allowed)
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
ACCEPTED = ("a folder (an embedded store), file://..., sqlite:///..., postgresql://, mysql://, mssql://, "
            "http(s)://, databricks, azureml://... (a workspace or its MLflow tracking URI) or a manifest folder")


UNSUPPORTED = ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "FEATURE_DISABLED")  # MLflow's codes for a missing route


def missing_route(error: Exception) -> bool:
    """The store answered that it has no such route (an endpoint without aliases, a server older
    than log-inputs or logged models). MLflow's REST client names a plain 404 page ENDPOINT_NOT_FOUND too."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in UNSUPPORTED


def is_azureml_endpoint(client_or_uri) -> bool:
    """An Azure ML workspace's MLflow endpoint (azureml://...): a client's tracking URI or a URI."""
    return str(getattr(client_or_uri, "tracking_uri", client_or_uri)).startswith("azureml")


def scheme_of(uri: str) -> str:
    """The URI's scheme in lower case, '' for a plain path; a dialect+driver counts as its dialect."""
    if uri.lower() in ("databricks", "databricks-uc"):  # MLflow's names for the default Databricks profile
        return uri.lower()
    found = SCHEME.match(uri)
    if not found or len(found.group(1)) == 1:  # C:\... is a path
        return ""
    return found.group(1).lower().partition("+")[0]


def is_remote(uri: str) -> bool:
    return scheme_of(uri) in REMOTE_SCHEMES


def is_database(uri: str) -> bool:
    return scheme_of(uri) in DATABASE_SCHEMES


def tracking_uri(uri: str) -> str:
    """The URI MlflowClient should get for what the user typed; one line naming the accepted
    forms for anything else (an `s3://` folder or a typo is never taken for a local path)."""
    scheme = scheme_of(uri)
    if scheme in REMOTE_SCHEMES or scheme in DATABASE_SCHEMES:
        return uri
    if scheme not in ("", "file"):
        raise UsageError(f"{redact(uri)}: {scheme}:// is not a tracking store this tool reads or writes; use {ACCEPTED}")
    folder = Path(uri.removeprefix("file://")).expanduser().resolve()
    if (folder / "0" / "meta.yaml").is_file() or (folder / ".trash").is_dir():
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # an existing legacy file store
        return str(folder)
    return f"sqlite:///{folder / EMBEDDED_DB}"


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def artifact_root(uri: str) -> str | None:
    """Where a local sqlite store keeps artifacts: beside the database, never in the cwd."""
    db = sqlite_path(uri)
    if db is None:
        return None
    if db.name == EMBEDDED_DB:
        return str(db.parent / "artifacts")
    return str(db.with_name(db.stem + "-artifacts"))


def exists(uri: str) -> bool:
    """Whether a local store is there already (remote ones are checked by `check_reachable`)."""
    db = sqlite_path(uri)
    if db is not None:
        return db.is_file()
    if is_remote(uri) or is_database(uri):
        return True
    return Path(uri).is_dir()


_remote_setup: list = []  # what an end must do before MLflow talks to a remote tracking URI


def on_remote(prepare) -> None:
    """Register `prepare(tracking_uri)`, called before a client for a remote URI is handed out
    (the Azure ML end puts our credential on azureml-mlflow's context; a no-op for other URIs)."""
    if prepare not in _remote_setup:
        _remote_setup.append(prepare)


def open_client(uri: str, create: bool):
    """An MlflowClient for `uri`. A missing local store is created only when `create` is set."""
    from mlflow import MlflowClient

    resolved = tracking_uri(uri)
    if is_remote(resolved):
        check_reachable(resolved)
        for prepare in _remote_setup:
            prepare(resolved)  # the Azure ML end: azureml:// MLflow calls use --credential, cached
    elif not exists(resolved) or half_made(resolved):
        if not create:
            raise UsageError(f"no MLflow store at {uri}: check the path, or run `replayer demo --out {uri}` to seed one")
        init_local_store(resolved)
    return MlflowClient(tracking_uri=resolved)


def half_made(resolved: str) -> bool:
    """A sqlite store whose creation was killed midway by an older replayer (or by mlflow itself):
    its schema short of mlflow's latest (or alembic's scratch tables left) and nothing in it but
    the Default experiment. It is removed, to be made anew; one that holds anything is never
    touched (mlflow then migrates it or names the problem)."""
    import sqlite3
    from contextlib import closing

    from mlflow.store.db.utils import _get_latest_schema_revision

    db = sqlite_path(resolved)
    if db is None or not db.is_file():
        return False
    # Read-write on purpose: a process stopped mid-write leaves a hot journal that only a writer
    # may roll back ("attempt to write a readonly database" otherwise). Nothing is written here.
    with closing(sqlite3.connect(db)) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

        def rows(table: str) -> int:
            return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] if table in tables else 0

        held = rows("runs") + max(rows("experiments") - 1, 0) + rows("registered_models")  # Default is made first
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
    unfinished = any(name.startswith("_alembic_tmp_") for name in tables) or (version or [None])[0] != _get_latest_schema_revision()
    if unfinished and not held:
        logger.warning("{} was left half-made by a killed process; making it anew", db)
        db.unlink()
        return True
    return False


def init_local_store(resolved: str) -> None:
    """Create the sqlite schema with its artifact root beside it (so Default's runs land there too).

    The schema (mlflow's alembic migrations) is built in a scratch file and linked into place
    whole: a process killed meanwhile leaves only scratch, never a store no rerun can open
    (`table _alembic_tmp_params already exists`). Linking fails if another process made the
    store first; theirs is kept."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db = sqlite_path(resolved)
    db.parent.mkdir(parents=True, exist_ok=True)
    root = Path(artifact_root(resolved))
    root.mkdir(parents=True, exist_ok=True)
    for stale in db.parent.glob(f"{db.name}.creating-*"):  # left by a killed creator
        stale.unlink(missing_ok=True)
    scratch = db.with_name(f"{db.name}.creating-{os.getpid()}")
    store = SqlAlchemyStore(f"sqlite:///{scratch}", root.as_uri())
    store.engine.dispose()
    try:
        os.link(scratch, db)
    except FileExistsError:
        pass
    finally:
        scratch.unlink(missing_ok=True)


MLFLOW_AUTH_CODES = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


def refused_by_auth(error) -> tuple[int, str] | None:
    """(HTTP status, reason) when an MLflow error is the endpoint refusing the token, else None.

    MLflow keeps no status code: a refusal arrives as an MLflow error code (UNAUTHENTICATED), as
    the service's own JSON error (`{"error": {"code": "ExpiredAuthenticationToken", ...}}`, ARM's
    words) or, for a body that is not JSON, as "failed with error code 401" in the message.
    """
    code = str(getattr(error, "error_code", "") or "")
    if code in MLFLOW_AUTH_CODES:
        return MLFLOW_AUTH_CODES[code], first_line(error)
    body = getattr(error, "json", None)
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict) and re.search(r"Authenticat|Authoriz|Token|Forbidden", str(detail.get("code") or "")):
        status = 403 if re.search(r"Authoriz|Forbidden", str(detail["code"])) else 401
        return status, f"{detail['code']}: {str(detail.get('message') or '').strip().splitlines()[0] if detail.get('message') else ''}".rstrip(": ")
    match = re.search(r"error code (401|403)\b", str(error))
    return (int(match.group(1)), first_line(error)[:200]) if match else None


@contextmanager
def auth_refusals(explain):
    """An MLflow error that is the endpoint refusing our credential becomes `explain(status, reason)`,
    a one-line error that stops everything: every later request would be refused the same way."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        refused = refused_by_auth(error)
        if refused is None:
            raise
        raise explain(*refused) from None


def refusals_named(uri: str):
    """A credential an MLflow store refuses (on a real request: /health asks for none), named."""
    return auth_refusals(lambda status, reason: EndpointError(
        f"MLflow server {redact(uri)} refused our credentials (HTTP {status}: {reason}); "
        "check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD (--credential for Azure ML)"
    ))


def check_reachable(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    from runner.core.retry import get_with_retries

    try:
        answer = get_with_retries(uri.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as error:
        raise EndpointError(f"cannot reach MLflow server {redact(uri)}: {type(error).__name__}; is it running and is the address right?") from None
    if answer.status_code in (401, 403):
        raise EndpointError(f"MLflow server {redact(uri)} refused our credentials (HTTP {answer.status_code}); check MLFLOW_TRACKING_TOKEN or username/password")
    if answer.status_code >= 500:
        raise EndpointError(f"MLflow server {redact(uri)} answered HTTP {answer.status_code} on /health; try again later")




def workspace_name(uri: str) -> str:
    """A stable name for a store, recorded as `original_workspace` on every replayed run: one
    name however the URI is spelled (localhost or 127.0.0.1, a default port, a trailing slash,
    the scheme's case), so a rerun spelled differently finds what the first run copied."""
    resolved = tracking_uri(uri)
    db = sqlite_path(resolved)
    if db is not None:
        return f"sqlite:{db.resolve()}"
    parts = urlsplit(redact(resolved))
    if parts.scheme.lower() == "file":
        return f"file:{Path(unquote(parts.path)).resolve()}"
    if not parts.netloc:
        return redact(resolved)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    host = LOOPBACK_NAME if host in LOOPBACK else host
    port = parts.port if parts.port not in (None, DEFAULT_PORTS.get(scheme)) else None
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit((scheme, netloc + (f":{port}" if port else ""), parts.path.rstrip("/"), parts.query, ""))


LOOPBACK = ("localhost", "127.0.0.1", "::1")  # one machine, three spellings
LOOPBACK_NAME = "127.0.0.1"
DEFAULT_PORTS = {"http": 80, "https": 443}
