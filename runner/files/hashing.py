"""Size and MD5 of bytes: a local file, or a stream being read (and maybe written on the way)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BLOCK = 1 << 20  # read size for local hashing


@dataclass
class Written:
    size: int
    md5: str
    blocks_reused: int = 0  # staged blocks a resumed upload did not send again


def md5_file(path: Path) -> tuple[int, str]:
    """(size, md5 hex) of a local file."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "md5")
        return handle.tell(), digest.hexdigest()


def hash_stream(reader: BinaryIO, block_size: int = BLOCK, out: BinaryIO | None = None, on_bytes=None) -> tuple[int, str]:
    """(size, md5 hex) of a readable stream, one block at a time; each block also written to
    `out` and counted through `on_bytes` when given."""
    digest, size = hashlib.md5(), 0
    for chunk in iter(lambda: reader.read(block_size), b""):
        digest.update(chunk)
        size += len(chunk)
        if out is not None:
            out.write(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    return size, digest.hexdigest()


def write_hashed(reader: BinaryIO, path: Path, block_size: int = BLOCK, on_bytes=None) -> Written:
    """Stream `reader` into a local file in blocks, measuring size and md5 on the way."""
    with open(path, "wb") as out:
        return Written(*hash_stream(reader, block_size, out, on_bytes))
