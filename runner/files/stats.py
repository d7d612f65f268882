"""What a copy call did, and its progress in bytes."""
from __future__ import annotations

from dataclasses import dataclass, field

from runner.core.progress import Progress
from runner.core.records import ArtifactRef

PROGRESS_FLOOR = 64 << 20  # a copy smaller than this logs no progress lines of its own


@dataclass
class CopyStats:
    """What one copy call did; merged across runs for a summary."""

    files: int = 0  # selected for copying
    copied: int = 0
    server_side: int = 0
    streamed: int = 0
    skipped_existing: int = 0  # already there with the same size and md5
    skipped_filtered: int = 0  # left out by include/exclude
    skipped_too_large: list[str] = field(default_factory=list)  # "path (size)" over --max-artifact-size
    listed: int = 0  # refs recorded by --artifacts list
    bytes_copied: int = 0  # bytes that landed (server-side or streamed)
    bytes_streamed: int = 0  # of those, bytes that went through this process
    blocks_reused: int = 0  # staged blocks a resumed upload did not send again
    hashed: int = 0  # source files without an MD5 that were hashed here
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    refs: list[ArtifactRef] = field(default_factory=list)  # what the destination holds, with md5

    def merge(self, other: "CopyStats") -> "CopyStats":
        for name, value in vars(other).items():
            mine = getattr(self, name)
            setattr(self, name, mine + value)
        return self

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        parts = [
            f"{self.copied} copied ({self.server_side} server-side, {self.streamed} streamed, {self.bytes_copied / 1e6:.1f} MB)",
            f"{self.skipped_existing} already there",
        ]
        if self.skipped_filtered:
            parts.append(f"{self.skipped_filtered} filtered out")
        if self.skipped_too_large:
            parts.append(f"{len(self.skipped_too_large)} over the size limit")
        if self.listed:
            parts.append(f"{self.listed} listed")
        if self.blocks_reused:
            parts.append(f"{self.blocks_reused} blocks reused")
        if self.failed:
            parts.append(f"{len(self.failed)} failed (first: {self.failed[0][0]}: {self.failed[0][1]})")
        return ", ".join(parts)

    def to_json(self) -> dict:
        data = {k: v for k, v in vars(self).items() if k != "refs"}
        data["failed"] = [list(f) for f in self.failed]
        return data


class BytesProgress(Progress):
    """runner.core.progress.Progress counted in bytes, shown in MB."""

    def __init__(self, label: str, total_bytes: int, every: float = 2.0):
        super().__init__(label, total_bytes, unit="MB", every=every, scale=1e6)
