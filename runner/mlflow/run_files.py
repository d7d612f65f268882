"""A bookkeeping file of a target run (a long sync state, an experiment's tag overflow), read back
and checked against the sha1 its pointer tag records."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path


def read_checked(client, run_id: str, path: str, sha1: str | None, what: str) -> str:
    """The text of `path` in run `run_id`; ValueError naming `what` when it is not the file the
    pointer names (changed or cut since)."""
    folder = tempfile.mkdtemp(prefix="replayer-read-")
    try:
        text = Path(client.download_artifacts(run_id, path, folder)).read_text(encoding="utf-8")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if hashlib.sha1(text.encode()).hexdigest() != sha1:
        raise ValueError(f"{path} of run {run_id} is not {what}")
    return text
