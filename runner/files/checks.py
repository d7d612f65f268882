"""Checking a copy: the files of two stores compared by size and MD5."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from runner.core.records import ArtifactRef
from runner.files.copier import select
from runner.files.hashing import hash_stream
from runner.files.options import ArtifactOptions
from runner.files.stats import CopyStats
from runner.files.roots import open_store


@dataclass
class Mismatch:
    path: str
    source: str  # "size md5" or "missing"
    target: str


def digests(store, refs: Iterable[ArtifactRef] | None = None, deep: bool = False) -> dict[str, tuple[int, str]]:
    """path -> (size, md5) of a store's files (`refs`, or all it lists; absent ones left out).

    Blob stores answer from Content-MD5 without reading the bytes; `deep=True` reads and hashes
    them anyway, which catches a blob whose stored MD5 was made to lie. Other stores, and blobs
    without an MD5, are read and hashed (streamed, one block in memory).
    """
    out = {}
    for ref in store.list() if refs is None else refs:
        size, md5 = ref.size, "" if deep else ref.md5
        if not md5 and not deep and hasattr(store, "listing") and refs is not None:
            found = store.stat(ref.path)
            if found is None:
                continue
            size, md5 = found.size, found.md5
        if not md5:
            try:
                with store.open(ref.path) as reader:
                    size, md5 = hash_stream(reader)
            except FileNotFoundError:
                continue
        out[ref.path] = (size, md5)
    return out


def compare(src, dst, refs: Iterable[ArtifactRef] | None = None, options: ArtifactOptions | None = None, *,
            tracking_uri: str | None = None, deep: bool = False, path_map: Callable[[str], str] | None = None) -> list[Mismatch]:
    """Files of `src` (selected as a copy would) against `dst`, by size and md5; [] when equal.
    Files in `dst` that the source lacks are reported too (except the tool's own replay/ files)."""
    options = options or ArtifactOptions()
    src = open_store(src, tracking_uri, options.auth)
    dst = open_store(dst, tracking_uri, options.auth)
    stats = CopyStats()
    chosen = select(src.list() if refs is None else refs, options, stats)
    if options.mode != "copy":
        return []
    mapping = path_map or (lambda p: p)
    want = {mapping(path): value for path, value in digests(src, chosen).items()}
    have = digests(dst, deep=deep)
    extra = {p for p in have if p not in want and not p.startswith("replay/") and options.selects(p)}
    out = []
    for path in sorted(set(want) | extra):
        a, b = want.get(path), have.get(path)
        if a != b:
            show = lambda v: f"{v[0]} bytes md5 {v[1]}" if v else "missing"  # noqa: E731
            out.append(Mismatch(path, show(a), show(b)))
    return out
