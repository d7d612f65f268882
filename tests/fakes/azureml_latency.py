"""Azure-shaped latency and throttling for the fake control plane, off unless a test or bench turns it on.

On loopback every request costs well under a millisecond, so a figure measured there says nothing
about a workspace, where each request costs tens to hundreds of milliseconds and the service
answers 429 with Retry-After past its rate. Turned on, every request the fake answers is counted
by route family (`fake.requests["family:arm"]`, ...), waits a latency drawn uniformly from its
family's range, then takes a token from its family's bucket; an empty bucket answers 429
TooManyRequests with Retry-After (whole seconds, as ARM sends), counted as `throttled:FAMILY`. A request
carried out is also counted by route, `route:FAMILY METHOD TEMPLATE` (`route()`, `blob_route()`).

Families: `arm` (workspace, jobs, components), `history` (run history runs and children),
`artifacts` (run history's artifact routes), `mlflow`, `discovery`; and `blob` for the workspace
storage, through `BlobCounter`, a reverse proxy in front of Azurite that the SAS URLs name.

Default latencies (ms): what the service itself reports spending, `x-request-time` in
tests/recordings/*.json (2026): ARM GETs 26-120 (median 73; lists and component GETs up to 355),
run history GETs 27-291 (median ~60), discovery 10-12; the client's round trip adds to it. So ARM
30-80, run history and MLflow 50-150. Blob 10-30 is an assumption (nothing recorded).
Default buckets (rate per second, burst): ARM 25/s with a burst of 250, the documented ARM
read throttle per subscription and region (token bucket, learn.microsoft.com "Understand how
Azure Resource Manager throttles requests"); run history, artifacts and MLflow: nothing
documented, 20/s with a burst of 40 assumed, so that the bench meets 429s and must absorb them.
Azure ML's service-limits page (MicrosoftDocs/azure-docs, articles/machine-learning/
resource-limits-capacity.md) lists sizes and counts, no request rates. One public report,
mlflow/mlflow#11462 (2024-03): one sequential client logging a metric per request (roughly 10/s)
met persistent 429s from Azure ML's MLflow endpoint after ~700 requests; so a rate of that order
exists, and its scope (run, principal, workspace) is not said.

Scope of the buckets (`scope=`):
- "workspace" (the default): one bucket per (family, workspace), the workspace's name read from the
  request path; ARM's per subscription, as ARM documents it. Azure documents data-plane limits per
  resource for Storage, Key Vault and Cosmos DB; for Azure ML's run history and MLflow that it is
  the same is an assumption.
- "shared": one bucket per family for every workspace the fake serves (the bench's first model).
Blob is never throttled under either. Requests carried out that name a workspace are also counted
per workspace, `ws:NAME FAMILY` (ARM's too, though its bucket is the subscription's), and 429s as
`ws_throttled:NAME FAMILY`, so a bench can tell a source's reads from a target's writes.

    shape = turn_on(fake)                       # defaults; or turn_on(fake, latency={...}, buckets={...}, scope="shared")
    counter = BlobCounter(azurite.endpoint, fake).start()
    store.public = counter.account_url(store.account)
    # or, for production blob URLs (tests/cloud_storage.py): clients get HTTPS_PROXY=counter.url
    counter = BlobCounter(storage.azurite.endpoint, fake, tls=storage).start()
    turn_off(fake)
"""
from __future__ import annotations

import http.client
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from fakes.azureml_control_plane import HISTORY_RE, MLFLOW_RE, REQUEST_HOOKS, WORKSPACE_RE

SCOPES = ("workspace", "shared")
SUBSCRIPTION_RE = re.compile(r"^/subscriptions/(?P<sub>[^/]+)")

# A segment after one of these names is an instance's name or id: `{runs}` in a route template.
COLLECTIONS = {"runs", "experiments", "jobs", "components", "versions", "datastores", "computes", "environments", "models",
               "data", "schedules", "codes", "registeredmodels"}
UNIQUE = re.compile(r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}|\d+)$", re.IGNORECASE)
FAMILIES = ("arm", "history", "artifacts", "mlflow", "discovery", "blob")
LATENCY_MS = {"arm": (30, 80), "history": (50, 150), "artifacts": (50, 150), "mlflow": (50, 150), "discovery": (10, 20), "blob": (10, 30)}
BUCKETS = {"arm": (25.0, 250), "history": (20.0, 40), "artifacts": (20.0, 40), "mlflow": (20.0, 40)}  # (per second, burst)
BLOB_HOST = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}\.blob\.core\.windows\.net$")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class Bucket:
    """A token bucket: `rate` tokens a second up to `burst`; `take` answers 0 (granted) or the seconds until a token."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


@dataclass
class Shape:
    latency: dict[str, tuple[float, float]]  # family -> (low, high) ms
    rates: dict[str, tuple[float, int]]  # family -> (per second, burst); a family without one is never throttled
    scope: str = "workspace"  # SCOPES: what one bucket covers
    rng: random.Random = field(default_factory=lambda: random.Random(18))
    lock: threading.Lock = field(default_factory=threading.Lock)
    buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)  # (family, scope key) -> its bucket, made on first use

    def delay(self, family: str) -> float:
        low, high = self.latency.get(family, (0, 0))
        with self.lock:  # one seeded generator for all threads
            return self.rng.uniform(low, high) / 1000

    def mean_ms(self, family: str) -> float:
        low, high = self.latency.get(family, (0, 0))
        return (low + high) / 2

    def bucket(self, family: str, path: str) -> Bucket | None:
        """The bucket a request of `family` on `path` draws from: its family's only one under "shared", its
        workspace's (ARM: its subscription's) under "workspace"; None for a family without a rate."""
        if family not in self.rates:
            return None
        key = (family, bucket_key(family, path) if self.scope == "workspace" else "")
        with self.lock:
            if key not in self.buckets:
                self.buckets[key] = Bucket(*self.rates[family])
            return self.buckets[key]


def workspace_name(path: str) -> str | None:
    """The workspace a control-plane path names (ARM, run history, MLflow), or None (discovery, lists above a
    workspace). The name alone: the bench's workspaces differ by name."""
    for pattern in (MLFLOW_RE, WORKSPACE_RE):
        match = pattern.match(path)
        if match:
            return match.group("ws")
    match = HISTORY_RE.match(path)
    scope = WORKSPACE_RE.match(match.group("scope")) if match else None
    return scope.group("ws") if scope else None


def bucket_key(family: str, path: str) -> str:
    """What one bucket covers under the "workspace" scope: ARM's subscription (ARM documents its throttle per
    principal and subscription; the fake has one principal), else the workspace's name; "" when the path
    names neither, so such requests share one bucket of their family."""
    if family == "arm":
        match = SUBSCRIPTION_RE.match(path)
        return f"sub:{match.group('sub')}" if match else ""
    return workspace_name(path) or ""


def family(path: str) -> str:
    if path == "/discovery":
        return "discovery"
    if MLFLOW_RE.match(path):
        return "mlflow"
    if HISTORY_RE.match(path):
        return "artifacts" if "/artifacts" in path else "history"
    return "arm"


def route(method: str, path: str) -> str:
    """`METHOD template` of a request: the workspace scope as `{ws}`, what follows a collection name as
    `{collection}`, ids and numbers as `{id}`; query strings dropped. So requests per route can be told
    apart (GET .../artifacts/contentinfo from POST .../artifacts/batch/metadata) and summed over jobs."""
    path = path.split("?", 1)[0]
    head, _, rest = path.partition("/subscriptions/")
    if rest:
        scope = WORKSPACE_RE.match("/subscriptions/" + rest)
        path = f"{head}/{{ws}}{scope.group('rest') or ''}" if scope else path
    mlflow, _, artifact = path.partition("/api/2.0/mlflow-artifacts/artifacts/")
    if artifact:
        return f"{method} {route('', mlflow).strip()}/api/2.0/mlflow-artifacts/artifacts/{{path}}"
    fixed = "/api/2.0/mlflow/" in path  # MLflow's own routes are verbs (runs/log-batch), never names
    out, after = [], ""
    for segment in path.split("/"):
        if after in COLLECTIONS and segment and not segment.startswith("{") and not fixed:
            segment = f"{{{after.removesuffix('s')}}}"
        elif UNIQUE.match(segment):
            segment = "{id}"
        out.append(segment)
        after = segment.lower()
    return f"{method} {'/'.join(out)}"


def blob_route(method: str, path: str, headers) -> str:
    """`METHOD /{account}/{container}/{blob}` plus what kind of blob operation it is (the `comp` query,
    a server-side copy)."""
    parts = path.split("?", 1)
    comp = re.search(r"(?:^|&)comp=([^&]+)", parts[1]) if len(parts) > 1 else None
    what = f" comp={comp.group(1)}" if comp else ""
    if headers.get("x-ms-copy-source"):
        what += " (copy)"
    return f"{method} /{{account}}/{{container}}/{{blob}}{what}"


def turn_on(fake, latency: dict | None = None, buckets: dict | None = None, seed: int = 18, scope: str = "workspace") -> Shape:
    """Latency and throttling on `fake` from now on; `latency` / `buckets` replace the defaults family by family
    ({} for none: a family without a range answers at once, one without a bucket is never throttled); `scope`
    says whether each workspace has its own buckets or all share one per family (module docstring)."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: one of {SCOPES}")
    ranges = LATENCY_MS if latency is None else latency
    rates = BUCKETS if buckets is None else buckets
    shape = Shape(dict(ranges), dict(rates), scope, random.Random(seed))
    fake.__dict__["_azure_shape"] = shape
    return shape


def turn_off(fake) -> None:
    fake.__dict__.pop("_azure_shape", None)


def shaped(fake, name: str, path: str = "") -> float:
    """Count a request of family `name` on `path`, make it wait its latency; the seconds until its bucket has
    a token when it is throttled, else 0."""
    shape = fake.__dict__.get("_azure_shape")
    if shape is None:
        return 0.0
    fake.requests[f"family:{name}"] += 1
    time.sleep(shape.delay(name))
    bucket = shape.bucket(name, path)
    wait = bucket.take() if bucket else 0.0
    if wait:
        fake.requests[f"throttled:{name}"] += 1
    return wait


def hook(handler, path: str) -> bool:
    name = family(path)
    wait = shaped(handler.fake, name, path)
    shaping = "_azure_shape" in handler.fake.__dict__
    workspace = workspace_name(path) if shaping else None
    if not wait:
        if shaping:  # carried out: counted by route, and by workspace when the path names one
            handler.fake.requests[f"route:{name} {route(handler.command, handler.path)}"] += 1
            if workspace:
                handler.fake.requests[f"ws:{workspace} {name}"] += 1
        return False
    if workspace:
        handler.fake.requests[f"ws_throttled:{workspace} {name}"] += 1
    handler._error(429, "TooManyRequests", "The request is being throttled.", {"Retry-After": str(max(1, math.ceil(wait)))})
    return True


REQUEST_HOOKS.append(hook)


class BlobCounter:
    """A reverse proxy in front of Azurite (path-style URLs) that counts and delays each request as the
    `blob` family. The Host header passes unchanged, so Azurite still takes a copy source naming this
    proxy for one of its own (it compares the two hosts). Azurite's own check of a copy source (a HEAD
    from axios, through this proxy) is passed on uncounted: on Azure that is inside the service.

    With `tls` (a tests/cloud_storage.py CloudStorage) it is also an HTTPS proxy for production blob
    URLs (https://ACCOUNT.blob.core.windows.net, the only form azureml-mlflow downloads from): give
    clients HTTPS_PROXY=`url`; a CONNECT to a blob host is answered, TLS ends here with the HTTPS
    Azurite's own certificate (the clients trust its CA), and each request inside the tunnel is counted,
    delayed and passed to that Azurite with its production Host header, from which Azurite takes the
    account. Only blob hosts on port 443 are taken, as tests/fakes/blob_proxy.py does."""

    def __init__(self, upstream: str, fake, tls=None):
        self.upstream = urlsplit(upstream)
        self.fake = fake
        self.tls = None
        if tls is not None:
            import ssl

            self.upstream = urlsplit(tls.azurite.endpoint)
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(str(tls.azurite.cert_file), str(tls.azurite.key_file))
            self.upstream_tls = ssl.create_default_context(cafile=str(tls.azurite.ca_file))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="blob-counter", daemon=True)

    def start(self) -> "BlobCounter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def account_url(self, account: str) -> str:
        return f"{self.url}/{account}"

    def forward(self, method: str, path: str, headers, body: bytes):
        if self.upstream.scheme == "https":
            connection = http.client.HTTPSConnection(self.upstream.hostname, self.upstream.port, timeout=120, context=self.upstream_tls)
        else:
            connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers.items():
                if key.lower() not in HOP_HEADERS:
                    connection.putheader(key, value)
            connection.endheaders(body or None)
            answer = connection.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            connection.close()

    def _handler(self):
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if not self.headers.get("User-Agent", "").startswith("axios"):
                    shaped(counter.fake, "blob")  # never throttled: no bucket for blob
                    counter.fake.requests[f"blob_{self.command.lower()}"] += 1
                    if "_azure_shape" in counter.fake.__dict__:
                        counter.fake.requests[f"route:blob {blob_route(self.command, self.path, self.headers)}"] += 1
                status, headers, payload = counter.forward(self.command, self.path, self.headers, body)
                if status >= 400 and not self.headers.get("User-Agent", "").startswith("axios"):
                    counter.fake.requests["blob_refused"] += 1  # e.g. Azurite's 501 to Put Blob From URL
                self.send_response(status)
                head = self.command == "HEAD"  # its Content-Length is the blob's size, not this (empty) body's
                for key, value in headers:
                    if key.lower() not in HOP_HEADERS and (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if not head:
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _any

            def do_CONNECT(self):
                """End TLS here and serve the tunnel's requests with this same handler (its keep-alive loop
                reads them from the TLS stream)."""
                from socketserver import _SocketWriter

                host, _, port = self.path.rpartition(":")
                if counter.tls is None or port != "443" or not BLOB_HOST.match(host.lower()):
                    self.send_error(403)
                    return
                self.send_response(200, "Connection Established")
                self.end_headers()
                self.connection = counter.tls.wrap_socket(self.connection, server_side=True)
                self.rfile = self.connection.makefile("rb", self.rbufsize)
                self.wfile = _SocketWriter(self.connection)
                self.close_connection = False

        return Handler
