"""A real Azurite blob service (npm `azurite`, pinned in package.json), for the artifact-copy tests,
`make bench` and the cloud-style storage of tests/cloud_storage.py. Installed by
`make node_modules/.bin/azurite-blob`.

    Azurite(folder)                      plain HTTP, path-style URLs (`url(account, container)` =
                                         http://127.0.0.1:PORT/account/container), accounts acct1, acct2
    Azurite(folder, https=True)          HTTPS with a trustme certificate for 127.0.0.1, localhost and
                                         *.blob.core.windows.net; trust `ca_file` (REQUESTS_CA_BUNDLE /
                                         SSL_CERT_FILE). `ca=` issues it from a CA you already trust
                                         (e.g. the AzureML fake's `fake.ca`), so one bundle trusts both.
    Azurite(..., https=True, oauth=True) also `--oauth basic`: bearer tokens are accepted (and Get User
                                         Delegation Key works). Azurite checks only that the token is a
                                         JWT with iat/nbf/exp (now inside nbf..exp), an `iss` starting
                                         https://sts.windows.net/ (or another cloud's STS) and an `aud` of
                                         https://storage.azure.com, e406a681-f3d4-42a8-90b6-c2b029497af1 or
                                         https://ACCOUNT.blob.core.windows.net; never the signature.
    env={...}                            extra environment for the Azurite process (its copy-source
                                         checks are HTTP requests it makes itself: a proxy, a CA).

`accounts` maps name -> base64 key (AZURITE_ACCOUNTS). `service(account)` is a key-authenticated
BlobServiceClient on the path-style endpoint. Azurite takes the account from the Host header when it
is a name with a dot (acct1.blob.core.windows.net), else from the first path segment.
"""
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
from pathlib import Path

from servers import free_port, stop_group, wait_ready

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
# Test-only keys (base64, as Azure keys are); never a real account's.
ACCOUNTS = {
    "acct1": base64.b64encode(b"replayer-test-key-one-0123456789").decode(),
    "acct2": base64.b64encode(b"replayer-test-key-two-0123456789").decode(),
}
CERT_NAMES = ("127.0.0.1", "localhost", "*.blob.core.windows.net")


class Azurite:
    """`azurite-blob` on a free loopback port, storing under `folder`, accounts acct1 and acct2."""

    def __init__(self, folder: Path, accounts: dict[str, str] | None = None, *, https: bool = False, oauth: bool = False,
                 ca=None, env: dict[str, str] | None = None):
        if oauth and not https:
            raise ValueError("Azurite accepts bearer tokens over HTTPS only: give https=True with oauth=True")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.accounts = dict(accounts or ACCOUNTS)
        self.https, self.oauth = https, oauth
        self.env = dict(env or {})
        self.port = free_port()
        self.endpoint = f"{'https' if https else 'http'}://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.ca = self.ca_file = self.cert_file = self.key_file = None
        if https:
            self._certificate(ca)

    def _certificate(self, ca) -> None:
        import trustme

        self.ca = ca or trustme.CA()
        cert = self.ca.issue_cert(*CERT_NAMES)
        self.ca_file, self.cert_file, self.key_file = (self.folder / n for n in ("azurite-ca.pem", "azurite-cert.pem", "azurite-key.pem"))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        with open(self.cert_file, "wb") as out:  # leaf first, then the chain
            for blob in cert.cert_chain_pems:
                out.write(blob.bytes())

    def url(self, account: str, container: str, prefix: str = "") -> str:
        """A path-style root URI for `runner.files.stores.open_store`."""
        return f"{self.endpoint}/{account}/{container}" + (f"/{prefix}" if prefix else "")

    def auth(self):
        from runner.azureml.blob import BlobAuth

        return BlobAuth(keys=dict(self.accounts))

    def service(self, account: str):
        from azure.storage.blob import BlobServiceClient

        verify = {"connection_verify": str(self.ca_file)} if self.https else {}
        return BlobServiceClient(f"{self.endpoint}/{account}", credential={"account_name": account, "account_key": self.accounts[account]}, **verify)

    def start(self, timeout: float = 60) -> "Azurite":
        if not AZURITE.exists():
            raise RuntimeError(f"{AZURITE} is missing: run `make node_modules/.bin/azurite-blob` (npm ci) first")
        log = open(self.folder / "azurite.log", "wb")
        env = {**os.environ, **self.env, "AZURITE_ACCOUNTS": ";".join(f"{name}:{key}" for name, key in self.accounts.items())}
        args = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.folder / "data"),
                "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]  # no calls home (offline anyway)
        if self.https:
            args += ["--cert", str(self.cert_file), "--key", str(self.key_file)]
        if self.oauth:
            args += ["--oauth", "basic"]
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_ready(self, self.folder / "azurite.log", self.listening, f"azurite on {self.endpoint}", timeout)
        return self

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_group(self.process, signal.SIGINT, 5)  # Azurite closes on Ctrl-C, not on SIGTERM

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
