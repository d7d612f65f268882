"""A progress line for long work: done/total, rate, ETA; logged at most every few seconds."""
from __future__ import annotations

import threading
import time

from loguru import logger


class Progress:
    def __init__(self, label: str, total: int, unit: str = "runs", every: float = 2.0):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.done = 0
        self.started = self._last = time.monotonic()
        self._lock = threading.Lock()

    def tick(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            if now - self._last < self.every and self.done < self.total:
                return
            self._last = now
        logger.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        eta = f"{left:.0f}s" if left != float("inf") else "?"
        return f"{self.label}: {self.done}/{self.total}{share} {rate:.1f} {self.unit}/s ETA {eta}"
