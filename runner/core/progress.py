"""A progress line for long work: done/total, rate, ETA; logged at most every few seconds."""
from __future__ import annotations

import threading
import time

from loguru import logger


class Progress:
    def __init__(self, label: str, total: int, unit: str = "runs", every: float = 2.0, scale: float = 1):
        # `scale` shows counts in bigger units: bytes counted, MB shown with scale=1e6.
        self.label, self.total, self.unit, self.every, self.scale = label, total, unit, every, scale
        self.done = 0
        self.skipped = 0  # done without work (already there): left out of rate and ETA
        self.started = self._last = time.monotonic()
        self._lock = threading.Lock()

    def tick(self, count: int = 1, skipped: bool = False) -> None:
        with self._lock:
            self.done += count
            self.skipped += count if skipped else 0
            now = time.monotonic()
            if now - self._last < self.every and self.done < self.total:
                return
            self._last = now
        logger.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.skipped) / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        eta = f"{left:.0f}s" if left != float("inf") else "?"
        if self.scale == 1:
            amount = f"{self.done}/{self.total}"
        else:
            amount = f"{self.done / self.scale:.1f}/{self.total / self.scale:.1f} {self.unit}"
        skipped = f", {self.skipped} already there" if self.skipped else ""
        return f"{self.label}: {amount}{share}{skipped} {rate / self.scale:.1f} {self.unit}/s ETA {eta}"
