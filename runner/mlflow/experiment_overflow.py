"""What an experiment cannot hold (Azure ML: 50 tags, key 250, value 1,000, description 5,000).

An experiment has no files of its own, so its excess (runner.engine.limits.fit_experiment_tags)
goes to a finished run of the bookkeeping experiment `replayer-experiments`, one per target
experiment (tag `replay.experiment` = its id), as `replay/overflow.json` ({"tags": {name: whole
value}}, as on a run); the experiment carries one tag `replay.overflow` pointing at it:
{"tags": N, "run": "<run id>", "sha1": "<of the JSON>"}. A changed excess writes a new run (Azure ML
refuses a second upload of one path), moves the pointer, then deletes the run it pointed at.
Verify merges the file's tags back (`read`), so the experiment compares whole.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path, PurePosixPath

from loguru import logger

from runner.mlflow.run_files import read_checked
from runner.engine.limits import OVERFLOW_PATH, OVERFLOW_TAG

BOOKKEEPING = "replayer-experiments"
EXPERIMENT_TAG = "replay.experiment"  # on a bookkeeping run: the target experiment whose excess it holds


def store(client, experiment_id: str, name: str, spill: dict[str, str], pointer: str | None) -> None:
    """Make the experiment's pointer and its run hold `spill` (or drop both when nothing spills)."""
    before = parse(pointer)
    text = json.dumps({"tags": spill}, ensure_ascii=False, sort_keys=True)
    digest = hashlib.sha1(text.encode()).hexdigest()
    if spill and before.get("sha1") == digest:
        return  # already there
    if spill:
        run_id = write_run(client, experiment_id, name, text)
        client.set_experiment_tag(experiment_id, OVERFLOW_TAG, json.dumps({"tags": len(spill), "run": run_id, "sha1": digest}))
        logger.info("experiment {}: {} tags over the target's limits went to run {} of {}", name, len(spill), run_id, BOOKKEEPING)
    elif before:
        client.delete_experiment_tag(experiment_id, OVERFLOW_TAG)
    if before.get("run"):
        delete_run(client, before["run"])


def write_run(client, experiment_id: str, name: str, text: str) -> str:
    found = client.get_experiment_by_name(BOOKKEEPING)
    if found is None:
        note = f"replayer: experiment tags a target experiment could not hold, as {OVERFLOW_PATH} of one run per experiment"
        bookkeeping = client.create_experiment(BOOKKEEPING, tags={"mlflow.note.content": note})
    else:
        bookkeeping = found.experiment_id
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(bookkeeping)
    run_id = client.create_run(bookkeeping, tags={EXPERIMENT_TAG: experiment_id}, run_name=f"tags of {name}"[:256]).info.run_id
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / PurePosixPath(OVERFLOW_PATH).name
        path.write_text(text, encoding="utf-8")
        client.log_artifact(run_id, str(path), str(PurePosixPath(OVERFLOW_PATH).parent))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def delete_run(client, run_id: str) -> None:
    try:
        client.delete_run(run_id)
    except Exception as error:  # noqa: BLE001 - an old bookkeeping run left behind is harmless
        logger.warning("could not delete the previous experiment overflow run {}: {}", run_id, error)


def parse(pointer: str | None) -> dict:
    try:
        data = json.loads(pointer) if pointer else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def read(client, tags: dict[str, str]) -> dict[str, str]:
    """The tags an experiment's pointer holds elsewhere ({} without one)."""
    where = parse(tags.get(OVERFLOW_TAG))
    if not where.get("run"):
        return {}
    text = read_checked(client, where["run"], OVERFLOW_PATH, where.get("sha1"), f"what experiment tag {OVERFLOW_TAG} names")
    return json.loads(text)["tags"]
