"""Shared fixtures: one pair of real mlflow servers per test session, helpers to run the CLI.

Tests isolate themselves on the shared servers with unique experiment names and a unique
`--workspace` (the ledger key), so no test sees another's runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import MlflowServer, start_all  # noqa: E402
import cli_zygote  # noqa: E402

import runner.ends  # noqa: E402,F401 - both ends loaded, as the CLI loads them: their stores register with runner.files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """(source, target) mlflow servers on loopback, sqlite-backed, serving artifacts."""
    base = tmp_path_factory.mktemp("servers")
    source, target = start_all(MlflowServer(base / "source"), MlflowServer(base / "target"))
    yield source, target
    source.stop()
    target.stop()


@contextmanager
def kept_mlflow_globals():
    """mlflow's fluent API keeps process-wide state: `mlflow.set_tracking_uri` also exports
    MLFLOW_TRACKING_URI into os.environ (so every later CLI subprocess inherits it), and
    `set_experiment` / `set_active_model` leave an active experiment and model. Whatever a block
    sets through it is undone when the block ends."""
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking
    import mlflow.tracking.fluent as fluent

    env, uri, experiment = os.environ.get("MLFLOW_TRACKING_URI"), tracking._tracking_uri, fluent._active_experiment_id
    try:
        yield
    finally:
        tracking.set_tracking_uri(uri)  # also resets the tracer provider, which holds the URI
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env
        fluent._active_experiment_id = experiment
        mlflow.clear_active_model()


@pytest.fixture(scope="module", autouse=True)
def mlflow_globals_stay_in_their_module():
    """A module that seeds through mlflow's fluent API must not hand its server to the next module
    of the same xdist worker (test_step once read test_mlflow3_traces' server as MLFLOW_TRACKING_URI)."""
    with kept_mlflow_globals():
        yield


@pytest.fixture
def unique():
    """A short unique token for experiment and workspace names."""
    return uuid.uuid4().hex[:8]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m runner ...` as a real process; returns the completed process.

    The process is forked from a warm interpreter that has the CLI's libraries imported (tests/cli_zygote.py)
    unless REPLAYER_TEST_NO_ZYGOTE=1, or the request needs a fresh interpreter; either way it is a process
    of its own running the real CLI code, with this cwd, exactly this environment and its own stdout/stderr."""
    cwd = cwd or ROOT
    env = {**os.environ, "REPLAYER_LOG_DIR": str(cwd / "logs"), **(env or {})}
    if os.environ.get(cli_zygote.OFF_VARIABLE) == "1":
        return run_real_cli(*args, cwd=cwd, timeout=timeout, env=env)
    return zygotes().run(args, Path(cwd), env, timeout)


def run_real_cli(*args: str, cwd: Path, timeout: float = 300, env: dict) -> subprocess.CompletedProcess:
    """`python -m runner ...` started from scratch: the entry point itself, interpreter start-up included."""
    return cli_zygote.real_run(args, cwd, env, timeout)


_ZYGOTES: list = []


def zygotes() -> "cli_zygote.ZygotePool":
    """This worker's zygote pool, made on first use (a session fixture would not reach module-level helpers)."""
    if not _ZYGOTES:
        _ZYGOTES.append(cli_zygote.ZygotePool())
    return _ZYGOTES[0]


def pytest_sessionfinish(session, exitstatus):
    """The zygotes end with the session (they also end on their own when this process goes: stdin closes)."""
    if _ZYGOTES:
        _ZYGOTES.pop().stop()


# `python -c` body: the CLI, with one client call patched to SIGKILL the process right after its
# Nth return. argv: "module:Owner.method", N, then the CLI's own arguments.
KILLED_AFTER_CALL = """
import importlib, os, signal, sys
target, after = sys.argv.pop(1), int(sys.argv.pop(1))
module, _, attribute = target.partition(":")
owner_name, method = attribute.split(".")
owner = getattr(importlib.import_module(module), owner_name)
original, returned = getattr(owner, method), []

def then_die(self, *args, **kwargs):
    answer = original(self, *args, **kwargs)
    returned.append(1)
    if len(returned) == after:
        os.kill(os.getpid(), signal.SIGKILL)
    return answer

setattr(owner, method, then_die)
from runner.cli import main
main()
"""


def run_killed_after(call: str, count: int, *args: str, cwd: Path, env: dict | None = None) -> None:
    """`replayer ARGS`, killed by SIGKILL right after `call` ("module:Owner.method") returned for
    the `count`th time: a kill aimed at a chosen moment, not at a time."""
    import signal

    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_CALL, call, str(count), *args], cwd=cwd, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "REPLAYER_LOG_DIR": str(cwd / "logs"), **(env or {})})
    assert killed.returncode == -signal.SIGKILL, f"exit {killed.returncode}: {killed.stderr[-2000:]}"


def replayed_runs(tracking_uri: str, workspace: str) -> dict[str, str]:
    """original_job_id -> run id of every run replayed from `workspace` into the store at `tracking_uri`."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(ids, f"tags.original_workspace = '{workspace}'", ViewType.ALL, max_results=1000)
    return {r.data.tags["original_job_id"]: r.info.run_id for r in runs}

