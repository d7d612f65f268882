"""`replayer wait`: wait on many Azure ML jobs at once, then exit with the worst outcome.

The "job wait" pattern for CI/CD callers: poll every unfinished job (a few at a time), sleep with
a backoff that grows while nothing changes (from `poll` up to `max_poll` seconds, jittered) and
starts over when something does, and stop at the first of "all finished" or `timeout`. A poll
that fails for a passing reason (throttling, 5xx after azure-core's own retries) counts as "no
news" for that job; a job that does not exist is bad input.

Exit codes, worst first: 1 some job failed, 3 some job was canceled, 4 timed out with jobs still
unfinished, 0 every job completed (2 stays "bad input", as everywhere in the CLI).
"""
from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loguru import logger

from runner.core.errors import EXIT_OK, UsageError

EXIT_FAILED = 1
EXIT_CANCELED = 3
EXIT_TIMED_OUT = 4
COMPLETED = "Completed"
FAILED = ("Failed",)
CANCELED = ("Canceled", "Cancelled")
TERMINAL = (COMPLETED, *FAILED, *CANCELED)


class JobNotFound(Exception):
    pass


@dataclass
class WaitResult:
    statuses: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)  # job name -> what it replays (original id)
    timed_out: bool = False
    seconds: float = 0.0
    polls: int = 0

    @property
    def exit_code(self) -> int:
        values = set(self.statuses.values())
        if values & set(FAILED):
            return EXIT_FAILED
        if values & set(CANCELED):
            return EXIT_CANCELED
        if any(v not in TERMINAL for v in values):
            return EXIT_TIMED_OUT
        return EXIT_OK

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for status in self.statuses.values():
            out[status] = out.get(status, 0) + 1
        return out


def wait_for(
    names: list[str],
    get_status: Callable[[str], str],
    *,
    timeout: float = 86_400,
    poll: float = 10.0,
    max_poll: float = 60.0,
    parallel: int = 8,
    labels: dict[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WaitResult:
    """Poll `get_status(name)` for every job until all are terminal or `timeout` seconds pass."""
    if not names:
        raise UsageError("nothing to wait for: give job names, or --from a file listing them")
    if poll <= 0 or max_poll < poll or timeout < 0:
        raise UsageError(f"--poll {poll} / --max-poll {max_poll} / --timeout {timeout}: expected 0 < poll <= max-poll and timeout >= 0")
    started = clock()
    deadline = started + timeout
    result = WaitResult({name: "Unknown" for name in dict.fromkeys(names)}, dict(labels or {}))
    interval = poll
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="wait") as pool:
        while True:
            pending = [n for n, s in result.statuses.items() if s not in TERMINAL]
            changed = False
            for name, status in zip(pending, pool.map(lambda n: _status(get_status, n), pending)):
                if status is not None and status != result.statuses[name]:
                    logger.info("{} {}: {}", name, result.labels.get(name, ""), status)
                    result.statuses[name] = status
                    changed = True
            result.polls += 1
            if all(s in TERMINAL for s in result.statuses.values()):
                break
            left = deadline - clock()
            if left <= 0:
                result.timed_out = True
                break
            interval = poll if changed else min(interval * 1.5, max_poll)
            sleep(min(left, interval * random.uniform(0.8, 1.2)))
    result.seconds = clock() - started
    return result


def _status(get_status: Callable[[str], str], name: str) -> str | None:
    try:
        return get_status(name)
    except JobNotFound:
        raise UsageError(f"job {name} not found in the target workspace; check the name (or the --from file)") from None
    except Exception as error:  # noqa: BLE001 - a passing failure to poll is "no news"; the next round asks again
        logger.warning("could not poll {}: {}: {}", name, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return None


def read_names(path: str) -> tuple[list[str], dict[str, str]]:
    """Job names from a file: the JSON report of `replayer submit`, or one name per line (# comments)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--from {path}: no such file; give the --report of `replayer submit` or a file with one job name per line")
    text = file.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        names = [line.split("#")[0].strip() for line in text.splitlines()]
        return [n for n in names if n], {}
    rows = data.get("submitted", []) if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("name") for r in rows):
        raise UsageError(f"--from {path}: expected the JSON report of `replayer submit` (a `submitted` list of {{name, original_job_id}})")
    return [r["name"] for r in rows], {r["name"]: r.get("original_job_id", "") for r in rows}


def azureml_status(ml) -> Callable[[str], str]:
    """`get_status` for an MLClient: the job's status word (Completed, Failed, Running, ...)."""
    from azure.core.exceptions import ResourceNotFoundError

    def get(name: str) -> str:
        try:
            job = ml.jobs.get(name)
        except ResourceNotFoundError:
            raise JobNotFound(name) from None
        return str(getattr(job.status, "value", job.status) or "Unknown")

    return get


def print_table(result: WaitResult) -> None:
    width = max(len(n) for n in result.statuses)
    print(f"{'job':<{width}}  {'status':<12}  original")
    for name, status in result.statuses.items():
        print(f"{name:<{width}}  {status:<12}  {result.labels.get(name, '')}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts().items()))
    outcome = "timed out" if result.timed_out else "done"
    print(f"{len(result.statuses)} jobs: {counts}; {outcome} after {result.seconds:.0f}s and {result.polls} polls")
