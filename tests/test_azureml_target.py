"""Direct migration into an `azureml://` MLflow target, with azureml-mlflow doing the talking.

The target workspace is the HTTPS fake of the control plane (tests/fakes/), whose MLflow routes are
a real `mlflow server` and whose MLflow answers name AzureML's artifact URIs
(`azureml://HOST/mlflow/v2.0/<workspace>/experiments/ID/runs/RUN/artifacts`): files then go through
azureml-mlflow's artifact repository, run history's artifact routes and SAS URLs on
https://ACCOUNT.blob.core.windows.net (HTTPS Azurite behind the CONNECT proxy), as on Azure.

What must hold (runner/azureml/auth.py):
- MLflow and artifact calls authenticate with `--credential` (and `--client-id`), through one cached
  token: the Azure CLI runs once or twice per scope, not once per request;
- artifacts (nested folders, unicode and spaces, an empty file) land in the workspace's artifact
  store byte for byte and `verify` reads them back equal;
- nothing opens MLflow's default store: no `mlflow.db` appears in the working directory;
- inside an Azure ML job the job's own workspace keeps azureml-mlflow's token (MLFLOW_TRACKING_TOKEN).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from cloud_storage import CloudStorage
from conftest import kept_mlflow_globals, replayed_runs, run_cli
from fakes import azureml_artifacts
from fakes.azureml_control_plane import HISTORY_ROUTES, MLFLOW_ROUTES, TENANT, FakeControlPlane, FakeWorkspace, b64url, token_claims, write_fake_az
from servers import MlflowServer

SUB, RG, WS = "5b0c7d1e-0000-4000-8000-0000000a2717", "rg-target", "ws-target"
CLIENT_ID = "7d9c1b3e-1111-4222-8333-0000000c11e7"
FILES = {
    "model/weights.bin": bytes(range(256)) * 1200,
    "deep/a/b/c/notes.txt": b"nested four levels\n",
    "donn\u00e9es/\u00fc \u00f1 \u2713.txt": "unicode and spaces \u2713\n".encode(),
    "empty.txt": b"",
}


def jwt(claims: dict) -> str:
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "fake"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}.{b64url(b'not-a-signature')}"


class TokenEndpoint:
    """Azure ML compute's managed identity endpoint (MSI_ENDPOINT + MSI_SECRET, what azure-identity's
    ManagedIdentityCredential asks there): tokens whose `appid` is the client id asked for, else the
    compute's system-assigned identity."""

    SECRET = "msi-secret"

    def __init__(self):
        self.calls: Counter = Counter()  # (clientid or "", resource) -> count
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                if self.headers.get("secret") != TokenEndpoint.SECRET:
                    return self._answer(401, {"error": "invalid secret"})
                client = query.get("clientid", "")
                endpoint.calls[(client, query.get("resource", ""))] += 1
                now = int(time.time())
                token = jwt({"aud": query.get("resource"), "tid": TENANT, "oid": f"oid-{client or 'system'}",
                             "appid": client or "system-assigned", "iat": now, "nbf": now, "exp": now + 3600})
                self._answer(200, {"access_token": token, "expires_on": str(now + 3600), "resource": query.get("resource"), "token_type": "Bearer"})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/msi/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def counting_az(folder: Path, fail: bool = False) -> tuple[Path, Path]:
    """The fake `az` behind a wrapper that logs each call's arguments: (folder for PATH, the log)."""
    real = write_fake_az(folder / "real", sys.executable, fail=fail)
    log = folder / "az-calls.log"
    wrapper = folder / "bin" / "az"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real / "az"}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper.parent, log


def az_calls(log: Path) -> Counter:
    """Calls per requested resource/scope."""
    calls: Counter = Counter()
    for line in (log.read_text().splitlines() if log.exists() else []):
        args = line.split()
        for flag in ("--resource", "--scope"):
            if flag in args:
                calls[args[args.index(flag) + 1]] += 1
    return calls


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """An empty workspace in the fake whose runs' files live in run history's artifact store."""
    base = tmp_path_factory.mktemp("azureml-target")
    backing = MlflowServer(base / "mlflow").start()
    fake = FakeControlPlane(base / "fake", backing.uri).start()
    storage = CloudStorage(base / "storage", ca=fake.ca)
    callers: Counter = Counter()  # (area, appid or oid) of every authorized MLflow and run history request

    def record(area):
        def route(handler, *args) -> bool:
            claims = token_claims(handler.headers.get("Authorization", "").removeprefix("Bearer ")) or {}
            callers[(area, claims.get("appid") or claims.get("oid"))] += 1
            return False  # only watching: the request goes on

        return route

    watchers = [(MLFLOW_ROUTES, record("mlflow")), (HISTORY_ROUTES, record("history"))]
    ws = fake.add(FakeWorkspace(SUB, RG, WS))
    try:
        storage.start()
        store = azureml_artifacts.attach(ws, storage, "acct1")
        azureml_artifacts.serve_run_artifacts(ws)
        for routes, watcher in watchers:
            routes.insert(0, watcher)
        env = {**fake.environ(), **storage.env, "AZUREML_LOG_LEVEL": "ERROR"}
        uri = f"azureml://127.0.0.1:{fake.port}/mlflow/v2.0{ws.scope}"
        yield SimpleNamespace(fake=fake, ws=ws, store=store, backing=backing, env=env, uri=uri, callers=callers)
    finally:
        for routes, watcher in watchers:
            if watcher in routes:
                routes.remove(watcher)
        azureml_artifacts.STORES.pop(ws.scope, None)
        storage.stop()
        fake.stop()
        backing.stop()


def seed(uri: str, experiment: str, scratch: Path, roots: int = 2) -> int:
    """Roots with one child each; every run holds FILES, params and a metric curve."""
    client = MlflowClient(uri)
    exp = client.create_experiment(experiment)
    folder = scratch / "files"
    for path, data in FILES.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    count = 0
    for r in range(roots):
        root = client.create_run(exp, start_time=1_700_000_000_000 + r, run_name=f"root-{r}").info.run_id
        child = client.create_run(exp, run_name=f"child-{r}", tags={"mlflow.parentRunId": root}).info.run_id
        for run in (root, child):
            client.log_batch(run, params=[Param("r", str(r))], metrics=[Metric("loss", 1 / (1 + i), 1_700_000_000_000 + i, i) for i in range(20)])
            client.log_artifacts(run, str(folder))
            client.set_terminated(run, "FINISHED")
            count += 1
    return count


def test_migration_into_azureml_uses_our_cached_cli_token_and_writes_artifacts_through_run_history(servers, target, unique, tmp_path):
    source = servers[0]
    experiment, workspace = f"azt-{unique}", f"ws-{unique}"
    total = seed(source.uri, experiment, tmp_path)
    az_path, az_log = counting_az(tmp_path / "az")
    env = {**target.env, "PATH": f"{az_path}{os.pathsep}{os.environ['PATH']}"}
    args = ["--source", source.uri, "--target", target.uri, "--experiments", experiment, "--workspace", workspace, "--credential", "cli"]
    before = Counter(target.fake.requests)
    result = run_cli("migrate", *args, "--parallel", "4", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"created {total}," in result.stderr
    made = Counter(target.fake.requests)
    made.subtract(before)
    calls = az_calls(az_log)
    # One token per scope for the whole process (CachedCredential), not one `az` per request.
    # (azureml-mlflow's own chain ran it once per request: 38 times for these 22 MLflow and 16 upload requests)
    assert calls and all(n <= 2 for n in calls.values()), calls
    assert made["mlflow"] + made["artifact_create"] > 15 * sum(calls.values()) and made["artifact_create"] >= total, (calls, made)

    found = replayed_runs(target.backing.uri, workspace)
    assert len(found) == total
    for run_id in found.values():
        prefix = target.store.prefix(run_id)
        blobs = {b.name[len(prefix):]: b for b in target.store.client().list_blobs(name_starts_with=prefix)}
        assert set(blobs) == set(FILES), sorted(blobs)
        for path, data in FILES.items():
            assert target.store.client().download_blob(prefix + path).readall() == data, path
        info = MlflowClient(target.backing.uri).get_run(run_id).info
        assert info.status == "FINISHED"

    check = run_cli("verify", "--source", source.uri, "--target", target.uri, "--experiments", experiment, "--workspace", workspace,
                    "--credential", "cli", cwd=tmp_path, env=env)
    assert check.returncode == 0 and f"{total} runs compared, {total} equal" in check.stdout, check.stdout[-3000:] + check.stderr[-2000:]
    assert all(n <= 4 for n in az_calls(az_log).values()), az_calls(az_log)  # two processes now
    assert not (tmp_path / "mlflow.db").exists(), "MLflow's default store was opened"
    assert not any(p.name == "mlflow.db" for p in tmp_path.iterdir())

    rerun = run_cli("migrate", *args, cwd=tmp_path, env=env)
    assert rerun.returncode == 0 and f"skipped {total}" in rerun.stderr, rerun.stderr[-3000:]

    # A run cut short after its files (no completion tag) is repaired: its files are read through
    # run history (size and MD5 from each blob), found equal, and not registered again (Azure ML
    # refuses a second upload of a path).
    cut = next(iter(found.values()))
    MlflowClient(target.backing.uri).delete_tag(cut, "replay.complete")
    registered = target.fake.requests["artifact_create"]
    repair = run_cli("migrate", *args, cwd=tmp_path, env=env)
    assert repair.returncode == 0 and f"repaired 1, skipped {total - 1}" in repair.stderr, repair.stderr[-3000:]
    assert target.fake.requests["artifact_create"] == registered and f"{len(FILES)} already there" in repair.stderr
    check = run_cli("verify", "--source", source.uri, "--target", target.uri, "--experiments", experiment, "--workspace", workspace,
                    "--credential", "cli", cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]


def test_client_id_reaches_every_mlflow_and_artifact_call(servers, target, unique, tmp_path):
    """`--credential managed --client-id X` on Azure ML compute (its MSI endpoint): every MLflow and run
    history request carries the token of identity X, asked for once per scope; never the compute's
    system-assigned identity, which azureml-mlflow's own credential chain would pick."""
    source = servers[0]
    experiment, workspace = f"azt-mi-{unique}", f"ws-mi-{unique}"
    total = seed(source.uri, experiment, tmp_path, roots=1)
    endpoint = TokenEndpoint()
    target.callers.clear()
    try:
        env = {**target.env, "MSI_ENDPOINT": endpoint.url, "MSI_SECRET": TokenEndpoint.SECRET}
        env.pop("AZURE_CLIENT_ID", None)
        result = run_cli("migrate", "--source", source.uri, "--target", target.uri, "--experiments", experiment, "--workspace", workspace,
                         "--credential", "managed", "--client-id", CLIENT_ID, cwd=tmp_path, env=env)
    finally:
        endpoint.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(replayed_runs(target.backing.uri, workspace)) == total
    identities = {who for (_, who) in target.callers}
    assert identities == {CLIENT_ID}, target.callers
    assert target.callers[("mlflow", CLIENT_ID)] > 10 and target.callers[("history", CLIENT_ID)] >= total, target.callers
    assert set(endpoint.calls) == {(CLIENT_ID, "https://management.azure.com")} and sum(endpoint.calls.values()) <= 2, endpoint.calls


def test_inside_an_azureml_job_its_own_workspace_keeps_the_job_token(target, unique, tmp_path):
    """MLFLOW_TRACKING_URI/TOKEN/RUN_ID as Azure ML sets them: `replayer step` writes into the job's run
    with the job's token (azureml-mlflow's own path), even with a credential that cannot sign in."""
    from runner.core.filters import Filters
    from runner.engine.manifest import ManifestWriter
    from runner.core.records import Experiment, JobRecord, MetricPoint

    experiment = f"azt-job-{unique}"
    manifest = tmp_path / "manifest"
    writer = ManifestWriter(manifest)
    writer.add_experiment(Experiment(experiment))
    job = JobRecord(source_id="train-1", experiment=experiment, name="train", kind="command", status="FINISHED",
                    start_time=1_700_000_000_000, end_time=1_700_000_360_000, parent_id=None, root_id="train-1", depth=0,
                    params={"lr": "0.1"}, latest_metrics={"loss": 0.5})
    writer.add_job(job)
    writer.write_metrics(job, [MetricPoint("loss", 1 / (1 + s), 1_700_000_000_000 + s, s) for s in range(30)])
    writer.write_artifacts(job, [])
    writer.close({"kind": "test", "workspace": "ws-source"}, Filters())

    backing = MlflowClient(target.backing.uri)
    own = backing.create_run(backing.create_experiment(experiment)).info
    now = int(time.time())
    job_token = jwt({"aud": "https://management.azure.com", "tid": TENANT, "oid": "job-token", "iat": now, "nbf": now, "exp": now + 3600})
    az_path, az_log = counting_az(tmp_path / "az", fail=True)
    env = {**target.env, "PATH": f"{az_path}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": target.uri,
           "MLFLOW_TRACKING_TOKEN": job_token, "MLFLOW_RUN_ID": own.run_id, "MLFLOW_EXPERIMENT_ID": own.experiment_id}
    target.callers.clear()
    result = run_cli("step", "--manifest", str(manifest), "--job-id", "train-1", "--credential", "cli", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # The same workspace named with --target (runner.mlflow.uris opens it, runner.azureml.auth leaves it alone).
    other = backing.create_run(own.experiment_id).info.run_id
    named = run_cli("step", "--manifest", str(manifest), "--job-id", "train-1", "--target", target.uri, "--run-id", other,
                    "--credential", "cli", cwd=tmp_path, env=env)
    assert named.returncode == 0, named.stderr[-3000:]
    for run_id in (own.run_id, other):
        assert backing.get_run(run_id).data.params == {"lr": "0.1"} and len(backing.get_metric_history(run_id, "loss")) == 30
    assert {who for (_, who) in target.callers} == {"job-token"} and target.callers[("mlflow", "job-token")] > 4, target.callers
    assert not az_log.exists(), "the job's own workspace must not ask our credential"


def test_an_artifact_uri_of_a_workspace_never_opened_fails_clearly_without_a_default_store(tmp_path):
    """No global tracking URI, no registered workspace: one clear error, and MLflow's default
    `./mlflow.db` is never created (azureml-mlflow alone would open `MlflowClient()`)."""
    code = (
        "from runner.azureml import auth\n"
        "auth.use_credential('azureml://h.example/mlflow/v2.0/subscriptions/s/resourceGroups/r/providers/"
        "Microsoft.MachineLearningServices/workspaces/opened', credential=object())\n"
        "from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository\n"
        "try:\n"
        "    get_artifact_repository('azureml://h.example/mlflow/v2.0/subscriptions/s/resourceGroups/r/providers/"
        "Microsoft.MachineLearningServices/workspaces/other/experiments/1/runs/abc/artifacts')\n"
        "except Exception as error:\n"
        "    print('ERROR', error)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert "ERROR" in done.stdout and "workspace other" in done.stdout and "has not opened" in done.stdout, done.stdout + done.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()


def test_a_credential_that_cannot_sign_in_is_one_line_and_nothing_is_written(servers, target, unique, tmp_path):
    source = servers[0]
    experiment = f"azt-nologin-{unique}"
    seed(source.uri, experiment, tmp_path, roots=1)
    az_path, _ = counting_az(tmp_path / "az", fail=True)
    env = {**target.env, "PATH": f"{az_path}{os.pathsep}{os.environ['PATH']}"}
    result = run_cli("migrate", "--source", source.uri, "--target", target.uri, "--experiments", experiment, "--workspace", f"ws-{unique}",
                     "--credential", "cli", cwd=tmp_path, env=env)
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert f"credential 'cli' for the MLflow endpoint of workspace {WS}" in errors[0] and "az login" in errors[0], errors
    assert MlflowClient(target.backing.uri).get_experiment_by_name(experiment) is None


def test_changed_azureml_mlflow_internals_stop_the_cli_with_one_line(servers, target, tmp_path):
    """If azureml-mlflow no longer has the lookup runner.azureml.auth replaces, the command stops before
    any request with one line naming the package and the supported version (exit 2)."""
    code = (
        "import sys\n"
        "import azureml.mlflow._store.artifact.utils as utils\n"
        "del utils.get_service_context\n"
        "from runner.cli import main\n"
        f"sys.argv = ['replayer', 'migrate', '--source', {servers[0].uri!r}, '--target', {target.uri!r}]\n"
        "main()\n"
    )
    env = {**os.environ, **target.env, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "REPLAYER_LOG_DIR": str(tmp_path / "logs")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "azureml-mlflow" in errors[0] and "changed its internals" in errors[0] and "1.62" in errors[0], errors


def test_a_workspace_uri_or_config_json_works_as_a_target(servers, target, unique, tmp_path):
    """`--target azureml://subscriptions/S/resourcegroups/R/workspaces/W` (the form --source and
    submit take) and the workspace's config.json reach its MLflow endpoint, like its tracking URI."""
    source = servers[0]
    experiment = f"azws-{unique}"
    total = seed(source.uri, experiment, tmp_path)
    az_path, _ = counting_az(tmp_path / "az")
    env = {**target.env, "PATH": f"{az_path}{os.pathsep}{os.environ['PATH']}"}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": SUB, "resource_group": RG, "workspace_name": WS}))
    for spelled, workspace in ((f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}", f"ws-{unique}"),
                               (str(config), f"cfg-{unique}")):
        args = ["--source", source.uri, "--target", spelled, "--experiments", experiment, "--workspace", workspace, "--credential", "cli"]
        done = run_cli("migrate", *args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(replayed_runs(target.backing.uri, workspace)) == total
        again = run_cli("verify", *args, cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]


def test_a_write_in_blocks_through_run_history_never_reads_through_the_write_sas(target, unique, monkeypatch):
    """Run history's upload SAS is known to create and write, nothing more (the fake's grants exactly
    that, and Azurite enforces it): a file streamed in several blocks is staged and committed through
    it without reading its block list back, and lands whole with its MD5."""
    import contextlib
    import dataclasses
    import hashlib
    import io

    from azure.ai.ml._restclient.runhistory import RunHistoryClient
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobClient

    from fakes.azureml_control_plane import FakeCredential
    from runner.azureml.credentials import management_scope
    from runner.azureml.run_history import RunHistory, RunHistoryStore
    from runner.files.options import ArtifactOptions

    for key, value in target.env.items():
        monkeypatch.setenv(key, value)
    run = f"blocks-{unique}"
    azureml_artifacts.mlflow_runs(target.ws).add(run)  # a run the workspace knows
    client = RunHistoryClient(FakeCredential(), base_url=target.fake.url, credential_scopes=[management_scope()])
    history = RunHistory(lambda: client, SUB, RG, WS, lambda doing: contextlib.nullcontext())  # errors as they are
    store = RunHistoryStore(history, "exp", run, f"{target.uri}/experiments/exp/runs/{run}/artifacts")

    # The SAS itself: it writes, and a read through it is refused (else this test proves nothing).
    probe = BlobClient.from_blob_url(history.upload_uri("exp", run, "probe.txt"))
    probe.upload_blob(b"probe")
    with pytest.raises(HttpResponseError) as refused:
        probe.get_blob_properties()
    assert refused.value.status_code == 403

    data = bytes(range(256)) * 1000  # 256,000 bytes: four 64 KiB blocks
    options = dataclasses.replace(ArtifactOptions(), block_size=64 * 1024)
    written = store.write("model/big.bin", io.BytesIO(data), len(data), options, lambda n: None)
    assert (written.size, written.md5, written.blocks_reused) == (len(data), hashlib.md5(data).hexdigest(), 0)
    blob = target.store.client().get_blob_client(target.store.prefix(run) + "model/big.bin")
    assert blob.download_blob().readall() == data
    assert len(blob.get_block_list("committed")[0]) == 4
    assert blob.get_blob_properties().content_settings.content_md5.hex() == hashlib.md5(data).hexdigest()



def test_mlflow3_history_into_azureml_as_the_service_answers_today(servers, target, unique, tmp_path):
    """Azure ML's MLflow endpoint refuses logged-model creation (an empty 404) and the trace routes
    (403 to the token that writes the runs), as users reported of the real service
    (tests/fakes/azureml_registry.py). The runs still come over whole; the logged model and the
    traces are said, once each, to be left out, not failed and not taken for a refused login; verify
    names them, and leaves them out when told to."""
    from fakes.azureml_registry import refuse
    from test_mlflow3_traces import seed as seed_traces

    source, _ = servers
    name = f"aml-mlflow3-{unique}"
    before = os.environ.get("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING")
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # seeded traces are written when seed returns
    try:
        with kept_mlflow_globals():  # seeding through the fluent API must not leave MLFLOW_TRACKING_URI set
            ids = seed_traces(source.uri, name)
    finally:
        os.environ.pop("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING") if before is None else os.environ.update(MLFLOW_ENABLE_ASYNC_TRACE_LOGGING=before)
    az_path, _ = counting_az(tmp_path / "az")
    env = {**target.env, "PATH": f"{az_path}{os.pathsep}{os.environ['PATH']}"}
    refuse(target.ws, "logged-model-create", "traces")
    try:
        args = ["--source", source.uri, "--target", target.uri, "--experiments", name, "--workspace", f"ws-{name}", "--credential", "cli"]
        result = run_cli("migrate", *args, cwd=tmp_path, env=env)
        check = run_cli("verify", *args, cwd=tmp_path, env=env)
        left_out = run_cli("verify", *args, "--skip-traces", "--skip-logged-models", cwd=tmp_path, env=env)
    finally:
        target.ws.mlflow_refused = set()
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("has no trace API") == 1, result.stderr[-3000:]
    assert result.stderr.count("has no logged-model API") == 1, result.stderr[-3000:]
    assert "3 traces" in result.stderr and "refused our credentials" not in result.stderr
    assert result.stderr.count("Azure ML's MLflow endpoint does not implement them") == 2
    assert target.fake.requests["mlflow_refused_traces"] >= 1 and target.fake.requests["mlflow_refused_logged-model-create"] >= 1
    copies = replayed_runs(target.backing.uri, f"ws-{name}")
    assert set(copies) == {ids["run"], ids["judge"]}
    assert all("replay.complete" in MlflowClient(target.backing.uri).get_run(run_id).data.tags for run_id in copies.values())
    assert check.returncode == 1 and "the target has no trace API" in check.stdout, check.stdout[-3000:]
    assert left_out.returncode == 0, left_out.stdout[-3000:] + left_out.stderr[-2000:]
