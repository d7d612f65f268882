"""The store interface the copy engine works with, and how an artifact root URI finds its store.

A *store* is a run's artifact root seen through one small interface (rclone's Fs/Object, with
server-side copy as an optional capability the engine falls back from). runner.files knows local
folders and any Source's files; the ends register the rest (`register`): Azure blob roots and
Azure ML run history (runner.azureml), any other MLflow artifact URI as the fallback (runner.mlflow).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, Protocol

from runner.core.errors import ArtifactCopyError  # noqa: F401 - named from here by the stores
from runner.core.records import ArtifactRef
from runner.files.hashing import Written
from runner.files.options import ArtifactOptions

UNKNOWN_SIZE = -1  # a store that lists a file without its size
ETAG_KEY = "replay_source_etag"  # destination metadata: the source version a server-side copy took





class ServerSideImpossible(Exception):
    """A store's answer to a server-side copy that this pair of stores cannot do (stream instead)."""


def redact_error(error: BaseException) -> str:
    """One line about an error, safe to log: no URL query strings, keys or tokens."""
    from runner.core.logs import redact

    code = error_code(error)
    status = getattr(error, "status_code", None)
    text = str(getattr(error, "reason", "") or "") if code else str(error)
    text = text.splitlines()[0] if text else ""
    text = re.sub(r"RequestId:.*", "", text).strip()
    text = re.sub(r"https?://\S+", lambda m: m.group(0).split("?", 1)[0], text)
    head = " ".join(str(p) for p in (status, code) if p)
    return redact(f"{type(error).__name__}{' ' + head if head else ''}: {text}"[:300])


def error_code(error: BaseException) -> str:
    code = getattr(error, "error_code", None)
    return str(getattr(code, "value", code) or "")


@dataclass
class Stat:
    size: int
    md5: str = ""  # hex, "" when the store does not know it
    etag: str = ""
    copy_status: str | None = None
    copy_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Store(Protocol):
    uri: str  # for messages: without secrets

    def stat(self, path: str) -> Stat | None: ...

    def list(self) -> Iterator[ArtifactRef]: ...

    def open(self, path: str) -> Any: ...  # context manager -> readable binary stream

    def local_file(self, path: str) -> Any: ...  # context manager -> Path holding the bytes

    def write(self, path: str, reader: BinaryIO, size: int | None, options: ArtifactOptions, on_bytes) -> Written: ...


# An opener turns a root URI into a store, or answers None when the URI is not its kind.
Opener = Callable[[str, "str | None", Any], "Store | None"]
_openers: list[Opener] = []
_fallback: list[Opener] = []


def register(opener: Opener, fallback: bool = False) -> None:
    """Add an end's store opener; a fallback is asked only when no other opener knows the URI."""
    chosen = _fallback if fallback else _openers
    if opener not in chosen:
        chosen.append(opener)
