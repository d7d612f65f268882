"""A local folder as a store."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from runner.core.records import ArtifactRef
from runner.files.hashing import Written, md5_file, write_hashed
from runner.files.options import ArtifactOptions, clean_path
from runner.files.stores import Stat

PARTIAL = ".replayer-partial"  # a local file being written (renamed into place when complete)


class LocalStore:
    """A folder: a manifest's files/<job>/, a sqlite store's run artifacts, a step's output."""

    server_side = False

    def __init__(self, root: str | Path):
        self.root = Path(str(root).removeprefix("file://")).expanduser()
        self.uri = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.uri})"

    def file(self, path: str) -> Path:
        return self.root / PurePosixPath(clean_path(path))

    def stat(self, path: str) -> Stat | None:
        file = self.file(path)
        if not file.is_file():
            return None
        size, md5 = md5_file(file)
        return Stat(size=size, md5=md5)

    def list(self) -> Iterator[ArtifactRef]:
        if not self.root.is_dir():
            return
        for file in sorted(self.root.rglob("*")):
            if file.is_file() and not file.name.endswith(PARTIAL):
                yield ArtifactRef(path=file.relative_to(self.root).as_posix(), size=file.stat().st_size)

    @contextmanager
    def open(self, path: str):
        with open(self.file(path), "rb") as handle:
            yield handle

    @contextmanager
    def local_file(self, path: str, scratch: str | None = None):
        yield self.file(path)

    def write(self, path: str, reader: BinaryIO, size: int | None, options: ArtifactOptions, on_bytes) -> Written:
        target = self.file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + PARTIAL)
        written = write_hashed(reader, partial, options.block_size, on_bytes)
        os.replace(partial, target)
        return written
