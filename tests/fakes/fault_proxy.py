"""A fault-injecting HTTP proxy on loopback, between the tool and a real server.

At a chosen rate (seeded, so a failing run can be replayed) each request meets one fault:
- `429`   : answered 429 with Retry-After, not forwarded
- `503`   : answered 503, not forwarded
- `lost`  : forwarded, then answered 500: the server did the work but the client never hears
            (a retried POST would do it twice: the non-idempotent case)
- `reset` : the connection is closed without an answer, not forwarded
- `slow`  : forwarded after a delay
- `401`   : answered 401 as MLflow does for a rejected credential, not forwarded (only when asked for)

Paths in `refuse` are always answered 404 ENDPOINT_NOT_FOUND, as a server without that route
answers (an MLflow server older than the route), and never forwarded.
"""
from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("429", "503", "lost", "reset", "slow")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host"}


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.2, faults=FAULTS, seed: int = 1, slow_seconds: float = 0.3,
                 spare=("/health",), refuse=()):
        self.upstream = urlsplit(upstream)
        self.rate, self.faults, self.slow_seconds, self.spare = rate, tuple(faults), slow_seconds, spare
        self.refuse = tuple(refuse)
        self.refused: Counter = Counter()  # refused requests by path
        self.random = random.Random(seed)
        self.injected: Counter = Counter()
        self.forwarded = 0
        self.paths: Counter = Counter()  # forwarded requests by path (no query)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def pick(self, path: str) -> str | None:
        with self._lock:
            if urlsplit(path).path in self.refuse:
                self.refused[urlsplit(path).path] += 1
                return "404"
            if any(path.startswith(p) for p in self.spare) or self.random.random() >= self.rate:
                return None
            fault = self.random.choice(self.faults)
            self.injected[fault] += 1
            return fault

    def forward(self, method: str, path: str, headers, body: bytes):
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            connection.request(method, path, body=body, headers={k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS})
            answer = connection.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            connection.close()
            with self._lock:
                self.forwarded += 1
                self.paths[urlsplit(path).path] += 1

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy.pick(self.path)
                if fault == "reset":
                    self.close_connection = True
                    return
                if fault == "404":
                    return self._send(404, [], b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "No such route."}', {})
                if fault == "401":
                    return self._send(401, [], b'{"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."}', {})
                if fault in ("429", "503"):
                    extra = {"Retry-After": "1"} if fault == "429" else {}
                    return self._send(int(fault), [], b'{"error_code": "TEMPORARILY_UNAVAILABLE"}', extra)
                if fault == "slow":
                    threading.Event().wait(proxy.slow_seconds)
                status, headers, payload = proxy.forward(self.command, self.path, self.headers, body)
                if fault == "lost":
                    return self._send(500, [], b'{"error_code": "INTERNAL_ERROR"}', {})
                self._send(status, headers, payload, {})

            def _send(self, status, headers, payload, extra):
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                for key, value in extra.items():
                    self.send_header(key, value)
                if not any(k.lower() == "content-type" for k, _ in headers):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        return Handler
