"""Which runs a migration takes: one object, applied to roots; children follow their root."""
from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence, TypeVar

from runner.core.errors import UsageError

T = TypeVar("T")


@dataclass
class Filters:
    experiments: list[str] = field(default_factory=list)  # names or globs; empty = all
    include: list[str] = field(default_factory=list)  # run ids or run names
    since: int | None = None  # start time, epoch ms, inclusive
    until: int | None = None  # start time, epoch ms, exclusive
    status: list[str] = field(default_factory=list)
    limit: int | None = None  # number of roots
    include_deleted: bool = False
    shard: tuple[int, int] | None = None  # (index, count): only roots whose id hashes to index
    tags: dict[str, str] = field(default_factory=dict)  # the root must carry every one of these tags
    max_depth: int | None = None  # descendants deeper than this are left out; 0 = roots only
    exclude: list[str] = field(default_factory=list)  # globs on run id or name: a match drops its subtree

    @classmethod
    def build(
        cls,
        experiments=None,
        include=None,
        include_file=None,
        since=None,
        until=None,
        status=None,
        limit=None,
        include_deleted=False,
        shard=None,
        tags=None,
        max_depth=None,
        exclude=None,
    ) -> "Filters":
        """Build from CLI/YAML values: comma strings or lists, dates as ISO text."""
        ids = as_list(include)
        if include_file:
            path = Path(include_file)
            if not path.is_file():
                raise UsageError(f"--include-file {include_file}: no such file; give a file with one run id or name per line")
            ids += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
        return cls(
            experiments=as_list(experiments),
            include=ids,
            since=parse_time(since, "--since"),
            until=parse_time(until, "--until"),
            status=parse_statuses(status),
            limit=as_int(limit, "--limit", minimum=1),
            include_deleted=as_bool(include_deleted, "--include-deleted"),
            shard=parse_shard(shard),
            tags=parse_tags(tags),
            max_depth=parse_depth(max_depth),
            exclude=as_list(exclude),
        )

    def wants_experiment(self, name: str) -> bool:
        return not self.experiments or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.experiments)

    def named(self, run_id: str, name: str) -> bool:
        """Whether --include names this run (always true without --include)."""
        return not self.include or run_id in self.include or name in self.include

    def in_shard(self, root_id: str) -> bool:
        """Whether this root tree belongs to `--shard i/N` (always true without --shard).

        Roots are dealt out by a stable hash of the root's source id, so N parallel steps
        given 0/N .. N-1/N take every tree exactly once, whichever machine runs them.
        """
        if self.shard is None:
            return True
        index, count = self.shard
        return shard_of(root_id, count) == index

    def wants_tags(self, tags: dict[str, str]) -> bool:
        """Whether a root carries every `--tags k=v` (always true without --tags)."""
        return all(tags.get(key) == value for key, value in self.tags.items())

    def excludes(self, run_id: str, *names: str) -> bool:
        """Whether `--exclude` matches this run's id or one of its names: the run and its subtree are left out."""
        return any(fnmatch.fnmatchcase(text, pattern) for pattern in self.exclude for text in (run_id, *names) if text)

    def within_depth(self, depth: int) -> bool:
        """Whether a run at this depth (0 = root) is taken under `--max-depth`."""
        return self.max_depth is None or depth <= self.max_depth

    def wants_root(self, start_time: int | None, status: str) -> bool:
        if self.status and status.upper() not in self.status:
            return False
        return self.in_window(start_time)

    def in_window(self, time_ms: int | None) -> bool:
        """Whether a time (epoch ms: a run's start, a trace's request) is within --since (inclusive)
        and --until (exclusive); a missing time is outside any bound that is set."""
        if self.since is not None and (time_ms is None or time_ms < self.since):
            return False
        return self.until is None or (time_ms is not None and time_ms < self.until)

    def to_json(self) -> dict:
        return asdict(self)


def spread(items: Sequence[T], n: int) -> list[T]:
    """`n` items evenly over a sequence, in its order (all of it when it holds no more): `replayer estimate`'s
    sample, so that a workspace whose first experiment is unlike the rest is still sampled across."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def shard_of(root_id: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(root_id.encode("utf-8")).digest()[:8], "big") % count


def parse_shard(value) -> tuple[int, int] | None:
    """`i/N` (0 <= i < N) -> (i, N); nothing or `0/1` -> None (no sharding)."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected i/N, like 0/4 for the first of four shards") from None
    if not 0 <= shard[0] < shard[1]:
        raise UsageError(f"--shard {text!r}: expected 0 <= i < N, like 0/4 .. 3/4")
    return None if shard[1] == 1 else shard


def parse_tags(value) -> dict[str, str]:
    """`k=v,k2=v2`, a list of `k=v`, or a YAML mapping -> {k: v}."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    tags = {}
    for item in as_list(value):
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--tags {item!r}: expected KEY=VALUE, several separated by commas (team=risk,stage=prod)")
        tags[key.strip()] = text.strip()
    return tags


def parse_depth(value) -> int | None:
    """`--max-depth N`: N >= 0 (0 = roots only); nothing -> no limit."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise UsageError(f"--max-depth {value!r}: expected a whole number >= 0 (0 = root runs only, 1 = their children too, ...)")
    return int(text)


def as_bool(value, flag: str) -> bool:
    """True/False from a flag or YAML; Azure ML renders boolean inputs as text, in either case."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise UsageError(f"{flag} {value!r}: expected true or false")


def as_int(value, flag: str, minimum: int | None = None, default: int | None = None) -> int | None:
    """A whole number from a flag or YAML (flags arrive as text: runner.cli keeps every value a
    string); nothing -> `default`; anything else -> one line naming the flag."""
    if value is None or value == "":
        return default
    text = str(value).strip()
    if isinstance(value, bool) or not text.lstrip("-").isdigit():
        raise UsageError(f"{flag} {value!r}: expected a whole number" + (f" >= {minimum}" if minimum is not None else ""))
    number = int(text)
    if minimum is not None and number < minimum:
        raise UsageError(f"{flag} {number}: expected {minimum} or more")
    return number


def as_seconds(value, flag: str) -> float:
    """A positive number of seconds from a flag or YAML."""
    try:
        seconds = float(str(value).strip())
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected a number of seconds") from None
    if not seconds > 0:
        raise UsageError(f"{flag} {value!r}: expected more than 0 seconds")
    return seconds


def as_rate(value, flag: str) -> float:
    """A positive, finite number of requests per second from a flag or YAML."""
    try:
        rate = float(str(value).strip())
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected requests per second, e.g. 100") from None
    if not 0 < rate < float("inf"):
        raise UsageError(f"{flag} {value!r}: expected more than 0 requests per second, and a finite number")
    return rate


STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")  # MLflow's run statuses (Azure ML's map onto them)


def parse_statuses(value) -> list[str]:
    """`--status FINISHED,FAILED`: each one a known status, or one line naming the closest."""
    import difflib

    statuses = [s.upper() for s in as_list(value)]
    for status in statuses:
        if status not in STATUSES:
            close = difflib.get_close_matches(status, STATUSES, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"--status {status}: not a run status; {hint}expected one or more of {', '.join(STATUSES)}")
    return statuses


def as_list(value) -> list[str]:
    """Accept `a,b`, ['a', 'b'] or a tuple (python-fire turns `a,b` into a tuple)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def parse_time(value, flag: str) -> int | None:
    """ISO date or datetime (UTC when no zone is given; 20240501 is 2024-05-01), or epoch
    milliseconds (13 digits). Any other run of digits is refused, not misread."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(int(value))
    text = str(value).strip()
    if text.isdigit() and len(text) == 8:
        text = f"{text[:4]}-{text[4:6]}-{text[6:]}"
    elif text.isdigit():
        if len(text) != 13:
            raise UsageError(f"{flag} {text}: not a date; use YYYY-MM-DD, an ISO time like 2024-05-01T12:00:00Z, or epoch milliseconds (13 digits)")
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: not a date; use ISO form like 2024-05-01 or 2024-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)
