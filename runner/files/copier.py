"""The copy engine: a run's files from one store to another. Parallel, resumable, md5-checked,
memory bounded by blocks.

Where both stores are blob-backed (`server_side`), the destination pulls the bytes itself from a
short-lived read SAS of the source (the store's `copy_from`); where a store answers that it cannot
(ServerSideImpossible: another cloud, a firewall), the bytes stream through this process in blocks,
one block per worker in memory. Resumable: a destination file whose size and MD5 already match the
source is skipped; a streamed upload that was killed halfway reuses the blocks it had staged.
Every copy is checked: the MD5 the source holds (or the one computed while streaming) must equal
the destination's.
"""
from __future__ import annotations

import io
import json
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from loguru import logger

from runner.core.logs import redact_uri
from runner.core.progress import Progress
from runner.core.records import ArtifactRef
from runner.files.hashing import Written, hash_stream, md5_file
from runner.files.options import LOG_FAMILIES, REFS_FILE, ArtifactOptions, clean_path, log_family
from runner.files.stats import PROGRESS_FLOOR, BytesProgress, CopyStats
from runner.files.local import LocalStore
from runner.files.roots import open_store
from runner.files.stores import ETAG_KEY, UNKNOWN_SIZE, ArtifactCopyError, ServerSideImpossible, Stat, redact_error

_no_server_side: set[tuple[str, str]] = set()  # (source account URL, destination account URL) that refused


class _Engine:
    """One copy call: what the destination holds is listed once, files go through a thread pool,
    and what landed is checked at the end against one more listing (blob destinations)."""

    def __init__(self, src, dst, options: ArtifactOptions, progress: Progress | None, fresh: bool, sources: dict | None = None):
        self.src, self.dst, self.options, self.progress, self.fresh = src, dst, options, progress, fresh
        self.stats = CopyStats()
        self.lock = threading.Lock()
        self.server_side = bool(options.server_side and getattr(src, "server_side", False) and getattr(dst, "server_side", False))
        self.pair = (getattr(src, "copy_key", ""), getattr(dst, "copy_key", ""))
        if self.pair in _no_server_side:
            self.server_side = False
        # One listing instead of a lookup per file: blob stores (and run history, through its blobs)
        # answer size, MD5, etag and copy state.
        self.have = {} if fresh else (dst.listing() if hasattr(dst, "listing") else None)
        self.sources = sources if sources is not None else (src.listing() if hasattr(src, "listing") else None)
        self.expected: dict[str, tuple[str, ArtifactRef, str]] = {}  # dst path -> (source path, landed ref, how)

    def bytes_done(self, count: int) -> None:
        if self.progress is not None and count:
            self.progress.tick(count)
        if self.options.on_bytes is not None and count:
            self.options.on_bytes(count)

    def dst_stat(self, path: str) -> Stat | None:
        return self.have.get(path) if self.have is not None else self.dst.stat(path)

    def src_stat(self, path: str) -> Stat | None:
        return self.sources.get(path) if self.sources is not None else self.src.stat(path)

    def fail(self, path: str, dst_path: str, reason: str) -> None:
        shown = path if dst_path == path else f"{path} (as {dst_path})"
        logger.warning("artifact {} -> {}: {}", shown, self.dst.uri, reason)
        with self.lock:
            self.stats.failed.append((path, reason))

    def one(self, ref: ArtifactRef, dst_path: str) -> None:
        try:
            ref = ArtifactRef(clean_path(ref.path), ref.size, ref.md5)
            clean_path(dst_path)
            how, landed = self._copy(ref, dst_path)
        except Exception as error:  # noqa: BLE001 - reported per file; the caller decides what a failure means
            self.fail(ref.path, dst_path, str(error) if isinstance(error, ArtifactCopyError) else redact_error(error))
            return
        with self.lock:
            if how == "skip":
                self.stats.skipped_existing += 1
                self.stats.refs.append(landed)
            else:
                self.expected[dst_path] = (ref.path, landed, how)

    def check_landed(self) -> None:
        """Count what was copied, after checking it: a blob destination is listed once and every
        copied file must hold the size and MD5 expected (the source's, or the one computed while
        streaming). Other destinations were checked while writing (local) or cannot tell (MLflow).
        Server-side copies the service pinned to the source's version ("pinned": its etag as
        If-Match) hold its size and MD5 already: when all are, no listing (on Azure a run history
        listing, a read SAS request and a HEAD per file)."""
        unpinned = any(how != "pinned" for _, _, how in self.expected.values())
        landed = self.dst.listing() if hasattr(self.dst, "listing") and unpinned else None
        s = self.stats
        for dst_path, (path, ref, how) in sorted(self.expected.items()):
            if landed is not None and how != "pinned":
                found = landed.get(dst_path)
                if found is None or found.size != ref.size or (ref.md5 and found.md5 != ref.md5):
                    held = f"{found.size} bytes md5 {found.md5 or '(none)'}" if found else "nothing"
                    self.fail(path, dst_path, f"the destination holds {held}, expected {ref.size} bytes md5 {ref.md5 or '(unknown)'}")
                    continue
            s.refs.append(ref)
            s.copied += 1
            s.bytes_copied += ref.size
            if how in ("server", "pinned"):
                s.server_side += 1
            else:
                s.streamed += 1
                s.bytes_streamed += ref.size

    def _copy(self, ref: ArtifactRef, dst_path: str) -> tuple[str, ArtifactRef]:
        have = self.dst_stat(dst_path)
        if self.server_side:
            try:
                return self._server_side(ref, dst_path, have)
            except ServerSideImpossible as why:
                with self.lock:
                    if self.pair not in _no_server_side:
                        logger.warning("server-side copy from {} to {} is not possible ({}); streaming instead", self.src.uri, self.dst.uri, why)
                        _no_server_side.add(self.pair)
                    self.server_side = False
        return self._streamed(ref, dst_path, have)

    def _server_side(self, ref: ArtifactRef, dst_path: str, have: Stat | None) -> tuple[str, ArtifactRef]:
        source = self.src_stat(ref.path)
        if source is None:
            raise ArtifactCopyError("not found in the source store")
        want_md5 = source.md5 or ref.md5
        if have is not None and have.copy_status in (None, "success") and have.size == source.size and (
            (want_md5 and have.md5 == want_md5) or (source.etag and have.metadata.get(ETAG_KEY) == source.etag)
        ):
            self.bytes_done(source.size)
            return "skip", ArtifactRef(ref.path, have.size, have.md5)
        if have is not None and have.copy_status == "pending":
            self.dst.abort_pending(dst_path, have)
        pinned = self.dst.copy_from(self.src, ref.path, dst_path, source, self.options)  # ServerSideImpossible: stream instead
        md5 = want_md5
        if not md5 and self.options.hash_missing:  # the source never had one: hash it (a read, no upload)
            with self.src.open(ref.path) as reader:
                _, md5 = hash_stream(reader, self.options.block_size)
            self.dst.set_md5(dst_path, md5)
            with self.lock:
                self.stats.hashed += 1
        self.bytes_done(source.size)
        return "pinned" if pinned else "server", ArtifactRef(ref.path, source.size, md5)

    def _streamed(self, ref: ArtifactRef, dst_path: str, have: Stat | None) -> tuple[str, ArtifactRef]:
        want_md5 = ref.md5
        if have is not None and (have.size == ref.size or not ref.size or have.size == UNKNOWN_SIZE):
            if getattr(self.dst, "takes_files", False):
                # MLflow repositories report sizes only (as the direct target always checked). Azure ML's
                # reports none, and its files are write-once (a second upload is refused): a file it
                # lists is there; verify compares the bytes.
                same = have.size in (ref.size, UNKNOWN_SIZE)
            else:
                if not want_md5:
                    source = self.src_stat(ref.path)  # a blob knows its MD5, a local file is hashed
                    want_md5 = source.md5 if source else ""
                # A source that cannot tell its MD5 (an MLflow server) counts as there on equal size;
                # `compare`/verify hashes both sides.
                same = have.md5 == want_md5 if want_md5 else have.size == ref.size
            if same:
                size = ref.size if have.size == UNKNOWN_SIZE else have.size
                self.bytes_done(size)
                return "skip", ArtifactRef(ref.path, size, have.md5 or want_md5)
        if getattr(self.dst, "takes_files", False):
            with self.src.local_file(ref.path, self.options.scratch) as local:
                if local.name == PurePosixPath(dst_path).name:
                    size, md5 = md5_file(local)
                    self.dst.put_file(dst_path, local)
                    self.bytes_done(size)
                    written = Written(size, md5)
                else:
                    with open(local, "rb") as reader:
                        written = self.dst.write(dst_path, reader, ref.size or None, self.options, self.bytes_done)
        else:
            with self.src.open(ref.path) as reader:
                written = self.dst.write(dst_path, reader, ref.size or None, self.options, self.bytes_done)
        with self.lock:
            self.stats.blocks_reused += written.blocks_reused
        if want_md5 and written.md5 != want_md5:
            raise ArtifactCopyError(f"the bytes read have md5 {written.md5}, the source recorded {want_md5} (changed or corrupted)")
        if ref.size and written.size != ref.size:
            raise ArtifactCopyError(f"{written.size} bytes read, the source listed {ref.size}")
        return "stream", ArtifactRef(ref.path, written.size, written.md5)


def register_ahead(engine: _Engine, chosen: list[ArtifactRef], mapping: Callable[[str], str]) -> None:
    """A destination that registers paths before their bytes (Azure ML run history: `prepare`)
    registers those it lacks in batches, not one request a file. Only paths the source has: a
    registered path without bytes could only be written with the credential later. Best effort:
    a failed batch leaves each copy to register its own path, as without `prepare`."""
    if not hasattr(engine.dst, "prepare"):
        return
    paths = [mapping(r.path) for r in chosen if engine.dst_stat(mapping(r.path)) is None
             and (engine.sources is None or r.path in engine.sources)]
    if not paths:
        return
    try:
        engine.dst.prepare(paths)
    except Exception as error:  # noqa: BLE001 - each copy registers its own path, and reports its own error
        logger.debug("registering {} paths in {} at once failed ({}); one by one instead", len(paths), engine.dst.uri, redact_error(error))


def select(refs: Iterable[ArtifactRef], options: ArtifactOptions, stats: CopyStats) -> list[ArtifactRef]:
    """The refs include/exclude and the size limit let through; the rest counted in `stats`."""
    chosen = []
    for ref in refs:
        if not options.selects(ref.path):
            stats.skipped_filtered += 1
        elif options.max_size is not None and ref.size > options.max_size:
            stats.skipped_too_large.append(f"{ref.path} ({ref.size} bytes)")
        else:
            chosen.append(ref)
    return chosen


def copy_artifacts(
    src,
    dst,
    refs: Iterable[ArtifactRef] | None = None,
    options: ArtifactOptions | None = None,
    *,
    tracking_uri: str | None = None,
    path_map: Callable[[str], str] | None = None,
    fresh: bool = False,
    progress: Progress | None = None,
    label: str = "artifacts",
) -> CopyStats:
    """Copy `refs` (default: everything under `src`) from one store to another; returns what happened.

    src, dst: stores or root URIs (see `open_store`). `path_map` renames on the way (pipeline
    layout); `fresh=True` says the destination is known to be empty (a run just created), which
    saves a lookup per file. Failures are collected in `stats.failed`, not raised.
    """
    options = options or ArtifactOptions()
    stats = CopyStats()
    if options.mode == "none":
        return stats
    src = open_store(src, tracking_uri, options.auth)
    dst = open_store(dst, tracking_uri, options.auth)
    # A store that lists with sizes and MD5 (blob, run history) is listed once, for the refs and the engine.
    sources = src.listing() if refs is None and hasattr(src, "listing") else None
    if sources is not None:
        refs = [ArtifactRef(path=path, size=found.size, md5=found.md5) for path, found in sources.items()]
    chosen = select(src.list() if refs is None else refs, options, stats)
    stats.files = len(chosen)
    for skipped in stats.skipped_too_large:
        logger.info("artifact {} is over --max-artifact-size {}: skipped", skipped, options.max_size)
    if options.mode == "list":
        record_refs(dst, src, chosen, options)
        stats.listed = len(chosen)
        stats.refs = chosen
        return stats
    if not chosen:
        return stats
    if hasattr(dst, "ensure_container"):
        dst.ensure_container()
    total = sum(r.size for r in chosen)
    if progress is None and total >= PROGRESS_FLOOR:
        progress = BytesProgress(label, total)
    engine = _Engine(src, dst, options, progress, fresh, sources)
    mapping = path_map or (lambda p: p)
    register_ahead(engine, chosen, mapping)
    if options.parallel == 1 or len(chosen) == 1:
        for ref in chosen:
            engine.one(ref, mapping(ref.path))
    else:
        with ThreadPoolExecutor(min(options.parallel, len(chosen)), thread_name_prefix="artifacts") as pool:
            for ref in chosen:
                pool.submit(engine.one, ref, mapping(ref.path))
    engine.check_landed()
    result = engine.stats
    result.files, result.skipped_filtered, result.skipped_too_large = stats.files, stats.skipped_filtered, stats.skipped_too_large
    logger.debug("{} {} -> {}: {}", label, src.uri, dst.uri, result.line())
    return result


def copy_run_artifacts(src_root, dst_root, refs: Iterable[ArtifactRef] | None, options: ArtifactOptions | None = None, **kwargs) -> CopyStats:
    """One run's files, source artifact root to target artifact root (the direct target's call)."""
    return copy_artifacts(src_root, dst_root, refs, options, **kwargs)


def copy_to_folders(src, refs: Iterable[ArtifactRef] | None, artifacts: str | Path | None, logs: str | Path | None,
                    options: ArtifactOptions | None = None, families: Iterable[str] = LOG_FAMILIES, **kwargs) -> CopyStats:
    """A job's files into a pipeline step's outputs: logs (`user_logs/...`, `azureml-logs/...`)
    under `logs/<family>/...`, everything else under `artifacts/<original path>`; a folder given as
    None leaves its files out. Parallel, resumable and md5-checked like every copy here."""
    options = options or ArtifactOptions()
    src = open_store(src, kwargs.get("tracking_uri"), options.auth)
    families = tuple(families)
    refs = list(src.list() if refs is None else refs)
    log_refs = [r for r in refs if log_family(r.path, families)]
    other = [r for r in refs if not log_family(r.path, families)]
    stats = CopyStats()
    if artifacts is not None and other:
        stats.merge(copy_artifacts(src, LocalStore(artifacts), other, options, **kwargs))
    if logs is not None and log_refs:
        stats.merge(copy_artifacts(src, LocalStore(logs), log_refs, options, **kwargs))
    return stats


def copy_to_folder(src, refs: Iterable[ArtifactRef] | None, folder: str | Path, options: ArtifactOptions | None = None,
                   families: Iterable[str] = LOG_FAMILIES, **kwargs) -> CopyStats:
    """A job's files into one folder: original paths kept, logs under original_logs/<family>/...
    (`pipeline_path`)."""
    return copy_to_folders(src, refs, folder, Path(folder) / "original_logs", options, families, **kwargs)


def record_refs(dst, src, refs: list[ArtifactRef], options: ArtifactOptions) -> None:
    """`--artifacts list`: one JSON line per file (path, size, md5) and where it lives, no bytes."""
    lines = [json.dumps({"source": redact_uri(src.uri), "options": options.describe()}, ensure_ascii=False)]
    lines += [json.dumps({"path": r.path, "size": r.size, "md5": r.md5}, ensure_ascii=False) for r in refs]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if hasattr(dst, "ensure_container"):
        dst.ensure_container()
    if getattr(dst, "takes_files", False):
        folder = Path(tempfile.mkdtemp(prefix="replayer-refs-", dir=options.scratch))
        try:
            local = folder / PurePosixPath(REFS_FILE).name
            local.write_bytes(data)
            dst.put_file(REFS_FILE, local)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    dst.write(REFS_FILE, io.BytesIO(data), len(data), options, lambda n: None)
