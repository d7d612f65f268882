"""Run history's artifact routes for the fake AzureML control plane, over a real blob store (Azurite).

The routes azureml-mlflow 1.62 calls for a run's files (its RunArtifactsClient: `get_file_paths`
for a listing, `download_artifact` for one file, `upload_file` / `upload_dir` to write), and so the
ones the AzureML source uses:

- GET /history/v1.0/<workspace scope>/experiments/EXP/runs/RUN/artifacts
      every path of the run, paged with `continuationToken` (PaginatedArtifactList of Artifact; the
      page also carries a `nextLink` to the next one, which is what azureml-mlflow's pager follows);
- GET .../experiments/EXP/runs/RUN/artifacts/contentinfo?path=P
      one file's ArtifactContentInformation: `contentUri`, the blob's URL with a read-only SAS;
- GET .../experiments/EXP/runs/RUN/artifacts/prefix/contentinfo?path=PREFIX
      the same for every path starting with PREFIX, paged like the listing
      (PaginatedArtifactContentInformationList; run history's REST spec, `RunArtifacts_ListSasByPrefix`;
      no recorded answer); its `path` is optional in azure-ai-ml's generated request builder, and
      without it every path of the run is answered (WHOLE_RUN = False: 400, as a service that wants
      one might answer; nothing recorded either way);
- POST .../experiments/EXP/runs/RUN/artifacts/batch/metadata   {"paths": [{"path": P}, ...]}
      registers empty artifacts and answers, per path, a `contentUri` with a create/write SAS the
      client uploads the bytes to (BatchArtifactContentInformationResult); a path the run already
      has is an error for that path ("Resource Conflict: ArtifactId ... already exists.", as the
      service answers), never an overwrite.

The service keeps no size or checksum for an artifact; the blob store does (Content-Length,
Content-MD5 where the upload set one), which is why the source asks the blob for its properties.
Job files live where AzureML puts them, `ExperimentRun/dcid.<run>/<path>` in the workspace's
artifact container, here in an Azurite account. Answers are azure-ai-ml's run history REST models.

`serve_run_artifacts(ws)` makes the fake's MLflow answers for that workspace name AzureML's artifact
URIs instead of the mlflow server's own (`azureml://HOST/mlflow/v2.0/<scope>/experiments/ID/runs/RUN/artifacts`,
the form the service hands out), so MLflow clients go through azureml-mlflow's artifact repository
and these routes; runs seen in MLflow answers count as runs of the workspace here.

    store = attach(ws, azurite, "acct1")        # the workspace's artifact store (tests/azurite.py)
    store = attach(ws, storage, "acct1")        # or on a CloudStorage (tests/cloud_storage.py): SAS URLs
                                                # then name https://acct1.blob.core.windows.net, the only
                                                # form azureml-mlflow downloads from
    store.upload("job-name", "user_logs/std_log.txt", b"...")
    serve_run_artifacts(ws)                     # MLflow runs of `ws` get azureml:// artifact URIs
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from fakes.azureml_control_plane import HISTORY_ROUTES, MLFLOW_ANSWERS, FakeWorkspace, dump

PAGE = 3  # paths per listing page: small, so paging is exercised
PREFIX_ROUTE = True  # False: prefix/contentinfo answers 404, as a service without the route would
WHOLE_RUN = True  # False: prefix/contentinfo without a `path` answers 400
ROUTE = re.compile(r"^/experiments/(?P<experiment>[^/]+)/runs/(?P<run>[^/]+)/artifacts(?P<what>/contentinfo|/prefix/contentinfo|/batch/metadata)?$")
STORES: dict[str, "ArtifactStore"] = {}  # workspace scope -> its artifact store


@dataclass
class ArtifactStore:
    """A workspace's artifact container in Azurite."""

    endpoint: str  # http(s)://127.0.0.1:PORT (path-style: /account/container/blob), what the fake itself uses
    account: str
    key: str
    container: str = "azureml"
    public: str = ""  # the account URL in the SAS URLs handed out (default: path-style on `endpoint`)
    verify: str | None = None  # the CA file of an HTTPS Azurite

    def client(self):
        """One ContainerClient per store (its connections reused across requests)."""
        found = self.__dict__.get("_client")
        if found is None:
            from azure.storage.blob import ContainerClient

            verify = {"connection_verify": self.verify} if self.verify else {}
            found = self.__dict__["_client"] = ContainerClient(f"{self.endpoint}/{self.account}", self.container,
                                                               credential={"account_name": self.account, "account_key": self.key}, **verify)
        return found

    @staticmethod
    def prefix(run: str) -> str:
        return f"ExperimentRun/dcid.{run}/"

    def upload(self, run: str, path: str, data: bytes, with_md5: bool = True) -> None:
        """A job file; `with_md5=False` stages blocks and commits them, which leaves no Content-MD5 (as large uploads do)."""
        blob = self.client().get_blob_client(self.prefix(run) + path)
        if with_md5:
            blob.upload_blob(data, overwrite=True)
            return
        from azure.storage.blob import BlobBlock

        ids = []
        for number, start in enumerate(range(0, max(len(data), 1), 4)):
            block_id = f"{number:06d}"
            blob.stage_block(block_id, data[start : start + 4])
            ids.append(BlobBlock(block_id))
        blob.commit_block_list(ids)

    def paths(self, run: str) -> list[str]:
        prefix = self.prefix(run)
        return sorted(b.name[len(prefix):] for b in self.client().list_blobs(name_starts_with=prefix))

    def has(self, run: str, path: str) -> bool:
        return self.client().get_blob_client(self.prefix(run) + path).exists()

    def content_uri(self, run: str, path: str, write: bool = False) -> str:
        """The blob's URL with a SAS valid for an hour, as the service hands out: read, or create/write for
        an upload. The upload SAS may not read: nothing shows the service's can, so a client reading
        through it (a HEAD, a block list) must fail here, and Azurite enforces SAS permissions."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        name = self.prefix(run) + path
        permission = BlobSasPermissions(read=not write, create=write, write=write)
        sas = generate_blob_sas(self.account, self.container, name, account_key=self.key,
                                permission=permission, expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        return f"{self.public or f'{self.endpoint}/{self.account}'}/{self.container}/{quote(name)}?{sas}"


def attach(ws: FakeWorkspace, azurite, account: str = "acct1", container: str = "azureml") -> ArtifactStore:
    """Give a fake workspace an artifact store in `azurite` (tests/azurite.py) or on a CloudStorage
    (tests/cloud_storage.py, whose production URLs then appear in the SAS URLs); returns it."""
    inner = getattr(azurite, "azurite", None)  # a CloudStorage wraps its Azurite
    if inner is not None:
        store = ArtifactStore(inner.endpoint, account, azurite.key(account), container, public=azurite.endpoint(account), verify=str(inner.ca_file))
    else:
        store = ArtifactStore(azurite.endpoint, account, azurite.accounts[account], container)
    from azure.core.exceptions import ResourceExistsError

    try:
        store.client().create_container()
    except ResourceExistsError:
        pass
    STORES[ws.scope] = store
    return store


def serve_run_artifacts(ws: FakeWorkspace) -> None:
    """From now on the workspace's MLflow answers name azureml:// artifact URIs (module docstring)."""
    ws.__dict__["_azureml_artifact_uris"] = True


def mlflow_runs(ws: FakeWorkspace) -> set[str]:
    """Run ids seen in the workspace's MLflow answers (runs MLflow clients created or read there)."""
    return ws.__dict__.setdefault("_mlflow_runs", set())


def registered(ws: FakeWorkspace, run: str) -> set[str]:
    """Paths registered by batch/metadata for a run (the service's artifact records; the bytes follow)."""
    return ws.__dict__.setdefault("_registered_artifacts", {}).setdefault(run, set())


def rewrite_artifact_uris(handler, ws: FakeWorkspace, rest: str, body: bytes) -> bytes:
    """Every run info in an MLflow answer gets the artifact URI AzureML hands out for that run."""
    if not ws.__dict__.get("_azureml_artifact_uris") or b'"artifact_uri"' not in body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    base = f"azureml://127.0.0.1:{handler.fake.port}/mlflow/v2.0{ws.scope}"
    seen = mlflow_runs(ws)

    def walk(value) -> None:
        if isinstance(value, dict):
            if "artifact_uri" in value and value.get("run_id") and value.get("experiment_id"):
                value["artifact_uri"] = f"{base}/experiments/{value['experiment_id']}/runs/{value['run_id']}/artifacts"
                seen.add(value["run_id"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return json.dumps(data).encode()


def history_route(handler, ws: FakeWorkspace, rest: str, query: dict, body: bytes) -> bool:
    match = ROUTE.match(rest)
    what = match.group("what") if match else None
    if not match or handler.command != ("POST" if what == "/batch/metadata" else "GET"):
        return False
    run = match.group("run")
    if run not in ws.runs and run not in mlflow_runs(ws):
        handler._error(404, "UserError", f"Run {run} was not found")
        return True
    store = STORES.get(ws.scope)
    known = lambda path: path in registered(ws, run) or (store is not None and store.has(run, path))  # noqa: E731
    if what == "/batch/metadata":
        handler.fake.requests["artifact_create"] += 1
        return _create_empty(handler, ws, store, run, json.loads(body or b"{}"), known)
    if what == "/prefix/contentinfo" and not PREFIX_ROUTE:
        return False
    if what == "/prefix/contentinfo":
        handler.fake.requests["artifact_prefix_contentinfo"] += 1
        if "path" not in query and not WHOLE_RUN:
            handler._error(400, "UserError", "The path field is required.")
            return True
        prefix = (query.get("path") or [""])[0]
        paths = sorted(p for p in set(store.paths(run) if store else []) | registered(ws, run) if p.startswith(prefix))
        return _prefix_content_info(handler, store, run, paths, query)
    if what:
        handler.fake.requests["artifact_contentinfo"] += 1
        return _content_info(handler, store, run, (query.get("path") or [""])[0], known)
    handler.fake.requests["artifact_list"] += 1
    return _listing(handler, run, sorted(set(store.paths(run) if store else []) | registered(ws, run)), query)


def _listing(handler, run: str, paths: list[str], query: dict) -> bool:
    from azure.ai.ml._restclient.runhistory.models._models_py3 import Artifact, PaginatedArtifactList

    start = int((query.get("continuationToken") or ["0"])[0])
    page = paths[start : start + PAGE]
    more = start + PAGE < len(paths)
    answer = PaginatedArtifactList(
        value=[Artifact(artifact_id=f"ExperimentRun/dcid.{run}/{p}", origin="ExperimentRun", container=f"dcid.{run}", path=p) for p in page],
        continuation_token=str(start + PAGE) if more else None,
        next_link=f"{handler.fake.url}{handler.path.split('?')[0]}?continuationToken={start + PAGE}" if more else None,
    )
    handler._send(200, dump(answer))
    return True


def _prefix_content_info(handler, store: ArtifactStore | None, run: str, paths: list[str], query: dict) -> bool:
    from azure.ai.ml._restclient.runhistory.models._models_py3 import ArtifactContentInformation, PaginatedArtifactContentInformationList

    start = int((query.get("continuationToken") or ["0"])[0])
    page = paths[start : start + PAGE] if store is not None else []
    more = start + PAGE < len(paths)
    answer = PaginatedArtifactContentInformationList(
        value=[ArtifactContentInformation(content_uri=store.content_uri(run, p), origin="ExperimentRun", container=f"dcid.{run}", path=p) for p in page],
        continuation_token=str(start + PAGE) if more else None,
        next_link=f"{handler.fake.url}{handler.path.split('?')[0]}?continuationToken={start + PAGE}" if more else None,
    )
    handler._send(200, dump(answer))
    return True


def _content_info(handler, store: ArtifactStore | None, run: str, path: str, known) -> bool:
    from azure.ai.ml._restclient.runhistory.models._models_py3 import ArtifactContentInformation

    if store is None or not known(path):
        handler._error(404, "UserError", f"Artifact {path} of run {run} was not found")
        return True
    answer = ArtifactContentInformation(content_uri=store.content_uri(run, path), origin="ExperimentRun", container=f"dcid.{run}", path=path)
    handler._send(200, dump(answer))
    return True


def _create_empty(handler, ws: FakeWorkspace, store: ArtifactStore | None, run: str, body: dict, known) -> bool:
    from azure.ai.ml._restclient.runhistory.models._models_py3 import (
        Artifact,
        ArtifactContentInformation,
        BatchArtifactContentInformationResult,
        ErrorResponse,
        RootError,
    )

    if store is None:
        handler._error(400, "UserError", f"workspace {ws.name} has no artifact store")
        return True
    artifacts, infos, errors = {}, {}, {}
    for entry in body.get("paths") or []:
        path = entry["path"]
        artifact_id = f"ExperimentRun/dcid.{run}/{path}"
        if known(path):
            errors[path] = ErrorResponse(error=RootError(code="UserError", message=f"Resource Conflict: ArtifactId {artifact_id} already exists."))
            continue
        registered(ws, run).add(path)
        artifacts[path] = Artifact(artifact_id=artifact_id, origin="ExperimentRun", container=f"dcid.{run}", path=path)
        infos[path] = ArtifactContentInformation(content_uri=store.content_uri(run, path, write=True), origin="ExperimentRun",
                                                 container=f"dcid.{run}", path=path)
    handler._send(200, dump(BatchArtifactContentInformationResult(artifacts=artifacts, artifact_content_information=infos, errors=errors)))
    return True


HISTORY_ROUTES.append(history_route)
MLFLOW_ANSWERS.append(rewrite_artifact_uris)
