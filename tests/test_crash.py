"""Crash consistency at random moments: SIGKILL a migration at a seeded random time, rerun,
and the target holds every source run exactly once and verifies clean. Embedded stores keep
each round to seconds; the kill lands anywhere from start-up to the last completion tag."""
from __future__ import annotations

import random
import signal
import time
from collections import Counter

import pytest

from conftest import run_cli
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
