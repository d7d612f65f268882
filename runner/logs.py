"""Logging: loguru to stderr and to logs/<command>_<timestamp>.log, secrets redacted at the sink."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from loguru import logger

# SAS signatures, account keys, bearer tokens, passwords in URLs.
SECRETS = [
    (re.compile(r"((?:sig|se|skoid|sktid|skt|ske|sks|skv)=)[^&\s\"']+", re.I), r"\1REDACTED"),
    (re.compile(r"(AccountKey=)[^;\s\"']+", re.I), r"\1REDACTED"),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9\-._~+/]+=*", re.I), r"\1REDACTED"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"), "REDACTED-JWT"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1REDACTED@"),
]


def redact(text: str) -> str:
    for pattern, replacement in SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _patch(record) -> None:
    record["message"] = redact(record["message"])
    if record["exception"] is not None:
        record["extra"]["redacted"] = True


def setup(command: str, verbose: bool = False, log_dir: str | None = None) -> Path:
    """Configure both sinks; returns the log file path."""
    folder = Path(log_dir or os.environ.get("REPLAYER_LOG_DIR", "logs"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{command}_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}.log"
    logger.remove()
    logger.configure(patcher=_patch)
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO", format="<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}")
    logger.add(path, level="DEBUG", format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {thread.name} {message}", backtrace=False, diagnose=False)
    quiet_libraries()
    return path


def quiet_libraries() -> None:
    """MLflow and azure log through `logging` at INFO; keep their chatter out of our output."""
    import logging

    import mlflow  # noqa: F401 - it sets its own logger to INFO on import; override after

    for name in ("mlflow", "azure", "urllib3", "alembic", "azureml"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
