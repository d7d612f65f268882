"""The CLI zygote (tests/cli_zygote.py) answers as the real `python -m runner` process does.

Each comparison runs the same command both ways: forked from the zygote and as a fresh interpreter
(`cli_zygote.real_run`, the path run_cli takes with REPLAYER_TEST_NO_ZYGOTE=1), so these tests also
keep proving the real entry point works.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cli_zygote

TIME = re.compile(r"\b\d\d:\d\d:\d\d\b")
LOG_NAME = re.compile(r"_\d{8}-\d{6}_\d+\.log")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A pool of this module's own, started with REPLAYER_LOG_DIR set in its environment (the env test
    asks without it)."""
    zygote_log_dir = tmp_path_factory.mktemp("zygote-env-logs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REPLAYER_LOG_DIR", str(zygote_log_dir))
        own = cli_zygote.ZygotePool()
        own.first_facts()
    own.zygote_log_dir = zygote_log_dir
    yield own
    own.stop()


def request_env(folder: Path, **extra) -> dict:
    return {**os.environ, "REPLAYER_LOG_DIR": str(folder / "logs"), **extra}


def same_text(text: str) -> str:
    """Output with what differs between any two runs (clock, log file's time and pid) blanked."""
    return LOG_NAME.sub("_LOG.log", TIME.sub("HH:MM:SS", text))


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["--version"], 0), (["migrate", "--bogus-flag", "x"], 2)])
def test_exit_code_and_output_equal_the_real_process(pool, tmp_path, args, code):
    forked = pool.run(args, tmp_path, request_env(tmp_path), 120)
    real = cli_zygote.real_run(args, tmp_path, request_env(tmp_path), 120)
    assert (forked.returncode, real.returncode) == (code, code), (forked.stderr, real.stderr)
    assert forked.stdout == real.stdout
    assert same_text(forked.stderr) == same_text(real.stderr)
    assert forked.args == real.args == [sys.executable, "-m", "runner", *args]
    if args == ["--help"]:
        assert "replayer" in real.stdout and "migrate" in real.stdout, real.stdout
    if code == 2:
        assert "unknown flag --bogus-flag" in real.stderr, real.stderr


def test_an_uncaught_exception_exits_1_with_its_traceback(pool, tmp_path):
    """A log folder that is a file: the CLI does not catch the mkdir error, so Python reports it."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    env = {**request_env(tmp_path), "REPLAYER_LOG_DIR": str(not_a_folder)}
    args = ["migrate", "--bogus-flag", "x"]
    forked, real = pool.run(args, tmp_path, env, 120), cli_zygote.real_run(args, tmp_path, env, 120)
    assert forked.returncode == real.returncode == 1
    for result in (forked, real):
        assert result.stderr.startswith("Traceback (most recent call last):"), result.stderr
    assert forked.stderr.splitlines()[-1] == real.stderr.splitlines()[-1] == f"FileExistsError: [Errno 17] File exists: '{not_a_folder}'"


def test_the_child_has_exactly_the_requested_environment(pool, tmp_path):
    """REPLAYER_LOG_DIR was set when the zygote started; a request without it logs where the CLI
    goes without it ($XDG_STATE_HOME/replayer/logs, a variable only the request has)."""
    env = request_env(tmp_path, XDG_STATE_HOME=str(tmp_path / "state"))
    del env["REPLAYER_LOG_DIR"]
    result = pool.run(["migrate", "--bogus-flag", "x"], tmp_path, env, 120)
    assert result.returncode == 2, result.stderr
    assert len(list((tmp_path / "state" / "replayer" / "logs").glob("migrate_*.log"))) == 1
    assert list(pool.zygote_log_dir.iterdir()) == []


def test_the_cwd_is_honoured(pool, tmp_path):
    """A relative log folder lands under the request's cwd."""
    folder = tmp_path / "here"
    folder.mkdir()
    result = pool.run(["migrate", "--bogus-flag", "x"], folder, {**os.environ, "REPLAYER_LOG_DIR": "rel-logs"}, 120)
    assert result.returncode == 2, result.stderr
    logs = list((folder / "rel-logs").glob("migrate_*.log"))
    assert len(logs) == 1, list(tmp_path.rglob("*"))
    zygote_pids = {zygote.process.pid for zygote in pool.zygotes.values()}
    assert int(logs[0].stem.rpartition("_")[2]) not in {os.getpid(), *zygote_pids}, "a process of its own"


@pytest.fixture
def silent_server():
    """A socket that takes connections and never answers: a CLI talking to it waits."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def processes_in(folder: Path) -> list[int]:
    """Pids of this user's processes whose working directory is `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(folder):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_timeout_raises_and_leaves_no_process(pool, tmp_path, silent_server):
    args = ["verify", "--source", silent_server, "--target", silent_server, "--workspace", "w"]
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as timed_out:
        pool.run(args, tmp_path, request_env(tmp_path), 4)
    assert 4 <= time.monotonic() - started < 60
    assert timed_out.value.cmd == [sys.executable, "-m", "runner", *args]
    assert processes_in(tmp_path) == []
    assert pool.run(["--version"], tmp_path, request_env(tmp_path), 60).returncode == 0, "the zygote serves on"


def test_death_by_a_signal_is_a_negative_returncode(pool, tmp_path, silent_server):
    args = ["verify", "--source", silent_server, "--target", silent_server, "--workspace", "w"]
    results = []
    waiting = threading.Thread(target=lambda: results.append(pool.run(args, tmp_path, request_env(tmp_path), 120)))
    waiting.start()
    deadline = time.monotonic() + 60
    while not processes_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    (pid,) = processes_in(tmp_path)
    os.kill(pid, signal.SIGTERM)
    waiting.join(60)
    assert results[0].returncode == -signal.SIGTERM


def test_interpreter_variables_fall_back_to_a_fresh_interpreter(pool, tmp_path):
    """A sitecustomize on the requested PYTHONPATH runs only when an interpreter starts: its line on
    stderr proves the request ran as a real `python -m runner`."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.stderr.write('fresh interpreter\\n')\n")
    env = request_env(tmp_path, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    before = dict(pool.counts)
    fresh = pool.run(["--version"], tmp_path, env, 120)
    assert fresh.returncode == 0 and fresh.stdout.startswith("replayer "), fresh
    assert "fresh interpreter" in fresh.stderr
    assert pool.counts["fallback"] == before["fallback"] + 1
    forked = pool.run(["--version"], tmp_path, request_env(tmp_path), 120)
    assert "fresh interpreter" not in forked.stderr and forked.stdout == fresh.stdout
    assert pool.counts["forked"] == before["forked"] + 1


def test_a_cwd_shadowing_a_preloaded_module_falls_back(pool, tmp_path):
    (tmp_path / "loguru.py").write_text("raise SystemExit('the cwd loguru was imported')\n")
    before = pool.counts["fallback"]
    result = pool.run(["--version"], tmp_path, request_env(tmp_path), 120)
    assert pool.counts["fallback"] == before + 1
    assert result.returncode == 1 and "the cwd loguru was imported" in result.stderr, "a fresh `-m` imports it first"


def test_another_import_time_value_gets_its_own_zygote(pool, tmp_path):
    """SSL_CERT_FILE is read by aiohttp's import-time SSL context: a request with another value is
    served by a zygote started with it, not by the first one."""
    first = next(iter(pool.zygotes.values()))
    env = request_env(tmp_path, SSL_CERT_FILE=str(tmp_path / "ca.pem"))
    result = pool.run(["--version"], tmp_path, env, 120)
    assert result.returncode == 0, result.stderr
    serving = pool.zygotes[cli_zygote.startup_signature(env, pool.facts)]
    assert serving is not first and serving.process.pid != first.process.pid


def test_the_zygote_imports_what_the_cli_would_and_nothing_it_hides(pool):
    facts = pool.facts
    assert {"runner", "mlflow", "loguru", "fire", "requests"} <= set(facts["modules"])
    assert not {"numpy", "pandas", "scipy", "pyarrow"} & set(facts["modules"]), "runner.cli.NOT_IN_IMAGE"
    assert {"MLFLOW_LOGGING_LEVEL", "TMPDIR", "SSL_CERT_FILE"} <= {key for key, _ in cli_zygote.startup_signature({}, facts)}


def test_the_cli_env_defaults_are_the_ones_runner_sets():
    """CLI_ENV_DEFAULTS copies what runner.core.retry.configure and logs.quiet_libraries setdefault."""
    script = ("import json, os; before = dict(os.environ)\n"
              "from runner.core import logs, retry; logs.quiet_libraries(); retry.configure()\n"
              "print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))")
    env = {k: v for k, v in os.environ.items() if k not in cli_zygote.CLI_ENV_DEFAULTS}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    import json

    assert json.loads(out) == cli_zygote.CLI_ENV_DEFAULTS


def test_a_forked_child_gets_fresh_random_and_tempfile_names():
    """Python reseeds `random` in a forked child (os.register_at_fork) and tempfile renews its name
    generator when the pid changes: two children of one parent draw differently."""
    script = ("import os, random, tempfile\n"
              "random.random(); tempfile.mktemp()\n"
              "for _ in range(2):\n"
              "    if os.fork() == 0:\n"
              "        print(random.random(), os.path.basename(tempfile.mktemp()), flush=True); os._exit(0)\n"
              "    os.wait()\n")
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    first, second = lines[0].split(), lines[1].split()
    assert first[0] != second[0] and first[1] != second[1], lines
