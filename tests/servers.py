"""Real `mlflow server` processes on free loopback ports, for tests and benchmarks."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(service, log: Path, ready, what: str, timeout: float) -> None:
    """Poll `ready()` until it answers; a process that exits or never answers is stopped and reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        if ready():
            return
        time.sleep(0.3)
    service.stop()
    raise RuntimeError(f"{what} did not start in {timeout}s")


class MlflowServer:
    """`mlflow server` with a sqlite backend and served artifacts, in its own folder."""

    def __init__(self, folder: Path, workers: int = 1):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.process: subprocess.Popen | None = None

    def artifact_args(self) -> list[str]:
        """Where the server keeps artifacts: served by itself, under the folder (a subclass may differ)."""
        return ["--artifacts-destination", str(self.folder / "artifacts"), "--serve-artifacts"]

    def start(self, timeout: float = 90) -> "MlflowServer":
        self.launch()
        return self.wait(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to answer (`start_all` starts several at once:
        each takes seconds to import and migrate its store)."""
        log = open(self.folder / "server.log", "wb")
        self.process = subprocess.Popen(
            [
                MLFLOW, "server",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                *self.artifact_args(), "--workers", str(self.workers),
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True,
            # No background job runner (huey consumers): it costs CPU and start-up time, and no
            # test needs server-side jobs.
            env={**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )

    def wait(self, timeout: float = 90) -> "MlflowServer":
        wait_ready(self, self.folder / "server.log", self.healthy, f"mlflow server on {self.uri}", timeout)
        return self

    def healthy(self) -> bool:
        try:
            return requests.get(self.uri + "/health", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        stop_group(self.process, signal.SIGTERM, 15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def start_all(*servers: MlflowServer, timeout: float = 90) -> tuple[MlflowServer, ...]:
    """Start servers side by side, then wait for each: one start costs about 7 s, mostly imports."""
    for server in servers:
        server.launch()
    try:
        for server in servers:
            server.wait(timeout)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def stop_group(process: subprocess.Popen | None, sig: int, grace: float) -> None:
    """Stop a process started in its own group (server and workers alike): `sig`, then SIGKILL after `grace` s."""
    if process and process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
