"""Seed a small, realistic demo source: what `make local-run` migrates.

Two experiments; a training pipeline three levels deep (pipeline -> train -> folds); a sweep
with trials; a failed and a killed run; metric curves with a NaN; artifacts in nested folders,
with spaces and unicode in names, and an empty file. Deterministic for a given seed.
"""
from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

from mlflow.entities import Metric, Param

from runner.mlflow import uris
from runner.core.errors import UsageError

BASE_TIME = 1_736_935_200_000  # 2025-01-15T10:00:00Z: fixed, so demo stores are comparable
DEMO_EXPERIMENTS = ("demo-classification", "demo-forecasting")


def seed(uri: str, seed_value: int = 7) -> dict:
    """Create the demo experiments and runs in `uri`; returns counts."""
    client = uris.open_client(uri, create=True)
    for name in DEMO_EXPERIMENTS:
        if client.get_experiment_by_name(name) is not None:
            raise UsageError(f"{uris.redact(uri)} already has experiment {name!r}; seed the demo into an empty store")
    rng = random.Random(seed_value)
    demo = Demo(client, rng, uris.artifact_root(uris.tracking_uri(uri)))
    with tempfile.TemporaryDirectory() as scratch:
        demo.scratch = Path(scratch)
        demo.classification()
        demo.forecasting()
    return {"experiments": len(DEMO_EXPERIMENTS), "runs": demo.runs}


class Demo:
    def __init__(self, client, rng: random.Random, artifact_root: str | None):
        self.client, self.rng, self.artifact_root = client, rng, artifact_root
        self.clock = BASE_TIME
        self.runs = 0
        self.scratch = Path(".")

    def experiment(self, name: str, description: str, tags: dict[str, str]) -> str:
        location = f"{self.artifact_root}/{name}" if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location, tags={"mlflow.note.content": description, **tags})

    def run(self, experiment_id: str, name: str, parent: str | None = None, status: str = "FINISHED",
            params: dict | None = None, tags: dict | None = None, curves: dict | None = None,
            files: dict | None = None, minutes: int = 3) -> str:
        start = self.clock
        self.clock += 60_000
        all_tags = {"mlflow.user": "demo-user", "mlflow.source.name": "train.py", "team": "vision", **(tags or {})}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run_id = self.client.create_run(experiment_id, start_time=start, tags=all_tags, run_name=name).info.run_id
        metrics = []
        for key, values in (curves or {}).items():
            metrics += [Metric(key, v, start + 1000 * step, step) for step, v in enumerate(values)]
        param_list = [Param(k, str(v)) for k, v in (params or {}).items()]
        for i in range(0, max(len(metrics), 1), 900):
            self.client.log_batch(run_id, metrics=metrics[i : i + 900], params=param_list if i == 0 else [])
        for path, content in (files or {}).items():
            local = self.scratch / run_id / path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(content)
            folder = str(Path(path).parent)
            self.client.log_artifact(run_id, str(local), None if folder == "." else folder)
        if status != "RUNNING":
            self.client.set_terminated(run_id, status, end_time=start + minutes * 60_000)
        self.runs += 1
        return run_id

    def curve(self, steps: int, start: float, end: float, noise: float = 0.02) -> list[float]:
        return [end + (start - end) * math.exp(-4 * i / steps) + self.rng.uniform(-noise, noise) for i in range(steps)]

    def classification(self) -> None:
        exp = self.experiment("demo-classification", "Image classifier: nightly training pipeline.", {"owner": "ml-platform"})
        pipe = self.run(exp, "training-pipeline", params={"dataset": "cifar10", "pipeline_version": "3"},
                        tags={"kind": "pipeline"}, minutes=40)
        self.run(exp, "prep-data", parent=pipe, params={"split": "0.8/0.1/0.1"},
                 curves={"rows_processed": [50_000.0]}, files={"logs/prep.log": b"prepared 50000 rows\n"})
        train = self.run(exp, "train", parent=pipe, tags={"kind": "pipeline"},
                         params={"lr": 0.01, "epochs": 50, "optimizer": "adam"}, minutes=30)
        for fold in range(3):
            self.run(exp, f"fold-{fold}", parent=train, params={"fold": fold, "lr": 0.01},
                     curves={"loss": self.curve(100, 2.3, 0.4), "accuracy": self.curve(100, 0.1, 0.88)},
                     files={f"model/fold {fold}/weights.bin": bytes(self.rng.getrandbits(8) for _ in range(2048))})
        self.run(exp, "evaluate", parent=pipe, params={"threshold": 0.5},
                 curves={"accuracy": [0.87], "f1": [0.85]},
                 files={"reports/summary.json": b'{"accuracy": 0.87}', "reports/résumé final.md": "Résumé: ça marche ✓\n".encode(),
                        "logs/empty.log": b""})
        self.run(exp, "baseline-oom", status="FAILED", params={"batch_size": 4096, "notes": "é" * 300 + " long " * 400},
                 curves={"loss": [2.3, 2.1, float("nan")]}, files={"logs/error.txt": b"CUDA out of memory\n"})

    def forecasting(self) -> None:
        exp = self.experiment("demo-forecasting", "Demand forecasting: hyperparameter sweep.", {"owner": "forecasting"})
        sweep = self.run(exp, "sweep-lgbm", tags={"kind": "sweep"}, params={"trials": 5, "metric": "rmse"}, minutes=25)
        for trial in range(5):
            lr = round(0.01 * (trial + 1), 3)
            self.run(exp, f"trial-{trial}", parent=sweep, params={"learning_rate": lr, "num_leaves": 31 + trial},
                     curves={"rmse": self.curve(60, 30.0, 8.0 + trial, noise=0.3)},
                     status="KILLED" if trial == 4 else "FINISHED")
        self.run(exp, "backtest-2024", params={"horizon": 28}, curves={"mape": self.curve(12, 0.3, 0.12)},
                 files={"forecast.csv": b"date,value\n2024-01-01,10\n"})
