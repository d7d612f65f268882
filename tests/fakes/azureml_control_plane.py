"""An HTTPS fake of the AzureML control plane, good enough for azure-ai-ml and azureml-mlflow.

What it serves (the routes azure-ai-ml 1.35.2 and azureml-mlflow 1.62 call for reading jobs):

- ARM / MFE   GET  /subscriptions/S/resourceGroups/R/providers/Microsoft.MachineLearningServices/workspaces/W
              GET  .../workspaces/W/jobs                 (paged with `$skip` / nextLink, listViewType)
              GET  .../workspaces/W/jobs/NAME            (pipeline/sweep/AutoML children answer without
                                                          `properties`, like the service: the SDK then asks
                                                          run history)
              GET  .../workspaces/W/components/NAME/versions/V
              PUT  .../workspaces/W/components/NAME/versions/V  (stored; anonymous components of a submission)
              PUT  .../workspaces/W/jobs/NAME            (job create: the body is kept as sent in `submitted`,
                                                          the job is listed from then on with status NotStarted;
                                                          `status_plan[NAME]` feeds it later statuses, one per GET)
              GET  .../workspaces/W/jobs?tag=KEY         (only jobs carrying tag KEY, as the service filters)
- discovery   GET  /discovery                            (the workspace's `discoveryUrl`, no token needed): the real
                                                          keys; `api` is this server, every other key a host of
                                                          its own answering 404 to anything (tests/recordings)
- run history GET  /history/v1.0/subscriptions/S/resourceGroups/R/providers/Microsoft.MachineLearningServices/
                   workspaces/W/runs/NAME[/children]     (children paged with `continuationToken`, no
                                                          nextLink, and no continuation key on the last page)
- MLflow      ANY  /mlflow/v1.0|v2.0/subscriptions/.../workspaces/W/api/2.0/mlflow/...  forwarded to a real
                   `mlflow server` (run ids there are the job names, as in AzureML), after Azure ML's
                   documented limits and search-filter support are checked (fakes/azureml_limits.py)

Every answer is built from azure-ai-ml's own REST models (`azure.ai.ml._restclient.arm_ml_service.models`
serialized with their `SdkJSONEncoder`, run history `Run` models with theirs), never hand-written JSON.

Auth: every request needs `Authorization: Bearer <JWT-shaped token>` whose `tid` claim is the
workspace tenant and whose `aud` is one its route family takes (AUDIENCES: the resource manager's,
for ARM and run history alike, as azure-ai-ml and azureml-mlflow ask); anything else answers 401
like ARM does. FakeCredential and the fake `az` mint tokens with the audience of the scope asked.
Errors carry the management front end's body: {"error": {"code", "message", "details", "additionalInfo"}}. Faults: `fault_share` of distinct requests
meet one of `fault_kinds` on their first attempt (their retry succeeds), as tests/fakes/fault_proxy.py
does for mlflow servers: 429 (with Retry-After) or 503, not carried out; "reset", the connection is
closed unanswered, not carried out; "lost" / "lost_reset", carried out, then answered 500 / closed
unanswered (a retried create would do it twice). Default kinds: 429 and 503.

Point MLClient at it with `AZUREML_DEV_URL_MFE=https://127.0.0.1:PORT` (the SDK's own override for its
service clients) and trust the trustme CA through REQUESTS_CA_BUNDLE (azure-core and mlflow both use
`requests`, which reads it).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from fakes.azureml_discovery import ELSEWHERE, Elsewhere

TENANT = "72f988bf-0000-4000-8000-00000000a11e"
ARM_PREFIX = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/{ws}"
WORKSPACE_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resource[gG]roups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)(?P<rest>/.*)?$"
)
FAULT_KINDS = (429, 503, "reset", "lost", "lost_reset")
HISTORY_RE = re.compile(r"^/history/v1\.0(?P<scope>/subscriptions/.+)$")
# Route modules (tests/fakes/azureml_<topic>.py) extend the fake without editing this file's dispatch:
# ARM_ROUTES take (handler, workspace, rest, query, body) for paths under a known workspace;
# PATH_ROUTES take (handler, path, query, body) for any other authorized path. A route answers and
# returns True, or returns False to let the next one try. Register by appending at import time.
ARM_ROUTES: list = []
PATH_ROUTES: list = []
# MLFLOW_ROUTES take (handler, workspace, rest, query, body) for a workspace's MLflow paths (rest =
# /api/2.0/mlflow/...) before they are forwarded: e.g. a route the service does not have.
MLFLOW_ROUTES: list = []
# MLFLOW_ANSWERS take (handler, workspace, rest, body) and return the body to send instead, for every
# answer forwarded from the mlflow server (e.g. artifact URIs rewritten to the service's azureml:// form).
MLFLOW_ANSWERS: list = []
# HISTORY_ROUTES take (handler, workspace, rest, query, body) for run history paths under a known
# workspace (rest = /experiments/E/runs/R/artifacts...) other than runs/NAME[/children].
HISTORY_ROUTES: list = []
# REQUEST_HOOKS take (handler, path) for every request, discovery and unauthorized ones included,
# before anything else: e.g. Azure-shaped latency and throttling (fakes/azureml_latency.py). A hook
# answers and returns True (a 429), or returns False to let the request go on.
REQUEST_HOOKS: list = []
MLFLOW_RE = re.compile(
    r"^/mlflow/v[12]\.0/subscriptions/(?P<sub>[^/]+)/resource[gG]roups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)(?P<rest>/.*)$"
)


# -- tokens and credentials ------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


MANAGEMENT = "https://management.azure.com/.default"  # the scope azure-ai-ml and azureml-mlflow ask for (public cloud)
# Audiences each route family accepts (trailing "/" ignored). ARM takes its two resource names, as its
# 401 InvalidAuthenticationTokenAudience lists them. Run history and MLflow (the `api` host) take what
# azure-ai-ml and azureml-mlflow send there, the resource manager's: a token for another resource
# (https://ml.azure.com, storage) is refused, so a client asking the wrong scope fails a test.
AUDIENCES = {
    "arm": ("https://management.azure.com", "https://management.core.windows.net"),
    "history": ("https://management.azure.com", "https://management.core.windows.net"),
    "mlflow": ("https://management.azure.com", "https://management.core.windows.net"),
}


def audience(scope: str) -> str:
    """The `aud` AAD puts in a token asked for `scope` (a v2 scope `R/.default` or a v1 resource `R`):
    the resource without a trailing "/", which azure-ai-ml checks to the letter for https://ml.azure.com."""
    return scope.removesuffix("/.default").rstrip("/")


def make_token(tenant: str = TENANT, aud: str = "https://management.azure.com", oid: str = "fake-user", expires_in: int = 3600) -> str:
    """A JWT-shaped token (unsigned): header.payload.signature, like AAD's, with aud/tid/oid/exp."""
    now = int(time.time())
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "fake"}).encode())
    payload = b64url(json.dumps({"aud": aud, "iss": f"https://sts.windows.net/{tenant}/", "tid": tenant, "oid": oid, "iat": now, "nbf": now,
                                 "exp": now + expires_in, "upn": "ada@contoso.test"}).encode())
    return f"{header}.{payload}.{b64url(b'not-a-signature')}"


def token_claims(token: str) -> dict | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None


class FakeCredential:
    """An azure-core TokenCredential handing out JWT-shaped tokens for one tenant."""

    def __init__(self, tenant: str = TENANT):
        self.tenant = tenant
        self.calls = 0
        self.scopes: list[tuple] = []  # the scopes of every get_token call, in order

    def get_token(self, *scopes: str, claims=None, tenant_id=None, enable_cae=False, **kwargs):
        from azure.core.credentials import AccessToken

        self.calls += 1
        self.scopes.append(scopes)
        return AccessToken(make_token(tenant_id or self.tenant, aud=audience(scopes[0] if scopes else MANAGEMENT)), int(time.time()) + 3600)

    def close(self) -> None:
        pass


FAKE_AZ = """#!{python}
# A stand-in for the Azure CLI's `az account get-access-token` (what AzureCliCredential runs).
import json, sys, time
sys.path.insert(0, {tests!r})  # the package `fakes`: route modules import it
from fakes.azureml_control_plane import audience, make_token
args = sys.argv[1:]
if {fail!r}:
    sys.stderr.write("ERROR: Please run 'az login' to set up an account.\\n")
    sys.exit(1)
tenant = args[args.index("--tenant") + 1] if "--tenant" in args else {tenant!r}
resource = args[args.index("--resource") + 1] if "--resource" in args else (args[args.index("--scope") + 1] if "--scope" in args else "https://management.azure.com/")
aud = audience(resource)
print(json.dumps({{"accessToken": make_token(tenant, aud=aud), "expires_on": int(time.time()) + 3600, "tenant": tenant, "tokenType": "Bearer"}}))
"""


def write_fake_az(folder: Path, python: str, tenant: str = TENANT, fail: bool = False) -> Path:
    """A folder holding an `az` executable for AzureCliCredential; put it first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "az"
    script.write_text(FAKE_AZ.format(python=python, tests=str(Path(__file__).parents[1]), tenant=tenant, fail=fail))
    script.chmod(0o755)
    return folder


@contextmanager
def cli_environment(fake: "FakeControlPlane", folder: Path):
    """The fake's environment with a fake `az` first on PATH, set in this process too (MLClient and
    azureml-mlflow read it here) for the block; yields the dict for subprocesses."""
    import pytest

    az = write_fake_az(folder, sys.executable)
    env = {**fake.environ(), "PATH": f"{az}{os.pathsep}{os.environ['PATH']}"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


# -- the workspace the fake holds -------------------------------------------------------------


@dataclass
class FakeWorkspace:
    subscription: str
    resource_group: str
    name: str
    tenant: str = TENANT
    location: str = "westeurope"
    workspace_id: str = "0f3c2a5e-5a1e-4d2b-9c1d-77e5a0d0c0de"
    roots: dict[str, Any] = field(default_factory=dict)  # name -> arm JobBase (top-level jobs, listing order)
    archived: set[str] = field(default_factory=set)
    runs: dict[str, Any] = field(default_factory=dict)  # name -> run history Run (every job)
    children: dict[str, list[str]] = field(default_factory=dict)  # parent name -> child names, in order
    components: dict[tuple[str, str], Any] = field(default_factory=dict)  # (name, version) -> ComponentVersion
    submitted: dict[str, dict] = field(default_factory=dict)  # job name -> the JSON body of its PUT, as sent
    status_plan: dict[str, list[str]] = field(default_factory=dict)  # job name -> next statuses, one per GET
    mlflow_uri: str | None = None  # the mlflow server behind this workspace's MLflow routes (default: the fake's)

    @property
    def scope(self) -> str:
        return ARM_PREFIX.format(sub=self.subscription, rg=self.resource_group, ws=self.name)

    def arm_id(self, kind: str, name: str) -> str:
        return f"{self.scope}/{kind}/{name}"


def dump(model) -> bytes:
    """JSON of an azure-ai-ml REST model with the model's own serializer (read-only fields included).
    A run history Run gets every key the service sends, null where unset (`"runDefinition": null`,
    `"error": null`, ...), where the serializer would drop them: RUN_KEYS."""
    if hasattr(model, "serialize") and not hasattr(model, "_attr_to_rest_field"):
        return json.dumps(model.serialize(keep_readonly=True)).encode()
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import SdkJSONEncoder

    if type(model).__name__ == "Run":
        return json.dumps({**dict.fromkeys(run_keys()), **json.loads(json.dumps(model, cls=SdkJSONEncoder))}).encode()
    return json.dumps(model, cls=SdkJSONEncoder).encode()


def run_keys() -> list[str]:
    """The keys of a run history Run as the service sends them (tests/recordings/pipeline_get_child_run.json,
    2026): azure-ai-ml's Run model's, less four it has and the service did not send, plus two it lacks."""
    from azure.ai.ml._restclient.runhistory.models import Run

    model = [field._rest_name for field in Run(run_id="")._attr_to_rest_field.values()]
    return [k for k in model if k not in ("activeChildRunId", "isVirtual", "options", "hasVirtualParent")] + ["currentAttemptId", "scheduleId"]


# -- the server -----------------------------------------------------------------------------

class FakeControlPlane:
    """Start with `with FakeControlPlane(tmp, mlflow_uri) as fake:`; `fake.url` is the base URL."""

    def __init__(self, folder: Path, mlflow_uri: str, list_page: int = 7, children_page: int = 5):
        import trustme

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mlflow_uri = mlflow_uri.rstrip("/")
        self.workspaces: dict[tuple[str, str, str], FakeWorkspace] = {}
        self.list_page = list_page
        self.children_page = children_page
        self.fault_share = 0.0
        self.fault_seed = "faults"
        self.fault_kinds: tuple = (503, 429)  # any of FAULT_KINDS
        self.requests: Counter = Counter()  # route kind -> count
        self.faults: Counter = Counter()  # injected faults by status (429, 503) and by area (arm, history, mlflow)
        self._attempts: Counter = Counter()
        self._lock = threading.Lock()
        self._session = threading.local()
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.folder / "fake-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        # The discovery answer's other hosts, grouped as in the real answer (history, experimentation,
        # hyperdrive and labeling share `{region}.experiments.azureml.net`): one listener each.
        self.elsewhere = {group: Elsewhere(context, group, self.requests) for group in ELSEWHERE}

    def add(self, workspace: FakeWorkspace) -> FakeWorkspace:
        self.workspaces[(workspace.subscription.lower(), workspace.resource_group.lower(), workspace.name.lower())] = workspace
        return workspace

    def find(self, sub: str, rg: str, ws: str) -> FakeWorkspace | None:
        return self.workspaces.get((sub.lower(), rg.lower(), ws.lower()))

    def start(self) -> "FakeControlPlane":
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-azureml", daemon=True)
        self._thread.start()
        for other in self.elsewhere.values():
            other.start()
        return self

    def stop(self) -> None:
        for other in self.elsewhere.values():
            other.stop()
        self.server.shutdown()
        self.server.server_close()

    def elsewhere_urls(self) -> dict[str, str]:
        """Discovery keys other than `api` -> their hosts' URLs."""
        return {key: self.elsewhere[group].url for group, keys in ELSEWHERE.items() for key in keys}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def environ(self) -> dict[str, str]:
        """Environment variables that point azure-ai-ml and azureml-mlflow at this fake."""
        return {
            "AZUREML_DEV_URL_MFE": self.url,
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
            "SSL_CERT_FILE": str(self.ca_file),
        }

    def mlflow_session(self) -> requests.Session:
        session = getattr(self._session, "value", None)
        if session is None:
            session = self._session.value = requests.Session()
        return session

    def forward(self, method: str, url: str, **kwargs) -> requests.Response:
        """A request to a backing mlflow server, on this thread's kept-alive connection. The server closes
        a connection idle past its keep-alive timeout; a request sent on one it has just closed is reset
        before the server read it (the bench's extract met 3 in one run), so it is sent once more on a new
        connection. Anything else, and a second reset, stands."""
        try:
            return self.mlflow_session().request(method, url, **kwargs)
        except requests.ConnectionError:
            self._session.value = requests.Session()
            return self.mlflow_session().request(method, url, **kwargs)

    def should_fail(self, key: str) -> int | str | None:
        """One of `fault_kinds` for a deterministic share of distinct requests, on their first attempt only."""
        if not self.fault_share:
            return None
        with self._lock:
            self._attempts[key] += 1
            if self._attempts[key] > 1:
                return None
        digest = int(hashlib.sha1(f"{self.fault_seed}|{key}".encode()).hexdigest()[:8], 16)
        if digest % 10_000 >= self.fault_share * 10_000:
            return None
        return self.fault_kinds[digest % len(self.fault_kinds)]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeControlPlane
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers: dict | None = None) -> None:
        lost, self.lost = getattr(self, "lost", None), None
        if lost == "lost_reset":  # the work is done; the client never hears
            self.close_connection = True
            return
        if lost == "lost":
            status, body, content_type, headers = 500, b'{"error": {"code": "InternalServerError", "message": "injected lost answer"}}', "application/json", {}
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-ms-request-id", hashlib.md5(self.path.encode()).hexdigest())
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        """The management front end's error body (tests/recordings/mfe_error_not_found.json): code,
        message, empty details, and additionalInfo naming the component, correlation, time."""
        operation = hashlib.md5(self.path.encode()).hexdigest()
        info = [
            {"type": "ComponentName", "info": {"value": "managementfrontend"}},
            {"type": "Correlation", "info": {"value": {"operation": operation, "request": operation[:16]}}},
            {"type": "Environment", "info": {"value": "local"}},
            {"type": "Location", "info": {"value": "local"}},
            {"type": "Time", "info": {"value": datetime.now(timezone.utc).isoformat()}},
        ]
        body = {"error": {"code": code, "message": message, "details": [], "additionalInfo": info}}
        self._send(status, json.dumps(body).encode(), "application/json; charset=utf-8", {"x-ms-response-type": "error", **(headers or {})})

    def do_GET(self):
        self._dispatch(b"")

    def do_POST(self):
        self._dispatch(self._body())

    def do_PUT(self):
        self._dispatch(self._body())

    def do_PATCH(self):
        self._dispatch(self._body())

    def do_DELETE(self):
        self._dispatch(self._body())

    def _dispatch(self, body: bytes) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        self.lost = None  # one handler serves every request of a kept-alive connection
        try:
            if any(hook(self, path) for hook in REQUEST_HOOKS):
                return
            if path == "/discovery":  # the region's discovery, answered without a token (as the service does)
                fake.requests["discovery"] += 1
                return self._discovery()
            if not self._authorized():
                return
            fault = fake.should_fail(f"{self.command} {self.path} {hashlib.md5(body).hexdigest()}")
            if fault:
                fake.faults[fault] += 1
                area = "mlflow" if MLFLOW_RE.match(path) else "history" if HISTORY_RE.match(path) else "arm"
                fake.faults[area] += 1
                if fault == "reset":
                    self.close_connection = True
                    return
                if fault in ("lost", "lost_reset"):
                    self.lost = fault  # carried out below; _send loses the answer
                else:
                    headers = {"Retry-After": "1"} if fault == 429 else {}
                    return self._error(fault, "TooManyRequests" if fault == 429 else "ServiceUnavailable", "injected fault", headers)
            match = MLFLOW_RE.match(path)
            if match:
                fake.requests["mlflow"] += 1
                return self._forward_mlflow(match, parts.query, body)
            match = HISTORY_RE.match(path)
            if match:
                return self._history(match.group("scope"), query, body)
            match = WORKSPACE_RE.match(path)
            if match:
                return self._arm(match, query, body)
            for route in PATH_ROUTES:
                if route(self, path, query, body):
                    return
            self._error(404, "NotFound", f"no route for {self.command} {path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            self._error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
            return False
        claims = token_claims(header[len("Bearer "):])
        if claims is None:
            self._error(401, "InvalidAuthenticationToken", "The access token is invalid.")
            return False
        if claims.get("exp", 0) < time.time():
            self._error(401, "ExpiredAuthenticationToken", "The access token expiry UTC time is earlier than current UTC time.")
            return False
        tenants = {ws.tenant for ws in self.fake.workspaces.values()}
        if claims.get("tid") not in tenants:
            self._error(
                401,
                "InvalidAuthenticationTokenTenant",
                f"The access token is from the wrong issuer 'https://sts.windows.net/{claims.get('tid')}/'. It must match the tenant associated with this subscription.",
            )
            return False
        path = urlsplit(self.path).path
        return self._right_audience(claims, "mlflow" if MLFLOW_RE.match(path) else "history" if HISTORY_RE.match(path) else "arm")

    def _right_audience(self, claims: dict, family: str) -> bool:
        """A token for another resource is refused, with ARM's 401 InvalidAuthenticationTokenAudience."""
        allowed = AUDIENCES[family]
        if str(claims.get("aud", "")).rstrip("/") in allowed:
            return True
        self.fake.requests[f"wrong_audience_{family}"] += 1
        listed = ",".join(f"'{a}/','{a}'" for a in allowed)
        self._error(
            401,
            "InvalidAuthenticationTokenAudience",
            f"The access token has been obtained for wrong audience or resource '{claims.get('aud')}'. "
            f"It should exactly match with one of the allowed audiences {listed}.",
            {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="The access token has been obtained for wrong audience or resource"'},
        )
        return False

    # -- ARM / MFE --------------------------------------------------------------------------

    def _arm(self, match: re.Match, query: dict, body: bytes = b"") -> None:
        fake = self.fake
        ws = fake.find(match.group("sub"), match.group("rg"), match.group("ws"))
        rest = (match.group("rest") or "").rstrip("/")
        if ws is None:
            fake.requests["workspace_missing"] += 1
            return self._error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.MachineLearningServices/workspaces/{match.group('ws')}' under resource group '{match.group('rg')}' was not found.",
            )
        for route in ARM_ROUTES:
            if route(self, ws, rest, query, body):
                return
        if self.command == "PUT":
            return self._create(ws, rest, body)
        if self.command != "GET":
            return self._error(405, "MethodNotAllowed", "this fake reads, and creates jobs and components")
        if rest == "":
            fake.requests["workspace_get"] += 1
            return self._send(200, dump(self._workspace(ws)))
        if rest == "/jobs":
            fake.requests["jobs_list"] += 1
            return self._jobs_list(ws, query)
        job = re.match(r"^/jobs/([^/]+)$", rest)
        if job:
            fake.requests["jobs_get"] += 1
            return self._job_get(ws, job.group(1))
        component = re.match(r"^/components/([^/]+)/versions/([^/]+)$", rest)
        if component:
            fake.requests["component_get"] += 1
            found = ws.components.get((component.group(1), component.group(2)))
            if found is None:
                return self._error(404, "UserError", f"Component {component.group(1)}:{component.group(2)} not found.")
            return self._send(200, dump(found))
        self._error(404, "NotFound", f"no route for {rest}")

    def _create(self, ws: FakeWorkspace, rest: str, body: bytes) -> None:
        """PUT of a job or a component version: stored as sent, answered like the service."""
        from azure.ai.ml._restclient.arm_ml_service.models import ComponentVersion, JobBase, SystemData

        fake = self.fake
        data = json.loads(body or b"{}")
        component = re.match(r"^/components/([^/]+)/versions/([^/]+)$", rest)
        if component:
            fake.requests["component_put"] += 1
            name, version = component.groups()
            stored = ComponentVersion({**data, "id": ws.arm_id("components", f"{name}/versions/{version}"), "name": version})
            ws.components[(name, version)] = stored
            return self._send(201, dump(stored))
        job = re.match(r"^/jobs/([^/]+)$", rest)
        if not job:
            return self._error(404, "NotFound", f"no route for PUT {rest}")
        fake.requests["jobs_put"] += 1
        name = job.group(1)
        if name in ws.roots:  # the service only merges tags into an existing job
            ws.roots[name].properties.tags.update((data.get("properties") or {}).get("tags") or {})
            return self._send(200, dump(ws.roots[name]))
        ws.submitted[name] = data
        stored = JobBase(json.loads(json.dumps(data)))
        stored["id"], stored["name"] = ws.arm_id("jobs", name), name
        stored["type"] = "Microsoft.MachineLearningServices/workspaces/jobs"
        stored["systemData"] = SystemData(created_by="ada@contoso.test", created_by_type="User", created_at=datetime.now(timezone.utc)).as_dict()
        props = stored.properties
        props["status"] = "NotStarted"
        studio = f"https://ml.azure.com/runs/{name}?wsid={ws.scope}"
        props["services"] = {"Studio": {"jobServiceType": "Studio", "endpoint": studio}}
        ws.roots[name] = stored
        return self._send(201, dump(stored))

    def _workspace(self, ws: FakeWorkspace):
        from azure.ai.ml._restclient.arm_ml_service.models import SystemData, Workspace, WorkspaceProperties

        host = f"127.0.0.1:{self.fake.port}"
        return Workspace(
            {
                "id": ws.scope,
                "name": ws.name,
                "type": "Microsoft.MachineLearningServices/workspaces",
                "location": ws.location,
                "kind": "Default",
                "systemData": SystemData(created_by="ada@contoso.test", created_at="2024-01-01T00:00:00Z").as_dict(),
                "properties": WorkspaceProperties(
                    friendly_name=ws.name,
                    description="fake workspace",
                    discovery_url=f"https://{host}/discovery",
                    ml_flow_tracking_uri=f"azureml://{host}/mlflow/v1.0{ws.scope}",
                    workspace_id=ws.workspace_id,
                    tenant_id=ws.tenant,
                    storage_account=f"/subscriptions/{ws.subscription}/resourceGroups/{ws.resource_group}/providers/Microsoft.Storage/storageAccounts/fakestore",
                    provisioning_state="Succeeded",
                ).as_dict(),
            }
        )

    def _jobs_list(self, ws: FakeWorkspace, query: dict) -> None:
        from azure.ai.ml._restclient.arm_ml_service.models import JobBase

        view = (query.get("listViewType") or ["ActiveOnly"])[0]
        names = [n for n in ws.roots if view == "All" or (view == "ArchivedOnly") == (n in ws.archived)]
        tag = (query.get("tag") or [None])[0]
        if tag:
            names = [n for n in names if tag in (ws.roots[n].properties.tags or {})]
        start = int((query.get("$skip") or ["0"])[0])
        page = names[start : start + self.fake.list_page]
        body: dict[str, Any] = {"value": [json.loads(dump(ws.roots[n])) for n in page]}
        if start + self.fake.list_page < len(names):
            nxt = start + self.fake.list_page
            body["nextLink"] = f"{self.fake.url}{ws.scope}/jobs?api-version=2025-12-01&listViewType={view}&$skip={nxt}" + (f"&tag={tag}" if tag else "")
        assert all(isinstance(ws.roots[n], JobBase) for n in page)
        self._send(200, json.dumps(body).encode())

    def _job_get(self, ws: FakeWorkspace, name: str) -> None:
        from azure.ai.ml._restclient.arm_ml_service.models import JobBase

        if name in ws.roots:
            plan = ws.status_plan.get(name)
            if plan:
                ws.roots[name].properties["status"] = plan.pop(0)
            return self._send(200, dump(ws.roots[name]))
        if name in ws.runs:
            # A child (pipeline step, trial): MFE knows the id but has no job properties for it.
            return self._send(200, dump(JobBase({"id": ws.arm_id("jobs", name), "name": name, "type": "Microsoft.MachineLearningServices/workspaces/jobs"})))
        self._error(404, "UserError", f"Job {name} not found in workspace {ws.name}.")

    # -- discovery and run history ------------------------------------------------------------

    def _discovery(self) -> None:
        """The region's service hosts, with the keys of the real answer (recordings: 2026). `api` is
        this server; the others are hosts of their own that serve nothing (a client sending run
        history to `history`, as the key's name suggests, is answered 404 there)."""
        self._send(200, json.dumps({"api": self.fake.url, **self.fake.elsewhere_urls()}).encode())

    def _history(self, scope: str, query: dict, body: bytes = b"") -> None:
        fake = self.fake
        match = WORKSPACE_RE.match(scope)
        ws = fake.find(match.group("sub"), match.group("rg"), match.group("ws")) if match else None
        if ws is None:
            return self._error(404, "ResourceNotFound", "workspace not found")
        rest = (match.group("rest") or "").rstrip("/")
        run = re.match(r"^/runs/([^/]+)(/children)?$", rest)
        if not run:
            for route in HISTORY_ROUTES:
                if route(self, ws, rest, query, body):
                    return
        if not run or self.command != "GET":
            return self._error(404, "NotFound", f"no run history route for {rest}")
        name = run.group(1)
        if name not in ws.runs:
            return self._error(404, "UserError", f"Run {name} was not found")
        if not run.group(2):
            fake.requests["history_get"] += 1
            return self._send(200, dump(ws.runs[name]))
        fake.requests["history_children"] += 1
        kids = ws.children.get(name, [])
        start = int((query.get("$continuationtoken") or ["0"])[0])
        size = min(int((query.get("$top") or [self.fake.children_page])[0]), self.fake.children_page)
        page = kids[start : start + size]
        body = {"value": [json.loads(dump(ws.runs[k])) for k in page]}
        # The service pages run children with a continuation token, not a nextLink; its last page
        # has no continuation key at all, not a null one (tests/recordings: `{"value": [...]}` only).
        if start + size < len(kids):
            body["continuationToken"] = str(start + size)
        self._send(200, json.dumps(body).encode())

    # -- MLflow ------------------------------------------------------------------------------

    def _forward_mlflow(self, match: re.Match, query: str, body: bytes) -> None:
        fake = self.fake
        ws = fake.find(match.group("sub"), match.group("rg"), match.group("ws"))
        if ws is None:
            return self._error(404, "ResourceNotFound", "workspace not found")
        for route in MLFLOW_ROUTES:
            if route(self, ws, match.group("rest"), query, body):
                return
        url = (ws.mlflow_uri or fake.mlflow_uri).rstrip("/") + match.group("rest") + (f"?{query}" if query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
        answer = fake.forward(self.command, url, data=body or None, headers=headers, timeout=120)
        content = answer.content
        for rewrite in MLFLOW_ANSWERS:
            content = rewrite(self, ws, match.group("rest"), content)
        self._send(answer.status_code, content, answer.headers.get("Content-Type", "application/json"))


from fakes import azureml_artifacts  # noqa: E402,F401  (registers its routes)
from fakes import azureml_datastores  # noqa: E402,F401  (registers its routes)
from fakes import azureml_assets  # noqa: E402,F401  (registers its routes)
from fakes import azureml_computes  # noqa: E402,F401  (registers its routes)
from fakes import azureml_limits  # noqa: E402,F401  (registers its routes: Azure ML's MLflow limits)
from fakes import azureml_latency  # noqa: E402,F401  (registers its hook: off until turned on)
