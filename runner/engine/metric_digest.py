"""Metric histories compared in flat memory: a count and an order-free sum of SHA-256 per key
(a Digest); a key whose digests differ is counted exactly, partitioned on disk past PART_POINTS."""
from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

from runner.core.records import MetricPoint

# A metric history may hold millions of points: each side streams into a Digest, and only a key whose
# digests differ is read again, to count its missing and extra points (count_differences).
PART_POINTS = 200_000  # points one counting step holds (~25 MB); more are spilled to partitions on disk
MAX_PARTS = 512  # partition files a side at most (open at once while spilling)
MASK = (1 << 256) - 1
COUNTING = threading.Lock()  # one big counting step at a time: verify's threads share its memory bound
SMALL = PART_POINTS // 8  # a count this small needs no turn: 8 threads of them hold one bound


@dataclass
class Digest:
    """A multiset of points in O(1) memory: how many, and the sum of their hashes mod 2**256.

    The sum does not depend on the order the points come in, and a duplicate counts twice.
    """

    count: int = 0
    total: int = 0

    def add(self, hashed: bytes) -> None:
        self.count += 1
        self.total = (self.total + int.from_bytes(hashed, "big")) & MASK


def point_hash(point: MetricPoint) -> bytes:
    """SHA-256 of a point's step, timestamp and value (its key is the digest's), equal where
    MetricPoint.identity is: NaN equals NaN, -0.0 equals 0.0, 1 equals 1.0."""
    value = float(point.value)
    text = "nan" if math.isnan(value) else (value or 0.0).hex()  # `or` turns -0.0 into 0.0
    return hashlib.sha256(f"{int(point.step)} {int(point.timestamp)} {text}".encode()).digest()


def add_point(digests: dict[str, Digest], point: MetricPoint) -> None:
    """`point` into its key's Digest (one made for a key first seen)."""
    digests.setdefault(point.key, Digest()).add(point_hash(point))


def digests_by_key(points: Iterable[MetricPoint]) -> dict[str, Digest]:
    """A stream of points over any keys as one Digest per key: what verify wants of a source run."""
    digests: dict[str, Digest] = {}
    for point in points:
        add_point(digests, point)
    return digests


def count_differences(
    want: Callable[[], Iterable[MetricPoint]], have: Callable[[], Iterable[MetricPoint]], points: int, scratch: Path,
    part_points: int = PART_POINTS,
) -> tuple[int, int]:
    """(missing, extra) between two multisets of points that each callable streams afresh.

    `points` (both sides together) sets how many partitions keep one count within `part_points`
    points: each side's hashes are spilled to partition files by hash (32 bytes a point), then
    each partition is counted alone. Up to `part_points` points are counted straight from the
    streams, with no file.
    """
    parts = min(MAX_PARTS, -(-points // part_points))
    if parts <= 1:
        with COUNTING if points > SMALL else nullcontext():
            return net_counts(map(point_hash, want()), map(point_hash, have()))
    folder = Path(tempfile.mkdtemp(prefix="metric-", dir=scratch))
    try:
        spill(want(), folder / "want", parts)
        spill(have(), folder / "have", parts)
        missing = extra = 0
        for part in range(parts):
            with COUNTING:
                more, less = net_counts(read_hashes(folder / f"want.{part}"), read_hashes(folder / f"have.{part}"))
            missing, extra = missing + more, extra + less
        return missing, extra
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def net_counts(want: Iterable[bytes], have: Iterable[bytes]) -> tuple[int, int]:
    net = Counter(want)
    net.subtract(have)
    return sum(n for n in net.values() if n > 0), -sum(n for n in net.values() if n < 0)


def spill(points: Iterable[MetricPoint], stem: Path, parts: int) -> None:
    with ExitStack() as stack:
        files = [stack.enter_context(open(f"{stem}.{part}", "wb")) for part in range(parts)]
        for point in points:
            hashed = point_hash(point)
            files[int.from_bytes(hashed[:4], "big") % parts].write(hashed)


def read_hashes(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as file:
        while hashed := file.read(32):
            yield hashed
