"""The manifest: the one file format between extract and replay.

A folder:
    manifest.json            schema version, source (no secrets), filters, counts, watermark;
                             written last, so a folder without it is an unfinished extract
    experiments.jsonl        one Experiment per line
    jobs.jsonl               one JobRecord per line, parents before children
    metrics/<job>.jsonl      [key, step, timestamp, value] per line, NaN/Infinity as strings
    artifacts/<job>.jsonl    {"path", "size", "md5"} per line
    files/<job>/<path>       the artifact bytes (none when extracted with `--artifacts list` or `none`)
    logged_models.jsonl      MLflow 3 logged models, their files under models/ (runner.engine.manifest_models)
    traces.jsonl             MLflow 3 traces with their spans and run links (runner.engine.manifest_traces)

Everything is streamed line by line: neither side holds a whole store in memory.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from runner.core.errors import ManifestError, UsageError
from runner.core.filters import Filters, spread
from runner.core.records import ArtifactRef, Experiment, JobRecord, MetricPoint, decode_float, encode_float

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")


def is_manifest(uri: str) -> bool:
    path = Path(uri)
    return "://" not in uri and path.is_dir() and ((path / MANIFEST).exists() or (path / "jobs.jsonl").exists())


def job_file_name(job_id: str) -> str:
    """A file name for a job id; ids that are not file-safe are hashed."""
    return job_id if SAFE_NAME.match(job_id) else hashlib.sha1(job_id.encode()).hexdigest()


class ManifestWriter:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if (self.folder / MANIFEST).exists() or (self.folder / "jobs.jsonl").exists():
            raise ManifestError(f"{self.folder} already holds a manifest; choose an empty --out folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._experiments = open(self.folder / "experiments.jsonl", "w", encoding="utf-8")
        self._jobs = open(self.folder / "jobs.jsonl", "w", encoding="utf-8")
        self.counts = {"experiments": 0, "jobs": 0, "metric_points": 0, "artifacts": 0, "artifact_bytes": 0}
        self.watermark = 0

    def add_experiment(self, experiment: Experiment) -> None:
        self._experiments.write(json.dumps(experiment.__dict__, ensure_ascii=False) + "\n")
        self.counts["experiments"] += 1

    def add_job(self, job: JobRecord) -> None:
        self._jobs.write(json.dumps(job.to_json(), ensure_ascii=False) + "\n")
        self.counts["jobs"] += 1
        self.watermark = max(self.watermark, job.end_time or 0, job.start_time or 0)

    def write_metrics(self, job: JobRecord, points) -> int:
        folder = self.folder / "metrics"
        folder.mkdir(exist_ok=True)
        count = 0
        with open(folder / f"{job_file_name(job.source_id)}.jsonl", "w", encoding="utf-8") as out:
            for p in points:
                out.write(json.dumps([p.key, p.step, p.timestamp, encode_float(p.value)]) + "\n")
                count += 1
        return count

    def artifact_path(self, job: JobRecord, ref: ArtifactRef) -> Path:
        path = self.folder / "files" / job_file_name(job.source_id) / ref.path
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_artifacts(self, job: JobRecord, refs: list[ArtifactRef]) -> None:
        folder = self.folder / "artifacts"
        folder.mkdir(exist_ok=True)
        with open(folder / f"{job_file_name(job.source_id)}.jsonl", "w", encoding="utf-8") as out:
            for ref in refs:
                out.write(json.dumps(ref.__dict__, ensure_ascii=False) + "\n")

    def close(self, source: dict, filters: Filters, artifacts: dict | None = None) -> dict:
        self._experiments.close()
        self._jobs.close()
        header = {
            "schema_version": SCHEMA_VERSION,
            "tool": "replayer",
            "created_at": int(time.time() * 1000),
            "source": source,
            "filters": filters.to_json(),
            "counts": self.counts,
            "watermark": self.watermark,
        }
        if artifacts is not None:  # how files were chosen (--artifacts copy|list|none & co.) and what was left out
            header["artifacts"] = artifacts
        tmp = self.folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(header, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.folder / MANIFEST)
        return header


def read_header(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path} is missing: {folder} is not a finished manifest; re-run `replayer extract`")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error}); re-run `replayer extract`") from None
    if not isinstance(header, dict) or "schema_version" not in header:
        raise ManifestError(f"{path}: no schema_version; this is not a replayer manifest")
    if header["schema_version"] != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema version {header['schema_version']!r} is not supported (this replayer reads {SCHEMA_VERSION}); "
            "use the replayer version that wrote it or re-extract"
        )
    return header


def read_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each line; any bad line is a ManifestError naming file and line."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ManifestError(f"{path}:{number}: not UTF-8 text; the manifest is damaged, re-run `replayer extract`") from None
            if not text.strip():
                continue
            if not text.endswith("\n"):
                raise ManifestError(f"{path}:{number}: last line is cut off (truncated file); re-run `replayer extract`")
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{path}:{number}: malformed JSON ({error.msg}); re-run `replayer extract`") from None


class ManifestSource:
    """A manifest folder read back through the same protocol as a live source."""

    def __init__(self, folder: str | Path, filters: Filters):
        self.folder = Path(folder)
        self.filters = filters
        self.header = read_header(self.folder)
        self.workspace = self.header.get("source", {}).get("workspace") or str(self.folder)
        self._count = self._validate_jobs()

    def describe(self) -> dict:
        return {"kind": "manifest", "path": str(self.folder), "source": self.header.get("source", {})}

    @property
    def artifact_mode(self) -> str:
        """`copy` when files/ holds the listed files; `list` (listed, no bytes) or `none` (no files)."""
        return (self.header.get("artifacts") or {}).get("mode", "copy")

    def _validate_jobs(self) -> int:
        """One streaming pass before anything is written anywhere: bad input fails early.

        Parses every record (a bad line fails here), checks the count against manifest.json and
        returns how many the filters select.
        """
        expected = self.header.get("counts", {}).get("jobs")
        seen = 0

        def counted() -> Iterator[JobRecord]:
            nonlocal seen
            for record in self._records():
                seen += 1
                yield record

        selected = sum(1 for _ in self.jobs(counted()))  # jobs() reads every record, selected or not
        if expected is not None and seen != expected:
            raise ManifestError(
                f"{self.folder / 'jobs.jsonl'}: {seen} records but manifest.json says {expected}; truncated, re-run `replayer extract`"
            )
        return selected

    def _records(self) -> Iterator[JobRecord]:
        path = self.folder / "jobs.jsonl"
        for number, data in read_lines(path):
            try:
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object")
                yield JobRecord.from_json(data)
            except (TypeError, ValueError) as error:
                raise ManifestError(f"{path}:{number}: bad job record: {error}") from None

    def experiments(self) -> list[Experiment]:
        path = self.folder / "experiments.jsonl"
        found = []
        for number, data in read_lines(path):
            try:
                found.append(Experiment(**data))
            except TypeError as error:
                raise ManifestError(f"{path}:{number}: bad experiment record: {error}") from None
        names = sorted(e.name for e in found)
        for pattern in self.filters.experiments:
            if not any(ch in pattern for ch in "*?[") and pattern not in names:
                shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                raise UsageError(f"unknown experiment {pattern!r} in manifest {self.folder}; it has: {shown}")
        return [e for e in found if self.filters.wants_experiment(e.name)]

    def count(self) -> int:
        return self._count

    def sample(self, n: int) -> Iterator[tuple[JobRecord, int]]:
        """`n` selected jobs spread over the file, with their siblings: one pass, holding the `n` drawn records
        until every parent's children are counted."""
        siblings: Counter = Counter()
        taken = set(spread(range(self._count), n))
        drawn = []
        for index, job in enumerate(self.jobs()):
            if job.parent_id:
                siblings[job.parent_id] += 1
            if index in taken:
                drawn.append(job)
        return iter([(job, siblings[job.parent_id] if job.parent_id else 0) for job in drawn])

    def jobs(self, records: Iterator[JobRecord] | None = None) -> Iterator[JobRecord]:
        f = self.filters
        wanted = {e.name for e in self.experiments()}
        taken: set[str] = set()
        roots = 0
        for job in records if records is not None else self._records():
            if job.experiment not in wanted:
                continue
            if job.depth == 0 or job.parent_id is None:
                if f.limit and roots >= f.limit:
                    continue
                # --include of a child id is honoured by live sources; here it names roots.
                if not (f.in_shard(job.source_id) and f.named(job.source_id, job.name) and f.wants_root(job.start_time, job.status)):
                    continue
                if not f.wants_tags(job.tags) or f.excludes(job.source_id, job.name, job.step_name):
                    continue
                if job.lifecycle_stage == "deleted" and not f.include_deleted:
                    continue
                roots += 1
                taken.add(job.source_id)
                yield job
            elif job.parent_id in taken:
                if job.lifecycle_stage == "deleted" and not f.include_deleted:
                    continue
                if not f.within_depth(job.depth) or f.excludes(job.source_id, job.name, job.step_name):
                    continue  # --max-depth, --exclude: this job and (as its id is not taken) its subtree
                taken.add(job.source_id)
                yield job

    def metrics(self, job: JobRecord) -> Iterator[MetricPoint]:
        path = self.folder / "metrics" / f"{job_file_name(job.source_id)}.jsonl"
        for number, row in read_lines(path):
            try:
                key, step, timestamp, value = row
                yield MetricPoint(key, decode_float(value), int(timestamp), int(step))
            except (TypeError, ValueError):
                raise ManifestError(f"{path}:{number}: expected [key, step, timestamp, value]") from None

    def artifacts(self, job: JobRecord) -> Iterator[ArtifactRef]:
        path = self.folder / "artifacts" / f"{job_file_name(job.source_id)}.jsonl"
        for number, data in read_lines(path):
            try:
                yield ArtifactRef(**data)
            except TypeError as error:
                raise ManifestError(f"{path}:{number}: bad artifact record: {error}") from None

    @contextmanager
    def fetch_artifact(self, job: JobRecord, ref: ArtifactRef, scratch: Path):
        path = self.folder / "files" / job_file_name(job.source_id) / ref.path
        if not path.is_file():
            raise ManifestError(f"{path} is missing from the manifest; re-run `replayer extract`")
        yield path
