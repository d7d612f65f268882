"""A bounded, read-only ramp that measures the request rate an endpoint allows (`replayer estimate`).

Azure documents no request rate for Azure ML's run history or its MLflow endpoint (MicrosoftDocs/
azure-docs, articles/machine-learning/resource-limits-capacity.md lists sizes and counts only); the
one public sign, mlflow/mlflow#11462, is persistent 429s after ~700 sequential requests at roughly
10/s. So the rate a migration will meet is measured on the user's own workspace, gently:

- one cheap idempotent read, the caller's `send` (a route the tool already uses; never a write);
- at a ramp: START_RATE requests/s, doubling every stage (STAGE_SECONDS, shorter when the time box
  needs it) up to `max_rate`, from a few threads, for at most `seconds` in all;
- the first 429 (or a 503 with Retry-After, Azure's other throttling answer, as runner.core.retry
  reads it) ends the ramp: the probe waits out the service's Retry-After;
- then confirms: a token bucket's burst lets a short stage carry more than the sustained rate (on
  the fake, 20/s with a burst of 40: a 2 s stage at 40/s went through whole, burst plus refill), so
  the best clean rate is held for CONFIRM_SECONDS; refused, the probe waits again and tries half of
  it, at most CONFIRMATIONS times. What the bucket refilled during the wait (about rate x wait
  tokens) can still inflate a confirmation by wait / CONFIRM_SECONDS of the rate at most, against
  burst / STAGE_SECONDS on the ramp. The last wait leaves the bucket as it found it for the
  migration to come.

The answer: the rate a confirmation carried out without a refusal (what it achieved, not what it
offered), `found` when a refusal was met (else the ramp's best clean stage: a lower bound),
`confirmed` when a confirmation held (a found rate that no confirmation held is half the lowest one
tried, and says so), and the latency (p50, p95) of the answers. Nothing here knows an endpoint, a
URL or a token.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from runner.core.errors import first_line

START_RATE = 5.0  # requests/s of the first stage: below the ~10/s of mlflow/mlflow#11462
STAGE_SECONDS = 2.0  # each stage's length: long enough for a bucket's burst to drain at the next rate
THREADS = 8  # requests in flight at most: at ~100 ms a request, 80/s before the probe itself is the bound
MAX_WAIT = 60.0  # longest Retry-After honoured (a longer one is reported, the probe does not sit on it)
CONFIRM_SECONDS = 4.0  # a found rate is held this long to drain what the bucket's burst lent the ramp
CONFIRMATIONS = 3  # the found rate, then half, then a quarter


@dataclass
class Answer:
    """What one read came back with: the HTTP status, and when the service throttled it the seconds it
    asked to wait (runner.core.retry.throttled_for: a 429, or a 503 with Retry-After); None otherwise."""
    status: int
    wait: float | None = None


@dataclass
class Stage:
    offered: float  # requests/s asked of the threads
    seconds: float  # how long the stage took
    sent: int = 0  # answers received (refusals included)
    throttled: int = 0
    errors: int = 0  # no answer, or a 5xx that is not a throttle
    refused: bool = False  # 401/403: the token was refused, no rate can be read

    @property
    def achieved(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def clean(self) -> bool:
        return self.sent > 0 and not self.throttled and not self.errors


@dataclass
class ProbeResult:
    name: str  # e.g. "target mlflow"
    rate: float = 0.0  # highest achieved rate of a clean stage, requests/s
    found: bool = False  # a refusal was met: `rate` is the service's, not a lower bound
    confirmed: bool = False  # a found rate held for CONFIRM_SECONDS without a refusal
    p50_ms: float | None = None
    p95_ms: float | None = None
    requests: int = 0
    throttled: int = 0
    errors: int = 0
    retry_after: float | None = None  # what the refusal asked for
    error: str | None = None  # the first failure's first line (never a URL with a token: senders keep none)
    stages: list[Stage] = field(default_factory=list)

    def describe(self) -> str:
        """`12.3/s (429 met)` or `>= 40.0/s (no 429)`."""
        if self.found:
            held = "held" if self.confirmed else f"none held {CONFIRM_SECONDS:.0f} s: half the lowest tried"
            return f"{self.rate:.1f}/s ({self.throttled} x 429 met, {held})"
        return f">= {self.rate:.1f}/s (no 429: lower bound)" if self.rate else "not measured"


def ramp(max_rate: float, seconds: float, start: float = START_RATE) -> tuple[list[float], float]:
    """The stages' rates (start, doubling, the last one max_rate) and each stage's length: STAGE_SECONDS,
    or less so that every stage fits in `seconds`."""
    rates = [min(start, max_rate)]
    while rates[-1] < max_rate:
        rates.append(min(rates[-1] * 2, max_rate))
    return rates, min(STAGE_SECONDS, seconds / len(rates))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def probe(send: Callable[[], Answer], max_rate: float, seconds: float, name: str = "", threads: int = THREADS,
          sleep: Callable[[float], None] = time.sleep) -> ProbeResult:
    """Ramp `send` up to `max_rate` requests/s for at most `seconds` (module docstring)."""
    result = ProbeResult(name)
    latencies: list[float] = []
    rates, stage_seconds = ramp(max_rate, seconds)
    for rate in rates:
        stage = add(result, run_stage(send, rate, stage_seconds, threads, latencies, result))
        if stage.clean:
            result.rate = max(result.rate, stage.achieved)
        if stage.throttled:
            result.found = True
            sleep(min(result.retry_after or 1.0, MAX_WAIT))  # the service's bucket refills before the next send
            confirm(send, result, threads, latencies, sleep)
            break
        if stage.sent == 0 or stage.refused:  # nothing answered, or not to us: more of the same says nothing new
            break
    result.p50_ms, result.p95_ms = percentile(latencies, 0.5), percentile(latencies, 0.95)
    return result


def confirm(send: Callable[[], Answer], result: ProbeResult, threads: int, latencies: list[float],
            sleep: Callable[[float], None]) -> None:
    """Hold the ramp's best clean rate for CONFIRM_SECONDS, halving after each refusal (module docstring)."""
    rate = result.rate
    for _ in range(CONFIRMATIONS):
        if rate <= 0:
            return
        stage = add(result, run_stage(send, rate, CONFIRM_SECONDS, threads, latencies, result))
        if stage.clean:
            result.rate, result.confirmed = stage.achieved, True
            return
        if not stage.throttled:  # errors, not a refusal: no rate in it
            return
        sleep(min(result.retry_after or 1.0, MAX_WAIT))
        rate /= 2
    result.rate = rate  # half the lowest refused: not held, and `describe` says so


def add(result: ProbeResult, stage: Stage) -> Stage:
    result.stages.append(stage)
    result.requests += stage.sent
    result.throttled += stage.throttled
    result.errors += stage.errors
    return stage


def run_stage(send: Callable[[], Answer], rate: float, seconds: float, threads: int, latencies: list[float],
              result: ProbeResult) -> Stage:
    """One stage: request i goes at start + i / rate from whichever thread is free; the first refusal stops it."""
    slots = iter(range(max(1, round(rate * seconds))))
    lock, stop = threading.Lock(), threading.Event()
    began = time.monotonic()
    stage = Stage(rate, seconds)

    def worker() -> None:
        while not stop.is_set():
            with lock:
                slot = next(slots, None)
            if slot is None or stop.wait(max(0.0, began + slot / rate - time.monotonic())):
                return
            sent = time.monotonic()
            try:
                answer = send()
            except Exception as error:  # noqa: BLE001 - a read that got no answer is counted, not raised
                answer, why = None, first_line(error)
            took = (time.monotonic() - sent) * 1000
            with lock:
                record(answer, took, stage, latencies, result, stop, None if answer else why)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="probe") as pool:
        for _ in range(threads):
            pool.submit(worker)
    stage.seconds = max(seconds, time.monotonic() - began)  # a stage that overran (slow answers) achieved less
    return stage


def record(answer: Answer | None, took_ms: float, stage: Stage, latencies: list[float], result: ProbeResult,
           stop: threading.Event, why: str | None) -> None:
    """Count one answer into its stage (under the stage's lock)."""
    if answer is None:
        stage.errors += 1
        result.error = result.error or why
        return
    stage.sent += 1
    if answer.wait is not None:
        stage.throttled += 1
        result.retry_after = max(result.retry_after or 0.0, answer.wait or 1.0)
        stop.set()
        return
    if answer.status >= 500 or answer.status in (401, 403):  # a refused token or a failing service: no rate in it
        stage.errors += 1
        result.error = result.error or f"HTTP {answer.status}"
        if answer.status in (401, 403):
            stage.refused = True
            stop.set()
        return
    latencies.append(took_ms)  # a 404 (a run the target does not have yet) is an answer like any other
