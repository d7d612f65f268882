"""The hosts of a region's discovery answer other than `api`, for the AzureML fake
(tests/fakes/azureml_control_plane.py): each a listener of its own that answers 404 to anything,
so a client sending run history to the `history` host (as the key's name suggests; azure-ai-ml
uses `api`) fails a test instead of reaching the fake's routes.
"""
from __future__ import annotations

import json
import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The discovery answer's keys besides `api`, by the host they share in the real answer.
ELSEWHERE = {
    "catalog": ("catalog",),
    "experiments": ("experimentation", "history", "hyperdrive", "labeling"),
    "modelmanagement": ("modelmanagement",),
    "pipelines": ("pipelines",),
    "studio": ("studio",),
}


class Elsewhere:
    """A discovery host the replayer has no business calling: every request is a 404, counted as
    `elsewhere_<group>` in the fake's requests."""

    def __init__(self, context: ssl.SSLContext, group: str, requests: Counter):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                requests[f"elsewhere_{group}"] += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"error": {"code": "NotFound", "message": f"no route {self.path.split('?')[0]} on the {group} host",
                                             "details": [], "additionalInfo": []}}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="fake-azureml-elsewhere", daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
