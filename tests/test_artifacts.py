"""Artifact and log copies on a real Azurite (two accounts) and real mlflow servers: server-side
blob copy, streamed block uploads, resume after a kill, md5 checks, selection, pipeline layout,
and no secret in any log."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from azurite import ACCOUNTS, Azurite

from runner.azureml.blob import AccountKeySas, BlobAuth, UserDelegationSas, _no_put_from_url, parse_blob_uri
import json
from loguru import logger
from runner.core.records import ArtifactRef
from runner.files.checks import compare
from runner.files.copier import copy_artifacts, copy_run_artifacts, copy_to_folder, copy_to_folders
from runner.files.local import LocalStore, PARTIAL
from runner.files.options import ArtifactOptions, REFS_FILE, log_family, parse_size, pipeline_path
from runner.files.roots import open_store
from runner.mlflow import uris
from runner.files.options import ArtifactOptions
from runner.azureml.blob import BlobAuth
from runner.files.stats import CopyStats
from runner.core.errors import UsageError
from runner.core.records import ArtifactRef

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
BIG = 200 * MB

# name -> bytes: nested folders, spaces, unicode, an empty file, a multi-block file.
TREE = {
    "model/weights.bin": os.urandom(3 * MB + 17),
    "model/config.json": b'{"layers": 3}',
    "outputs/deep/er/still/x.txt": b"nested",
    "with space/f\u00fcr sch\u00f6n \u65e5\u672c.txt": "unicode \u2713".encode(),
    "empty.txt": b"",
    "user_logs/std_log.txt": b"epoch 1\nepoch 2\n",
    "system_logs/lifecycler/execution-wrapper.log": b"started\n",
    "top.txt": b"top",
}


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix():
    return uuid.uuid4().hex[:10]


@pytest.fixture
def options(azurite):
    return ArtifactOptions(auth=azurite.auth(), block_size=MB)


@pytest.fixture
def tree(tmp_path) -> Path:
    folder = tmp_path / "tree"
    for name, data in TREE.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def blob_bytes(azurite, account: str, container: str, name: str) -> bytes:
    return azurite.service(account).get_blob_client(container, name).download_blob().readall()


def run_script(code: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def keys_env() -> dict:
    return {"REPLAYER_STORAGE_KEYS": ";".join(f"{k}:{v}" for k, v in ACCOUNTS.items())}


# -- local -> blob (streamed) -> blob (server-side) -> folder ---------------------------------


def test_tree_streams_in_then_copies_server_side_between_accounts(azurite, tree, options, prefix):
    first = azurite.url("acct1", "runs", f"{prefix}/artifacts")
    second = azurite.url("acct2", "mirror", f"deep/{prefix}/artifacts")

    up = copy_artifacts(tree, first, None, options)
    assert up.ok, up.failed
    assert (up.copied, up.streamed, up.server_side) == (len(TREE), len(TREE), 0)
    across = copy_artifacts(first, second, None, options)
    assert across.ok, across.failed
    assert (across.copied, across.server_side, across.streamed) == (len(TREE), len(TREE), 0)
    assert across.bytes_streamed == 0 and across.bytes_copied == sum(map(len, TREE.values()))
    # Azurite has no Put Blob From URL: the first try said so and Copy Blob took over, once per account pair.
    assert (f"{azurite.endpoint}/acct1", f"{azurite.endpoint}/acct2") in _no_put_from_url

    for name, data in TREE.items():  # exact names and bytes, and the MD5 the service holds
        assert blob_bytes(azurite, "acct2", "mirror", f"deep/{prefix}/artifacts/{name}") == data
    listed = {r.path: r for r in open_store(second, auth=options.auth).list()}
    assert set(listed) == set(TREE)
    assert all(listed[n].md5 == hashlib.md5(d).hexdigest() and listed[n].size == len(d) for n, d in TREE.items())
    assert {r.path: r.md5 for r in across.refs} == {n: hashlib.md5(d).hexdigest() for n, d in TREE.items()}
    assert compare(tree, second, options=options) == []

    # A rerun finds everything in place and moves nothing.
    again = copy_artifacts(first, second, None, options)
    assert (again.copied, again.skipped_existing, again.bytes_copied) == (0, len(TREE), 0)
    assert copy_artifacts(tree, first, None, options).skipped_existing == len(TREE)


def test_pipeline_folder_keeps_paths_and_puts_logs_under_original_logs(azurite, tree, options, prefix, tmp_path):
    root = azurite.url("acct1", "runs", f"{prefix}/artifacts")
    assert copy_artifacts(tree, root, None, options).ok
    out = tmp_path / "step-output"
    stats = copy_to_folder(root, None, out, options)
    assert stats.ok and stats.copied == len(TREE)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {pipeline_path(n) for n in TREE}
    assert (out / "original_logs/user_logs/std_log.txt").read_bytes() == TREE["user_logs/std_log.txt"]
    assert (out / "original_logs/system_logs/lifecycler/execution-wrapper.log").is_file()
    assert (out / "model/weights.bin").read_bytes() == TREE["model/weights.bin"]
    assert (out / "empty.txt").read_bytes() == b""
    assert not list(out.rglob(f"*{PARTIAL}"))
    assert copy_to_folder(root, None, out, options).skipped_existing == len(TREE)

    # The step's two outputs: logs/<family>/..., artifacts/<path>; a folder not given is left out.
    arts, logs = tmp_path / "artifacts", tmp_path / "logs"
    split = copy_to_folders(root, None, arts, logs, options)
    assert split.ok and split.copied == len(TREE)
    assert (logs / "user_logs/std_log.txt").read_bytes() == TREE["user_logs/std_log.txt"]
    assert {p.relative_to(arts).as_posix() for p in arts.rglob("*") if p.is_file()} == {n for n in TREE if not log_family(n)}
    only_logs = copy_to_folders(root, None, None, tmp_path / "logs-only", options)
    assert only_logs.copied == 2


# -- large files, kill and resume, memory ----------------------------------------------------------

STREAM = """
import json, os, signal, sys
from runner.azureml.blob import AccountKeySas, BlobAuth, UserDelegationSas, _no_put_from_url, parse_blob_uri
import json
from loguru import logger
from runner.core.records import ArtifactRef
from runner.files.checks import compare
from runner.files.copier import copy_artifacts, copy_run_artifacts, copy_to_folder, copy_to_folders
from runner.files.local import LocalStore, PARTIAL
from runner.files.options import ArtifactOptions, REFS_FILE, log_family, parse_size, pipeline_path
from runner.files.roots import open_store
src, dst, kill_at, block = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
done = [0]
def on_bytes(n):
    done[0] += n
    if kill_at and done[0] >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a preempted node
opts = ArtifactOptions(parallel=1, block_size=block, on_bytes=on_bytes)  # keys from REPLAYER_STORAGE_KEYS
stats = copy_artifacts(src, dst, None, opts)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))  # this process only, unlike ru_maxrss
print(json.dumps({**stats.to_json(), "rss_mb": peak / 1024}))
"""


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory) -> tuple[Path, str]:
    """200 MiB of incompressible bytes, made fast: one random MiB, each copy stamped with its index."""
    folder = tmp_path_factory.mktemp("big")
    pattern, digest = bytearray(os.urandom(MB)), hashlib.md5()
    with open(folder / "checkpoint.pt", "wb") as out:
        for i in range(BIG // MB):
            pattern[:8] = i.to_bytes(8, "big")
            digest.update(pattern)
            out.write(pattern)
    return folder, digest.hexdigest()


def test_200mb_streamed_in_blocks_killed_halfway_resumes_with_flat_memory(azurite, big_folder, options, prefix):
    folder, md5 = big_folder
    first = azurite.url("acct1", "big", prefix)
    block = 8 * MB
    killed = run_script(STREAM, str(folder), first, str(BIG // 2), str(block), env=keys_env())
    assert killed.returncode == -9, killed.stderr[-2000:]
    blob = azurite.service("acct1").get_blob_client("big", f"{prefix}/checkpoint.pt")
    committed, staged = blob.get_block_list("all")
    assert not committed and len(staged) >= 10  # half the blocks made it before the kill, none committed

    resumed = run_script(STREAM, str(folder), first, "0", str(block), env=keys_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    stats = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert stats["copied"] == 1 and stats["failed"] == [] and stats["blocks_reused"] >= 10
    assert stats["rss_mb"] < 200, f"client memory grew with the file: {stats['rss_mb']:.0f} MB peak"
    props = blob.get_blob_properties()
    assert props.size == BIG and props.content_settings.content_md5.hex() == md5
    assert len(blob.get_block_list("committed")[0]) == BIG // block

    # The same 200 MiB to the other account without passing through this process.
    second = azurite.url("acct2", "big", prefix)
    across = copy_artifacts(first, second, None, options)
    assert across.ok and across.server_side == 1 and across.bytes_streamed == 0
    assert compare(first, second, options=options, deep=True) == []


SMALL = """
import json, os, signal, sys
from runner.azureml.blob import AccountKeySas, BlobAuth, UserDelegationSas, _no_put_from_url, parse_blob_uri
import json
from loguru import logger
from runner.core.records import ArtifactRef
from runner.files.checks import compare
from runner.files.copier import copy_artifacts, copy_run_artifacts, copy_to_folder, copy_to_folders
from runner.files.local import LocalStore, PARTIAL
from runner.files.options import ArtifactOptions, REFS_FILE, log_family, parse_size, pipeline_path
from runner.files.roots import open_store
src, dst, stop_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = [0]
def on_bytes(n):
    files[0] += 1
    if files[0] >= stop_after:
        os.kill(os.getpid(), signal.SIGKILL)
stats = copy_artifacts(src, dst, None, ArtifactOptions(parallel=2, on_bytes=on_bytes))
print(json.dumps(stats.to_json()))
"""


def test_server_side_copy_killed_after_n_files_resumes_skipping_them(azurite, options, prefix):
    container = azurite.service("acct1").get_container_client("many")
    try:
        container.create_container()
    except Exception:  # noqa: BLE001 - created by an earlier test run on this server
        pass
    for i in range(40):
        container.upload_blob(f"{prefix}/part-{i:03d}.json", json.dumps({"i": i}).encode(), overwrite=True)
    src, dst = azurite.url("acct1", "many", prefix), azurite.url("acct2", "many", prefix)
    killed = run_script(SMALL, src, dst, "12", env=keys_env())
    assert killed.returncode == -9, killed.stderr[-2000:]
    done_before = len(list(open_store(dst, auth=options.auth).list()))
    assert 12 <= done_before < 40

    stats = copy_artifacts(src, dst, None, options)
    assert stats.ok and stats.skipped_existing >= 12 and stats.copied == 40 - stats.skipped_existing
    assert compare(src, dst, options=options) == []


# -- checks --------------------------------------------------------------------------------------------


def test_tampered_destination_is_reported_and_repaired(azurite, tree, options, prefix):
    from azure.storage.blob import BlobBlock, ContentSettings

    src = azurite.url("acct1", "runs", f"{prefix}/a")
    dst = azurite.url("acct2", "runs", f"{prefix}/b")
    assert copy_artifacts(tree, src, None, options).ok
    assert copy_artifacts(src, dst, None, options).ok
    container = azurite.service("acct2").get_container_client("runs")

    # Same size, other bytes: the MD5 the service computed no longer matches.
    name = "model/config.json"
    container.upload_blob(f"{prefix}/b/{name}", b'{"layers": 4}', overwrite=True)
    found = compare(src, dst, options=options)
    assert [m.path for m in found] == [name]
    assert "md5" in found[0].source and found[0].source != found[0].target

    # Other bytes committed with the original MD5 header: only reading the bytes catches it.
    lie = "top.txt"
    blob = container.get_blob_client(f"{prefix}/b/{lie}")
    original_md5 = blob.get_blob_properties().content_settings.content_md5
    blob.stage_block("b1", b"TOP")
    blob.commit_block_list([BlobBlock("b1")], content_settings=ContentSettings(content_md5=original_md5))
    assert [m.path for m in compare(src, dst, options=options)] == [name]
    assert [m.path for m in compare(src, dst, options=options, deep=True)] == [name, lie]

    # An extra file in the target is a difference too; the tool's own replay/ files are not.
    container.upload_blob(f"{prefix}/b/stray.txt", b"x", overwrite=True)
    container.upload_blob(f"{prefix}/b/{REFS_FILE}", b"{}", overwrite=True)
    assert [m.path for m in compare(src, dst, options=options)] == [name, "stray.txt"]

    # A rerun copies the file whose MD5 differs again and leaves the rest.
    again = copy_artifacts(src, dst, None, options)
    assert again.copied == 1 and again.skipped_existing == len(TREE) - 1
    assert blob_bytes(azurite, "acct2", "runs", f"{prefix}/b/{name}") == TREE[name]


def test_selection_size_limit_and_modes(azurite, tree, options, prefix, tmp_path):
    src = azurite.url("acct1", "runs", f"{prefix}/src")
    assert copy_artifacts(tree, src, None, options).ok

    picky = ArtifactOptions.build(artifact_include="model/*,*.txt", artifact_exclude="user_logs/", max_artifact_size="1MB", auth=options.auth)
    dst = azurite.url("acct2", "runs", f"{prefix}/picky")
    stats = copy_artifacts(src, dst, None, picky)
    copied = {r.path for r in stats.refs}
    assert copied == {"model/config.json", "outputs/deep/er/still/x.txt", "with space/f\u00fcr sch\u00f6n \u65e5\u672c.txt", "empty.txt", "top.txt"}
    assert stats.skipped_too_large == [f"model/weights.bin ({len(TREE['model/weights.bin'])} bytes)"]
    assert stats.skipped_filtered == 2  # user_logs excluded, system_logs not included
    assert compare(src, dst, options=picky) == []

    listed = copy_artifacts(src, azurite.url("acct2", "runs", f"{prefix}/list"), None, ArtifactOptions.build("list", auth=options.auth))
    assert listed.listed == len(TREE) and listed.copied == 0
    names = {r.path for r in open_store(azurite.url("acct2", "runs", f"{prefix}/list"), auth=options.auth).list()}
    assert names == {REFS_FILE}
    lines = blob_bytes(azurite, "acct2", "runs", f"{prefix}/list/{REFS_FILE}").decode().splitlines()
    assert json.loads(lines[0])["source"].endswith(f"/acct1/runs/{prefix}/src")
    assert {json.loads(line)["path"]: json.loads(line)["md5"] for line in lines[1:]} == {n: hashlib.md5(d).hexdigest() for n, d in TREE.items()}

    none = copy_artifacts(src, tmp_path / "none", None, ArtifactOptions.build("none"))
    assert none == CopyStats() and not (tmp_path / "none").exists()


def test_a_refused_server_side_copy_falls_back_to_streaming(azurite, tree, options, prefix):
    class WrongKey:  # a SAS source whose signature the service rejects (a firewall or a foreign cloud alike)
        def read_sas(self, container, blob, minutes):
            return AccountKeySas("acct1", ACCOUNTS["acct2"]).read_sas(container, blob, minutes)

    src_root = azurite.url("acct1", "runs", f"{prefix}/src")
    assert copy_artifacts(tree, src_root, None, options).ok
    auth = BlobAuth(keys=dict(ACCOUNTS), sas=lambda store: WrongKey())
    stats = copy_artifacts(src_root, azurite.url("acct2", "runs", f"{prefix}/dst"), None, ArtifactOptions(auth=auth, block_size=MB))
    assert stats.ok, stats.failed
    assert stats.server_side == 0 and stats.streamed == len(TREE)
    assert compare(tree, azurite.url("acct2", "runs", f"{prefix}/dst"), options=options) == []


def test_unsafe_paths_are_refused(tree, tmp_path):
    refs = [ArtifactRef("../escape.txt", 1), ArtifactRef("top.txt", 3)]
    stats = copy_artifacts(tree, tmp_path / "out", refs, ArtifactOptions())
    assert [p for p, _ in stats.failed] == ["../escape.txt"] and stats.copied == 1
    assert not (tmp_path / "escape.txt").exists()


# -- through MLflow (direct mode today) ---------------------------------------------------------------


def test_blob_to_mlflow_run_and_back(servers, azurite, tree, options, prefix):
    from mlflow import MlflowClient

    _, target = servers
    client = MlflowClient(target.uri)
    experiment = client.create_experiment(f"artifacts-{prefix}")
    run = client.create_run(experiment)
    blob_root = azurite.url("acct1", "runs", f"{prefix}/src")
    assert copy_artifacts(tree, blob_root, None, options).ok

    into = copy_run_artifacts(blob_root, run.info.artifact_uri, None, options, tracking_uri=target.uri, fresh=True)
    assert into.ok, into.failed
    assert into.streamed == len(TREE)
    assert compare(blob_root, run.info.artifact_uri, options=options, tracking_uri=target.uri) == []
    again = copy_run_artifacts(blob_root, run.info.artifact_uri, None, options, tracking_uri=target.uri)
    assert again.skipped_existing == len(TREE) and again.copied == 0

    back = azurite.url("acct2", "runs", f"{prefix}/back")
    out = copy_run_artifacts(run.info.artifact_uri, back, None, options, tracking_uri=target.uri)
    assert out.ok and out.streamed == len(TREE)
    assert compare(tree, back, options=options) == []


# -- secrets -----------------------------------------------------------------------------------------------

LOGGED = """
import sys
from runner.azureml.blob import AccountKeySas, BlobAuth, UserDelegationSas, _no_put_from_url, parse_blob_uri
import json
from loguru import logger
from runner.core.records import ArtifactRef
from runner.files.checks import compare
from runner.files.copier import copy_artifacts, copy_run_artifacts, copy_to_folder, copy_to_folders
from runner.files.local import LocalStore, PARTIAL
from runner.files.options import ArtifactOptions, REFS_FILE, log_family, parse_size, pipeline_path
from runner.files.roots import open_store
from runner.core import logs
logs.setup("artifacts", verbose=True, log_dir=sys.argv[3])
class WrongKey:
    def read_sas(self, container, blob, minutes):
        return AccountKeySas("acct1", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=").read_sas(container, blob, minutes)
auth = BlobAuth.from_env()
auth.sas = lambda store: WrongKey()
logger.info("options {} auth {}", ArtifactOptions(auth=auth), auth)
stats = copy_artifacts(sys.argv[1], sys.argv[2], None, ArtifactOptions(auth=auth))
logger.info("stats {}", stats.line())
src = open_store(sys.argv[1], auth=auth)
logger.debug("a url as someone might log it: {}", src.read_url("top.txt", 5))
try:
    copy_artifacts(sys.argv[1], sys.argv[2].replace("acct2", "acct1"), [ArtifactRef("missing.bin", 5)], ArtifactOptions(auth=BlobAuth.from_env()))
except Exception as error:
    logger.error("{}", error)
"""


def test_no_key_or_sas_signature_reaches_a_log(azurite, tree, options, prefix, tmp_path):
    src = azurite.url("acct1", "runs", f"{prefix}/src")
    assert copy_artifacts(tree, src, None, options).ok
    result = run_script(LOGGED, src, azurite.url("acct2", "runs", f"{prefix}/dst"), str(tmp_path / "logs"), env=keys_env())
    assert result.returncode == 0, result.stderr[-3000:]
    log = next((tmp_path / "logs").glob("artifacts_*.log")).read_text()
    assert "streaming instead" in log and "sig=REDACTED" in log  # the fallback was logged, the URL redacted
    for text in (log, result.stderr, result.stdout):
        for key in ACCOUNTS.values():
            assert key not in text
        assert "d3Jvbmcta2V5" not in text
        assert not re.search(r"sig=(?!REDACTED)[^&\s]+", text)


# -- units -------------------------------------------------------------------------------------------------


def test_parse_size_and_globs():
    assert parse_size("1.5GiB") == 3 * (1 << 29)
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size(1024) == 1024 and parse_size(None) is None
    with pytest.raises(UsageError, match="--max-artifact-size"):
        parse_size("lots", "--max-artifact-size")
    with pytest.raises(UsageError, match="copy, list, none"):
        ArtifactOptions.build("all")
    o = ArtifactOptions.build(artifact_include=["outputs/*", "*.json"], artifact_exclude="*.tmp,logs/")
    assert o.selects("outputs/a/b.bin") and o.selects("deep/x.json")
    assert not o.selects("outputs/x.tmp") and not o.selects("model.bin") and not o.selects("logs/json")


def test_blob_uris_are_recognized():
    auth = BlobAuth(keys={"acct1": "k"})
    loc = parse_blob_uri("wasbs://artifacts@myacct.blob.core.windows.net/mlflow/3/abc/artifacts")
    assert (loc.account, loc.account_url, loc.container, loc.prefix) == ("myacct", "https://myacct.blob.core.windows.net", "artifacts", "mlflow/3/abc/artifacts")
    loc = parse_blob_uri("abfss://data@lake.dfs.core.windows.net/x")
    assert loc.account_url == "https://lake.blob.core.windows.net" and loc.prefix == "x"
    loc = parse_blob_uri("https://acct.blob.core.chinacloudapi.cn/azureml/ExperimentRun/dcid.r1")
    assert (loc.account, loc.container, loc.prefix) == ("acct", "azureml", "ExperimentRun/dcid.r1")
    loc = parse_blob_uri("http://127.0.0.1:10000/acct1/runs/a%20b", auth)
    assert (loc.account_url, loc.container, loc.prefix) == ("http://127.0.0.1:10000/acct1", "runs", "a b")
    assert parse_blob_uri("http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1", auth) is None
    assert parse_blob_uri("mlflow-artifacts:/1/abc/artifacts") is None
    assert isinstance(open_store("/tmp/x"), LocalStore)
    assert "k" not in repr(auth) and "k" not in repr(AccountKeySas("acct1", "k"))


def test_pipeline_paths():
    assert pipeline_path("user_logs/std_log.txt") == "original_logs/user_logs/std_log.txt"
    assert pipeline_path("azureml-logs/70_driver_log.txt") == "original_logs/azureml-logs/70_driver_log.txt"
    assert pipeline_path("outputs/model.pkl") == "outputs/model.pkl"
    assert pipeline_path("logs") == "logs"  # a file named like a family is not a log folder


def test_cli_flags_and_yaml_reach_the_artifact_options(tmp_path):
    from runner import cli

    s = cli.Settings({"artifacts": "list", "max_artifact_size": "2GiB", "artifact_include": ("outputs/*", "*.json")},
                     {"target": "x"}, cli.SELECT + cli.ARTIFACT_FLAGS)
    assert (s.artifacts.mode, s.artifacts.max_size, s.artifacts.include) == ("list", 2 << 30, ["outputs/*", "*.json"])
    config = tmp_path / "m.yml"
    config.write_text("target: x\noptions: {artifacts: none, artifact_exclude: [logs/, '*.tmp'], max_artifact_size: 500MB}\n")
    s = cli.Settings({"config": str(config), "artifacts": "copy"}, {"target": None}, cli.SELECT + cli.ARTIFACT_FLAGS)
    assert (s.artifacts.mode, s.artifacts.exclude, s.artifacts.max_size) == ("copy", ["logs/", "*.tmp"], 500 * 10**6)
    with pytest.raises(UsageError, match="--max-artifact-size"):
        cli.Settings({"max_artifact_size": "big"}, {"target": "x"}, cli.SELECT + cli.ARTIFACT_FLAGS)


# -- direct mode: blob-backed experiments on both ends ------------------------------------------------


@pytest.fixture(scope="module")
def blob_migration(azurite, tmp_path_factory):
    """Two sqlite stores whose experiment lives on blob storage (acct1, acct2): a parent and a child
    run with TREE each in the source, then `replayer migrate` into the target."""
    from mlflow import MlflowClient

    from conftest import run_cli
    from runner.mlflow import uris

    tmp_path, prefix = tmp_path_factory.mktemp("blob-migration"), uuid.uuid4().hex[:10]
    folder = tmp_path / "tree"
    for name, data in TREE.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    options = ArtifactOptions(auth=azurite.auth())
    source_uri, target_uri = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'target.db'}"
    name = f"blobby-{prefix}"
    for uri, account in ((source_uri, "acct1"), (target_uri, "acct2")):  # the target's experiment exists, on blob
        uris.open_client(uri, create=True).create_experiment(name, artifact_location=azurite.url(account, "mlruns", f"{prefix}/exp"))
    source = MlflowClient(source_uri)
    experiment = source.get_experiment_by_name(name).experiment_id
    parent = source.create_run(experiment, start_time=1_700_000_000_000, run_name="parent")
    child = source.create_run(experiment, start_time=1_700_000_001_000, run_name="child", tags={"mlflow.parentRunId": parent.info.run_id})
    for run in (parent, child):
        assert copy_artifacts(folder, run.info.artifact_uri, None, options).ok
        source.set_terminated(run.info.run_id, "FINISHED", end_time=1_700_000_100_000)
    args = ("--source", source_uri, "--target", target_uri, "--workspace", f"blob-{prefix}", "--experiments", name)
    first = run_cli("migrate", *args, cwd=tmp_path, env=keys_env())
    assert first.returncode == 0, first.stderr[-3000:]
    target = MlflowClient(target_uri)
    runs = {r.info.run_name: r for r in target.search_runs([target.get_experiment_by_name(name).experiment_id])}
    originals = {"parent": parent, "child": child}
    return {"args": args, "cwd": tmp_path, "target": target, "runs": runs, "originals": originals, "options": options}


def test_direct_migrate_between_blob_backed_experiments_copies_server_side(azurite, blob_migration):
    from conftest import run_cli
    from runner.engine.ledger import COMPLETE

    m, options = blob_migration, blob_migration["options"]
    assert sorted(m["runs"]) == ["child", "parent"]
    for name, run in m["runs"].items():
        root = run.info.artifact_uri
        assert root.startswith(azurite.url("acct2", "mlruns"))
        assert compare(m["originals"][name].info.artifact_uri, root, options=options) == []
        listing = open_store(root, auth=options.auth).listing()
        assert len(listing) == len(TREE) and all(s.copy_status == "success" for s in listing.values())  # server-side copies

    again = run_cli("migrate", *m["args"], cwd=m["cwd"], env=keys_env())
    assert again.returncode == 0 and "skipped 2" in again.stderr, again.stderr[-2000:]

    # An interrupted run (no completion tag, a file missing) is repaired: the missing file only.
    broken = m["runs"]["child"]
    m["target"].delete_tag(broken.info.run_id, COMPLETE)
    open_store(broken.info.artifact_uri, auth=options.auth).blob("model/weights.bin").delete_blob()
    repaired = run_cli("migrate", *m["args"], cwd=m["cwd"], env=keys_env())
    assert repaired.returncode == 0 and "repaired 1" in repaired.stderr, repaired.stderr[-2000:]
    assert compare(m["originals"]["child"].info.artifact_uri, broken.info.artifact_uri, options=options) == []
    logs = [p.read_text() for p in (m["cwd"] / "logs").glob("*.log")] + [again.stderr, repaired.stderr]
    assert logs and not any(key in text for text in logs for key in ACCOUNTS.values())
    assert not any(re.search(r"sig=(?!REDACTED)[^&\s]+", text) for text in logs)


def test_verify_reports_a_tampered_blob_in_the_target(azurite, blob_migration):
    from conftest import run_cli

    m = blob_migration
    report = m["cwd"] / "verify.json"
    clean = run_cli("verify", *m["args"], "--report", str(report), cwd=m["cwd"], env=keys_env())
    assert clean.returncode == 0, clean.stdout + clean.stderr[-2000:]
    store = open_store(m["runs"]["parent"].info.artifact_uri, auth=m["options"].auth)
    store.blob("model/config.json").upload_blob(b'{"layers": 9}', overwrite=True)  # same size, other bytes
    tampered = run_cli("verify", *m["args"], "--report", str(report), cwd=m["cwd"], env=keys_env())
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr[-2000:]
    found = json.loads(report.read_text())["differences"]
    assert [d["field"] for d in found] == ["artifact:model/config.json"]
    assert found[0]["source"] != found[0]["target"] and "md5" in found[0]["target"]



# -- extract follows the same artifact choices as replay ---------------------------------------------------


def manifest_files(folder: Path) -> dict[str, list[str]]:
    """What a manifest holds: the paths listed in artifacts/*.jsonl and the files under files/."""
    listed = sorted(json.loads(line)["path"] for f in (folder / "artifacts").glob("*.jsonl") for line in f.read_text().splitlines())
    held = sorted(p.relative_to(folder / "files").as_posix().split("/", 1)[1] for p in (folder / "files").rglob("*") if p.is_file())
    return {"listed": listed, "held": held}


def test_extract_honours_artifacts_size_and_globs_and_replay_follows_the_manifest(tmp_path):
    from conftest import run_cli

    src = tmp_path / "src"
    assert run_cli("demo", "--out", str(src), cwd=tmp_path).returncode == 0
    weights = [f"model/fold {i}/weights.bin" for i in range(3)]  # 2048 bytes each; the demo's other files are < 30

    capped = tmp_path / "capped"
    flags = ("--max-artifact-size", "1000", "--artifact-exclude", "logs/")
    done = run_cli("extract", "--source", str(src), "--out", str(capped), *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    kept = ["forecast.csv", "reports/r\u00e9sum\u00e9 final.md", "reports/summary.json"]
    assert manifest_files(capped) == {"listed": sorted(kept), "held": sorted(kept)}
    header = json.loads((capped / "manifest.json").read_text())
    assert header["artifacts"]["filtered"] == 3 and len(header["artifacts"]["too_large"]) == 3  # the 3 logs, the 3 weights
    assert all("weights.bin (2048 bytes)" in line for line in header["artifacts"]["too_large"])
    assert header["counts"]["artifacts"] == 3 and header["counts"]["artifact_bytes"] == 25 + 25 + 18
    assert run_cli("replay", "--manifest", str(capped), "--target", str(tmp_path / "t1"), cwd=tmp_path).returncode == 0
    assert run_cli("verify", "--source", str(capped), "--target", str(tmp_path / "t1"), cwd=tmp_path).returncode == 0
    same = run_cli("verify", "--source", str(src), "--target", str(tmp_path / "t1"), *flags, cwd=tmp_path)
    assert same.returncode == 0, same.stdout[-2000:]  # the live source seen through the same choices

    listed = tmp_path / "listed"
    done = run_cli("extract", "--source", str(src), "--out", str(listed), "--artifacts", "list", "--artifact-include", "model/*", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert manifest_files(listed) == {"listed": weights, "held": []}
    assert json.loads((listed / "manifest.json").read_text())["counts"]["artifact_bytes"] == 0
    refused = run_cli("replay", "--manifest", str(listed), "--target", str(tmp_path / "t2"), cwd=tmp_path)
    errors = [line for line in refused.stderr.splitlines() if "ERROR" in line]
    assert refused.returncode == 2 and len(errors) == 1 and "--artifacts list" in errors[0] and str(listed) in errors[0], refused.stderr
    assert not (tmp_path / "t2").exists()  # nothing written
    assert run_cli("replay", "--manifest", str(listed), "--target", str(tmp_path / "t2"), "--artifacts", "list", cwd=tmp_path).returncode == 0
    checked = run_cli("verify", "--source", str(listed), "--target", str(tmp_path / "t2"), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout[-2000:]

    bare = tmp_path / "bare"
    assert run_cli("extract", "--source", str(src), "--out", str(bare), "--artifacts", "none", cwd=tmp_path).returncode == 0
    assert manifest_files(bare) == {"listed": [], "held": []}
    assert run_cli("replay", "--manifest", str(bare), "--target", str(tmp_path / "t3"), cwd=tmp_path).returncode == 0
    target = uris.open_client(str(tmp_path / "t3"), create=False)
    runs = target.search_runs([e.experiment_id for e in target.search_experiments()])
    assert len(runs) == 15 and not any(target.list_artifacts(r.info.run_id) for r in runs)
    assert run_cli("verify", "--source", str(bare), "--target", str(tmp_path / "t3"), cwd=tmp_path).returncode == 0


# -- cloud-style storage: production URLs, bearer tokens, user-delegation SAS (tests/cloud_storage.py) ----

from cloud_storage import StorageCredential, cloud_storage  # noqa: E402,F401 - the fixture, for the tests below


class RecordedSas:
    """The real UserDelegationSas, with each SAS it makes kept aside for the checks below."""

    def __init__(self, inner):
        self.inner, self.made = inner, []

    def read_sas(self, container, blob, minutes):
        query = self.inner.read_sas(container, blob, minutes)
        self.made.append((container, blob, query))
        return query


def watched_copy(cloud_storage, src: str, dst: str, options):
    """copy_artifacts(src, dst) with every loguru line it wrote (DEBUG included, redacted as the
    log file holds them) and the bytes the proxy's tunnels carried each way: (stats, lines, moved)."""
    from runner.core import logs as replayer_logs

    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(replayer_logs.redact(str(message))), level="DEBUG")
    before = cloud_storage.proxy.snapshot()
    try:
        stats = copy_artifacts(src, dst, None, options)
    finally:
        logger.remove(sink)
    moved = {k: cloud_storage.proxy.snapshot()[k] - before[k] for k in before}
    return stats, lines, moved


def test_user_delegation_sas_copies_server_side_on_production_urls(cloud_storage, tree, prefix):
    from urllib.parse import parse_qs

    credential = StorageCredential()
    recorded: list[RecordedSas] = []

    def sas(store):
        recorded.append(RecordedSas(UserDelegationSas(store.service)))
        return recorded[-1]

    auth = BlobAuth(keys={}, credential=credential, sas=sas)  # no key anywhere: bearer tokens and a delegation key only
    options = ArtifactOptions(auth=auth, block_size=MB)
    src = cloud_storage.url("acct1", "runs", f"{prefix}/artifacts")
    dst = cloud_storage.url("acct1", "archive", f"{prefix}/artifacts")
    up = copy_artifacts(tree, src, None, options)
    assert up.ok and up.streamed == len(TREE), up.failed
    total = sum(map(len, TREE.values()))

    across, lines, moved = watched_copy(cloud_storage, src, dst, options)

    assert across.ok, across.failed
    assert (across.server_side, across.streamed, across.bytes_streamed, across.bytes_copied) == (len(TREE), 0, 0, total)
    # No byte of the files went through the client: the tunnels carried requests and headers only.
    assert moved["up"] + moved["down"] < total / 20, (moved, total)
    landed = open_store(dst, auth=auth).listing()
    assert {p: (s.size, s.md5) for p, s in landed.items()} == {n: (len(d), hashlib.md5(d).hexdigest()) for n, d in TREE.items()}
    assert all(s.copy_status == "success" for s in landed.values())
    for name, data in TREE.items():
        assert cloud_storage.service("acct1").get_blob_client("archive", f"{prefix}/artifacts/{name}").download_blob().readall() == data

    # One read-only user-delegation SAS per blob, for that blob, signed for the credential's identity.
    made = [entry for r in recorded for entry in r.made]
    assert sorted(blob for _, blob, _ in made) == sorted(f"{prefix}/artifacts/{n}" for n in TREE)
    for container, _, query in made:
        fields = {k: v[0] for k, v in parse_qs(query).items()}
        assert container == "runs" and (fields["sr"], fields["sp"]) == ("b", "r")
        assert (fields["skoid"], fields["sktid"]) == (credential.oid, credential.tenant) and fields["sig"]
    # Azurite 3.37 has no Put Blob From URL (501): tried once, then Copy Blob for the pair.
    assert (cloud_storage.endpoint("acct1"), cloud_storage.endpoint("acct1")) in _no_put_from_url

    text = "\n".join(lines)
    assert lines and "archive" in text
    for _, _, query in made:
        assert parse_qs(query)["sig"][0] not in text
    assert not re.search(r"sig=(?!REDACTED)[^&\s]+", text) and "eyJ" not in text  # no signature, no bearer token


def test_across_accounts_azurite_refuses_the_copy_and_the_bytes_stream_through_the_client(cloud_storage, tree, prefix):
    # Azurite checks a SAS copy source by asking for it itself, only on the destination's own host:
    # with production URLs two accounts never qualify (CannotVerifyCopySource), so the copy streams.
    # This is also the control for the byte count above: here the files do cross the proxy.
    auth = BlobAuth(keys={}, credential=StorageCredential())
    options = ArtifactOptions(auth=auth, block_size=MB)
    src = cloud_storage.url("acct1", "runs", f"{prefix}/a")
    dst = cloud_storage.url("acct2", "runs", f"{prefix}/b")
    assert copy_artifacts(tree, src, None, options).ok
    total = sum(map(len, TREE.values()))
    stats, lines, moved = watched_copy(cloud_storage, src, dst, options)
    assert stats.ok, stats.failed
    assert stats.server_side == 0 and stats.streamed == len(TREE) and stats.bytes_streamed == total
    assert moved["down"] > total and moved["up"] > total, (moved, total)  # downloaded from acct1, uploaded to acct2
    assert compare(tree, dst, options=options) == []
    text = "\n".join(lines)
    assert "CannotVerifyCopySource" in text and "streaming instead" in text
    assert not re.search(r"sig=(?!REDACTED)[^&\s]+", text) and "eyJ" not in text


def test_the_proxy_tunnels_blob_hosts_only(cloud_storage, prefix):
    import certifi
    import requests
    from azure.core.exceptions import ResourceNotFoundError

    # Azurite takes the account from the Host: a blob written through acct2's production URL is in acct2.
    container = f"host-{prefix}"
    cloud_storage.service("acct2").create_container(container).upload_blob("x.txt", b"by host")
    assert cloud_storage.azurite.service("acct2").get_blob_client(container, "x.txt").download_blob().readall() == b"by host"
    with pytest.raises(ResourceNotFoundError):
        cloud_storage.azurite.service("acct1").get_container_client(container).get_container_properties()
    # TLS is end to end: the certificate is checked against the test CA (a client without it refuses).
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{cloud_storage.endpoint('acct1')}/", timeout=10, verify=certifi.where())

    refused = len(cloud_storage.proxy.refused)
    for url in ("https://example.com/", "https://acct1.blob.core.windows.net.evil.test/"):
        with pytest.raises(requests.exceptions.ProxyError):
            requests.get(url, timeout=10)
    answer = requests.get(f"{cloud_storage.endpoint('acct1')}/runs?restype=container", timeout=10)  # anonymous: Azurite answers
    assert answer.status_code in (403, 404) and "x-ms-request-id" in answer.headers
    assert len(cloud_storage.proxy.refused) == refused + 2
