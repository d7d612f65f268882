"""Azure-shaped latency and throttling in the fake control plane (tests/fakes/azureml_latency.py).

The bench (bench/bench_azure_scale.py) rests on three claims, each checked here against the real
fake: requests are counted by route family and wait at least their family's latency, and only
once turned on; an empty bucket answers 429 with Retry-After without doing the work; the tool's
AzureML source absorbs those 429s (azure-core and MLflow's client honour Retry-After) and reads
the same jobs. And the blob counter in front of Azurite passes reads, sizes and server-side copies
through unchanged while counting them.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import requests

from azurite import Azurite
from fakes import azureml_latency as latency
from fakes import azureml_seed as seed
from fakes.azureml_control_plane import FakeWorkspace, make_token
from test_azureml_source import fixture_histories, histories, source

SUB, RG, WS = "2f1e0c4d-0000-4000-8000-00000000c0de", "rg-ml", "ws-fraud"  # test_azureml_source's `source()` reads this workspace


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    base = tmp_path_factory.mktemp("latency")
    with seed.fixture_workspace(base, SUB, RG, WS) as (fake, ws, specs):
        try:
            with pytest.MonkeyPatch.context() as patch:
                for key, value in fake.environ().items():
                    patch.setenv(key, value)
                yield SimpleNamespace(fake=fake, ws=ws, specs=specs, base=base)
        finally:
            latency.turn_off(fake)


def get(fake, path: str) -> requests.Response:
    return requests.get(fake.url + path, headers={"Authorization": f"Bearer {make_token()}"}, verify=str(fake.ca_file), timeout=30)


def test_off_by_default_then_counted_and_delayed_by_family(azure):
    fake, ws = azure.fake, azure.ws
    assert get(fake, ws.scope + "?api-version=2024-10-01-preview").status_code == 200
    assert not any(k.startswith("family:") for k in fake.requests)  # off: nothing counted, nothing slowed
    latency.turn_on(fake, latency={"arm": (300, 300), "history": (150, 150)}, buckets={})
    try:
        started = time.monotonic()
        assert get(fake, ws.scope + "?api-version=2024-10-01-preview").status_code == 200
        arm = time.monotonic() - started
        started = time.monotonic()
        assert get(fake, f"/history/v1.0{ws.scope}/runs/eager_owl_04").status_code == 200
        history = time.monotonic() - started
    finally:
        latency.turn_off(fake)
    assert arm >= 0.3 and history >= 0.15, (arm, history)
    assert (fake.requests["family:arm"], fake.requests["family:history"]) == (1, 1)
    assert latency.family(f"/history/v1.0{ws.scope}/experiments/e/runs/r/artifacts/contentinfo") == "artifacts"
    assert latency.family(f"/mlflow/v2.0{ws.scope}/api/2.0/mlflow/runs/get") == "mlflow"


def test_an_empty_bucket_answers_429_with_retry_after(azure):
    fake, ws = azure.fake, azure.ws
    before = fake.requests["jobs_get"]
    latency.turn_on(fake, latency={}, buckets={"arm": (0.01, 2)})  # two at once, then one per 100 s
    try:
        answers = [get(fake, ws.scope + "/jobs/eager_owl_04?api-version=2024-01-01-preview") for _ in range(3)]
    finally:
        latency.turn_off(fake)
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert 90 <= int(answers[2].headers["Retry-After"]) <= 100, answers[2].headers
    assert answers[2].json()["error"]["code"] == "TooManyRequests"
    assert fake.requests["jobs_get"] - before == 2  # the throttled one was not carried out
    assert fake.requests["throttled:arm"] == 1


@pytest.mark.parametrize("scope, second_workspace", [("workspace", 200), ("shared", 429)])
def test_bucket_scope_a_workspace_each_or_one_for_all(azure, scope, second_workspace):
    """Under "workspace" a second workspace has a budget of its own; under "shared" it draws from the first's.
    ARM's bucket is the subscription's under either: two workspaces of one subscription share it."""
    fake, ws = azure.fake, azure.ws
    other = fake.add(FakeWorkspace(SUB, RG, "ws-other"))
    seed.install(other, *seed.build_specs())
    run = "/runs/eager_owl_04"
    before = dict(fake.requests)
    latency.turn_on(fake, latency={}, buckets={"history": (0.01, 1), "arm": (0.01, 1)}, scope=scope)  # one each, then one per 100 s
    try:
        history = [get(fake, f"/history/v1.0{w.scope}{run}").status_code for w in (ws, other, ws)]
        arm = [get(fake, w.scope + "?api-version=2024-10-01-preview").status_code for w in (ws, other)]
    finally:
        latency.turn_off(fake)
        del fake.workspaces[(SUB.lower(), RG.lower(), "ws-other")]
    assert history == [200, second_workspace, 429]
    assert arm == [200, 429]
    counted = {k: v - before.get(k, 0) for k, v in fake.requests.items() if k.startswith("ws") and v != before.get(k, 0)}
    expected = {f"ws:{WS} history": 1, f"ws_throttled:{WS} history": 1, f"ws:{WS} arm": 1, "ws_throttled:ws-other arm": 1}
    expected.update({"ws:ws-other history": 1} if second_workspace == 200 else {"ws_throttled:ws-other history": 1})
    assert counted == expected


def test_an_unknown_scope_is_refused(azure):
    with pytest.raises(ValueError, match="scope 'run'"):
        latency.turn_on(azure.fake, scope="run")
    assert "_azure_shape" not in azure.fake.__dict__


def test_the_source_absorbs_throttling_and_reads_the_same_jobs(azure):
    baseline = {j.source_id: j.to_json() for j in source().jobs()}
    # ARM sees few requests (workspace, jobs list, components): a bucket of one that refills in 2 s
    # throttles its second request whatever the machine's load; run history (children listed 8 at once)
    # holds two at 2/s, MLflow (hundreds of reads) three at 20/s.
    latency.turn_on(azure.fake, latency={}, buckets={"arm": (0.5, 1), "history": (2.0, 2), "mlflow": (20.0, 3)})
    try:
        src = source(parallel=8)
        jobs = list(src.jobs())
        got = histories(src, jobs)
    finally:
        latency.turn_off(azure.fake)
    throttled = {k: v for k, v in azure.fake.requests.items() if k.startswith("throttled:")}
    assert throttled.get("throttled:arm", 0) > 0 and throttled.get("throttled:history", 0) > 0 and throttled.get("throttled:mlflow", 0) > 0, throttled
    assert {j.source_id: j.to_json() for j in jobs} == baseline
    assert got == fixture_histories(azure.specs)


def test_blob_counter_passes_sizes_reads_and_copies_through(azure, tmp_path):
    from azure.storage.blob import BlobClient, BlobSasPermissions, generate_blob_sas
    from datetime import datetime, timedelta, timezone

    fake = azure.fake
    with Azurite(tmp_path / "azurite") as azurite:
        key = azurite.accounts["acct1"]
        azurite.service("acct1").create_container("cont")
        data = bytes(range(256)) * 300
        azurite.service("acct1").get_blob_client("cont", "a/source.bin").upload_blob(data)
        counter = latency.BlobCounter(azurite.endpoint, fake).start()
        latency.turn_on(fake, latency={}, buckets={})
        try:
            def via(name: str, **permission) -> str:
                sas = generate_blob_sas("acct1", "cont", name, account_key=key, permission=BlobSasPermissions(**permission),
                                        expiry=datetime.now(timezone.utc) + timedelta(hours=1))
                return f"{counter.account_url('acct1')}/cont/{name}?{sas}"

            source_blob = BlobClient.from_blob_url(via("a/source.bin", read=True))
            assert source_blob.get_blob_properties().size == len(data)
            assert source_blob.download_blob().readall() == data
            target = BlobClient.from_blob_url(via("b/copy.bin", create=True, write=True))
            copy = target.start_copy_from_url(via("a/source.bin", read=True))
            assert copy["copy_status"] == "success", copy
        finally:
            latency.turn_off(fake)
            counter.stop()
        assert azurite.service("acct1").get_blob_client("cont", "b/copy.bin").download_blob().readall() == data
    assert fake.requests["family:blob"] == 3  # properties, download, copy; not Azurite's own check of the copy source


def test_the_forward_to_mlflow_sends_again_on_a_connection_the_server_dropped(azure):
    """The fake's forward keeps a connection alive per thread; a backing server may drop it (its keep-alive
    timeout). Here a server answers once on a connection, then reads the next request on it and closes
    without an answer: the forward sends that request again on a new connection instead of failing."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def answer(conn, text: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))

    def serve() -> None:
        for n in range(2):
            conn, _ = listener.accept()
            connections.append(conn)
            conn.recv(65536)
            if n == 0:
                answer(conn, b"first")
                conn.recv(65536)  # the next request on the kept-alive connection: dropped unanswered
                conn.close()
            else:
                answer(conn, b"again")
                conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/api/2.0/mlflow/runs/get"
    try:
        assert azure.fake.forward("GET", url, timeout=10).text == "first"
        assert azure.fake.forward("GET", url, timeout=10).text == "again"
    finally:
        server.join(10)
        listener.close()
    assert len(connections) == 2
