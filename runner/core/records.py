"""Plain records the engine moves around. No I/O, no Azure, no MLflow imports.

Every source turns what it reads into these; every target writes from them; the manifest
stores them as JSON lines. Times are epoch milliseconds (MLflow's unit), None when unknown.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Statuses a finished run keeps; anything else (RUNNING, SCHEDULED) stays open in the target.
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")


@dataclass
class Experiment:
    """An experiment: the named folder runs live in. Tags carry the description."""

    name: str
    source_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    lifecycle_stage: str = "active"


@dataclass
class JobRecord:
    """One job/run as the source saw it, without its metric points and artifact bytes."""

    source_id: str
    experiment: str
    name: str = ""
    kind: str = "run"  # command|pipeline|sweep|automl|run
    status: str = "FINISHED"
    start_time: int | None = None
    end_time: int | None = None
    parent_id: str | None = None
    root_id: str = ""
    depth: int = 0
    step_name: str = ""
    lifecycle_stage: str = "active"
    user_id: str = ""
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # Latest value per metric key: a cheap summary that changes whenever history grows.
    latest_metrics: dict[str, float] = field(default_factory=dict)
    # What a workspace control plane knows beyond MLflow (empty for plain MLflow sources).
    # Optional with defaults, so manifests written before these fields existed still load.
    source_status: str = ""  # the source's own status word, e.g. AzureML "Canceled" (status: KILLED)
    description: str = ""
    created_by: str = ""
    created_time: int | None = None
    compute: str = ""
    environment: str = ""
    command: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    # Input/output bindings by port name: {"binding": "${{parent.jobs.prep.outputs.clean}}"},
    # {"type": "literal", "value": "0.1"} or {"type": "uri_folder", "path": "azureml:data:1", "mode": "ro_mount"}.
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    error: str = ""  # a failed job's error message (AzureML run history; at most 3,000 characters there)
    # MLflow dataset inputs: {"name", "digest", "source_type", "source", "schema", "profile", "tags": {...}}
    # (runner.mlflow.run_inputs). Empty for sources without them and for manifests written before.
    datasets: list[dict[str, Any]] = field(default_factory=list)
    # MLflow 3 model inputs: the source ids of the logged models this run evaluated
    # (runner.mlflow.model_inputs). Not in the fingerprint: they are written in the logged-model
    # pass, which checks every run holding some, so the run itself never needs a repair for them.
    model_inputs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["latest_metrics"] = {k: encode_float(v) for k, v in self.latest_metrics.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobRecord":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        missing = {"source_id", "experiment"} - set(data)
        if missing:
            raise ValueError(f"missing required fields {sorted(missing)}")
        record = cls(**data)
        record.latest_metrics = {k: decode_float(v) for k, v in record.latest_metrics.items()}
        return record

    def fingerprint(self) -> str:
        """Digest of everything that can change on a source run after it was copied.

        Stored on the target run; a different digest on a later sync means "repair it".
        """
        state = {
            "status": self.status,
            "end_time": self.end_time,
            "lifecycle": self.lifecycle_stage,
            "params": sorted(self.params.items()),
            "tags": sorted(self.tags.items()),
            "metrics": sorted((k, encode_float(v)) for k, v in self.latest_metrics.items()),
        }
        if self.datasets:  # only when present: runs without inputs keep the digest they were copied with
            state["datasets"] = sorted(json.dumps(d, sort_keys=True) for d in self.datasets)
        return hashlib.sha1(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelMetric:
    """A logged model's metric point: the model's own view of a run metric (run, dataset)."""

    key: str
    value: float
    timestamp: int
    step: int
    run_id: str | None = None
    dataset_name: str | None = None
    dataset_digest: str | None = None


@dataclass
class ModelRecord:
    """An MLflow 3 logged model as a source or a manifest holds it; `files` is where its files are
    read from (an artifact root URI, or a manifest's folder), `output_steps` the steps its source
    run logged it at as an output (None: not read yet)."""

    model_id: str
    experiment: str
    name: str
    model_type: str = ""
    status: str = "READY"
    source_run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[ModelMetric] = field(default_factory=list)
    output_steps: list[int] | None = None
    files: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = [{**asdict(m), "value": encode_float(m.value)} for m in self.metrics]
        data.pop("files")  # where the files sit is the reader's business, not the record's
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], files: str = "") -> "ModelRecord":
        known = {f.name for f in fields(cls)} - {"files"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        metrics = [ModelMetric(**{**m, "value": decode_float(m["value"])}) for m in data.get("metrics", [])]
        return cls(**{**data, "metrics": metrics}, files=files)


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    timestamp: int
    step: int

    def identity(self) -> tuple[str, str, int, int]:
        """Hashable identity where NaN equals NaN (float NaN never equals itself)."""
        return (self.key, encode_float(self.value), self.timestamp, self.step)


@dataclass(frozen=True)
class ArtifactRef:
    """A file of a run, by path relative to the run's artifact root."""

    path: str
    size: int
    md5: str = ""


def encode_float(value: float) -> float | str:
    """JSON has no NaN/Infinity: write them as strings so any JSON reader can load the file."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def decode_float(value: float | str) -> float:
    return float(value)
