"""How an artifact root URI (or a Source's job) finds its store: the openers the ends registered
(runner.files.stores.register), a local folder, else the registered fallback."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from runner.core.errors import ReplayerError
from runner.core.records import ArtifactRef
from runner.files import stores
from runner.files.hashing import Written
from runner.files.local import LocalStore
from runner.files.stores import ArtifactCopyError, Stat


def open_store(root: "str | Path | stores.Store", tracking_uri: str | None = None, auth: Any = None):
    """The store behind an artifact root URI (a Store passes through unchanged)."""
    if not isinstance(root, (str, Path)):
        return root
    text = str(root)
    parts = urlsplit(text)
    for opener in stores._openers:
        store = opener(text, tracking_uri, auth)
        if store is not None:
            return store
    if isinstance(root, Path) or parts.scheme in ("", "file"):
        return LocalStore(unquote(parts.path) if parts.scheme == "file" else text)
    for opener in stores._fallback:
        store = opener(text, tracking_uri, auth)
        if store is not None:
            return store
    raise ReplayerError(f"no store knows artifact root {text.split('?', 1)[0]}: the ends are not loaded (import runner.ends)")


class FetchStore:
    """Read-only: any Source's files through its `fetch_artifact` (the generic fallback)."""

    server_side = False

    def __init__(self, source, job, scratch: str | Path | None = None):
        self.source, self.job = source, job
        self.scratch = Path(scratch) if scratch else Path(tempfile.gettempdir())
        self.uri = f"{type(source).__name__}:{job.source_id}"

    def stat(self, path: str) -> Stat | None:
        return None

    def list(self) -> Iterator[ArtifactRef]:
        return iter(self.source.artifacts(self.job))

    @contextmanager
    def local_file(self, path: str, scratch: str | None = None):
        with self.source.fetch_artifact(self.job, ArtifactRef(path, 0), Path(scratch) if scratch else self.scratch) as local:
            yield Path(local)

    @contextmanager
    def open(self, path: str, scratch: str | None = None):
        with self.local_file(path, scratch) as local, open(local, "rb") as handle:
            yield handle

    def write(self, *args, **kwargs) -> Written:
        raise ArtifactCopyError(f"{self.uri} is read only")


def source_store(source, job, scratch: str | Path | None = None, auth: Any = None):
    """A job's files as a store: the source's own store for it (Azure ML: run history), else its
    artifact root when it names one (so a blob root can be copied server-side), else through the
    source's `fetch_artifact`."""
    own = getattr(source, "artifact_store", None)
    if callable(own):
        return own(job)
    root = getattr(source, "artifact_uri", None)
    uri = root(job) if callable(root) else None
    if uri:
        client = getattr(source, "client", None)
        return open_store(uri, getattr(client, "tracking_uri", None), auth)
    return FetchStore(source, job, scratch)
