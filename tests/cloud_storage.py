"""Cloud-style blob storage for tests: HTTPS Azurite (`--oauth basic`) behind tests/fakes/blob_proxy.py,
so real Azure URLs (https://ACCOUNT.blob.core.windows.net/container/path) work offline, for
azure-storage-blob, azure-ai-ml's datastore uploads, runner.files and subprocesses alike.

    storage = CloudStorage(folder, ca=None, accounts=None).start()   # or `with CloudStorage(...) as storage:`
    storage.accounts                  name -> base64 key (default acct1, acct2 of tests/azurite.py)
    storage.key(account)              an account key (for listSecrets, REPLAYER_STORAGE_KEYS, a key client)
    storage.endpoint(account)         https://ACCOUNT.blob.core.windows.net
    storage.url(account, container, prefix="")   a blob root URI for runner.files.stores.open_store
    storage.env                       HTTPS_PROXY, NO_PROXY (loopback bypasses the proxy: mlflow servers,
                                      the AzureML fake), REQUESTS_CA_BUNDLE, SSL_CERT_FILE: pass it to a
                                      subprocess, or `storage.apply(monkeypatch)` in this process
    storage.service(account, credential=None)    a BlobServiceClient on the production URL (key by default)
    storage.proxy                     the BlobProxy: `snapshot()` counts bytes through the tunnels
    storage.azurite                   the Azurite (its folder holds azurite.log)
    storage.stop()

    StorageCredential(tenant, oid)    an azure-core TokenCredential minting JWT-shaped tokens Azurite
                                      accepts (aud from the scope, iss https://sts.windows.net/TENANT/);
                                      the AzureML fake accepts them too (it checks `tid`)

Fixture: `cloud_storage` (module scope; import it into a test module: `from cloud_storage import
cloud_storage`) yields a started CloudStorage with `env` applied to os.environ for the module. To
trust the AzureML fake as well, build `CloudStorage(folder, ca=fake.ca)`: Azurite's certificate is then
issued by the fake's CA and `env`'s bundle trusts both.

Azurite 3.37 limits worth knowing: no Put Blob From URL (501 NotImplemented; runner.files then uses
Copy Blob), and Copy Blob with a SAS source is checked by a request Azurite makes to the source URL
itself, allowed only when the source's host equals the destination request's Host: with production
URLs that means the same account (two containers), never two accounts (CannotVerifyCopySource).
Azurite's own check goes through the proxy too (HTTPS_PROXY and NODE_EXTRA_CA_CERTS in its env).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from azurite import ACCOUNTS, Azurite  # noqa: E402
from fakes.azureml_control_plane import TENANT, b64url  # noqa: E402
from fakes.blob_proxy import BlobProxy  # noqa: E402

BLOB_SUFFIX = "blob.core.windows.net"
NO_PROXY = "127.0.0.1,localhost"


class StorageCredential:
    """JWT-shaped tokens for any scope: aud = the scope without /.default, iss = the tenant's STS."""

    def __init__(self, tenant: str = TENANT, oid: str = "11059fcc-5514-4800-b5f8-49808b9cfab6"):
        self.tenant, self.oid = tenant, oid
        self.calls = 0

    def get_token(self, *scopes: str, claims=None, tenant_id=None, enable_cae=False, **kwargs):
        from azure.core.credentials import AccessToken

        self.calls += 1
        tenant = tenant_id or self.tenant
        now = int(time.time())
        audience = (scopes[0] if scopes else "https://storage.azure.com/.default").removesuffix("/.default")
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "fake"}).encode())
        payload = b64url(json.dumps({
            "aud": audience, "iss": f"https://sts.windows.net/{tenant}/", "tid": tenant, "oid": self.oid,
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "upn": "ada@contoso.test",
        }).encode())
        return AccessToken(f"{header}.{payload}.{b64url(b'not-a-signature')}", now + 3600)

    def close(self) -> None:
        pass


class CloudStorage:
    def __init__(self, folder: Path, ca=None, accounts: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.accounts = dict(accounts or ACCOUNTS)
        self.proxy = BlobProxy()
        # Azurite checks a copy's SAS source by requesting it itself: through this proxy, trusting this CA.
        self.azurite = Azurite(self.folder / "azurite", self.accounts, https=True, oauth=True, ca=ca, env={
            "HTTPS_PROXY": self.proxy.url, "https_proxy": self.proxy.url, "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY,
        })
        self.azurite.env["NODE_EXTRA_CA_CERTS"] = str(self.azurite.ca_file)
        self.ca_file = self.azurite.ca_file
        self.env = {
            "HTTPS_PROXY": self.proxy.url, "https_proxy": self.proxy.url, "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY,
            "REQUESTS_CA_BUNDLE": str(self.ca_file), "SSL_CERT_FILE": str(self.ca_file),
        }

    def start(self) -> "CloudStorage":
        self.proxy.start()
        try:
            self.azurite.start()
        except Exception:
            self.proxy.stop()
            raise
        self.proxy.upstream = self.azurite.port
        return self

    def stop(self) -> None:
        self.azurite.stop()
        self.proxy.stop()

    def __enter__(self) -> "CloudStorage":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def key(self, account: str) -> str:
        return self.accounts[account]

    def endpoint(self, account: str) -> str:
        return f"https://{account}.{BLOB_SUFFIX}"

    def url(self, account: str, container: str, prefix: str = "") -> str:
        return f"{self.endpoint(account)}/{container}" + (f"/{prefix}" if prefix else "")

    def keys_env(self) -> dict[str, str]:
        """REPLAYER_STORAGE_KEYS for the replayer CLI (account-key SAS instead of the credential)."""
        return {"REPLAYER_STORAGE_KEYS": ";".join(f"{name}:{key}" for name, key in self.accounts.items())}

    def apply(self, monkeypatch) -> None:
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    def service(self, account: str, credential=None):
        """A BlobServiceClient on the production URL; needs `env` applied (the proxy, the CA)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.endpoint(account), credential=credential or {"account_name": account, "account_key": self.key(account)},
                                 connection_verify=str(self.ca_file))


def md5s_under(container, prefix: str) -> dict[str, str]:
    """name below `prefix` -> md5 hex of the bytes each blob holds (read back, not its Content-MD5)."""
    return {blob.name[len(prefix):]: hashlib.md5(container.get_blob_client(blob.name).download_blob().readall()).hexdigest()
            for blob in container.list_blobs(name_starts_with=prefix)}


@pytest.fixture(scope="module")
def cloud_storage(tmp_path_factory):
    storage = CloudStorage(tmp_path_factory.mktemp("cloud-storage")).start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            storage.apply(patch)
            yield storage
    finally:
        storage.stop()
