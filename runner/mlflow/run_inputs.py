"""A run's dataset inputs (MLflow 2.4+: `run.inputs.dataset_inputs`): read, written, compared.

A dataset input is a Dataset (name, digest, source type, source, schema, profile) plus the input's
tags (`mlflow.data.context=training`). The store keeps one dataset per (experiment, name, digest)
and links it to runs; an input once logged cannot be removed, so a run gets its inputs once: when
it is created, or on repair while it has none.

A store without the log-inputs route (an MLflow server older than 2.4, an endpoint that refuses it)
gets one warning naming what is left out; runs are copied all the same and the summary counts the
runs whose inputs stayed behind.
"""
from __future__ import annotations

import hashlib
import json
import threading

from loguru import logger

from runner.mlflow.uris import missing_route

FIELDS = ("name", "digest", "source_type", "source", "schema", "profile")
MAX_PER_REQUEST = 100  # a generous bound per log_inputs request; runs rarely hold more than a few


def read_datasets(run) -> list[dict]:
    """The run's dataset inputs as plain JSON-ready dicts (JobRecord.datasets), in the store's order."""
    inputs = getattr(run, "inputs", None)
    found = []
    for entry in getattr(inputs, "dataset_inputs", None) or []:
        dataset = entry.dataset
        record = {name: getattr(dataset, name, None) or "" for name in FIELDS}
        record["tags"] = {tag.key: tag.value for tag in entry.tags or []}
        found.append(record)
    return found


def to_inputs(datasets: list[dict]) -> list:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    return [
        DatasetInput(
            Dataset(**{name: d.get(name) or None for name in FIELDS if name != "name"}, name=d["name"]),
            tags=[InputTag(k, v) for k, v in sorted(d.get("tags", {}).items())],
        )
        for d in datasets
    ]


class InputWriter:
    """Writes dataset inputs into one target; remembers a target that has no route for them."""

    def __init__(self):
        self.refused = False  # the target answered that it has no log-inputs route
        self.left_out = 0  # runs whose dataset inputs were not written because of that
        self._lock = threading.Lock()

    def write(self, client, run_id: str, datasets: list[dict]) -> None:
        if not datasets:
            return
        if self.refused:
            self._leave_out()
            return
        inputs = to_inputs(datasets)
        try:
            for start in range(0, len(inputs), MAX_PER_REQUEST):
                client.log_inputs(run_id, datasets=inputs[start : start + MAX_PER_REQUEST])
        except Exception as error:  # noqa: BLE001 - only a missing route is tolerated; the rest re-raised
            if not missing_route(error):
                raise
            self._refuse(client)
            self._leave_out()

    def _refuse(self, client) -> None:
        with self._lock:
            first, self.refused = not self.refused, True
        if first:
            logger.warning(
                "target {} has no log-inputs API (an MLflow server older than 2.4?): run dataset inputs are not copied; "
                "every other part of the runs is", client.tracking_uri,
            )

    def _leave_out(self) -> None:
        with self._lock:
            self.left_out += 1

    def left_out_counts(self) -> dict[str, int]:
        return {"dataset inputs": self.left_out} if self.left_out else {}


def compare(want: list[dict], have_run) -> list[tuple[str, str, str]]:
    """One (`dataset:<name>`, source's, target's) per dataset name whose inputs differ."""
    have = read_datasets(have_run)
    by_name = lambda found: {d["name"]: sorted(found_named(found, d["name"]), key=canonical) for d in found}  # noqa: E731
    mine, theirs = by_name(want), by_name(have)
    out = []
    for name in sorted(set(mine) | set(theirs)):
        a, b = mine.get(name, []), theirs.get(name, [])
        if [canonical(d) for d in a] != [canonical(d) for d in b]:
            out.append((f"dataset:{name}", shown(a), shown(b)))
    return out


def found_named(found: list[dict], name: str) -> list[dict]:
    return [d for d in found if d["name"] == name]


def canonical(dataset: dict) -> str:
    """Equal datasets give equal text: every field and tag, empty and absent alike."""
    return json.dumps({**{name: dataset.get(name) or "" for name in FIELDS}, "tags": dataset.get("tags", {})}, sort_keys=True)


def shown(datasets: list[dict]) -> str:
    """What a difference line shows: the fields that tell datasets apart; schema and profile as
    short digests, since a whole schema would drown the line."""
    if not datasets:
        return "(absent)"
    return "; ".join(
        f"digest={d.get('digest')} source_type={d.get('source_type')} source={d.get('source')} "
        f"schema#{short(d.get('schema'))} profile#{short(d.get('profile'))} tags={d.get('tags', {})}"
        for d in datasets
    )


def short(text: str | None) -> str:
    return hashlib.sha1((text or "").encode()).hexdigest()[:8]
