"""The raw client ceiling: copy every run with plain MlflowClient calls, no checks at all.

Reads each run (search_runs), its metric histories and its artifacts; writes it with
create_run (tags, name, start time) + log_batch (1000-row batches) + log_artifacts +
set_terminated, on a few threads. No ledger, no idempotence, no parent mapping, no completion
tag: the least work that still copies everything, to measure what the servers allow.

    python bench/ceiling.py --source URI --target URI [--threads 4]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

BATCH = 1000  # log_batch: at most 1000 entities, at most 100 of them params/tags


def all_experiments(client):
    from mlflow.entities import ViewType

    found, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        found += page
        token = page.token
        if not token:
            return found


def all_runs(client, experiment_ids):
    from mlflow.entities import ViewType

    for start in range(0, len(experiment_ids), 100):
        token = None
        while True:
            page = client.search_runs(experiment_ids[start : start + 100], "", ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                break


def copy(source_uri: str, target_uri: str, threads: int = 4) -> int:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    src, dst = MlflowClient(source_uri), MlflowClient(target_uri)
    experiments = {e.experiment_id: e for e in all_experiments(src)}
    target_ids: dict[str, str] = {}
    lock = threading.Lock()

    def target_experiment(source_id: str) -> str:
        with lock:
            if source_id not in target_ids:
                e = experiments[source_id]
                found = dst.get_experiment_by_name(e.name)
                target_ids[source_id] = found.experiment_id if found else dst.create_experiment(e.name, tags=e.tags)
            return target_ids[source_id]

    def copy_run(run) -> None:
        info, data = run.info, run.data
        points = [m for key in data.metrics for m in src.get_metric_history(info.run_id, key)]
        with tempfile.TemporaryDirectory(prefix="ceiling-") as tmp:
            src.download_artifacts(info.run_id, "", tmp)
            new = dst.create_run(target_experiment(info.experiment_id), start_time=info.start_time, tags=data.tags, run_name=info.run_name)
            run_id = new.info.run_id
            params = [Param(k, v) for k, v in data.params.items()]
            metrics = [Metric(m.key, m.value, m.timestamp, m.step) for m in points]
            while params or metrics:
                head, params = params[:100], params[100:]
                room = BATCH - len(head)
                body, metrics = metrics[:room], metrics[room:]
                dst.log_batch(run_id, metrics=body, params=head)
            if os.listdir(tmp):
                dst.log_artifacts(run_id, tmp)
        dst.set_terminated(run_id, info.status, end_time=info.end_time)

    copied = 0
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(copy_run, run) for run in all_runs(src, list(experiments))]:
            future.result()
            copied += 1
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    print(f"ceiling: copied {copy(args.source, args.target, args.threads)} runs")


if __name__ == "__main__":
    sys.exit(main())
