"""Artifact helpers shared by extract, replay and verify."""
from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def md5_file(path: Path) -> tuple[int, str]:
    """(size, md5 hex) of a local file, read in blocks."""
    digest = hashlib.md5()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
