"""What to copy and how: modes, size limits, include/exclude globs, and artifact paths."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable

from runner.core.errors import ArtifactCopyError, UsageError

BLOCK_SIZE = 4 << 20  # streamed upload block (about the memory one worker holds)
MODES = ("copy", "list", "none")
REFS_FILE = "replay/artifact-refs.jsonl"  # what `--artifacts list` records instead of bytes
LOG_FAMILIES = ("azureml-logs", "logs", "user_logs", "system_logs")  # AzureML's job log folders


@dataclass
class ArtifactOptions:
    """What to copy and how: `--artifacts`, `--max-artifact-size`, `--artifact-include/-exclude`."""

    mode: str = "copy"  # copy | list (record refs, no bytes) | none
    max_size: int | None = None  # bigger files are skipped and reported
    include: list[str] = field(default_factory=list)  # globs on the relative path; empty = all
    exclude: list[str] = field(default_factory=list)  # globs; exclude wins over include
    parallel: int = 4  # files in flight per copy call
    block_size: int = BLOCK_SIZE
    server_side: bool = True  # blob to blob without the bytes passing through here
    hash_missing: bool = True  # a source blob without Content-MD5 is hashed (read once) and the MD5 set on the copy
    copy_timeout: float = 3600.0  # seconds one server-side copy may stay pending
    sas_minutes: int = 60  # lifetime of each read SAS
    auth: Any = field(default=None, repr=False)  # the blob end's BlobAuth; None: from the environment when needed
    scratch: str | None = None  # folder for temporary files (MLflow repositories work on files)
    on_bytes: Callable[[int], None] | None = field(default=None, repr=False, compare=False)  # progress hook

    @classmethod
    def build(cls, artifacts=None, max_artifact_size=None, artifact_include=None, artifact_exclude=None, **more) -> "ArtifactOptions":
        """From CLI/YAML values: comma strings or lists, sizes as 100MB / 1.5GiB / bytes."""
        from runner.core.filters import as_list

        mode = str(artifacts or "copy").strip().lower()
        if mode not in MODES:
            raise UsageError(f"--artifacts {artifacts!r}: expected one of {', '.join(MODES)}")
        options = cls(
            mode=mode,
            max_size=parse_size(max_artifact_size, "--max-artifact-size"),
            include=as_list(artifact_include),
            exclude=as_list(artifact_exclude),
            **more,
        )
        if options.parallel < 1:
            raise UsageError(f"artifact parallelism {options.parallel}: expected 1 or more")
        return options

    def selects(self, path: str) -> bool:
        """Whether include/exclude globs let `path` through (size is checked separately)."""
        if self.include and not any(glob_match(path, p) for p in self.include):
            return False
        return not any(glob_match(path, p) for p in self.exclude)

    def describe(self) -> dict:
        return {"mode": self.mode, "max_size": self.max_size, "include": self.include, "exclude": self.exclude}


# -- sizes, globs, paths -----------------------------------------------------------------------

UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
         "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(value, flag: str = "size") -> int | None:
    """Bytes from 1000, "100MB" (10^6), "1.5GiB" (2^30); None or "" for no limit."""
    if value is None or value == "" or value is False:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not found or found.group(2).lower() not in UNITS:
            raise UsageError(f"{flag} {value!r}: expected a size like 500MB, 2GiB or a number of bytes")
        number, unit = float(found.group(1)), found.group(2).lower()
    size = int(number * UNITS[unit])
    if size < 0:
        raise UsageError(f"{flag} {value!r}: expected a size of 0 or more")
    return size


def glob_match(path: str, pattern: str) -> bool:
    """A glob on the whole relative path (`*` crosses folders, like `outputs/*.pt`); a pattern
    without `/` also matches the file name alone (`*.ckpt`)."""
    pattern = pattern.strip().lstrip("/")
    if fnmatch.fnmatchcase(path, pattern):
        return True
    if pattern.endswith("/") and path.startswith(pattern):
        return True  # `logs/`: a whole folder
    return "/" not in pattern and fnmatch.fnmatchcase(PurePosixPath(path).name, pattern)


def clean_path(path: str) -> str:
    """A relative artifact path as given, refusing anything that could escape its root."""
    text = str(path).replace("\\", "/")
    parts = text.split("/")
    if not text or text.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ArtifactCopyError(f"artifact path {path!r} is not a plain relative path")
    return text


def pipeline_path(path: str, families: Iterable[str] = LOG_FAMILIES) -> str:
    """Where `copy_to_folder` puts a file: logs under original_logs/<family>/..., the rest as is."""
    return f"original_logs/{path}" if log_family(path, families) else path


def log_family(path: str, families: Iterable[str] = LOG_FAMILIES) -> tuple[str, str] | None:
    """(family, rest) for a log file of the original job (`user_logs/std_log.txt`), else None."""
    first, sep, rest = path.partition("/")
    return (first, rest) if sep and rest and first in tuple(families) else None
