"""MLflow 3 logged models in a manifest (runner.engine.manifest):

    logged_models.jsonl      one ModelRecord per line (runner.core.records), output steps included
    models/<model id>/<path> its files, copied through the artifact engine (md5-checked on the way)

Written by extract after the runs, for the models the run selection takes (runner.engine.selection);
read back by replay and verify through ManifestModels, the same interface as a live store's reader
(runner.mlflow.logged_models.LiveModels). A manifest written before logged models has no such file:
it holds none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from runner.core.errors import ManifestError, ReplayerError
from runner.core.records import ModelRecord
from runner.engine.manifest import ManifestSource, job_file_name, read_lines
from runner.engine.selection import Selection
from runner.files.copier import copy_artifacts
from runner.files.options import ArtifactOptions

MODELS = "logged_models.jsonl"
FILES = "models"


def files_folder(folder: Path, model_id: str) -> Path:
    return folder / FILES / job_file_name(model_id)


def extract_models(reader, experiments, selection: Selection, folder: Path, options: ArtifactOptions) -> int:
    """Every selected logged model of these experiments into the manifest at `folder`; returns how many."""
    count = 0
    with open(folder / MODELS, "w", encoding="utf-8") as out:
        for experiment in experiments:
            for record in selection.chosen(reader.models(experiment)):
                reader.output_steps(record)  # read now: the manifest has no run to ask later
                stats = copy_artifacts(record.files, files_folder(folder, record.model_id), None, options,
                                       tracking_uri=reader.tracking_uri, fresh=True, label=f"files of logged model {record.model_id}")
                if stats.failed:
                    path, reason = stats.failed[0]
                    raise ReplayerError(f"logged model {record.model_id}: {len(stats.failed)} files not extracted (first: {path}: {reason})")
                out.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
                count += 1
    return count


def reader(source) -> "ManifestModels | None":
    """The logged models of a manifest source; None for any other source, or a manifest without any."""
    if isinstance(source, ManifestSource) and (source.folder / MODELS).exists():
        return ManifestModels(source.folder)
    return None


class ManifestModels:
    """The logged models a manifest holds, as ModelRecords whose files are the manifest's."""

    tracking_uri = None

    def __init__(self, folder: Path):
        self.folder = folder

    def models(self, experiment) -> Iterator[ModelRecord]:
        path = self.folder / MODELS
        for number, data in read_lines(path):
            try:
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object")
                if data.get("experiment") != experiment.name:
                    continue
                yield ModelRecord.from_json(data, files=str(files_folder(self.folder, data["model_id"])))
            except (TypeError, ValueError, KeyError) as error:
                raise ManifestError(f"{path}:{number}: bad logged model record: {error}") from None

    def output_steps(self, record: ModelRecord) -> list[int]:
        return record.output_steps or []
