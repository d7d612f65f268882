"""Verify's comparison of MLflow 3 logged models: each selected source model against its copy.

The source's models come from the same reader as the copy's (runner.mlflow.logged_models.reader_for:
a live store or a manifest) and are narrowed by the same selection (runner.engine.selection).
"""
from __future__ import annotations

from runner.engine.selection import Selection
from runner.files.roots import open_store
from runner.mlflow.logged_models import differences, find_copy
from runner.mlflow.uris import missing_route


def compare(reader, selection: Selection, workspace: str, client, experiment, target_experiment_id: str) -> list[tuple[str, str, str, str, str]]:
    """(source model id, name, field, source's, target's) per way a logged model of `experiment`
    differs from its copy in the target experiment."""
    out = []
    for model in selection.chosen(reader.models(experiment)):
        try:
            copy = find_copy(client, target_experiment_id, model.model_id, workspace)
        except Exception as error:  # noqa: BLE001 - a target without the route holds no copy
            if not missing_route(error):
                raise
            copy = None
        if copy is None:
            out.append((model.model_id, model.name, "logged_model", "present", "missing"))
            continue
        out += [(model.model_id, model.name, f"logged_model:{what}", str(a), str(b)) for what, a, b in differences(model, copy)]
        out += [(model.model_id, model.name, f"logged_model:file:{path}", a, b)
                for path, a, b in file_differences(model, copy, reader.tracking_uri, client.tracking_uri)]
    return out


def file_differences(model, copy, source_uri: str | None, target_uri: str) -> list[tuple[str, str, str]]:
    """Paths and sizes of the model's files on both sides (no bytes read)."""
    want = {ref.path: str(ref.size) for ref in open_store(model.files, source_uri).list()}
    have = {ref.path: str(ref.size) for ref in open_store(copy.artifact_location, target_uri).list()}
    return [(path, want.get(path, "(absent)"), have.get(path, "(absent)"))
            for path in sorted(set(want) | set(have)) if want.get(path) != have.get(path)]
