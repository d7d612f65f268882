"""The Azure-shaped bench's workload (bench/bench_azure_scale.py), seeded straight into the stores.

Jobs: whole copies of the fixture workspace (tests/fakes/azureml_seed.py: standalone command jobs,
nested pipelines with steps, a failed pipeline, a sweep with trials, an AutoML parent with trials),
each job given `metrics` metrics x `steps` steps and `files` files of `min_kb` to `max_kb`
(log-uniform). Seeding goes around the services on purpose, so 2,000 jobs take seconds, not the
hours per-request client calls would cost at the bench's own latency:
- MLflow: one sqlite transaction of bulk inserts into the store the source's `mlflow server` then
  serves (the schema and experiments made by mlflow's own SqlAlchemyStore, so the rows are the
  shape mlflow 3.15 writes: runs, tags with mlflow.runName, params, metrics, latest_metrics);
- files: uploaded to the source workspace's artifact container by a few threads, each file's bytes
  made from its own seed when it is uploaded and dropped after, so memory stays flat at any size;
- metric histories: generated run by run while the rows are written, never all held at once.
"""
from __future__ import annotations

import hashlib
import math
import random
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class File:
    run: str
    path: str
    size: int

    def data(self) -> bytes:
        """The file's bytes, the same every time (seeded by run and path)."""
        seed = int.from_bytes(hashlib.sha256(f"{self.run}/{self.path}".encode()).digest()[:8], "big")
        return random.Random(seed).randbytes(self.size)


def jobs(count: int):
    """(specs parents-first, builders): whole copies of the 38-job fixture, at least `count` jobs."""
    from fakes import azureml_seed as seed

    specs, builders = seed.build_specs()
    specs, builders = seed.clone_specs(specs, builders, math.ceil(count / len(specs)))
    for spec in specs:  # the bench's metrics and files replace the fixture's
        spec.metrics, spec.files, spec.unhashed = {}, {}, ()
    return specs, builders


def files(specs, per_job: int, min_kb: int, max_kb: int) -> list[File]:
    """`per_job` files a job, sizes log-uniform between min_kb and max_kb (most small, a few large, as
    job outputs and logs are)."""
    rng = random.Random(18)
    low, high = math.log(min_kb * 1024), math.log(max_kb * 1024)
    names = ("outputs/model.pkl", "outputs/metrics.json", "user_logs/std_log.txt")
    return [File(spec.name, names[f] if f < len(names) else f"outputs/file_{f}.bin", int(math.exp(rng.uniform(low, high))))
            for spec in specs for f in range(per_job)]


def metric_rows(spec, metrics: int, steps: int):
    """(key, value, timestamp, step) of a job's metrics, `steps` points each."""
    from fakes import azureml_seed as seed

    rng = random.Random(spec.name)
    start = spec.start or spec.created
    for m in range(metrics):
        for step, ts, value in seed.history(rng, start, steps, 1.0 - 0.1 * m, -0.001):
            yield f"metric_{m}", value, ts, step


def seed_mlflow(folder: Path, specs, metrics: int, steps: int) -> int:
    """Write `specs` into `folder/mlflow.db` for `mlflow server`, as seed.seed_mlflow does run by run;
    returns the metric points written."""
    from mlflow.entities import RunTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from fakes.azureml_seed import USER_OID

    folder.mkdir(parents=True, exist_ok=True)
    store = SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", "mlflow-artifacts:/")
    experiments = {}
    for spec in specs:
        if spec.experiment not in experiments:
            tags = [RunTag("team", "risk")] if spec.experiment != "misc" else []
            experiments[spec.experiment] = store.create_experiment(spec.experiment, tags=tags)
    store.engine.dispose()
    points = 0
    with sqlite3.connect(folder / "mlflow.db") as db:
        for spec in specs:
            points += _insert_run(db, spec, experiments[spec.experiment], USER_OID, metrics, steps)
    return points


# What sqlite's planner is told of each backing store. Without statistics it reads a run's history
# through the primary key (key, timestamp, ...), that is every run's points under that key: a
# `get-history` took 16 ms at 100 runs and 52 ms at 2,000 (one request a time on the server's one
# worker), so at 2,000 jobs the bench measured our sqlite, not the modelled Azure. Told that a store
# is large, it takes the (run, key, step) index whatever the size: 12-16 ms at any size. The numbers
# are those ANALYZE gave for 2,000 runs of 5 keys x 200 steps; they steer, they are not checked.
LARGE_STORE_STATS = [
    ("runs", "sqlite_autoindex_runs_1", "2000 1"),
    ("tags", "index_tags_run_uuid", "4000 2"),
    ("tags", "sqlite_autoindex_tags_1", "4000 2000 1"),
    ("metrics", "index_metrics_run_uuid_key_step", "2000000 1000 200 1"),
    ("metrics", "index_metrics_run_uuid", "2000000 1000"),
    ("metrics", "sqlite_autoindex_metrics_1", "2000000 400000 2000 2000 1 1 1"),
    ("latest_metrics", "index_latest_metrics_run_uuid", "10000 5"),
    ("latest_metrics", "sqlite_autoindex_latest_metrics_1", "10000 2000 1"),
]


def plan_as_large(folder: Path) -> None:
    """Create `folder/mlflow.db` if it is not there, and hand sqlite the statistics of a large store
    (above), before `mlflow server` opens it: a server reads them when it connects."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder.mkdir(parents=True, exist_ok=True)
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", "mlflow-artifacts:/").engine.dispose()
    with sqlite3.connect(folder / "mlflow.db") as db:
        db.execute("ANALYZE sqlite_schema")  # creates sqlite_stat1, gathers nothing of the tables
        db.execute("DELETE FROM sqlite_stat1")
        db.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", LARGE_STORE_STATS)


def _insert_run(db: sqlite3.Connection, spec, experiment_id: str, user: str, metrics: int, steps: int) -> int:
    run = spec.name
    status = "RUNNING" if spec.status == "Running" else spec.mlflow_status
    db.execute("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, end_time,"
               " source_version, lifecycle_stage, artifact_uri, experiment_id, deleted_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,NULL)",
               (run, spec.display_name, "UNKNOWN", "", "", user, status, spec.start, spec.end, "", "active",
                f"mlflow-artifacts:/{experiment_id}/{run}/artifacts", int(experiment_id)))
    tags = {**spec.tags, "mlflow.user": spec.created_by, "mlflow.runName": spec.display_name}
    if spec.parent:
        tags["mlflow.parentRunId"] = spec.parent
    db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", [(k, v, run) for k, v in tags.items()])
    db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", [(k, v, run) for k, v in spec.params.items()])
    rows = list(metric_rows(spec, metrics, steps))
    db.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,0)",
                   [(k, v, ts, run, s) for k, v, ts, s in rows])
    latest: dict[str, tuple] = {}
    for k, v, ts, s in rows:  # mlflow's rule: the highest step, then the latest timestamp, then the value
        if k not in latest or (s, ts, v) > latest[k][:3]:
            latest[k] = (s, ts, v)
    db.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,0,?)",
                   [(k, v, ts, s, run) for k, (s, ts, v) in latest.items()])
    return len(rows)


def upload(store, plan: list[File], threads: int = 8) -> int:
    """Every planned file into the workspace's artifact store (tests/fakes/azureml_artifacts.py); bytes uploaded."""
    def one(file: File) -> int:
        data = file.data()
        store.upload(file.run, file.path, data)
        return len(data)

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, plan))
