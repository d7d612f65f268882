"""Any MLflow artifact repository as a store (mlflow-artifacts:/, an HTTP artifact server, azureml://
roots that run history does not serve): the fallback of runner.files.stores.open_store."""
from __future__ import annotations

import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from runner.core.records import ArtifactRef
from runner.files import stores
from runner.files.hashing import Written, write_hashed
from runner.files.options import ArtifactOptions
from runner.files.stores import UNKNOWN_SIZE, ArtifactCopyError, Stat


class MlflowStore:
    """Any MLflow artifact repository (mlflow-artifacts:/, an HTTP artifact server, azureml://).
    MLflow repositories work on local files, so bytes pass through a scratch file."""

    server_side = False
    takes_files = True  # uploads whole local files (put_file); lists sizes only, Azure ML's as -1

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None):
        from runner.core.logs import redact_uri as redact
        from runner.mlflow.source import artifact_repository

        self.repo = artifact_repository(artifact_uri, tracking_uri)
        self.uri = redact(artifact_uri)
        self._sizes: dict[str, dict[str, int]] = {}  # folder -> {path: size}, filled on first stat
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MlflowStore({self.uri})"

    def stat(self, path: str) -> Stat | None:
        folder = str(PurePosixPath(path).parent)
        folder = "" if folder == "." else folder
        with self._lock:
            sizes = self._sizes.get(folder)
        if sizes is None:
            # Azure ML's artifact service lists sizes as -1 (unknown): kept as UNKNOWN_SIZE.
            sizes = {info.path: UNKNOWN_SIZE if (info.file_size or 0) < 0 else info.file_size or 0
                     for info in self.repo.list_artifacts(folder or None) if not info.is_dir}
            with self._lock:
                self._sizes[folder] = sizes
        return Stat(size=sizes[path]) if path in sizes else None

    def list(self) -> Iterator[ArtifactRef]:
        pending = [""]
        while pending:
            folder = pending.pop()
            for info in self.repo.list_artifacts(folder or None):
                if info.is_dir:
                    pending.append(info.path)
                else:
                    yield ArtifactRef(path=info.path, size=info.file_size or 0)

    @contextmanager
    def local_file(self, path: str, scratch: str | None = None):
        folder = Path(tempfile.mkdtemp(prefix="replayer-mlflow-", dir=scratch))
        try:
            yield Path(self.repo.download_artifacts(path, str(folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def open(self, path: str, scratch: str | None = None):
        with self.local_file(path, scratch) as local, open(local, "rb") as handle:
            yield handle

    def write(self, path: str, reader: BinaryIO, size: int | None, options: ArtifactOptions, on_bytes) -> Written:
        folder = Path(tempfile.mkdtemp(prefix="replayer-up-", dir=options.scratch))
        try:
            local = folder / PurePosixPath(path).name
            written = write_hashed(reader, local, options.block_size)
            self.put_file(path, local)
            on_bytes(written.size)
            return written
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def put_file(self, path: str, local: Path) -> None:
        if local.name != PurePosixPath(path).name:
            raise ArtifactCopyError(f"{path}: local file is named {local.name}")
        parent = str(PurePosixPath(path).parent)
        self.repo.log_artifact(str(local), None if parent == "." else parent)
        with self._lock:
            self._sizes.pop("" if parent == "." else parent, None)



def open_mlflow_root(root: str, tracking_uri: str | None = None, auth=None) -> MlflowStore:
    return MlflowStore(root, tracking_uri)


stores.register(open_mlflow_root, fallback=True)
