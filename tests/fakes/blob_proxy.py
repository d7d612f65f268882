"""A tiny loopback HTTP CONNECT proxy that makes Azure blob URLs reach Azurite.

With HTTPS_PROXY=http://127.0.0.1:PORT (and NO_PROXY=127.0.0.1,localhost), a client asking for
https://ACCOUNT.blob.core.windows.net/... opens `CONNECT ACCOUNT.blob.core.windows.net:443` here; the
proxy tunnels it to the HTTPS Azurite port on loopback. TLS stays end to end (the client checks
Azurite's certificate for *.blob.core.windows.net against the test CA) and the Host header the client
sends is the production one, so Azurite takes the account from it. Anything else (another host or
port, a plain `GET http://...` forward request) is refused with 403 / 405 and recorded in `refused`.

    proxy = BlobProxy().start()      # upstream may be set later: proxy.upstream = azurite.port
    proxy.url                        # http://127.0.0.1:PORT, for HTTPS_PROXY
    proxy.snapshot()                 # {"up": bytes client->Azurite, "down": bytes Azurite->client, "tunnels": n}
    proxy.by_host                    # host -> the same counters, per CONNECT host
    proxy.stop()

The counters are what a test needs to tell a server-side copy (a few KB of headers through the
tunnels) from a copy whose bytes went through the client (the file's size, twice).
"""
from __future__ import annotations

import re
import socket
import socketserver
import threading
from collections import Counter, defaultdict

ALLOWED = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}\.blob\.core\.windows\.net$")
HEAD_LIMIT = 16 << 10


class BlobProxy:
    def __init__(self, upstream: int | None = None, host: str = "127.0.0.1"):
        self.upstream = upstream  # the HTTPS Azurite port on loopback
        self.upstream_host = host
        self.totals: Counter = Counter()
        self.by_host: dict[str, Counter] = defaultdict(Counter)
        self.refused: list[str] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"proxy": self})
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> "BlobProxy":
        self._thread = threading.Thread(target=self.server.serve_forever, name="blob-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"up": self.totals["up"], "down": self.totals["down"], "tunnels": self.totals["tunnels"]}

    def count(self, host: str, direction: str, amount: int) -> None:
        with self.lock:
            self.totals[direction] += amount
            self.by_host[host][direction] += amount


class _Handler(socketserver.BaseRequestHandler):
    proxy: BlobProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        head = self._read_head(client)
        if head is None:
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = line.partition(" ")
        target = rest.rpartition(" ")[0]
        if method != "CONNECT":
            return self._refuse(client, 405, "Method Not Allowed", line)
        host, _, port = target.rpartition(":")
        host = host.lower()
        if not ALLOWED.match(host) or port != "443" or self.proxy.upstream is None:
            return self._refuse(client, 403, "Forbidden", line)
        try:
            upstream = socket.create_connection((self.proxy.upstream_host, self.proxy.upstream), timeout=30)
        except OSError as error:  # Azurite gone (or never ours): say why in `refused`
            return self._refuse(client, 502, "Bad Gateway", f"{line} ({error})")
        upstream.settimeout(None)
        client.settimeout(None)
        client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        self.proxy.count(host, "tunnels", 1)
        back = threading.Thread(target=self._pipe, args=(upstream, client, host, "down"), daemon=True)
        back.start()
        self._pipe(client, upstream, host, "up")
        back.join()
        upstream.close()

    def _read_head(self, client: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(4096)
            if not chunk or len(data) > HEAD_LIMIT:
                return None
            data += chunk
        return data

    def _refuse(self, client: socket.socket, status: int, reason: str, line: str) -> None:
        with self.proxy.lock:
            self.proxy.refused.append(line)
        client.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())

    def _pipe(self, src: socket.socket, dst: socket.socket, host: str, direction: str) -> None:
        """Relay one direction until its end closes, then half-close the other side."""
        try:
            while True:
                chunk = src.recv(1 << 16)
                if not chunk:
                    break
                dst.sendall(chunk)
                self.proxy.count(host, direction, len(chunk))
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
