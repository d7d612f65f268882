"""Replays recorded real Azure ML answers (tests/recordings/*.json) over HTTPS, for the AzureML source.

The set-up is the HTTPS fake's (tests/fakes/azureml_control_plane.py): a trustme CA trusted through
REQUESTS_CA_BUNDLE / SSL_CERT_FILE and `AZUREML_DEV_URL_MFE` pointing azure-ai-ml at this server.

Matching: a request is answered by the last recorded entry (a polled job's settled state) with the same method and the same path,
where the workspace scope (`/subscriptions/S/resourceGroups/R/providers/.../workspaces/W`) counts as
one segment whatever its ids (the recordings mix 33- and 36-character sanitized subscriptions), and
whose query keys other than `api-version` appear in the request with the same values (api-versions
differ between SDK versions; a continuation token does not). Hosts never count.

Rewriting: only what must lead the client back here. In the workspace answer (discoveryUrl,
mlFlowTrackingUri) and the discovery document, URLs on the region hosts (`https://R.api.azureml.ms`,
`azureml://R.api.azureml.ms`, `R.experiments.azureml.net`, ...) get this server's host. Ids, names
and every other value of every answer stay as recorded.

What no recording holds is not invented here: a test adds it with `stub(method, path, status, body)`
(same matching, checked before the recordings) and says so. `/mlflow/...` goes to a real `mlflow
server` when one is given. Anything else answers 404 and is listed in `unmatched`, so a test can
assert the client asked nothing it did not expect.
"""
from __future__ import annotations

import json
import re
import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import requests

RECORDINGS = Path(__file__).resolve().parents[1] / "recordings"
SCOPE_RE = re.compile(r"/subscriptions/[^/]+/resource[gG]roups/[^/]+/providers/Microsoft\.MachineLearningServices/workspaces/[^/?]+", re.IGNORECASE)
REGION_HOST_RE = re.compile(r"(https|azureml)://[A-Za-z0-9.-]+\.(?:api\.azureml\.ms|experiments\.azureml\.net|modelmanagement\.azureml\.net|aether\.ms)")
MLFLOW_RE = re.compile(r"^/mlflow/v[12]\.0" + SCOPE_RE.pattern + r"(?P<rest>/.*)$", re.IGNORECASE)


def load(name: str) -> list[dict]:
    """The entries of one recording file (tests/recordings/NAME)."""
    return json.loads((RECORDINGS / name).read_text(encoding="utf-8"))["entries"]


def route(uri: str) -> str:
    """A request's path with the workspace scope as `/WS`: what matching looks at."""
    return SCOPE_RE.sub("/WS", urlsplit(uri).path)


def query_keys(uri: str) -> dict[str, str]:
    return {k.lower(): v for k, v in parse_qsl(urlsplit(uri).query, keep_blank_values=True) if k.lower() != "api-version"}


class RecordedAzure:
    """`with RecordedAzure(folder, entries, mlflow_uri) as azure:`; `azure.environ()` points clients here."""

    def __init__(self, folder: Path, entries: list[dict], mlflow_uri: str | None = None):
        import trustme

        self.entries = list(entries)
        self.stubs: list[dict] = []
        self.mlflow_uri = mlflow_uri.rstrip("/") if mlflow_uri else None
        self.requests: Counter = Counter()  # "METHOD /route" -> count
        self.unmatched: list[str] = []
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        self.ca_file = folder / "recorded-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"azure": self}))
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"https://{self.host}"
        self._lock = threading.Lock()

    def __enter__(self) -> "RecordedAzure":
        threading.Thread(target=self.server.serve_forever, name="recorded-azure", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def environ(self) -> dict[str, str]:
        return {"AZUREML_DEV_URL_MFE": self.url, "REQUESTS_CA_BUNDLE": str(self.ca_file), "SSL_CERT_FILE": str(self.ca_file)}

    def stub(self, method: str, uri: str, status: int, body) -> None:
        """An answer for a call no recording holds (the test says why); matched like a recording."""
        self.stubs.append({"RequestMethod": method, "RequestUri": uri, "StatusCode": status, "ResponseBody": body})

    def answer(self, method: str, uri: str) -> dict | None:
        path, query = route(uri), query_keys(uri)
        # Stubs first; among recordings the last answer wins (a polled job's settled state).
        for entry in self.stubs + self.entries[::-1]:
            if entry["RequestMethod"] == method and route(entry["RequestUri"]) == path:
                wanted = query_keys(entry["RequestUri"])
                if all(query.get(k) == v for k, v in wanted.items()):
                    return entry
        return None

    def body(self, entry: dict) -> bytes:
        if entry.get("ResponseBody") is None:
            return b""
        text = json.dumps(entry["ResponseBody"])
        if route(entry["RequestUri"]) not in ("/WS", "/discovery"):
            return text.encode()
        return REGION_HOST_RE.sub(lambda m: f"{m.group(1)}://{self.host}", text).encode()


class _Handler(BaseHTTPRequestHandler):
    azure: RecordedAzure
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def _dispatch(self) -> None:
        azure = self.azure
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.headers.get("Authorization", "").startswith("Bearer ") and urlsplit(self.path).path != "/discovery":
            return self._send(401, b'{"error": {"code": "AuthenticationFailed", "message": "no bearer token"}}')
        mlflow = MLFLOW_RE.match(urlsplit(self.path).path)
        with azure._lock:
            azure.requests[f"{self.command} {route(self.path)}"] += 1
        if mlflow and azure.mlflow_uri:
            return self._forward(mlflow.group("rest"), body)
        entry = azure.answer(self.command, self.path)
        if entry is None:
            with azure._lock:
                azure.unmatched.append(f"{self.command} {route(self.path)}")
            return self._send(404, b'{"error": {"code": "NotFound", "message": "no recording for this request"}}')
        self._send(entry["StatusCode"], azure.body(entry))

    def _forward(self, rest: str, body: bytes) -> None:
        query = urlsplit(self.path).query
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
        answer = requests.request(self.command, self.azure.mlflow_uri + rest + (f"?{query}" if query else ""), data=body or None,
                                  headers=headers, timeout=60)
        self._send(answer.status_code, answer.content, answer.headers.get("Content-Type", "application/json"))
