"""A real Azurite blob service (npm `azurite`, pinned in package.json) with two accounts, for the
artifact-copy tests and `make bench`. Installed by `make node_modules/.bin/azurite-blob`."""
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
from pathlib import Path

from servers import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
# Test-only keys (base64, as Azure keys are); never a real account's.
ACCOUNTS = {
    "acct1": base64.b64encode(b"replayer-test-key-one-0123456789").decode(),
    "acct2": base64.b64encode(b"replayer-test-key-two-0123456789").decode(),
}


class Azurite:
    """`azurite-blob` on a free loopback port, storing under `folder`, accounts acct1 and acct2."""

    def __init__(self, folder: Path, accounts: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.accounts = dict(accounts or ACCOUNTS)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def url(self, account: str, container: str, prefix: str = "") -> str:
        """A path-style root URI for `runner.artifacts.open_store`."""
        return f"{self.endpoint}/{account}/{container}" + (f"/{prefix}" if prefix else "")

    def auth(self):
        from runner.artifacts import BlobAuth

        return BlobAuth(keys=dict(self.accounts))

    def service(self, account: str):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(f"{self.endpoint}/{account}", credential={"account_name": account, "account_key": self.accounts[account]})

    def start(self, timeout: float = 60) -> "Azurite":
        if not AZURITE.exists():
            raise RuntimeError(f"{AZURITE} is missing: run `make node_modules/.bin/azurite-blob` (npm ci) first")
        log = open(self.folder / "azurite.log", "wb")
        env = {**os.environ, "AZURITE_ACCOUNTS": ";".join(f"{name}:{key}" for name, key in self.accounts.items())}
        self.process = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.folder / "data"),
             "--skipApiVersionCheck", "--loose", "--silent"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        wait_ready(self, self.folder / "azurite.log", self.listening, f"azurite on {self.endpoint}", timeout)
        return self

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # Azurite closes on Ctrl-C, not on SIGTERM
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
