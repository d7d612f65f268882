"""Direct migration from one Azure ML workspace into another: run files go blob to blob.

Both workspaces live in the HTTPS fake of the control plane (tests/fakes/): the source holds the
seeded jobs (tests/fakes/azureml_seed.py) and their files in its run history artifact store; the
target's MLflow routes are a second, empty `mlflow server`, and its runs' files live in run
history too (`azureml://.../runs/R/artifacts` roots). The tool lists the source files through run
history, registers each path in the target run (batch/metadata, which answers a write SAS) and
has the target blob pull the bytes from the source blob's read SAS (runner/azureml/run_history.py).

- Both workspaces' containers on one storage account (plain Azurite): every file is copied
  server-side; no byte goes through the tool.
- Two accounts on HTTPS Azurite behind the CONNECT proxy (https://ACCOUNT.blob.core.windows.net):
  Azurite refuses a copy source on another host, so the files stream through the tool, in blocks,
  into the same write SAS; a path registered by an interrupted attempt (its blob missing) is written
  straight to its blob with the credential on the rerun.
Either way: files byte-identical under the new runs, `verify` clean, a rerun copies nothing.
"""
from __future__ import annotations

import json
import os
import sys
import re
from collections import Counter
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from azurite import Azurite
from cloud_storage import CloudStorage
from conftest import replayed_runs, run_cli, run_killed_after
from fakes import azureml_artifacts, azureml_latency
from fakes.azureml_latency import BlobCounter, blob_route as plain_blob_route, family, route, turn_off, turn_on
from fakes import azureml_seed as seed
from fakes.azureml_control_plane import REQUEST_HOOKS, FakeControlPlane, FakeWorkspace, write_fake_az
from servers import MlflowServer, start_all

SUB, RG = "3c6a0b1e-0000-4000-8000-00000000a2a2", "rg-move"
EXPERIMENTS = "fraud-baseline,fraud-pipelines"  # the experiments whose jobs hold files
BIG = ("bright_kiwi_01", "outputs/big/checkpoint.bin", 9 << 20)  # staged in 1 MiB blocks: no Content-MD5


def big_bytes() -> bytes:
    return bytes((i * 7919) % 251 for i in range(1 << 16)) * (BIG[2] >> 16)


@pytest.fixture(scope="module")
def move(tmp_path_factory):
    base = tmp_path_factory.mktemp("ws-to-ws")
    specs, builders = seed.build_specs()
    seed.seed_mlflow(base / "source-mlflow", specs)
    source_mlflow, target_mlflow = start_all(MlflowServer(base / "source-mlflow"), MlflowServer(base / "target-mlflow"))
    fake = FakeControlPlane(base / "fake", source_mlflow.uri).start()
    azurite = Azurite(base / "azurite")
    storage = CloudStorage(base / "storage", ca=fake.ca)
    pairs = {}
    counter = None
    try:
        azurite.start()
        storage.start()
        counter = BlobCounter(azurite.endpoint, fake).start()  # counts the blob requests of the same-account pair
        for name, where, accounts in (("same", azurite, ("acct1", "acct1")), ("cross", storage, ("acct1", "acct2"))):
            src = fake.add(FakeWorkspace(SUB, RG, f"ws-{name}-src"))
            seed.install(src, specs, builders)
            src_store = azureml_artifacts.attach(src, where, accounts[0], container=f"{name}-src")
            seed.upload_files(src_store, specs)
            upload_in_blocks(src_store, src_store.prefix(BIG[0]) + BIG[1], big_bytes())
            dst = fake.add(FakeWorkspace(SUB, RG, f"ws-{name}-dst", mlflow_uri=target_mlflow.uri))
            dst_store = azureml_artifacts.attach(dst, where, accounts[1], container=f"{name}-dst")
            azureml_artifacts.serve_run_artifacts(dst)
            if where is azurite:  # the SAS URLs handed out name the counting proxy
                src_store.public, dst_store.public = counter.account_url(accounts[0]), counter.account_url(accounts[1])
            pairs[name] = SimpleNamespace(
                source=f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{src.name}", src_store=src_store,
                target=f"azureml://127.0.0.1:{fake.port}/mlflow/v2.0{dst.scope}", dst=dst, dst_store=dst_store,
            )
        az = write_fake_az(base / "az", sys.executable)
        env = {**fake.environ(), **storage.env, "PATH": f"{az}{os.pathsep}{os.environ['PATH']}", "AZUREML_LOG_LEVEL": "ERROR"}
        yield SimpleNamespace(fake=fake, specs=specs, pairs=pairs, env=env, target_mlflow=target_mlflow)
    finally:
        for pair in pairs.values():
            azureml_artifacts.STORES.pop(pair.dst.scope, None)
        for ws in list(fake.workspaces.values()):
            azureml_artifacts.STORES.pop(ws.scope, None)
        if counter is not None:
            counter.stop()
        storage.stop()
        azurite.stop()
        fake.stop()
        target_mlflow.stop()
        source_mlflow.stop()


def upload_in_blocks(store, name: str, data: bytes) -> None:
    """Put Block + Put Block List in 1 MiB blocks, as a large upload does: the blob keeps no Content-MD5."""
    from azure.storage.blob import BlobClient

    verify = {"connection_verify": store.verify} if store.verify else {}
    blob = BlobClient(f"{store.endpoint}/{store.account}", store.container, name, max_single_put_size=1 << 20, max_block_size=1 << 20,
                      credential={"account_name": store.account, "account_key": store.key}, **verify)
    blob.upload_blob(data, overwrite=True, max_concurrency=1)
    assert not blob.get_blob_properties().content_settings.content_md5


def without_md5(store, jobs) -> int:
    """How many files of these source jobs keep no Content-MD5."""
    return sum(1 for job in jobs for b in store.client().list_blobs(name_starts_with=store.prefix(job)) if not b.content_settings.content_md5)


def expected_files(specs) -> dict[str, dict[str, bytes]]:
    """job name -> {path: bytes} for the migrated experiments."""
    wanted = set(EXPERIMENTS.split(","))
    out = {s.name: dict(s.files) for s in specs if s.experiment in wanted}
    out[BIG[0]][BIG[1]] = big_bytes()
    return out


def landed(store, run_id: str) -> dict[str, tuple[bytes, str]]:
    """path -> (bytes, Content-MD5 hex) of a target run's blobs."""
    prefix = store.prefix(run_id)
    out = {}
    for blob in store.client().list_blobs(name_starts_with=prefix):
        md5 = blob.content_settings.content_md5
        out[blob.name[len(prefix):]] = (store.client().download_blob(blob.name).readall(), bytes(md5).hex() if md5 else "")
    return out


def migrate(move, pair, workspace: str, tmp_path, *more):
    return run_cli("migrate", "--source", pair.source, "--target", pair.target, "--experiments", EXPERIMENTS, "--workspace", workspace,
                   "--credential", "cli", "--parallel", "4", *more, cwd=tmp_path, env=move.env, timeout=600)


def verify(move, pair, workspace: str, tmp_path, *more):
    return run_cli("verify", "--source", pair.source, "--target", pair.target, "--experiments", EXPERIMENTS, "--workspace", workspace,
                   "--credential", "cli", *more, cwd=tmp_path, env=move.env, timeout=600)


def artifact_line(stderr: str) -> str:
    found = re.findall(r"artifacts: (.*)", stderr)
    assert found, stderr[-3000:]
    return found[-1]


def check_files(move, pair, workspace: str) -> dict[str, str]:
    want = expected_files(move.specs)
    found = replayed_runs(move.target_mlflow.uri, workspace)
    assert len(found) == 15, sorted(found)
    for job, files in want.items():
        blobs = landed(pair.dst_store, found[job])
        assert {p: b for p, (b, _) in blobs.items()} == files, (job, sorted(blobs), sorted(files))
        assert all(md5 for _, md5 in blobs.values()), (job, {p: m for p, (_, m) in blobs.items()})  # every copy carries its MD5
        assert azureml_artifacts.registered(pair.dst, found[job]) == set(files)  # run history knows each path
    return found


def first_migration(move, pair, workspace: str, tmp_path) -> tuple:
    """(the process, its artifacts line, the number of files) of a migration into an empty target."""
    result = migrate(move, pair, workspace, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "created 15, repaired 0, skipped 0, failed 0" in result.stderr
    return result, artifact_line(result.stderr), sum(len(f) for f in expected_files(move.specs).values())


def test_same_account_copies_every_file_server_side(move, unique, tmp_path):
    pair, workspace = move.pairs["same"], f"same-{unique}"
    before = dict(move.fake.requests)
    result, line, total = first_migration(move, pair, workspace, tmp_path)
    asked = {k: v - before.get(k, 0) for k, v in move.fake.requests.items()}
    # Per run holding files: one registration for all its paths (batch/metadata takes a list). Per
    # job, on the source only: one prefix/contentinfo without a prefix, a page per PAGE paths, that
    # lists the files with their read SAS URLs. The target is not listed again after the copies:
    # each copy was pinned to the source's etag. A source file without an MD5 is read once more, to
    # hash it, and its copy's read SAS is asked for once more, to keep the copy's content headers
    # while setting the MD5 (the write SAS may not read them).
    unhashed = without_md5(pair.src_store, expected_files(move.specs))
    assert unhashed == 2
    runs = [files for files in expected_files(move.specs).values() if files]
    pages = sum(max(1, -(-len(files) // azureml_artifacts.PAGE)) for files in expected_files(move.specs).values())  # every job is listed
    routes = ("artifact_list", "artifact_prefix_contentinfo", "artifact_contentinfo", "artifact_create")
    assert tuple(asked.get(k, 0) for k in routes) == (0, pages, 2 * unhashed, len(runs)), asked
    assert total > 2 * len(runs)  # so one registration a run is fewer than one a file
    # Blob requests per file: the source's HEAD (size, MD5, etag) and the copy, nothing on the target
    # to check it; a file without an MD5 adds the HEAD and the PUT that set its copy's MD5 (and the
    # GETs that hash it). Refused requests (Azurite has no Put Blob From URL: 501) retry as Copy Blob.
    assert (asked.get("blob_head", 0), asked.get("blob_put", 0) - asked.get("blob_refused", 0)) == (total + unhashed, total + unhashed), asked
    assert line.startswith(f"{total} copied ({total} server-side, 0 streamed"), line
    check_files(move, pair, workspace)

    check = verify(move, pair, workspace, tmp_path)
    assert check.returncode == 0 and "15 runs compared, 15 equal" in check.stdout, check.stdout[-3000:] + check.stderr[-2000:]

    made = move.fake.requests["artifact_create"]
    rerun = migrate(move, pair, workspace, tmp_path)
    assert rerun.returncode == 0 and "skipped 15" in rerun.stderr, rerun.stderr[-3000:]
    assert move.fake.requests["artifact_create"] == made  # nothing registered twice

    # A path registered without its bytes that the tool may not write (no token over plain HTTP
    # here; on Azure: no Storage Blob Data Contributor) fails that run with one line saying so.
    run_id = replayed_runs(move.target_mlflow.uri, workspace)["bright_kiwi_01"]
    pair.dst_store.client().delete_blob(pair.dst_store.prefix(run_id) + "outputs/model.pkl")
    MlflowClient(move.target_mlflow.uri).delete_tag(run_id, "replay.complete")
    stuck = migrate(move, pair, workspace, tmp_path, "--retries", "0")
    assert stuck.returncode == 1, stuck.stderr[-3000:]
    assert "outputs/model.pkl of run " + run_id + " is registered in run history without its bytes" in stuck.stderr
    assert "Storage Blob Data Contributor" in stuck.stderr and "sig=" not in stuck.stderr


def test_across_accounts_streams_through_the_write_sas_and_repairs_a_registered_path(move, unique, tmp_path):
    pair, workspace = move.pairs["cross"], f"cross-{unique}"
    result, line, total = first_migration(move, pair, workspace, tmp_path)
    assert "server-side copy from" in result.stderr and "streaming instead" in result.stderr  # said once, not per file
    assert result.stderr.count("streaming instead") == 1, result.stderr[-3000:]
    assert re.match(rf"{total} copied \(\d+ server-side, \d+ streamed", line), line
    assert "sig=" not in result.stderr and "sig%3D" not in result.stderr  # no SAS in any line
    logs = [f for f in (tmp_path / "logs").rglob("*") if f.is_file()]
    assert logs and not any("sig=" in f.read_text(errors="replace") or "sig%3D" in f.read_text(errors="replace") for f in logs)
    found = check_files(move, pair, workspace)

    # An attempt killed between registering a path and its bytes landing: the path stays registered
    # (run history hands out its write SAS once); the rerun writes the blob with the credential.
    job = BIG[0]
    run_id = found[job]
    pair.dst_store.client().delete_blob(pair.dst_store.prefix(run_id) + BIG[1])
    MlflowClient(move.target_mlflow.uri).delete_tag(run_id, "replay.complete")
    repair = migrate(move, pair, workspace, tmp_path)
    assert repair.returncode == 0, repair.stderr[-3000:]
    assert "repaired 1, skipped 14" in repair.stderr, repair.stderr[-3000:]
    assert landed(pair.dst_store, run_id)[BIG[1]][0] == big_bytes()
    check = verify(move, pair, workspace, tmp_path)
    assert check.returncode == 0 and "15 runs compared, 15 equal" in check.stdout, check.stdout[-3000:] + check.stderr[-2000:]


def test_a_run_killed_before_its_status_is_incomplete_then_repaired(move, unique, tmp_path):
    """Into Azure ML a new run carries its completion tag from its create-run, awaiting its status
    (runner.engine.ledger.awaiting): the status update is its last write, and no tag request follows.
    A migration killed right after a run's data and files, before that update, leaves the run
    RUNNING with its tag awaiting FINISHED: verify calls it incomplete, the rerun repairs it (its
    tag then a plain fingerprint, written last), and nothing is copied twice."""
    pair, workspace = move.pairs["same"], f"await-{unique}"
    args = ("migrate", "--source", pair.source, "--target", pair.target, "--experiments", EXPERIMENTS, "--workspace", workspace,
            "--credential", "cli", "--parallel", "1")
    run_killed_after("runner.mlflow.target:DirectTarget.write_new", 1, *args, cwd=tmp_path, env=move.env)
    client = MlflowClient(move.target_mlflow.uri)
    made = replayed_runs(move.target_mlflow.uri, workspace)
    waiting = {job: client.get_run(run_id) for job, run_id in made.items()}
    cut = [job for job, run in waiting.items() if "@" in run.data.tags.get("replay.complete", "")]
    assert len(cut) == 1 and waiting[cut[0]].info.status == "RUNNING", {j: (r.info.status, r.data.tags.get("replay.complete")) for j, r in waiting.items()}
    awaited = waiting[cut[0]].data.tags["replay.complete"].split("@")[1]
    assert awaited in ("FINISHED", "FAILED", "KILLED"), awaited

    check = verify(move, pair, workspace, tmp_path)
    assert check.returncode == 1 and "incomplete (interrupted; rerun replay)" in check.stdout, check.stdout[-3000:]
    rerun = migrate(move, pair, workspace, tmp_path)
    assert rerun.returncode == 0 and re.search(r"created \d+, repaired [1-9]", rerun.stderr), rerun.stderr[-3000:]
    repaired = client.get_run(made[cut[0]])
    assert repaired.info.status == awaited and "@" not in repaired.data.tags["replay.complete"]
    after = replayed_runs(move.target_mlflow.uri, workspace)
    assert after[cut[0]] == made[cut[0]] and len(after) == 15
    check = verify(move, pair, workspace, tmp_path)
    assert check.returncode == 0 and "15 runs compared, 15 equal" in check.stdout, check.stdout[-3000:] + check.stderr[-2000:]


def test_only_a_runs_root_in_a_workspace_is_a_run_history_store():
    from runner.azureml.run_history import parse_run_root

    scope = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/workspaces/ws-a"
    root = parse_run_root(f"azureml://westeurope.api.azureml.ms/mlflow/v2.0{scope}/experiments/7/runs/abc-1/artifacts")
    assert root is not None and (root["host"], root["ws"], root["experiment"], root["run"]) == ("westeurope.api.azureml.ms", "ws-a", "7", "abc-1")
    assert parse_run_root(f"azureml://h/mlflow/v2.0{scope.lower()}/experiments/7/runs/abc-1/artifacts/") is not None
    for other in (
        f"azureml://h/mlflow/v2.0{scope}/experiments/7/runs/abc-1/artifacts/outputs",  # a folder: azureml-mlflow's repository
        "azureml://h/mlflow/v2.0/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/registries/reg/models/m",
        "azureml://experiments/7/runs/abc-1/artifacts",  # no workspace in it (inside a job)
        "mlflow-artifacts:/7/abc-1/artifacts",
    ):
        assert parse_run_root(other) is None, other


COPY_PUT = "PUT /{account}/{container}/{blob} (copy)"


def requests_by_side(move, pair, *commands) -> list[Counter]:
    """Each command's requests as `SIDE FAMILY METHOD TEMPLATE` (SIDE: source, target or other,
    from the workspace in the path; blob requests as the fake's blob counter sees them, no side)."""
    sides = {pair.source.rsplit("/", 1)[1]: "source", pair.dst.name: "target"}
    counts: Counter = Counter()

    def count(handler, path: str) -> bool:
        found = re.search(r"/workspaces/([^/?]+)", path, re.IGNORECASE)
        side = sides.get(found.group(1), "other") if found else "other"
        counts[f"{side} {family(path)} {route(handler.command, handler.path)}"] += 1
        return False  # counted only; the request goes on

    def blob_side(method, path, headers) -> str:  # the blob counter's route, with the side its container is on
        container = path.split("?", 1)[0].split("/")[2]
        side = {pair.src_store.container: "source", pair.dst_store.container: "target"}.get(container, "other")
        return f"{side} {plain_blob_route(method, path, headers)}"

    REQUEST_HOOKS.insert(0, count)
    azureml_latency.blob_route = blob_side
    turn_on(move.fake, latency={}, buckets={})  # no wait, no 429: the fake's blob routes are counted too
    out = []
    try:
        for command in commands:
            blobs = Counter({k: v for k, v in move.fake.requests.items() if k.startswith("route:blob ") or k == "blob_refused"})
            counts.clear()
            result = command()
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            blob = Counter({k: v for k, v in move.fake.requests.items() if k.startswith("route:blob ") or k == "blob_refused"}) - blobs
            # Azurite answers 501 to Put Blob From URL; how many copies try it before the process learns
            # (then Copy Blob) depends on the threads: those refused PUTs are left out, the copies kept.
            blob[f"route:blob target {COPY_PUT}"] -= blob.pop("blob_refused", 0)
            out.append(counts + Counter({"{} blob {}".format(*k.removeprefix("route:blob ").split(" ", 1)): v for k, v in blob.items()}))
    finally:
        REQUEST_HOOKS.remove(count)
        azureml_latency.blob_route = plain_blob_route
        turn_off(move.fake)
    return out


def renamed(tmp_path, suffix: str) -> str:
    """A rename file sending the experiments to new names: each command below then finds the same
    target (experiments created by the command), whichever tests ran before."""
    path = tmp_path / f"rename-{suffix}.yml"
    path.write_text("".join(f"{name}: {name}-{suffix}\n" for name in EXPERIMENTS.split(",")), encoding="utf-8")
    return str(path)


def test_migrate_verify_reads_each_source_history_once(move, unique, tmp_path):
    pair = move.pairs["same"]
    plain, inline = ("--rename-file", renamed(tmp_path, f"p{unique}")), ("--rename-file", renamed(tmp_path, f"i{unique}"))
    report = tmp_path / "verify-report.json"
    copied, checked, both = requests_by_side(
        move, pair, lambda: migrate(move, pair, f"plain-{unique}", tmp_path, *plain),
        lambda: verify(move, pair, f"plain-{unique}", tmp_path, *plain),
        lambda: migrate(move, pair, f"inline-{unique}", tmp_path, *inline, "--verify", "--report", str(report)),
    )
    assert json.loads(report.read_text())["summary"] == {
        "compared": 15, "equal": 15, "differing": 0, "models": 0, "traces": 0, "by_field": {}}
    source = lambda counts: Counter({k: v for k, v in counts.items() if not k.startswith("target ")})  # noqa: E731
    target = lambda counts: Counter({k: v for k, v in counts.items() if k.startswith("target ")})  # noqa: E731
    history = "source mlflow GET /mlflow/v2.0/{ws}/api/2.0/mlflow/metrics/get-history"
    # The source is read once, exactly as plain migrate reads it: its 15 runs' 13 metric histories (one
    # get-history per key and run, K summed over the runs), the listing (a prefix/contentinfo per job,
    # 17 with the pages), 10 HEADs for 10 files, 2 files without an MD5 read to hash them, the job tree.
    assert source(both) == source(copied) and both[history] == copied[history] == checked[history] == 13
    # The target: the copy's writes plus verify's reads (the run, a get-history per key, the listing
    # and a HEAD per file), less the ledger verify reads again (an experiments and a runs search).
    ledger = Counter({"target mlflow POST /mlflow/v2.0/{ws}/api/2.0/mlflow/experiments/search": 1,
                      "target mlflow POST /mlflow/v2.0/{ws}/api/2.0/mlflow/runs/search": 1})
    assert target(both) == target(copied) + target(checked) - ledger
    # How a run is read (runner.engine.child_groups): the 15 runs are 3 standalone jobs and 2 pipelines
    # whose 4 parents (eager_owl_04 with 3 steps, its train_block with 2, that block's fit_block with 2,
    # fuzzy_fox_05 with 3) hold the other 10 runs. A parent's children come from one search of
    # tags.mlflow.parentRunId, so runs/get reads the 5 runs without a parent and 4 searches the 10 children.
    runs_get, runs_search = ("target mlflow GET /mlflow/v2.0/{ws}/api/2.0/mlflow/runs/get",
                             "target mlflow POST /mlflow/v2.0/{ws}/api/2.0/mlflow/runs/search")
    assert (checked[runs_get], checked[runs_search]) == (5, 4 + 1), checked  # + verify's ledger search
    assert (both[runs_get] - copied[runs_get], both[runs_search] - copied[runs_search]) == (5, 4), both
    # A new run's completion tag rides on its create-run, awaiting its status (runner.engine.ledger.awaiting):
    # the 15 runs, all finished at the source, take a status update each and no set-tag.
    set_tag, update = ("target mlflow POST /mlflow/v2.0/{ws}/api/2.0/mlflow/runs/set-tag",
                       "target mlflow POST /mlflow/v2.0/{ws}/api/2.0/mlflow/runs/update")
    assert (copied[set_tag], copied[update], both[set_tag], both[update]) == (0, 15, 0, 15), copied
    # So migrate + verify 144 + 126 = 270 requests; migrate --verify 197: verify's 71 source reads (13
    # get-history, 5 runs/get, 5 searches, 19 artifacts, 16 blob, 12 job tree and discovery) and the 2 ledger reads fewer.
    # (Before the children searches: 15 runs/get and no search, 132 and 218; 10 runs/get became 4 searches.
    # Before the tag rode on the create-run: 159 and 212, a set-tag per run.)
    # (bright_kiwi_01's 50 accuracy and 2,500 loss points take 10 log-batch requests, not 11: 250 rows per name.)
    assert (sum(copied.values()), sum(checked.values()), sum(both.values())) == (144, 126, 197)
    assert sum(source(checked).values()) == 71  # with the discovery request (on neither side)
