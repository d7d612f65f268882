"""Verify: compare source and target record by record; any difference is a failure.

Compared for every selected source job: presence and completion in the target, experiment,
name, status, start/end time, lifecycle, params, user tags (tool tags excluded), parent link,
full metric histories (every key, step, timestamp and value, NaN equal to NaN) and artifacts
(path, size, md5 of the bytes on both sides). With `--models`, registered models too (see
`runner.registry.compare_models`). With a rename file, experiments are expected under their new names.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from loguru import logger

from runner.artifacts import md5_file
from runner.ledger import PARENT_TAG, is_own_tag
from runner.mapping import USER_TAG, Mapping, source_user
from runner.model import TERMINAL_STATUSES, JobRecord, MetricPoint, decode_float
from runner.sources.mlflow import metric_history
from runner import limits as caps
from runner.limits import OVERFLOW_PATH, OVERFLOW_TAG, new_overflow
from runner.progress import Progress

# A metric history may hold millions of points: each side streams into a Digest, and only a key whose
# digests differ is read again, to count its missing and extra points (count_differences).
PART_POINTS = 200_000  # points one counting step holds (~25 MB); more are spilled to partitions on disk
MAX_PARTS = 512  # partition files a side at most (open at once while spilling)
MASK = (1 << 256) - 1
COUNTING = threading.Lock()  # one big counting step at a time: verify's threads share its memory bound
SMALL = PART_POINTS // 8  # a count this small needs no turn: 8 threads of them hold one bound


@dataclass
class Difference:
    job: str
    name: str
    field: str
    source: str
    target: str


@dataclass
class VerifyReport:
    source: dict
    target: dict
    compared: int = 0
    equal: int = 0
    models: int = 0  # registered models compared (with --models)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict:
        kinds = Counter(d.field for d in self.differences)
        return {
            "source": self.source,
            "target": self.target,
            "summary": {
                "compared": self.compared, "equal": self.equal, "differing": self.compared - self.equal,
                "models": self.models, "by_field": dict(kinds),
            },
            "differences": [asdict(d) for d in self.differences],
        }


def verify(source, target, parallel: int = 8, mapping: Mapping | None = None, models: list[str] | None = None,
           runs: bool = True) -> VerifyReport:
    """Source against target: every selected run (unless `runs=False`, e.g. the pipeline's models
    step) and the registered models `models` names."""
    mapping = mapping or Mapping()
    report = VerifyReport(source=source.describe(), target=target.describe())
    if target.client is None:
        report.differences.append(Difference("", "", "target", "exists", "no store at that location"))
        return report
    ledger = target.ledger(source.workspace)
    checker = JobChecker(source, target, ledger, mapping)
    if runs:
        compare_runs(source, target, ledger, checker, report, mapping, parallel)
    if models:
        from runner.registry import compare_models

        report.models, found = compare_models(source, target, ledger, models, checker.scratch)
        report.differences += found
    checker.close()
    return report


def compare_runs(source, target, ledger, checker: "JobChecker", report: "VerifyReport", mapping: Mapping, parallel: int) -> None:
    """Every selected run (and the target's duplicates, orphans and runs the source lacks) into `report`."""
    if ledger.duplicates:
        report.differences.append(Difference("", "", "duplicates", "0", str(ledger.duplicates)))
    if ledger.orphans:
        report.differences.append(Difference("", "", "orphans", "0", str(len(ledger.orphans))))
    compare_experiments(source, target, report, mapping)
    progress = Progress("verify", source.count())
    lock = threading.Lock()
    seen: set[str] = set()

    def one(job: JobRecord) -> None:
        found = checker.compare(job)
        with lock:
            report.compared += 1
            report.equal += not found
            report.differences += found
        progress.tick()

    with ThreadPoolExecutor(parallel) as pool:
        for job in source.jobs():
            seen.add(job.source_id)
            pool.submit(one, job)
    if not has_filters(source):
        for original_id, run in ledger.runs.items():
            if original_id not in seen and run.lifecycle_stage == "active":
                report.differences.append(Difference(original_id, "", "target_only", "", run.run_id))


def has_filters(source) -> bool:
    """Whether the source is a selection (then target runs outside it are not "target only").

    A manifest extracted with filters or `--shard` is a selection too, whatever the flags now.
    """
    f = getattr(source, "filters", None)
    if f and (f.experiments or f.include or f.since or f.until or f.status or f.limit or f.shard):
        return True
    if ((getattr(source, "header", None) or {}).get("source") or {}).get("window"):  # an incremental extract (runner.watermark)
        return True
    recorded = (getattr(source, "header", None) or {}).get("filters") or {}
    return any(recorded.get(key) for key in ("experiments", "include", "since", "until", "status", "limit", "shard"))


def compare_experiments(source, target, report: VerifyReport, mapping: Mapping) -> None:
    for experiment in source.experiments():
        found = target.client.get_experiment_by_name(mapping.experiment_name(experiment.name))
        if found is None:
            report.differences.append(Difference("", experiment.name, "experiment", "present", "missing"))
            continue
        if found.lifecycle_stage != experiment.lifecycle_stage:
            report.differences.append(Difference("", experiment.name, "experiment_lifecycle", experiment.lifecycle_stage, found.lifecycle_stage))
        mine = {k: v for k, v in found.tags.items() if not is_own_tag(k)}
        theirs = {k: v for k, v in experiment.tags.items() if not is_own_tag(k)}
        if mine != theirs:
            report.differences.append(Difference("", experiment.name, "experiment_tags", show(theirs), show(mine)))


class JobChecker:
    def __init__(self, source, target, ledger, mapping: Mapping | None = None):
        self.source, self.target, self.ledger = source, target, ledger
        self.mapping = mapping or Mapping()
        self.client = target.client
        self.scratch = Path(tempfile.mkdtemp(prefix="replayer-verify-"))
        self._experiment_names: dict[str, str] = {}

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def compare(self, job: JobRecord) -> list[Difference]:
        try:
            return self._compare(job)
        except Exception as error:  # noqa: BLE001 - a read failure is a difference, not a crash
            logger.opt(exception=error).debug("verify failed on {}", job.source_id)
            return [Difference(job.source_id, job.name, "error", "", f"{type(error).__name__}: {error}")]

    def _compare(self, job: JobRecord) -> list[Difference]:
        found = self.ledger.find(job.source_id)
        diff = lambda what, a, b: Difference(job.source_id, job.name, what, show(a), show(b))  # noqa: E731
        if found is None:
            return [diff("run", "present", "missing")]
        if not found.complete:
            return [diff("run", "complete", "incomplete (interrupted; rerun replay)")]
        run = self.client.get_run(found.run_id)
        info, data = run.info, run.data
        # What the target could not hold (its tag/metric caps) sits in replay/overflow.json.
        overflow = self.read_overflow(found.run_id) if OVERFLOW_TAG in data.tags else new_overflow()
        params, tags = {**data.params, **overflow["params"]}, {**data.tags, **overflow["tags"]}
        out = []
        pairs = [
            ("experiment", self.mapping.experiment_name(job.experiment), self.experiment_name(info.experiment_id)),
            ("name", job.name, info.run_name or ""),
            ("status", job.status, info.status),
            ("start_time", job.start_time, info.start_time),
            ("lifecycle", job.lifecycle_stage, info.lifecycle_stage),
            ("params", job.params, params),
            ("tags", user_tags(job.tags), expected_user_tags(job, tags)),
            ("parent", self.expected_parent(job), data.tags.get(PARENT_TAG)),
        ]
        if job.status in TERMINAL_STATUSES:
            pairs.append(("end_time", job.end_time, info.end_time))
        out += [diff(what, a, b) for what, a, b in pairs if a != b]
        out += self.compare_metrics(job, found.run_id, set(data.metrics), overflow["metrics"])
        out += self.compare_artifacts(job, found.run_id, info.artifact_uri)
        return out

    def compare_recorded_refs(self, job: JobRecord, run_id: str, chosen) -> list[Difference]:
        """`--artifacts list` copied no bytes but recorded each file: compare that record."""
        from runner import artifacts

        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            lines = Path(self.client.download_artifacts(run_id, artifacts.REFS_FILE, str(folder))).read_text(encoding="utf-8").splitlines()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        recorded = {r["path"]: r for r in map(json.loads, lines[1:]) if r}  # line 1 says where they live
        out = []
        for ref in chosen:
            have = recorded.pop(ref.path, None)
            same = have is not None and have["size"] == ref.size and (not (ref.md5 and have["md5"]) or have["md5"] == ref.md5)
            if not same:
                out.append(Difference(job.source_id, job.name, f"artifact:{ref.path}", show([ref.size, ref.md5]), show(have)))
        out += [Difference(job.source_id, job.name, f"artifact:{path}", "absent", show(r)) for path, r in recorded.items()]
        return out

    def read_overflow(self, run_id: str) -> dict:
        return caps.read(self.client, run_id, self.scratch)

    def experiment_name(self, experiment_id: str) -> str:
        if experiment_id not in self._experiment_names:
            self._experiment_names[experiment_id] = self.client.get_experiment(experiment_id).name
        return self._experiment_names[experiment_id]

    def expected_parent(self, job: JobRecord) -> str | None:
        if not job.parent_id:
            return None
        parent = self.ledger.find(job.parent_id)
        return parent.run_id if parent else f"(replayed {job.parent_id})"

    def compare_metrics(self, job: JobRecord, run_id: str, target_keys: set[str], spilled: dict | None = None) -> list[Difference]:
        wanted: dict[str, Digest] = {}
        for point in self.source.metrics(job):  # one stream over every key, as the source reads it
            wanted.setdefault(point.key, Digest()).add(point_hash(point))
        spilled = spilled or {}
        out = []
        for key in sorted(set(wanted) | target_keys | set(spilled)):
            want, have = wanted.get(key, Digest()), Digest()
            for point in self.target_points(run_id, key, spilled):
                have.add(point_hash(point))
            if have == want:
                continue
            missing, extra = count_differences(
                lambda: self.source_points(job, key) if want.count else (), lambda: self.target_points(run_id, key, spilled),
                want.count + have.count, self.scratch,
            )
            out.append(
                Difference(job.source_id, job.name, f"metric:{key}", f"{want.count} points", f"{have.count} points ({missing} missing, {extra} extra or changed)")
            )
        return out

    def source_points(self, job: JobRecord, key: str) -> Iterable[MetricPoint]:
        """The source's points of one key, read again. MLflow and Azure ML sources read the keys
        named in `latest_metrics`: naming this one alone spares reading the others twice."""
        if key in job.latest_metrics:
            job = replace(job, latest_metrics={key: job.latest_metrics[key]})
        return (point for point in self.source.metrics(job) if point.key == key)

    def target_points(self, run_id: str, key: str, spilled: dict) -> Iterable[MetricPoint]:
        """The target run's history of `key`, with the points replay/overflow.json holds for it."""
        yield from metric_history(self.client, run_id, key)
        for step, timestamp, value in spilled.get(key, []):
            yield MetricPoint(key, decode_float(value), timestamp, step)

    def compare_artifacts(self, job: JobRecord, run_id: str, artifact_uri: str | None = None) -> list[Difference]:
        from runner import artifacts, run_history

        options = getattr(self.target, "artifact_options", None) or artifacts.ArtifactOptions()
        if artifact_uri and (artifacts.parse_blob_uri(artifact_uri, options.auth) or run_history.parse_run_root(artifact_uri)):
            # A blob root (or run history's, through its blobs) answers size and MD5 per file without downloading.
            found = artifacts.compare(
                artifacts.source_store(self.source, job, self.scratch, options.auth), artifact_uri, None, options,
                tracking_uri=self.client.tracking_uri,
            )
            return [Difference(job.source_id, job.name, f"artifact:{m.path}", m.source, m.target) for m in found]
        chosen = artifacts.select(self.source.artifacts(job), options, artifacts.CopyStats())  # as replay chose
        listing = [info for info in self.target.list_artifacts(run_id) if info.path != OVERFLOW_PATH]
        if any(info.path == artifacts.REFS_FILE for info in listing):
            return self.compare_recorded_refs(job, run_id, chosen)
        want = {}
        for ref in chosen:
            md5 = ref.md5
            if not md5:
                with self.source.fetch_artifact(job, ref, self.scratch) as local:
                    size, md5 = md5_file(local)
                ref = type(ref)(ref.path, size, md5)
            want[ref.path] = (ref.size, md5)
        have = {}
        for info in listing:  # replay/overflow.json left out above: compared through what it holds
            folder = Path(tempfile.mkdtemp(dir=self.scratch))
            try:
                have[info.path] = md5_file(Path(self.client.download_artifacts(run_id, info.path, str(folder))))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        out = []
        for path in sorted(set(want) | set(have)):
            if want.get(path) != have.get(path):
                out.append(Difference(job.source_id, job.name, f"artifact:{path}", show(want.get(path)), show(have.get(path))))
        return out


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


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not is_own_tag(k) and k != PARENT_TAG}


def expected_user_tags(job: JobRecord, target_tags: dict[str, str]) -> dict[str, str]:
    """The target's user tags, less an `mlflow.user` that --use-source-user added (the source's user)."""
    tags = user_tags(target_tags)
    if USER_TAG not in job.tags and source_user(job) and tags.get(USER_TAG) == source_user(job):
        del tags[USER_TAG]
    return tags


def show(value) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 300 else text[:297] + "..."


def write_report(report: VerifyReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False), encoding="utf-8")


def print_table(report: VerifyReport, limit: int = 50) -> None:
    models = f", {report.models} models" if report.models else ""
    print(f"verify: {report.compared} runs compared, {report.equal} equal{models}, {len(report.differences)} differences")
    if not report.differences:
        return
    print(f"{'job':<34} {'field':<24} {'source':<30} target")
    for d in report.differences[:limit]:
        print(f"{d.job[:34]:<34} {d.field[:24]:<24} {d.source[:30]:<30} {d.target[:60]}")
    if len(report.differences) > limit:
        print(f"... {len(report.differences) - limit} more in the JSON report")
