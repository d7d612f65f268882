"""Azure-shaped latency and throttling for the fake control plane, off unless a test or bench turns it on.

On loopback every request costs well under a millisecond, so a figure measured there says nothing
about a workspace, where each request costs tens to hundreds of milliseconds and the service
answers 429 with Retry-After past its rate. Turned on, every request the fake answers is counted
by route family (`fake.requests["family:arm"]`, ...), waits a latency drawn uniformly from its
family's range, then takes a token from its family's bucket; an empty bucket answers 429
TooManyRequests with Retry-After (whole seconds, as ARM sends), counted as `throttled:FAMILY`.

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

    shape = turn_on(fake)                       # defaults; or turn_on(fake, latency={...}, buckets={...})
    counter = BlobCounter(azurite.endpoint, fake).start()
    store.public = counter.account_url(store.account)
    turn_off(fake)
"""
from __future__ import annotations

import http.client
import math
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from fakes.azureml_control_plane import HISTORY_RE, MLFLOW_RE, REQUEST_HOOKS

FAMILIES = ("arm", "history", "artifacts", "mlflow", "discovery", "blob")
LATENCY_MS = {"arm": (30, 80), "history": (50, 150), "artifacts": (50, 150), "mlflow": (50, 150), "discovery": (10, 20), "blob": (10, 30)}
BUCKETS = {"arm": (25.0, 250), "history": (20.0, 40), "artifacts": (20.0, 40), "mlflow": (20.0, 40)}  # (per second, burst)
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
    buckets: dict[str, Bucket]
    rng: random.Random = field(default_factory=lambda: random.Random(18))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delay(self, family: str) -> float:
        low, high = self.latency.get(family, (0, 0))
        with self.lock:  # one seeded generator for all threads
            return self.rng.uniform(low, high) / 1000

    def mean_ms(self, family: str) -> float:
        low, high = self.latency.get(family, (0, 0))
        return (low + high) / 2


def family(path: str) -> str:
    if path == "/discovery":
        return "discovery"
    if MLFLOW_RE.match(path):
        return "mlflow"
    if HISTORY_RE.match(path):
        return "artifacts" if "/artifacts" in path else "history"
    return "arm"


def turn_on(fake, latency: dict | None = None, buckets: dict | None = None, seed: int = 18) -> Shape:
    """Latency and throttling on `fake` from now on; `latency` / `buckets` replace the defaults family by family
    ({} for none: a family without a range answers at once, one without a bucket is never throttled)."""
    ranges = LATENCY_MS if latency is None else latency
    rates = BUCKETS if buckets is None else buckets
    shape = Shape(dict(ranges), {name: Bucket(*rate) for name, rate in rates.items()}, random.Random(seed))
    fake.__dict__["_azure_shape"] = shape
    return shape


def turn_off(fake) -> None:
    fake.__dict__.pop("_azure_shape", None)


def shaped(fake, name: str) -> float:
    """Count a request of family `name`, make it wait its latency; the seconds until its bucket has a
    token when it is throttled, else 0."""
    shape = fake.__dict__.get("_azure_shape")
    if shape is None:
        return 0.0
    fake.requests[f"family:{name}"] += 1
    time.sleep(shape.delay(name))
    bucket = shape.buckets.get(name)
    wait = bucket.take() if bucket else 0.0
    if wait:
        fake.requests[f"throttled:{name}"] += 1
    return wait


def hook(handler, path: str) -> bool:
    wait = shaped(handler.fake, family(path))
    if not wait:
        return False
    handler._error(429, "TooManyRequests", "The request is being throttled.", {"Retry-After": str(max(1, math.ceil(wait)))})
    return True


REQUEST_HOOKS.append(hook)


class BlobCounter:
    """A reverse proxy in front of Azurite (path-style URLs) that counts and delays each request as the
    `blob` family. The Host header passes unchanged, so Azurite still takes a copy source naming this
    proxy for one of its own (it compares the two hosts). Azurite's own check of a copy source (a HEAD
    from axios, through this proxy) is passed on uncounted: on Azure that is inside the service."""

    def __init__(self, upstream: str, fake):
        self.upstream = urlsplit(upstream)
        self.fake = fake
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

        return Handler
