"""Crash consistency at random moments: SIGKILL a migration at a seeded random time, rerun,
and the target holds every source run exactly once and verifies clean. Embedded stores keep
each round to seconds; the kill lands anywhere from start-up to the last completion tag."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import ROOT, run_cli
from runner.mlflow import uris
from test_failures import replayed, seed_tree, start_migrate, verify_clean

SEEDS = [11, 23, 37, 51]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash") / "src"
    uris.open_client(str(folder), create=True)
    ids = seed_tree(uris.tracking_uri(str(folder)), "crash", roots=12)
    return folder, ids


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_at_a_random_moment_then_rerun_is_exact(source, tmp_path, seed):
    folder, source_ids = source
    target = tmp_path / "dst"
    args = ["--source", str(folder), "--target", str(target), "--parallel", "3"]
    delay = random.Random(seed).uniform(2.0, 7.0)  # start-up takes ~2 s; a full copy several more
    with open(tmp_path / "killed.stderr", "wb") as stderr:
        process = start_migrate(args, tmp_path, stderr)
        deadline = time.monotonic() + delay
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    rerun = run_cli("migrate", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    verify_clean("--source", str(folder), "--target", str(target), cwd=tmp_path)
    client = uris.open_client(str(target), create=False)
    assert replayed(client) == Counter({run_id: 1 for run_id in source_ids})


# mlflow builds a new sqlite store through alembic migrations; sqlite's batch migrations copy
# tables through `_alembic_tmp_<table>`. A migration killed there used to leave a store no rerun
# could open ("table _alembic_tmp_params already exists"): this kills exactly there.
KILLED_IN_SCHEMA = """
import os, signal
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "before_cursor_execute")
def kill(conn, cursor, statement, *args):
    if "_alembic_tmp_" in statement:
        os.kill(os.getpid(), signal.SIGKILL)

from runner.cli import main
main()
"""


def test_killed_while_creating_the_target_store_then_rerun_is_exact(source, tmp_path):
    folder, source_ids = source
    target = tmp_path / "dst"
    args = ["--source", str(folder), "--target", str(target), "--parallel", "3"]
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_SCHEMA, "migrate", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "REPLAYER_LOG_DIR": str(tmp_path / "logs")})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (target / "mlflow.db").exists()  # nothing half-made in place: only scratch, removed by the rerun
    rerun = run_cli("migrate", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not list(target.glob("mlflow.db.creating-*"))
    verify_clean("--source", str(folder), "--target", str(target), cwd=tmp_path)
    client = uris.open_client(str(target), create=False)
    assert replayed(client) == Counter({run_id: 1 for run_id in source_ids})


def test_a_store_left_half_made_by_an_older_version_is_made_anew(source, tmp_path):
    """Stores made before creation was atomic could be left with alembic's scratch tables and no
    run: the next migration into it starts it anew instead of failing on every rerun."""
    folder, source_ids = source
    target = tmp_path / "dst"
    target.mkdir()
    env = {**os.environ, "REPLAYER_LOG_DIR": str(tmp_path / "logs")}
    made_in_place = KILLED_IN_SCHEMA.replace("from runner.cli import main\nmain()", (
        "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore\n"
        f"SqlAlchemyStore('sqlite:///{target / 'mlflow.db'}', '{(target / 'artifacts').as_uri()}')\n"))
    killed = subprocess.run([sys.executable, "-c", made_in_place], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -signal.SIGKILL and (target / "mlflow.db").is_file(), killed.stderr[-2000:]
    args = ["--source", str(folder), "--target", str(target)]
    rerun = run_cli("migrate", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "left half-made by a killed process; making it anew" in rerun.stderr
    client = uris.open_client(str(target), create=False)
    assert replayed(client) == Counter({run_id: 1 for run_id in source_ids})


# A Ctrl-C aimed at the moment that matters: from inside the process, right after the 3rd run
# is finished (twice for the "stop now" case).
INTERRUPTED = """
import os, signal, sys
from contextlib import contextmanager
import runner.engine.replay as replay
from runner.mlflow.target import DirectTarget

finished, presses, events = [0], int(os.environ["PRESSES"]), []
original, handled = DirectTarget.finish, replay.stop_on_interrupt

@contextmanager
def watched(in_flight):  # the event the first press sets: the second press comes after it
    with handled(in_flight) as stopping:
        events.append(stopping)
        yield stopping

def finish(self, run_id, job):
    original(self, run_id, job)
    finished[0] += 1
    if finished[0] == 3:
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
            events[0].wait(60)

replay.stop_on_interrupt = watched
DirectTarget.finish = finish
from runner.cli import main
main()
"""


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_after_the_runs_in_flight_and_a_rerun_resumes(source, tmp_path, presses):
    folder, source_ids = source
    target = tmp_path / "dst"
    args = ["--source", str(folder), "--target", str(target), "--parallel", "2"]
    env = {**os.environ, "REPLAYER_LOG_DIR": str(tmp_path / "logs"), "PRESSES": str(presses)}
    stopped = subprocess.run([sys.executable, "-c", INTERRUPTED, "migrate", *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env=env)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    said = "stopping after" if presses == 1 else "stopping now"
    assert said in stopped.stderr and "rerun the same command to resume" in stopped.stderr, stopped.stderr[-2000:]
    copied = len(replayed(uris.open_client(str(target), create=False)))
    assert 3 <= copied < len(source_ids)  # stopped early, nothing queued was started
    rerun = run_cli("migrate", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "runs of this source are in the target already" in rerun.stderr
    verify_clean("--source", str(folder), "--target", str(target), cwd=tmp_path)
    assert replayed(uris.open_client(str(target), create=False)) == Counter({run_id: 1 for run_id in source_ids})
