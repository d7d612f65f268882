"""Azure Blob Storage (or Azurite) as a store: wasbs://container@account.blob.core.windows.net/prefix,
https://account.blob.core.windows.net/container/prefix, abfss://..., or an emulator's path-style
http://127.0.0.1:10000/account/container/prefix.

Blob to blob, the destination pulls the bytes itself (`start_copy_from_url`) from a read-only,
short-lived SAS URL of the source blob: a user-delegation SAS signed through the credential, or
an account-key SAS where a key is all there is (Azurite). The SAS is made per blob, lives only in
the request, is never stored or logged, and error text that leaves this module is redacted.
Streamed writes go in blocks (`stage_block` + `commit_block_list`) with a content MD5 per block.
"""
from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterator, Protocol
from urllib.parse import unquote, urlsplit

from loguru import logger

from runner.core.records import ArtifactRef
from runner.files import stores
from runner.files.hashing import BLOCK, Written
from runner.files.options import ArtifactOptions
from runner.files.stores import ETAG_KEY, ArtifactCopyError, ServerSideImpossible, Stat, error_code, redact_error

MAX_BLOCKS = 50_000  # Azure's limit of blocks per blob
AZURE_SUFFIXES = ("core.windows.net", "core.chinacloudapi.cn", "core.usgovcloudapi.net", "core.cloudapi.de")
PUT_FROM_URL_MAX = 5000 << 20  # Put Blob From URL's size limit
EMULATOR_ACCOUNT = "devstoreaccount1"  # Azurite's built-in account


@dataclass
class BlobAuth:
    """How to reach blob accounts. Keys are for the emulator and key-only accounts; production
    uses `credential` (a TokenCredential, by default the process-wide one from runner.azureml.credentials).

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
            from runner.azureml import credentials

            self.credential = credentials.get()
        return self.credential


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
        yield download  # StorageStreamDownloader.read(n): one 4 MiB chunk held at a time

    def local_file(self, path: str, scratch: str | None = None):
        return downloaded(self, path, scratch)

    def write(self, path: str, reader: BinaryIO, size: int | None, options: ArtifactOptions, on_bytes) -> Written:
        return write_block_blob(self.blob(path), path, reader, size, options, on_bytes)

    def copy_from(self, src, src_path: str, path: str, source: Stat, options: ArtifactOptions) -> bool:
        """Server-side copy of one blob of `src` (a BlobStore or any store with `read_url`); True when
        the service pinned it to the source's version (copy_into_blob)."""
        url = src.read_url(src_path, options.sas_minutes)
        with server_side_refusals():
            return copy_into_blob(self.blob(path), url, source, options, (src.copy_key, self.copy_key))

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


def set_content_md5(blob, md5_hex_value: str, reader=None) -> None:
    """Set a blob's Content-MD5, keeping its other content headers, read through `reader()` (a
    BlobClient that may read it; default `blob` itself: a write-only SAS may not)."""
    from azure.storage.blob import ContentSettings

    current = (reader() if reader else blob).get_blob_properties().content_settings
    blob.set_http_headers(ContentSettings(
        content_type=current.content_type, content_encoding=current.content_encoding,
        content_language=current.content_language, content_disposition=current.content_disposition,
        cache_control=current.cache_control, content_md5=bytes.fromhex(md5_hex_value),
    ))


def write_block_blob(blob, path: str, reader: BinaryIO, size: int | None, options: ArtifactOptions, on_bytes,
                     staged: dict | None = None) -> Written:
    """Stream into a block blob (a BlobClient, by credential or by SAS URL): one block in memory,
    each block checked in transit by its Content-MD5, blocks already staged by a killed attempt
    reused, the whole MD5 set on commit. `staged` (block id -> size) is the caller's own record of
    the blocks staged through this writer, kept up to date here, for a writer that may not read
    the blob's block list (a write-only SAS); None asks the blob."""
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
    if staged is None:
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
            staged[block_id] = len(chunk)
        blocks.append(BlobBlock(block_id))
        total += len(chunk)
        on_bytes(len(chunk))
        index += 1
        chunk = reader.read(block_size)
    digest = whole.digest()
    blob.commit_block_list(blocks, content_settings=ContentSettings(content_md5=digest, **settings))
    return Written(total, digest.hex(), reused)


def copy_into_blob(blob, url: str, source: Stat, options: ArtifactOptions, pair: tuple[str, str], reader=None) -> bool:
    """Server-side copy into `blob` (a BlobClient) from `url` (a source blob with a read SAS).
    Put Blob From URL first (synchronous, the source's MD5 checked by the service in transit, up
    to 5000 MiB), asked once without retries; where the service does not have it (Azurite answers
    501 with a key, 500 with a SAS), fails on its side, or the blob is bigger: Copy Blob, waiting
    while it is pending (cross-account). `pair` names the two accounts: a pair where Put Blob From
    URL failed so uses Copy Blob from then on. A pending copy is watched through `reader()` (a
    BlobClient that may read the blob; default `blob` itself: a write-only SAS may not).

    True when the service copied exactly the source version `source` describes (its etag sent as
    If-Match on the source): the destination then holds its size and MD5, and the caller need not
    list it again to check (verify compares both ends); False without an etag to pin it."""
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
            return bool(source.etag)
        except HttpResponseError as error:
            status = getattr(error, "status_code", None) or 0
            if not (status >= 500 or error_code(error) in ("NotImplemented", "FeatureNotSupported")):
                raise
            logger.debug("{} has no Put Blob From URL ({}); using Copy Blob", pair[1], redact_error(error))
            _no_put_from_url.add(pair)
    pinned = {"source_etag": f'"{source.etag}"', "source_match_condition": MatchConditions.IfNotModified} if source.etag else {}
    started = blob.start_copy_from_url(url, metadata=metadata, **pinned)
    status, delay, deadline, watcher = started.get("copy_status"), 0.05, time.monotonic() + options.copy_timeout, None
    while status == "pending":
        if time.monotonic() > deadline:
            blob.abort_copy(started["copy_id"])
            raise ArtifactCopyError(f"server-side copy still pending after {options.copy_timeout:.0f}s; aborted")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
        watcher = watcher or (reader() if reader else blob)
        status = watcher.get_blob_properties().copy.status
    if status != "success":
        raise ArtifactCopyError(f"server-side copy ended {status}")
    return bool(source.etag)


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




IMPOSSIBLE_CODES = {
    "CannotVerifyCopySource", "FeatureNotSupported", "NotImplemented", "UnsupportedHeader",
    "AuthorizationPermissionMismatch", "AuthorizationFailure", "AuthenticationFailed", "InvalidHeaderValue",
}


def impossible(error) -> bool:
    """Whether a failed server-side copy means "this pair of stores cannot do it" (stream instead)."""
    return getattr(error, "status_code", None) == 501 or error_code(error) in IMPOSSIBLE_CODES


@contextmanager
def server_side_refusals():
    """A storage service's "cannot copy between these two" as the copy engine's ServerSideImpossible."""
    from azure.core.exceptions import HttpResponseError

    try:
        yield
    except HttpResponseError as error:
        if impossible(error):
            raise ServerSideImpossible(redact_error(error)) from None
        raise


def open_blob_root(root: str, tracking_uri: str | None = None, auth: "BlobAuth | None" = None) -> "BlobStore | None":
    auth = auth or BlobAuth.from_env()  # an emulator's path-style URL is known by its account's key
    location = parse_blob_uri(root, auth)
    return BlobStore(location, auth) if location is not None else None


stores.register(open_blob_root)
