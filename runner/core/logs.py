"""Logging: loguru to stderr and to <log folder>/<command>_<timestamp>_<pid>.log, secrets redacted at the sink."""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

# SAS signatures, account keys, bearer tokens, passwords in URLs.
SECRETS = [
    (re.compile(r"((?:sig|se|skoid|sktid|skt|ske|sks|skv)=)[^&\s\"']+", re.I), r"\1REDACTED"),
    (re.compile(r"(AccountKey=)[^;\s\"']+", re.I), r"\1REDACTED"),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9\-._~+/]+=*", re.I), r"\1REDACTED"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"), "REDACTED-JWT"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1REDACTED@"),
]


ROTATION = "100 MB"  # a log file this big is closed (renamed with its time) and a new one started
RETENTION_DAYS = 30  # log files older than this are removed


def redact(text: str) -> str:
    for pattern, replacement in SECRETS:
        text = pattern.sub(replacement, text)
    return text


SECRET_QUERY = re.compile(r"(sig|se|sv|sp|st|spr|srt|ss|skoid|sktid|skt|ske|sks|skv|token|key|code|access_token)=[^&\s]+", re.I)


def redact_uri(uri: str) -> str:
    """A URI safe to log or store: no user:password, no query string values."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = SECRET_QUERY.sub(lambda m: f"{m.group(1)}=REDACTED", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _patch(record) -> None:
    record["message"] = redact(record["message"])
    if record["exception"] is not None:
        record["extra"]["redacted"] = True


def setup(command: str, verbose: bool = False, log_dir: str | None = None) -> Path:
    """Configure both sinks; returns the log file path."""
    folder = log_folder(log_dir)
    path = folder / f"{command}_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}.log"
    remove_old_logs(folder)
    logger.remove()
    logger.configure(patcher=_patch)
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO", format="<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}")
    logger.add(path, level="DEBUG", format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {thread.name} {message}",
               rotation=ROTATION, backtrace=False, diagnose=False)
    quiet_libraries()
    return path


def log_folder(log_dir: str | None = None) -> Path:
    """REPLAYER_LOG_DIR, else the user's state folder ($XDG_STATE_HOME or ~/.local/state)/replayer/logs,
    never the working directory; a temporary folder where that cannot be written (a locked-down image)."""
    chosen = log_dir or os.environ.get("REPLAYER_LOG_DIR")
    if chosen:
        folder = Path(chosen)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    for folder in (state / "replayer" / "logs", Path(tempfile.gettempdir()) / f"replayer-logs-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        except OSError:
            continue
    raise OSError("no folder to write logs to; set REPLAYER_LOG_DIR")


def remove_old_logs(folder: Path) -> None:
    """Each call writes its own file (loguru's retention only sees one sink's rotations): files
    older than RETENTION_DAYS go when the next call starts."""
    cutoff = time.time() - RETENTION_DAYS * 86400
    for old in folder.glob("*.log*"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass  # another call removed it first


def quiet_libraries() -> None:
    """MLflow and azure log through `logging` at INFO; keep their chatter out of our output.
    MLflow sets its own level on import from MLFLOW_LOGGING_LEVEL, so nothing is imported here
    (a usage error is reported before mlflow's seconds of import)."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "azure", "urllib3", "alembic", "azureml"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
