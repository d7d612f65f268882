"""Artifacts and logs between stores: server-side blob copy where both ends are blob storage,
a streamed copy everywhere else. Parallel, resumable, md5-checked, memory bounded by blocks.

A *store* is a run's artifact root seen through one small interface (rclone's Fs/Object, with
server-side copy as an optional capability the engine falls back from):

    BlobStore    Azure Blob Storage or Azurite: wasbs://container@account.blob.core.windows.net/prefix,
                 https://account.blob.core.windows.net/container/prefix, abfss://..., or an emulator's
                 path-style http://127.0.0.1:10000/account/container/prefix
    LocalStore   a folder (a manifest's files/<job>/, a pipeline step's output, a sqlite store's artifacts)
    MlflowStore  any other MLflow artifact URI (mlflow-artifacts:/, an HTTP artifact server, azureml://)
    FetchStore   any Source through its `fetch_artifact` (read only)

Blob to blob, the destination pulls the bytes itself (`start_copy_from_url`) from a read-only,
short-lived SAS URL of the source blob: a user-delegation SAS signed through the credential, or
an account-key SAS where a key is all there is (Azurite). The SAS is made per blob, lives only in
the request, is never stored or logged, and error text that leaves this module is redacted.
Where a server-side copy is impossible (the source is not blob storage, another cloud, a firewall
in the way), the bytes stream through this process in blocks (`stage_block` + `commit_block_list`),
one block per worker in memory, with a content MD5 checked per block in transit and over the whole.

Resumable: a destination file whose size and MD5 already match the source is skipped; a streamed
upload that was killed halfway reuses the blocks it had staged. Every copy is checked: the MD5
the source holds (or the one computed while streaming) must equal the destination's.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Protocol
from urllib.parse import unquote, urlsplit

from loguru import logger

from runner.errors import ReplayerError, UsageError
from runner.model import ArtifactRef
from runner.progress import Progress

BLOCK = 1 << 20  # read size for local hashing
BLOCK_SIZE = 4 << 20  # streamed upload block (about the memory one worker holds)
MAX_BLOCKS = 50_000  # Azure's limit of blocks per blob
MODES = ("copy", "list", "none")
REFS_FILE = "replay/artifact-refs.jsonl"  # what `--artifacts list` records instead of bytes
LOG_FAMILIES = ("azureml-logs", "logs", "user_logs", "system_logs")  # AzureML's job log folders
ETAG_KEY = "replay_source_etag"  # destination metadata: the source version a server-side copy took
PROGRESS_FLOOR = 64 << 20  # a copy smaller than this logs no progress lines of its own
AZURE_SUFFIXES = ("core.windows.net", "core.chinacloudapi.cn", "core.usgovcloudapi.net", "core.cloudapi.de")
PUT_FROM_URL_MAX = 5000 << 20  # Put Blob From URL's size limit
EMULATOR_ACCOUNT = "devstoreaccount1"  # Azurite's built-in account
PARTIAL = ".replayer-partial"  # a local file being written (renamed into place when complete)


def md5_file(path: Path) -> tuple[int, str]:
    """(size, md5 hex) of a local file, read in blocks."""
    digest = hashlib.md5()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


class ArtifactCopyError(ReplayerError):
    """A file could not be copied or did not arrive intact (the message names it, no secrets)."""

    exit_code = 1


# -- options and results ---------------------------------------------------------------------


@dataclass
class BlobAuth:
    """How to reach blob accounts. Keys are for the emulator and key-only accounts; production
    uses `credential` (a TokenCredential, by default the process-wide one from runner.credentials).

    `sas` makes the read SAS of a source blob store; by default an account-key SAS when a key is
    known and a user-delegation SAS through the credential otherwise. Nothing here is ever logged.
    """

    keys: dict[str, str] = field(default_factory=dict, repr=False)
    credential: Any = field(default=None, repr=False)
    sas: Callable[["BlobStore"], "SasSource"] | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env=None) -> "BlobAuth":
        """Keys from REPLAYER_STORAGE_KEYS ("acct1:key1;acct2:key2", Azurite's format) and the
        account of AZURE_STORAGE_CONNECTION_STRING; no key means the Azure credential is used."""
        env = os.environ if env is None else env
        keys: dict[str, str] = {}
        for item in (env.get("REPLAYER_STORAGE_KEYS") or "").split(";"):
            name, sep, key = item.strip().partition(":")
            if sep and name and key:
                keys[name] = key
        text = env.get("AZURE_STORAGE_CONNECTION_STRING") or ""
        parts = dict(p.split("=", 1) for p in text.split(";") if "=" in p)
        if parts.get("AccountName") and parts.get("AccountKey"):
            keys.setdefault(parts["AccountName"], parts["AccountKey"])
        return cls(keys=keys)

    def token_credential(self):
        if self.credential is None:
            from runner import credentials

            self.credential = credentials.get()
        return self.credential


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
    auth: BlobAuth = field(default_factory=BlobAuth.from_env, repr=False)
    scratch: str | None = None  # folder for temporary files (MLflow repositories work on files)
    on_bytes: Callable[[int], None] | None = field(default=None, repr=False, compare=False)  # progress hook

    @classmethod
    def build(cls, artifacts=None, max_artifact_size=None, artifact_include=None, artifact_exclude=None, **more) -> "ArtifactOptions":
        """From CLI/YAML values: comma strings or lists, sizes as 100MB / 1.5GiB / bytes."""
        from runner.filters import as_list

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


@dataclass
class CopyStats:
    """What one copy call did; merged across runs for a summary."""

    files: int = 0  # selected for copying
    copied: int = 0
    server_side: int = 0
    streamed: int = 0
    skipped_existing: int = 0  # already there with the same size and md5
    skipped_filtered: int = 0  # left out by include/exclude
    skipped_too_large: list[str] = field(default_factory=list)  # "path (size)" over --max-artifact-size
    listed: int = 0  # refs recorded by --artifacts list
    bytes_copied: int = 0  # bytes that landed (server-side or streamed)
    bytes_streamed: int = 0  # of those, bytes that went through this process
    blocks_reused: int = 0  # staged blocks a resumed upload did not send again
    hashed: int = 0  # source files without an MD5 that were hashed here
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    refs: list[ArtifactRef] = field(default_factory=list)  # what the destination holds, with md5

    def merge(self, other: "CopyStats") -> "CopyStats":
        for name, value in vars(other).items():
            mine = getattr(self, name)
            setattr(self, name, mine + value)
        return self

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        parts = [
            f"{self.copied} copied ({self.server_side} server-side, {self.streamed} streamed, {self.bytes_copied / 1e6:.1f} MB)",
            f"{self.skipped_existing} already there",
        ]
        if self.skipped_filtered:
            parts.append(f"{self.skipped_filtered} filtered out")
        if self.skipped_too_large:
            parts.append(f"{len(self.skipped_too_large)} over the size limit")
        if self.listed:
            parts.append(f"{self.listed} listed")
        if self.blocks_reused:
            parts.append(f"{self.blocks_reused} blocks reused")
        if self.failed:
            parts.append(f"{len(self.failed)} failed (first: {self.failed[0][0]}: {self.failed[0][1]})")
        return ", ".join(parts)

    def to_json(self) -> dict:
        data = {k: v for k, v in vars(self).items() if k != "refs"}
        data["failed"] = [list(f) for f in self.failed]
        return data


class BytesProgress(Progress):
    """runner.progress.Progress counted in bytes, shown in MB."""

    def __init__(self, label: str, total_bytes: int, every: float = 2.0):
        super().__init__(label, total_bytes, unit="MB", every=every, scale=1e6)


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


def redact_error(error: BaseException) -> str:
    """One line about an error, safe to log: no URL query strings, keys or tokens."""
    from runner.logs import redact

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


# -- stores --------------------------------------------------------------------------------------


@dataclass
class Stat:
    size: int
    md5: str = ""  # hex, "" when the store does not know it
    etag: str = ""
    copy_status: str | None = None
    copy_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Written:
    size: int
    md5: str
    blocks_reused: int = 0


def write_hashed(reader: BinaryIO, path: Path, block_size: int = BLOCK, on_bytes=None) -> Written:
    """Stream `reader` into a local file in blocks, measuring size and md5 on the way."""
    digest, total = hashlib.md5(), 0
    with open(path, "wb") as out:
        for chunk in iter(lambda: reader.read(block_size), b""):
            digest.update(chunk)
            out.write(chunk)
            total += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return Written(total, digest.hexdigest())


class Store(Protocol):
    uri: str  # for messages: without secrets

    def stat(self, path: str) -> Stat | None: ...

    def list(self) -> Iterator[ArtifactRef]: ...

    def open(self, path: str) -> Any: ...  # context manager -> readable binary stream

    def local_file(self, path: str) -> Any: ...  # context manager -> Path holding the bytes

    def write(self, path: str, reader: BinaryIO, size: int | None, options: ArtifactOptions, on_bytes) -> Written: ...


class SasSource(Protocol):
    """Makes the query string of a read-only SAS for one blob of a BlobStore."""

    def read_sas(self, container: str, blob: str, minutes: int) -> str: ...


class AccountKeySas:
    """An account-key SAS (Azurite; accounts where a key is all there is)."""

    def __init__(self, account: str, key: str):
        self.account, self._key = account, key

    def __repr__(self) -> str:
        return f"AccountKeySas({self.account})"

    def read_sas(self, container: str, blob: str, minutes: int) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        now = datetime.now(timezone.utc)
        return generate_blob_sas(
            self.account, container, blob, account_key=self._key, permission=BlobSasPermissions(read=True),
            start=now - timedelta(minutes=5), expiry=now + timedelta(minutes=minutes),
        )


class UserDelegationSas:
    """A user-delegation SAS signed through the Azure credential (needs Storage Blob Data Reader
    on the source account, which includes generating user delegation keys). One key per account
    is asked for and reused until it is within 10 minutes of expiry."""

    KEY_HOURS = 6

    def __init__(self, service):
        self.service = service
        self._key = None
        self._expires: datetime | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"UserDelegationSas({self.service.account_name})"

    def _delegation_key(self, minutes: int):
        now = datetime.now(timezone.utc)
        with self._lock:
            if self._key is None or self._expires - now < timedelta(minutes=max(10, minutes)):
                self._expires = now + timedelta(hours=max(self.KEY_HOURS, minutes / 60 + 1))
                self._key = self.service.get_user_delegation_key(now - timedelta(minutes=5), self._expires)
            return self._key

    def read_sas(self, container: str, blob: str, minutes: int) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        now = datetime.now(timezone.utc)
        return generate_blob_sas(
            self.service.account_name, container, blob, user_delegation_key=self._delegation_key(minutes),
            permission=BlobSasPermissions(read=True), start=now - timedelta(minutes=5), expiry=now + timedelta(minutes=minutes),
        )


@dataclass(frozen=True)
class BlobLocation:
    account: str
    account_url: str  # https://acct.blob.core.windows.net or http://127.0.0.1:10000/acct
    container: str
    prefix: str  # no leading or trailing slash; "" for the container's root

    @property
    def uri(self) -> str:
        return f"{self.account_url}/{self.container}/{self.prefix}".rstrip("/")


def parse_blob_uri(uri: str, auth: BlobAuth | None = None) -> BlobLocation | None:
    """The blob location a URI names, or None when it is not blob storage."""
    parts = urlsplit(str(uri))
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    path = unquote(parts.path).strip("/")
    if scheme in ("wasb", "wasbs", "abfs", "abfss"):
        if "@" not in parts.netloc:
            return None
        container, _, domain = parts.netloc.partition("@")
        account, _, suffix = domain.partition(".")
        suffix = re.sub(r"^dfs\.", "blob.", suffix)
        return BlobLocation(account, f"https://{account}.{suffix}", container, path)
    if scheme not in ("http", "https"):
        return None
    if host.endswith(AZURE_SUFFIXES) and ".blob." in host:
        container, _, prefix = path.partition("/")
        return BlobLocation(host.split(".", 1)[0], f"{scheme}://{parts.netloc}", container, prefix) if container else None
    # Path-style (Azurite, Azure Stack): http://host:port/account/container/prefix, for an account we know.
    segments = path.split("/", 2)
    known = set((auth or BlobAuth(keys={})).keys) | {EMULATOR_ACCOUNT}
    if len(segments) >= 2 and segments[0] in known:
        return BlobLocation(segments[0], f"{scheme}://{parts.netloc}/{segments[0]}", segments[1], segments[2] if len(segments) > 2 else "")
    return None


_services: dict[tuple, Any] = {}
_services_lock = threading.Lock()
_no_server_side: set[tuple[str, str]] = set()  # (source account URL, destination account URL) that refused
_containers: set[tuple[str, str]] = set()  # (account URL, container) known to exist
_no_put_from_url: set[tuple[str, str]] = set()  # account pairs whose destination lacks Put Blob From URL


GET_SIZES = {"max_single_get_size": 4 << 20, "max_chunk_get_size": 4 << 20}  # a download holds 4 MiB at a time


def pooled_transport(hosts: int):
    """A requests transport whose connection pool serves many threads at once (64 a host), to be
    shared by the clients of a process: one client (and connection) per file would pay a TLS
    handshake per file."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=hosts, pool_maxsize=64)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return RequestsTransport(session=session, session_owner=False)


def blob_service(location: BlobLocation, auth: BlobAuth):
    """One BlobServiceClient per account and credential, shared by every thread (the SDK is
    thread-safe), on a connection pool wide enough for many runs copying at once."""
    from azure.storage.blob import BlobServiceClient

    account_key = auth.keys.get(location.account)
    credential = {"account_name": location.account, "account_key": account_key} if account_key else auth.token_credential()
    cache_key = (location.account_url, account_key or id(credential))
    with _services_lock:
        service = _services.get(cache_key)
        if service is None:
            service = BlobServiceClient(location.account_url, credential=credential, transport=pooled_transport(4), **GET_SIZES)
            _services[cache_key] = service
        return service


class BlobStore:
    """A prefix in a blob container; paths below it are artifact paths."""

    server_side = True

    def __init__(self, location: BlobLocation, auth: BlobAuth | None = None, sas: SasSource | None = None):
        self.location = location
        self.auth = auth or BlobAuth.from_env()
        self.uri = location.uri
        self.copy_key = location.account_url  # what a refused server-side copy or a missing feature is remembered by
        self.service = blob_service(location, self.auth)
        self.container = self.service.get_container_client(location.container)
        self._sas = sas
        self._sas_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BlobStore({self.uri})"

    def blob_name(self, path: str) -> str:
        return f"{self.location.prefix}/{path}" if self.location.prefix else path

    def blob(self, path: str):
        return self.container.get_blob_client(self.blob_name(path))

    def sas_source(self) -> SasSource:
        with self._sas_lock:
            if self._sas is None:
                if self.auth.sas is not None:
                    self._sas = self.auth.sas(self)
                elif self.auth.keys.get(self.location.account):
                    self._sas = AccountKeySas(self.location.account, self.auth.keys[self.location.account])
                else:
                    self._sas = UserDelegationSas(self.service)
            return self._sas

    def read_url(self, path: str, minutes: int) -> str:
        """The blob's URL with a fresh read-only SAS: hand it to the service, never to a log."""
        blob = self.blob(path)
        return f"{blob.url}?{self.sas_source().read_sas(self.location.container, blob.blob_name, minutes)}"

    def ensure_container(self) -> None:
        """Create the container once per process when it is missing (a fresh target account)."""
        from azure.core.exceptions import ResourceExistsError

        key = (self.location.account_url, self.location.container)
        if key in _containers:
            return
        try:
            self.container.create_container()
        except ResourceExistsError:
            pass
        _containers.add(key)

    def stat(self, path: str) -> Stat | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self.blob(path).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return blob_stat(props)

    def listing(self) -> dict[str, Stat]:
        """Every blob under the prefix: path -> Stat (size, MD5, etag, copy state, metadata), one
        request per 5000 blobs."""
        from azure.core.exceptions import ResourceNotFoundError

        start = f"{self.location.prefix}/" if self.location.prefix else None
        out = {}
        try:
            for props in self.container.list_blobs(name_starts_with=start, include=["metadata", "copy"]):
                if not props.name.endswith("/"):  # not a folder marker (ADLS)
                    out[props.name[len(start) :] if start else props.name] = blob_stat(props)
        except ResourceNotFoundError:
            pass
        return out

    def list(self) -> Iterator[ArtifactRef]:
        for path, found in self.listing().items():
            yield ArtifactRef(path=path, size=found.size, md5=found.md5)

    @contextmanager
    def open(self, path: str):
        download = self.blob(path).download_blob(max_concurrency=1)
        yield ChunkReader(download.chunks())

    def local_file(self, path: str, scratch: str | None = None):
        return downloaded(self, path, scratch)

    def write(self, path: str, reader: BinaryIO, size: int | None, options: ArtifactOptions, on_bytes) -> Written:
        return write_block_blob(self.blob(path), path, reader, size, options, on_bytes)

    def copy_from(self, src, src_path: str, path: str, source: Stat, options: ArtifactOptions) -> None:
        """Server-side copy of one blob of `src` (a BlobStore or any store with `read_url`)."""
        url = src.read_url(src_path, options.sas_minutes)
        copy_into_blob(self.blob(path), url, source, options, (src.copy_key, self.copy_key))

    def abort_pending(self, path: str, have: Stat) -> None:
        """A copy left pending by a killed run: abort it, the caller starts a fresh one."""
        from azure.core.exceptions import HttpResponseError

        try:
            self.blob(path).abort_copy(have.copy_id)
        except HttpResponseError:
            pass  # finished or failed meanwhile; the new copy overwrites it either way

    def set_md5(self, path: str, md5_hex_value: str) -> None:
        """Record an MD5 this process computed on a copy whose source had none."""
        set_content_md5(self.blob(path), md5_hex_value)


def set_content_md5(blob, md5_hex_value: str) -> None:
    """Set a blob's Content-MD5, keeping its other content headers."""
    from azure.storage.blob import ContentSettings

    current = blob.get_blob_properties().content_settings
    blob.set_http_headers(ContentSettings(
        content_type=current.content_type, content_encoding=current.content_encoding,
        content_language=current.content_language, content_disposition=current.content_disposition,
        cache_control=current.cache_control, content_md5=bytes.fromhex(md5_hex_value),
    ))


def write_block_blob(blob, path: str, reader: BinaryIO, size: int | None, options: ArtifactOptions, on_bytes) -> Written:
    """Stream into a block blob (a BlobClient, by credential or by SAS URL): one block in memory,
    each block checked in transit by its Content-MD5, blocks already staged by a killed attempt
    reused, the whole MD5 set on commit."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobBlock, ContentSettings

    block_size = options.block_size
    if size and size > block_size * MAX_BLOCKS:
        block_size = -(-size // MAX_BLOCKS)
    settings = dict(content_type=mimetypes.guess_type(path)[0] or "application/octet-stream")
    first = reader.read(block_size)
    if len(first) < block_size:  # small enough for one request
        digest = hashlib.md5(first).digest()
        blob.upload_blob(first, overwrite=True, validate_content=True, content_settings=ContentSettings(content_md5=digest, **settings))
        on_bytes(len(first))
        return Written(len(first), digest.hex())
    try:
        staged = {b.id: b.size for b in blob.get_block_list("uncommitted")[1]}
    except ResourceNotFoundError:
        staged = {}
    whole, blocks, total, reused = hashlib.md5(), [], 0, 0
    chunk, index = first, 0
    while chunk:
        whole.update(chunk)
        block_id = f"{index:06d}-{hashlib.md5(chunk).hexdigest()[:16]}"
        if staged.get(block_id) == len(chunk):
            reused += 1
        else:
            blob.stage_block(block_id, chunk, length=len(chunk), validate_content=True)
        blocks.append(BlobBlock(block_id))
        total += len(chunk)
        on_bytes(len(chunk))
        index += 1
        chunk = reader.read(block_size)
    digest = whole.digest()
    blob.commit_block_list(blocks, content_settings=ContentSettings(content_md5=digest, **settings))
    return Written(total, digest.hex(), reused)


def copy_into_blob(blob, url: str, source: Stat, options: ArtifactOptions, pair: tuple[str, str]) -> None:
    """Server-side copy into `blob` (a BlobClient) from `url` (a source blob with a read SAS).
    Put Blob From URL first (synchronous, the source's MD5 checked by the service in transit, up
    to 5000 MiB), asked once without retries; where the service does not have it (Azurite answers
    501 with a key, 500 with a SAS), fails on its side, or the blob is bigger: Copy Blob, waiting
    while it is pending (cross-account). `pair` names the two accounts: a pair where Put Blob From
    URL failed so uses Copy Blob from then on."""
    from azure.core import MatchConditions
    from azure.core.exceptions import HttpResponseError

    metadata = {**source.metadata, ETAG_KEY: source.etag}
    if source.size <= PUT_FROM_URL_MAX and pair not in _no_put_from_url:
        try:
            blob.upload_blob_from_url(
                url, overwrite=True, metadata=metadata, include_source_blob_properties=True,
                source_content_md5=bytes.fromhex(source.md5) if source.md5 else None,
                source_etag=f'"{source.etag}"' if source.etag else None,
                source_match_condition=MatchConditions.IfNotModified if source.etag else None,
                retry_total=0,  # a failure here has Copy Blob to fall back on, not minutes of retries
            )
            return
        except HttpResponseError as error:
            status = getattr(error, "status_code", None) or 0
            if not (status >= 500 or error_code(error) in ("NotImplemented", "FeatureNotSupported")):
                raise
            logger.debug("{} has no Put Blob From URL ({}); using Copy Blob", pair[1], redact_error(error))
            _no_put_from_url.add(pair)
    started = blob.start_copy_from_url(url, metadata=metadata)
    status, delay, deadline = started.get("copy_status"), 0.05, time.monotonic() + options.copy_timeout
    while status == "pending":
        if time.monotonic() > deadline:
            blob.abort_copy(started["copy_id"])
            raise ArtifactCopyError(f"server-side copy still pending after {options.copy_timeout:.0f}s; aborted")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
        status = blob.get_blob_properties().copy.status
    if status != "success":
        raise ArtifactCopyError(f"server-side copy ended {status}")


@contextmanager
def downloaded(store, path: str, scratch: str | None = None):
    """A store's file in a scratch folder under its own name (MLflow repositories upload files),
    streamed there one block at a time; removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="replayer-download-", dir=scratch))
    try:
        local = folder / PurePosixPath(path).name
        with store.open(path) as reader, open(local, "wb") as out:
            shutil.copyfileobj(reader, out, BLOCK)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def blob_stat(props) -> Stat:
    copy = props.copy
    return Stat(
        size=props.size or 0,
        md5=md5_hex(props.content_settings.content_md5),
        etag=(props.etag or "").strip('"'),
        copy_status=copy.status if copy and copy.id else None,
        copy_id=copy.id if copy else None,
        metadata=dict(props.metadata or {}),
    )


def md5_hex(value) -> str:
    return bytes(value).hex() if value else ""


class ChunkReader(io.RawIOBase):
    """A read(n) file over an iterator of byte chunks (a blob download): holds at most one
    chunk beyond what the caller asked for, and copies each byte once."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = iter(chunks)
        self._pending: list[bytes] = []
        self._size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or self._size < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            if chunk:
                self._pending.append(chunk)
                self._size += len(chunk)
        if size < 0 or self._size <= size:
            out = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending, self._size = [], 0
            return out
        joined = b"".join(self._pending)
        out, rest = joined[:size], joined[size:]
        self._pending, self._size = [rest], len(rest)
        return out

    def readinto(self, target) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)


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


class MlflowStore:
    """Any MLflow artifact repository (mlflow-artifacts:/, an HTTP artifact server, azureml://).
    MLflow repositories work on local files, so bytes pass through a scratch file."""

    server_side = False

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None):
        from runner.sources.mlflow import artifact_repository
        from runner.stores import redact

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


def open_store(root: "str | Path | Store", tracking_uri: str | None = None, auth: BlobAuth | None = None):
    """The store behind an artifact root URI (a Store passes through unchanged)."""
    if not isinstance(root, (str, Path)):
        return root
    text = str(root)
    location = parse_blob_uri(text, auth)
    if location is not None:
        return BlobStore(location, auth)
    parts = urlsplit(text)
    if isinstance(root, Path) or parts.scheme in ("", "file"):
        return LocalStore(unquote(parts.path) if parts.scheme == "file" else text)
    if parts.scheme.lower() == "azureml":
        from runner import run_history

        store = run_history.open_run_root(text)  # a run's root in run history: blob-backed, server-side copies
        if store is not None:
            return store
    return MlflowStore(text, tracking_uri)


def source_store(source, job, scratch: str | Path | None = None, auth: BlobAuth | None = None):
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


# -- the copy engine ----------------------------------------------------------------------------------


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
        streaming). Other destinations were checked while writing (local) or cannot tell (MLflow)."""
        landed = self.dst.listing() if hasattr(self.dst, "listing") and self.expected else None
        s = self.stats
        for dst_path, (path, ref, how) in sorted(self.expected.items()):
            if landed is not None:
                found = landed.get(dst_path)
                if found is None or found.size != ref.size or (ref.md5 and found.md5 != ref.md5):
                    held = f"{found.size} bytes md5 {found.md5 or '(none)'}" if found else "nothing"
                    self.fail(path, dst_path, f"the destination holds {held}, expected {ref.size} bytes md5 {ref.md5 or '(unknown)'}")
                    continue
            s.refs.append(ref)
            s.copied += 1
            s.bytes_copied += ref.size
            if how == "server":
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
        from azure.core.exceptions import HttpResponseError

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
        try:
            self.dst.copy_from(self.src, ref.path, dst_path, source, self.options)
        except HttpResponseError as error:
            if impossible(error):
                raise ServerSideImpossible(redact_error(error)) from None
            raise
        md5 = want_md5
        if not md5 and self.options.hash_missing:  # the source never had one: hash it (a read, no upload)
            with self.src.open(ref.path) as reader:
                _, md5 = hash_stream(reader, self.options.block_size)
            self.dst.set_md5(dst_path, md5)
            with self.lock:
                self.stats.hashed += 1
        self.bytes_done(source.size)
        return "server", ArtifactRef(ref.path, source.size, md5)

    def _streamed(self, ref: ArtifactRef, dst_path: str, have: Stat | None) -> tuple[str, ArtifactRef]:
        want_md5 = ref.md5
        if have is not None and (have.size == ref.size or not ref.size or have.size == UNKNOWN_SIZE):
            if isinstance(self.dst, MlflowStore):
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
        if isinstance(self.dst, MlflowStore):
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


UNKNOWN_SIZE = -1  # a store that lists a file without its size


class ServerSideImpossible(Exception):
    pass


IMPOSSIBLE_CODES = {
    "CannotVerifyCopySource", "FeatureNotSupported", "NotImplemented", "UnsupportedHeader",
    "AuthorizationPermissionMismatch", "AuthorizationFailure", "AuthenticationFailed", "InvalidHeaderValue",
}


def impossible(error) -> bool:
    """Whether a failed server-side copy means "this pair of stores cannot do it" (stream instead)."""
    return getattr(error, "status_code", None) == 501 or error_code(error) in IMPOSSIBLE_CODES


def hash_stream(reader, block_size: int = BLOCK) -> tuple[int, str]:
    """(size, md5 hex) of a readable stream, one block at a time."""
    digest, size = hashlib.md5(), 0
    for chunk in iter(lambda: reader.read(block_size), b""):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


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
    if isinstance(dst, BlobStore):
        dst.ensure_container()
    total = sum(r.size for r in chosen)
    if progress is None and total >= PROGRESS_FLOOR:
        progress = BytesProgress(label, total)
    engine = _Engine(src, dst, options, progress, fresh, sources)
    mapping = path_map or (lambda p: p)
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


def log_family(path: str, families: Iterable[str] = LOG_FAMILIES) -> tuple[str, str] | None:
    """(family, rest) for a log file of the original job (`user_logs/std_log.txt`), else None."""
    first, sep, rest = path.partition("/")
    return (first, rest) if sep and rest and first in tuple(families) else None


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
    from runner.stores import redact

    lines = [json.dumps({"source": redact(src.uri), "options": options.describe()}, ensure_ascii=False)]
    lines += [json.dumps({"path": r.path, "size": r.size, "md5": r.md5}, ensure_ascii=False) for r in refs]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if isinstance(dst, BlobStore):
        dst.ensure_container()
    if isinstance(dst, MlflowStore):
        folder = Path(tempfile.mkdtemp(prefix="replayer-refs-", dir=options.scratch))
        try:
            local = folder / PurePosixPath(REFS_FILE).name
            local.write_bytes(data)
            dst.put_file(REFS_FILE, local)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    dst.write(REFS_FILE, io.BytesIO(data), len(data), options, lambda n: None)


# -- checking -----------------------------------------------------------------------------------


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
