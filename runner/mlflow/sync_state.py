"""Incremental sync: each run continues from a watermark kept in the target.

`--incremental` reads a small state per source from the target, selects only what may have
changed since, and writes the new state after a clean pass (`migrate` at its end; `extract`
leaves it in the manifest as `sync.json` and `replay` writes it once the manifest is in). The
state is one tag per source on the target experiment `replayer-sync`:

    replay.sync.<digest of key> = {"key": "prod-eu", "selection": "<digest of the filters>",
        "watermark": 1718000000000, "open": ["<run id>", ...], "open_since": 1717990000000, ...}

- key: the source's stable name (`--workspace`, the ledger key) and its `--shard`.
- watermark: the newest source start time read. The next sync reads runs started at or after
  watermark - OVERLAP: clients' clocks differ, and a run may start while a sync reads.
- open: runs read again by id next time whatever their start time: those not terminal then
  (RUNNING, SCHEDULED: a job running at the last sync is brought up to date once finished), and
  trees the filters left waiting (past `--limit`, or a `--status` they may reach).
- Where it lives: Azure ML caps an experiment tag value at 1,000 characters (and an experiment at
  50 tags), so a state longer than MAX_TAG goes whole, at any number of open runs, into an artifact
  `replay/sync-state.json` of a finished run of `replayer-sync` (tag `replay.sync.key`), and the
  tag holds a pointer to it: {"key": ..., "run": "<run id>", "sha1": "<of the JSON>"}. Each commit
  writes a new run (Azure ML refuses a second upload of one path), then moves the pointer, then
  deletes the run it pointed at before. A state that cannot be written fails the sync (no state is
  cut); a pointer whose run or file is gone or differs is an unreadable state: a full read.
  (States written by older versions, `open` null with open_since standing for the ids, still read.)
- A killed or failed sync writes nothing, so the next one redoes its window (the ledger keeps it
  from duplicating anything). Other filters than the state's mean a full read.
- A window cannot see a run changed after it finished (a tag edited, a run deleted) or created
  with a start time older than the overlap: `--full` reads everything and resets the state.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from loguru import logger

from runner.mlflow.run_files import read_checked
from runner.mlflow import uris
from runner.core.errors import UsageError
from runner.core.filters import Filters
from runner.core.records import TERMINAL_STATUSES

STATE_EXPERIMENT = "replayer-sync"
TAG_PREFIX = "replay.sync."
PENDING_FILE = "sync.json"  # in a manifest: the state replay writes once the manifest is in
OVERLAP_MS = 3_600_000  # read an hour back: clock skew between clients, runs started mid-sync
MAX_TAG = 1000  # characters: Azure ML's limit on an experiment tag value (MLflow's is 5000)
STATE_FILE = "replay/sync-state.json"  # a state longer than MAX_TAG, on a run of STATE_EXPERIMENT
KEY_TAG = "replay.sync.key"  # on that run: whose state it holds
NOT_SELECTION = ("limit", "shard")  # a batch size, and part of the key: neither changes what a sync must hold


@dataclass
class SyncState:
    key: str
    selection: str
    watermark: int | None = None
    open: list[str] | None = field(default_factory=list)  # None: too many, open_since stands for them
    open_since: int | None = None
    synced_at: int = 0
    runs: int = 0  # how many runs this sync selected (for people reading the tag)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "SyncState":
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Window:
    """What an incremental sync reads: runs started since `since` (None: all) and the `open` ones by id."""

    since: int | None = None
    open: list[str] = field(default_factory=list)


@dataclass
class Sync:
    """One incremental sync under way: where its state lives, what it read, what it will write."""

    key: str
    selection: str
    target: str  # uris.workspace_name of the target holding the state
    window: Window
    previous: SyncState | None = None

    def next_state(self, source) -> SyncState:
        """The state to write once this sync's selection is in the target.

        Every run the source read counts for the watermark; open: the not-terminal runs it took and
        every run of a tree it left waiting (see module doc).
        """
        taken = source.plan()
        read = [node for tree in source.passed for node in tree] + taken
        starts = [n.start_time for n in read if n.start_time is not None]
        if self.previous and self.previous.watermark is not None:
            starts.append(self.previous.watermark)
        open_ids = {n.run_id: n.start_time for n in taken if n.status not in TERMINAL_STATUSES}
        for tree in source.passed:
            if waiting(tree, source.filters):
                open_ids.update((n.run_id, n.start_time) for n in tree)
        return SyncState(
            key=self.key, selection=self.selection, watermark=max(starts) if starts else None,
            open=sorted(open_ids), open_since=min((s for s in open_ids.values() if s is not None), default=None),
            synced_at=int(time.time() * 1000), runs=len(taken),
        )


def waiting(tree, filters: Filters) -> bool:
    """Whether a tree the filters did not take may still come in: its root is not finished yet, or
    only --limit kept it out. Other shards, other names and other dates never will."""
    root = tree[0]
    if not filters.in_shard(root.run_id) or not any(filters.named(n.run_id, n.name) for n in tree):
        return False
    if not Filters(since=filters.since, until=filters.until).wants_root(root.start_time, root.status):
        return False
    return root.status not in TERMINAL_STATUSES or not filters.status or root.status in filters.status


def state_key(workspace: str, filters: Filters) -> str:
    return workspace + (f" shard {filters.shard[0]}/{filters.shard[1]}" if filters.shard else "")


def selection_digest(filters: Filters) -> str:
    chosen = {k: v for k, v in filters.to_json().items() if k not in NOT_SELECTION}
    return hashlib.sha1(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tag_name(key: str) -> str:
    return TAG_PREFIX + hashlib.sha1(key.encode()).hexdigest()[:16]


# -- beginning and ending a sync ---------------------------------------------------------------


def begin(source, target: str | None, full: bool = False) -> Sync:
    """Read the state from the target and narrow `source` to the window it leaves open."""
    if not target:
        raise UsageError("--incremental needs --target: the target keeps the sync state to continue from")
    if not hasattr(source, "window"):
        kind = source.describe().get("kind", "this")
        raise UsageError(f"--incremental reads MLflow tracking stores; a {kind} source needs a full sync (drop --incremental)")
    key = state_key(source.workspace, source.filters)
    sync = Sync(key=key, selection=selection_digest(source.filters), target=uris.workspace_name(target), window=Window())
    sync.previous = read_state(target, key)
    previous = sync.previous
    if full:
        logger.info("full sync of {}: reading everything, then resetting its sync state", key)
    elif previous is None or previous.watermark is None:
        logger.info("no sync state for {} in the target yet: this sync reads everything", key)
    elif previous.selection != sync.selection:
        logger.warning("the filters differ from the last sync of {}: this sync reads everything", key)
    else:
        since = previous.watermark - OVERLAP_MS
        if previous.open is None and previous.open_since is not None:
            since = min(since, previous.open_since)
        if source.filters.since is not None:
            since = max(since, source.filters.since)
        sync.window = Window(since=since, open=previous.open or [])
        logger.info("incremental sync of {}: runs started since {} and {} open runs", key, iso(since), len(sync.window.open))
    source.window = sync.window
    return sync


def commit(client, state: SyncState) -> None:
    """Write the state into the target (after a clean pass only): in its tag, or past MAX_TAG in a
    run's file with the tag pointing at it (module doc)."""
    experiment = state_experiment(client)
    tag, text = tag_name(state.key), state.to_json()
    before = pointer(experiment.tags.get(tag))
    value = text if len(text) <= MAX_TAG else write_state_run(client, experiment.experiment_id, state, text)
    client.set_experiment_tag(experiment.experiment_id, tag, value)
    if before and before.get("run") and before["run"] not in value:
        delete_state_run(client, before["run"])
    logger.info("sync state of {} written: watermark {}, {} open runs", state.key, iso(state.watermark), len(state.open or []))


def state_experiment(client):
    found = client.get_experiment_by_name(STATE_EXPERIMENT)
    if found is None:
        note = ("replayer's incremental sync state: one replay.sync.* tag per source (a long state sits in a run's "
                f"{STATE_FILE}, the tag pointing at it); delete a tag to make that source's next sync read everything")
        client.create_experiment(STATE_EXPERIMENT, tags={"mlflow.note.content": note})
        return client.get_experiment_by_name(STATE_EXPERIMENT)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found


def write_state_run(client, experiment_id: str, state: SyncState, text: str) -> str:
    """A finished run of `replayer-sync` holding the whole state as STATE_FILE; returns the pointer."""
    import tempfile

    run_id = client.create_run(experiment_id, tags={KEY_TAG: state.key[:MAX_TAG]}, run_name="sync state").info.run_id
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / PurePosixPath(STATE_FILE).name
        path.write_text(text, encoding="utf-8")
        client.log_artifact(run_id, str(path), str(PurePosixPath(STATE_FILE).parent))
    client.set_terminated(run_id, "FINISHED")
    return json.dumps({"key": state.key[:200], "run": run_id, "sha1": hashlib.sha1(text.encode()).hexdigest()})


def delete_state_run(client, run_id: str) -> None:
    try:
        client.delete_run(run_id)
    except Exception as error:  # noqa: BLE001 - an old state's run left behind is harmless
        logger.warning("could not delete the previous sync state's run {}: {}", run_id, error)


def pointer(text: str | None) -> dict | None:
    """The tag's value when it points at a state run, else None (an inline state, or no tag)."""
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) and "run" in data and "watermark" not in data else None


def read_state(target: str, key: str) -> SyncState | None:
    resolved = uris.tracking_uri(target)
    if not uris.exists(resolved):
        return None
    client = uris.open_client(target, create=False)
    found = client.get_experiment_by_name(STATE_EXPERIMENT)
    text = found.tags.get(tag_name(key)) if found is not None and found.lifecycle_stage == "active" else None
    if not text:
        return None
    try:
        where = pointer(text)
        state = SyncState.from_json(read_state_run(client, where) if where else text)
    except Exception as error:  # noqa: BLE001 - any unreadable state means a full read, said out loud
        logger.warning("unreadable sync state for {} ({}); this sync reads everything", key, error)
        return None
    return state if state.key == key else None


def read_state_run(client, where: dict) -> str:
    return read_checked(client, where["run"], STATE_FILE, where.get("sha1"), "the state its tag names")


# -- through a manifest: extract prepares, replay commits ----------------------------------------


def write_pending(folder: str | Path, sync: Sync, source) -> None:
    data = {"target": sync.target, "state": json.loads(sync.next_state(source).to_json())}
    (Path(folder) / PENDING_FILE).write_text(json.dumps(data, indent=2), encoding="utf-8")


def commit_pending(folder: str | Path, target: str, client, whole: bool = True) -> bool:
    """After a clean replay of an incremental extract: write its state if this is its target and
    the whole manifest went in (`whole`: replay took no filters of its own)."""
    path = Path(folder) / PENDING_FILE
    if not path.is_file():
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("target") != uris.workspace_name(target):
        logger.warning("{} was extracted for sync into {}, not this target: its sync state is not written", folder, data.get("target"))
        return False
    if not whole:
        logger.warning("replay of {} took a part of it (filters): its sync state is not written", folder)
        return False
    commit(client, SyncState(**data["state"]))
    return True


def iso(ms: int | None) -> str:
    if ms is None:
        return "the beginning"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
