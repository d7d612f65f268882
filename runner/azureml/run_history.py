"""A run's files in Azure ML run history, as a copy store: both ends blob-backed, so server-side.

Azure ML keeps a job's files (outputs, logs) as blobs in the workspace's artifact container and
indexes them in run history; MLflow hands out `azureml://HOST/mlflow/v2.0/<workspace>/experiments/
E/runs/R/artifacts` as the run's artifact root. azureml-mlflow's artifact repository reads and
writes them through local files. This store talks to the same run history routes directly:

    GET  .../experiments/E/runs/R/artifacts                  paths, paged (continuationToken)
    GET  .../experiments/E/runs/R/artifacts/contentinfo?path  the blob's URL with a read SAS
    GET  .../experiments/E/runs/R/artifacts/prefix/contentinfo[?path=FOLDER/]
                                                              the same for every path (in a folder), paged
    POST .../experiments/E/runs/R/artifacts/batch/metadata    registers paths; answers each blob's
                                                              URL with a create/write SAS

so a copy between two workspaces never passes the bytes through this process: the destination
blob (write SAS) pulls them from the source blob (read SAS) with Put Blob From URL or Copy Blob
(runner.azureml.blob.copy_into_blob). Size and MD5 come from a HEAD on the blob (the service keeps
neither). On Azure each request costs tens of milliseconds, so requests go per run, not per file:
prefix/contentinfo without a path lists a run's files with their read SAS URLs, a page a request
(where refused: the listing, then per top-level folder, a lone file or a service without the
route asked alone); a run's new paths are registered 50 to a request. Per file that leaves the
HEAD and the copy. Where the storage accounts cannot copy between them (a firewall, another
cloud) the copy engine streams instead, still through the write SAS, in blocks.

Run history registers a path once: a second batch/metadata for it is refused ("Resource Conflict
... already exists"). A migration killed between registering a path and its bytes landing leaves
a path without a (complete) blob; the rerun writes that blob directly, at the address contentinfo
names, with the Azure credential (Storage Blob Data Contributor on the target workspace's storage
account, which the README asks for), or says exactly that when it may not.

Every SAS URL lives in one request: never stored, logged, or put in an error message.
"""
from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import urlsplit

from loguru import logger

from runner.core import retry
from runner.core.errors import EndpointError, UsageError, first_line
from runner.core.records import ArtifactRef
from runner.azureml.blob import GET_SIZES, blob_stat, copy_into_blob, downloaded, pooled_transport, server_side_refusals, set_content_md5, write_block_blob
from runner.azureml.workspace import SCOPE_RE
from runner.files import stores

RUN_ROOT = re.compile(  # a run's artifact root: the workspace's scope (SCOPE_RE) between the host and the run
    r"^azureml://(?P<host>[^/?#]+)/mlflow/v[0-9.]+" + SCOPE_RE.pattern
    + r"/experiments/(?P<experiment>[^/]+)/runs/(?P<run>[^/]+)/artifacts/?$",
    re.IGNORECASE,
)
HEAD_THREADS = 8  # blob HEADs in flight while listing a run's files
REGISTER_BATCH = 50  # paths per batch/metadata request: azureml-mlflow's own batch (AZUREML_ARTIFACT_BATCH_SIZE, default 50)
_no_whole_run: set[str] = set()  # workspaces (copy_key) whose run history refused prefix/contentinfo without a path
FRESH_READ_SECONDS = 300  # a read SAS from the listing is reused this long; an older one is asked for again


class AlreadyRegistered(Exception):
    """Run history already has this path: it refuses to hand out a write SAS for it again."""


class RunHistory:
    """Run history's artifact routes of one workspace.

    `client()` gives an azure-ai-ml RunHistoryClient (send_request); `errors(doing)` is a context
    manager turning azure-core errors into one-line ReplayerErrors (the AzureML source's own, so
    a refused token reads the same wherever it happens).
    """

    def __init__(self, client: Callable[[], Any], subscription: str, resource_group: str, workspace: str,
                 errors: Callable[[str], Any], retry: dict | None = None):
        self.client, self.errors, self.retry = client, errors, retry or {}
        self.subscription, self.resource_group, self.workspace = subscription, resource_group, workspace

    def request_json(self, request, doing: str, missing_ok: bool = False) -> dict | None:
        """Send a run history request; its JSON answer (None for a 404 with missing_ok)."""
        from azure.core.exceptions import HttpResponseError

        with self.errors(doing):
            answer = self._send(request)
            if answer.status_code == 404 and missing_ok:
                return None
            if answer.status_code != 200:
                raise HttpResponseError(response=answer)
            return answer.json()

    def _send(self, request):
        """The answer to `request`; throttled past the client's own retries, sent again after the
        service's Retry-After (with jitter, so threads refused together do not return together)
        until retry.THROTTLE_PATIENCE has passed: then the refusal is the answer."""
        deadline = time.monotonic() + retry.THROTTLE_PATIENCE
        while True:
            answer = self.client().send_request(request)
            wait = retry.throttled_for(answer.status_code, answer.headers)
            if wait is None or time.monotonic() + wait > deadline:
                return answer
            logger.debug("run history throttled ({}): again in {:.1f} s", answer.status_code, wait)
            time.sleep(wait + random.uniform(0, 1))

    def _scope(self) -> tuple[str, str, str]:
        return self.subscription, self.resource_group, self.workspace

    def paths(self, experiment: str, run: str) -> Iterator[str]:
        """Every file path of a run, page by page (run history pages with a continuationToken)."""
        from azure.ai.ml._restclient.runhistory.operations._operations import (
            build_run_artifacts_list_in_container_by_experiment_name_request as build,
        )

        token = None
        while True:
            body = self.request_json(build(*self._scope(), experiment, run, continuation_token_parameter=token), f"list the files of run {run}")
            for artifact in body.get("value") or []:
                if artifact.get("path"):
                    yield artifact["path"]
            token = body.get("continuationToken")
            if not token:
                return

    def content_uri(self, experiment: str, run: str, path: str, missing_ok: bool = False) -> str | None:
        """The blob's URL with a read SAS (None for a path the run does not have, with missing_ok)."""
        from azure.ai.ml._restclient.runhistory.operations._operations import (
            build_run_artifacts_get_content_information_by_experiment_name_request as build,
        )

        body = self.request_json(build(*self._scope(), experiment, run, path=path), f"locate {path} of run {run}", missing_ok)
        if body is None:
            return None
        if not body.get("contentUri"):
            raise EndpointError(f"run history gave no content URI for {path} of run {run}")
        return body["contentUri"]

    def read_uris(self, experiment: str, run: str, prefix: str | None) -> dict[str, str] | None:
        """path -> the blob's URL with a read SAS, for every path under `prefix` (None: the whole
        run), page by page (None when run history has no such route: a 404)."""
        from azure.ai.ml._restclient.runhistory.operations._operations import (
            build_run_artifacts_list_sas_by_prefix_by_experiment_name_request as build,
        )

        found, token = {}, None
        while True:
            request = build(*self._scope(), experiment, run, path=prefix, continuation_token_parameter=token)
            body = self.request_json(request, f"locate the files under {prefix or '/'} of run {run}", missing_ok=True)
            if body is None:
                return None
            found.update((info["path"], info["contentUri"]) for info in body.get("value") or [] if info.get("path") and info.get("contentUri"))
            token = body.get("continuationToken")
            if not token:
                return found

    def upload_uri(self, experiment: str, run: str, path: str) -> str:
        """Register `path` in the run and return its blob's URL with a write SAS."""
        answer = self.upload_uris(experiment, run, [path])[path]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def upload_uris(self, experiment: str, run: str, paths: list[str]) -> dict[str, "str | Exception"]:
        """Register `paths` in the run in one batch/metadata request (its body takes a list:
        ArtifactPathList of the generated client); path -> its blob's URL with a write SAS, or the
        error run history answered for that path (AlreadyRegistered for one it has)."""
        from azure.ai.ml._restclient.runhistory.operations._operations import (
            build_run_artifacts_batch_create_empty_artifacts_by_experiment_name_request as build,
        )

        doing = f"register {paths[0]} in run {run}" if len(paths) == 1 else f"register {len(paths)} files in run {run}"
        body = self.request_json(build(*self._scope(), experiment, run, json={"paths": [{"path": p} for p in paths]}), doing)
        errors, infos = body.get("errors") or {}, body.get("artifactContentInformation") or {}
        return {path: registration(run, path, errors.get(path), infos.get(path)) for path in paths}


def registration(run: str, path: str, error: dict | None, info: dict | None) -> "str | Exception":
    """One path of a batch/metadata answer: its write SAS URL, or the error to raise when it is written."""
    if error:
        message = str((error.get("error") or {}).get("message") or error)
        if "already exists" in message.lower() or "conflict" in message.lower():
            return AlreadyRegistered(path)
        return EndpointError(f"run history refused to register {path} in run {run}: {first_line(message)}")
    uri = (info or {}).get("contentUri")
    return uri or EndpointError(f"run history gave no upload URI for {path} of run {run}")


class RunHistoryStore:
    """One run's files in run history (see the module docstring); a store of runner.files."""

    server_side = True

    def __init__(self, history: RunHistory, experiment: str, run: str, uri: str, credential: Callable[[], Any] | None = None):
        self.history, self.experiment, self.run = history, experiment, run
        self.uri = uri  # for messages: an azureml:// root, no secret in it
        self.copy_key = f"runhistory:{history.subscription}/{history.resource_group}/{history.workspace}".lower()
        self._credential = credential  # for a path registered by an interrupted attempt (module docstring)
        self._writers: dict[str, tuple] = {}  # path -> (BlobClient, direct) kept from copy_from for set_md5 or a streamed retry
        # path -> {block id: size} staged through a write SAS: it may not read the block list back.
        self._staged: dict[str, dict] = {}
        self._lock = threading.Lock()
        # Read SAS URLs the listing just got, kept in memory for the copy that follows (one request
        # less per file), used once and only while young: never logged, never written anywhere.
        self._fresh_reads: dict[str, tuple[str, float]] = {}
        # Write SAS URLs (or a path's refusal) from registering in batches: used once, in memory only.
        self._uploads: dict[str, "str | Exception"] = {}

    def __repr__(self) -> str:
        return f"RunHistoryStore({self.uri})"

    # -- reading -------------------------------------------------------------------------------

    def _blob(self, url: str, credential=None):
        from azure.storage.blob import BlobClient
        return BlobClient.from_blob_url(url, credential=credential, transport=shared_transport(), **GET_SIZES, **self.history.retry)

    def _direct_blob(self, path: str):
        """The blob of a registered path at its plain address, with the Azure credential (no SAS)."""
        address = self.history.content_uri(self.experiment, self.run, path).split("?", 1)[0]
        if self._credential is None:
            raise RegisteredWithoutBytes(path, self.run, "no Azure credential is at hand to write it")
        if urlsplit(address).scheme != "https":
            raise RegisteredWithoutBytes(path, self.run, "its blob is not on HTTPS, where a token may be sent")
        return self._blob(address, self._credential())

    def stat(self, path: str, url: str | None = None):
        """Size, MD5 and etag from a HEAD on the blob (at `url`, a read SAS run history just gave, or
        one asked for now); None when run history or the blob lacks it."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError
        url = url or self.history.content_uri(self.experiment, self.run, path, missing_ok=True)
        if url is None:
            return None
        try:
            found = blob_stat(self._blob(url).get_blob_properties())
            with self._lock:
                self._fresh_reads[path] = (url, time.monotonic())
            return found
        except ResourceNotFoundError:
            return None  # registered, but its bytes never landed (an interrupted upload)
        except AzureError as error:
            raise EndpointError(f"cannot read the size and md5 of {path} of run {self.run}: {storage_reason(error)}") from None

    def listing(self) -> dict:
        """path -> Stat for every file of the run that has its bytes (HEADs in parallel)."""
        urls = self._whole_run()
        if urls is None:  # the listing, then read SAS URLs per folder
            paths = list(self.history.paths(self.experiment, self.run))
            if paths:  # the run has files the whole-run form did not give: this service wants a path
                _no_whole_run.add(self.copy_key)
            urls = self._read_uris(paths)
        else:
            paths = sorted(urls)
        if len(paths) <= 1:
            found = [self.stat(p, urls.get(p)) for p in paths]
        else:
            with ThreadPoolExecutor(min(HEAD_THREADS, len(paths)), thread_name_prefix="runhistory-head") as pool:
                found = list(pool.map(lambda p: self.stat(p, urls.get(p)), paths))
        missing = [path for path, stat in zip(paths, found) if stat is None]
        if missing:  # registered, never uploaded: a job killed mid-upload, or a copy of ours cut short
            logger.debug("{} file(s) of run {} are listed without bytes, first {}", len(missing), self.run, missing[0])
        return {path: stat for path, stat in zip(paths, found) if stat is not None}

    def _whole_run(self) -> dict[str, str] | None:
        """path -> read SAS URL for every file of the run: prefix/contentinfo without a prefix, the
        listing too. `path` is optional in azure-ai-ml's generated client (RunArtifacts_ListSasByPrefix),
        but nothing recorded shows a service taking none. Refused (an error, a 404), this run is
        listed instead; only a refusal for a run whose listing then shows files teaches the process
        to list from then on (`listing`): a 404 for a run that is gone, or holds nothing, does not."""
        if self.copy_key in _no_whole_run:
            return None
        try:
            return self.history.read_uris(self.experiment, self.run, None)
        except EndpointError as error:
            logger.debug("run history of {} lists no run without a prefix ({}); listing, then per folder", self.uri, error)
            return None

    def _read_uris(self, paths: list[str]) -> dict[str, str]:
        """Read SAS URLs for `paths`, one prefix/contentinfo per top-level folder holding two or more
        of them (a lone file costs one request either way); the rest are asked per file by stat."""
        folders: dict[str, int] = {}
        for path in paths:
            if "/" in path:
                folder = path.split("/", 1)[0] + "/"
                folders[folder] = folders.get(folder, 0) + 1
        wanted, urls = set(paths), {}
        for folder in sorted(f for f, n in folders.items() if n > 1):
            answer = self.history.read_uris(self.experiment, self.run, folder)
            if answer is None:  # no such route here: per file, as before
                return {}
            urls.update((p, u) for p, u in answer.items() if p in wanted)
        return urls

    def list(self) -> Iterator[ArtifactRef]:
        for path, found in self.listing().items():
            yield ArtifactRef(path=path, size=found.size, md5=found.md5)

    def read_url(self, path: str, minutes: int) -> str:
        """The blob's URL with a read SAS, for the destination to pull from (run history sets its lifetime)."""
        with self._lock:
            url, got = self._fresh_reads.pop(path, (None, 0.0))
        if url is not None and time.monotonic() - got < FRESH_READ_SECONDS:
            return url
        url = self.history.content_uri(self.experiment, self.run, path, missing_ok=True)
        if url is None:
            raise FileNotFoundError(f"{path} is not a file of run {self.run}")
        return url

    @contextmanager
    def open(self, path: str, scratch: str | None = None):
        yield self._blob(self.read_url(path, 0)).download_blob(max_concurrency=1)  # read(n): one 4 MiB chunk held

    def local_file(self, path: str, scratch: str | None = None):
        return downloaded(self, path, scratch)

    # -- writing -------------------------------------------------------------------------------

    def _writer(self, path: str):
        """(BlobClient that may write `path`, direct): through a fresh write SAS, or, for a path an
        earlier attempt registered, straight at its blob with the Azure credential (direct)."""
        with self._lock:
            kept = self._writers.pop(path, None)  # a server-side attempt that fell back to streaming
        if kept is not None:
            return kept
        with self._lock:
            registered = self._uploads.pop(path, None)
        try:
            if isinstance(registered, Exception):
                raise registered
            return self._blob(registered or self.history.upload_uri(self.experiment, self.run, path)), False
        except AlreadyRegistered:
            return self._direct_blob(path), True

    def prepare(self, paths: list[str]) -> None:
        """Register the paths about to be written in batches of REGISTER_BATCH (one request each,
        not one a file); each copy then takes its path's write SAS from memory. azureml-mlflow's
        upload_dir registers 50 paths in one request before uploading them too (its
        BaseArtifactsClient._upload_files), so a write SAS waits as long as it does there."""
        for start in range(0, len(paths), REGISTER_BATCH):
            answers = self.history.upload_uris(self.experiment, self.run, paths[start : start + REGISTER_BATCH])
            with self._lock:
                self._uploads.update(answers)

    @contextmanager
    def _writing(self, path: str):
        """Yields the writer; the storage account refusing our credential on a direct write is one
        line saying what is needed (a SAS write's errors go to the copy engine as they are)."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        blob, direct = self._writer(path)
        try:
            yield blob, direct
        except (ClientAuthenticationError, HttpResponseError) as error:
            status = getattr(error, "status_code", None)
            if direct and (status in (401, 403) or isinstance(error, ClientAuthenticationError)):
                raise RegisteredWithoutBytes(path, self.run, f"the storage account refused the credential ({storage_reason(error)})") from None
            raise

    def _reader(self, path: str, direct: bool):
        """A callable giving a client that may read `path`'s blob: a direct writer (our credential)
        may; a write SAS is not known to, so a fresh read SAS from run history (a registered path has one)."""
        return None if direct else (lambda: self._blob(self.read_url(path, 0)))

    def write(self, path: str, reader: BinaryIO, size: int | None, options, on_bytes):
        with self._writing(path) as (blob, direct):
            with self._lock:
                staged = None if direct else self._staged.setdefault(path, {})
            written = write_block_blob(blob, path, reader, size, options, on_bytes, staged)
        with self._lock:  # committed: none of them is pending any more
            self._staged.pop(path, None)
        return written

    def copy_from(self, src, src_path: str, path: str, source, options) -> bool:
        with self._writing(path) as (blob, direct):
            try:
                with server_side_refusals():
                    pinned = copy_into_blob(blob, src.read_url(src_path, options.sas_minutes), source, options, (src.copy_key, self.copy_key),
                                            self._reader(path, direct))
            except Exception:
                with self._lock:  # the path is registered now: a streamed retry needs this same writer
                    self._writers[path] = (blob, direct)
                raise
        if not source.md5:  # the engine hashes the source, then records the MD5 through the same client
            with self._lock:
                self._writers[path] = (blob, direct)
        return pinned

    def set_md5(self, path: str, md5_hex_value: str) -> None:
        with self._lock:
            blob, direct = self._writers.pop(path, (None, False))
        if blob is not None:  # else nothing to write it with; verify hashes the bytes
            set_content_md5(blob, md5_hex_value, self._reader(path, direct))

    def abort_pending(self, path: str, have) -> None:
        """A copy left pending by a killed run (cross-account copies run on after the tool is gone):
        aborted with the credential, as a new copy onto a pending one is refused. Best effort: it may
        have finished meanwhile, and without the credential the new copy's error says what is needed."""
        from azure.core.exceptions import AzureError

        if self._credential is None or not have.copy_id:
            return
        try:
            self._direct_blob(path).abort_copy(have.copy_id)
        except (AzureError, EndpointError):
            pass


class RegisteredWithoutBytes(EndpointError):
    """A path registered by an interrupted attempt that this process cannot write (run history
    hands out one write SAS per path)."""

    exit_code = 1

    def __init__(self, path: str, run: str, why: str):
        super().__init__(
            f"{path} of run {run} is registered in run history without its bytes (an interrupted copy) and {why}; "
            "grant the identity Storage Blob Data Contributor on the target workspace's storage account and rerun"
        )


def storage_reason(error) -> str:
    """A storage error without its message, which may quote the SAS URL: status and error code."""
    status = getattr(error, "status_code", None)
    code = getattr(error, "error_code", None)
    return f"HTTP {status} {code or ''}".strip() if status else type(error).__name__


_transport = None
_transport_lock = threading.Lock()


def shared_transport():
    """One connection pool for every SAS-URL blob client of the process (runner.azureml.blob.pooled_transport)."""
    global _transport
    with _transport_lock:
        if _transport is None:
            _transport = pooled_transport(8)
        return _transport


# -- opening a store from an azureml:// run root ----------------------------------------------------

_clients: dict[tuple, Any] = {}  # (base URL, credential id) -> RunHistoryClient
_clients_lock = threading.Lock()


def parse_run_root(uri: str) -> re.Match | None:
    """The parts of an `azureml://HOST/mlflow/v2.0/<workspace>/experiments/E/runs/R/artifacts` run root."""
    return RUN_ROOT.match(str(uri))


def open_run_root(uri: str) -> RunHistoryStore | None:
    """A RunHistoryStore for a run's artifact root URI (None for anything else: registries, sub-folders)."""
    match = parse_run_root(uri)
    if match is None:
        return None
    from runner.azureml import auth, credentials
    from runner.core import retry

    if auth.is_job_workspace(str(uri).split("/experiments/", 1)[0]):
        return None  # inside an Azure ML job its own workspace is azureml-mlflow's, with the job's token

    # The workspace's MLflow endpoint as azureml-mlflow opened it: same host, cloud and credential.
    context = auth.opened_context(uri)
    if context is not None:
        credential, base, scope = context.auth, context.host_url.rstrip("/"), context.cloud._get_default_scope()
    else:
        credential, base, scope = auth.shared_credential(), f"https://{match['host']}", credentials.management_scope()
    with _clients_lock:
        client = _clients.get((base, id(credential)))
        if client is None:
            from azure.ai.ml._restclient.runhistory import RunHistoryClient

            client = _clients[(base, id(credential))] = RunHistoryClient(
                credential, base_url=base, credential_scopes=[scope], **retry.azure_retry_kwargs())
    where = f"workspace {match['ws']} (resource group {match['rg']}, subscription {match['sub']})"
    history = RunHistory(lambda: client, match["sub"], match["rg"], match["ws"], lambda doing: history_errors(where, doing),
                         retry.azure_retry_kwargs())
    return RunHistoryStore(history, match["experiment"], match["run"], uri.split("?", 1)[0], credential=storage_credential)


def storage_credential():
    """The process's chosen Azure credential (cached), for writing a workspace's storage directly."""
    from runner.azureml import auth

    return auth.shared_credential()


@contextmanager
def history_errors(where: str, doing: str):
    """One line for a failed run history call of a target workspace (no SAS can be in it: requests
    to run history carry none)."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    try:
        yield
    except UsageError:
        raise
    except ClientAuthenticationError as error:
        if getattr(error, "response", None) is None:
            raise UsageError(f"could not get a token to {doing} in {where}: {first_line(error)}") from None
        raise UsageError(f"{where} refused the credential (HTTP {error.status_code}) to {doing}; grant it a role on the workspace") from None
    except HttpResponseError as error:
        if error.status_code in (401, 403):
            raise UsageError(f"{where} refused the credential (HTTP {error.status_code}) to {doing}; grant it a role on the workspace") from None
        raise EndpointError(f"{where}: could not {doing}: HTTP {error.status_code}: {first_line(error)}") from None
    except ServiceRequestError as error:
        raise EndpointError(f"cannot reach {where} to {doing}: {first_line(error)}") from None


def open_azureml_root(root: str, tracking_uri: str | None = None, auth=None) -> "RunHistoryStore | None":
    """A run's root in run history (blob-backed: server-side copies); other azureml:// roots
    (registries, sub-folders) stay with azureml-mlflow's repository, the MLflow end's fallback."""
    if urlsplit(root).scheme.lower() != "azureml":
        return None
    return open_run_root(root)


stores.register(open_azureml_root)
