"""A run's model inputs (MLflow 3: `run.inputs.model_inputs`, a run that evaluated a logged model):
read from the source, written once the models are copied, compared by verify.

MLflow's search_runs does not return them (3.15 answers an empty list), get_run does: reading them
costs one get_run per run. The source pays it only for runs of experiments that hold logged
models, so a store without logged models pays nothing. The price: a run evaluating a model of
another experiment, while its own experiment holds none, keeps no model input (docs/status.md).

They are written in the logged-model pass, after the models: a model input names the copy, which
must exist first. Each run's inputs are checked against the target then, so a killed migration
adds the missing ones on its rerun and a finished one adds nothing (an input once logged cannot
be removed; the store keeps one per run and model).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from runner.engine.ledger import ORIGINAL_MODEL_ID
from runner.mlflow.uris import is_azureml_endpoint, missing_route

READERS = 8  # get_run requests in flight while a page of runs is read


def read(run) -> list[str]:
    inputs = getattr(run, "inputs", None)
    return [entry.model_id for entry in getattr(inputs, "model_inputs", None) or []]


class SourceInputs:
    """Model inputs of a live MLflow source's runs, read only where logged models exist."""

    def __init__(self, client):
        self.client = client
        self._holds: dict[str, bool] = {}  # experiment id -> it holds logged models

    def holds_models(self, experiment_id: str) -> bool:
        if experiment_id not in self._holds:
            self._holds[experiment_id] = self._any_model(experiment_id)
        return self._holds[experiment_id]

    def _any_model(self, experiment_id: str) -> bool:
        if is_azureml_endpoint(self.client):  # no logged-model answer recorded there
            return False
        try:
            return bool(self.client.search_logged_models([experiment_id], max_results=1))
        except Exception as error:  # noqa: BLE001 - a store without the route holds none
            if missing_route(error):
                return False
            raise

    def fill(self, runs: dict) -> dict[str, list[str]]:
        """run id -> the model ids it evaluated, for those runs (id -> searched run) that may hold some."""
        wanted = [run_id for run_id, run in runs.items() if self.holds_models(run.info.experiment_id)]
        if not wanted:
            return {}
        with ThreadPoolExecutor(READERS) as pool:
            found = pool.map(lambda run_id: read(self.client.get_run(run_id)), wanted)
            return {run_id: ids for run_id, ids in zip(wanted, found) if ids}


def missing(client, run_id: str, model_ids: list[str]) -> list[str]:
    have = set(read(client.get_run(run_id)))
    return [model_id for model_id in model_ids if model_id not in have]


def write(client, run_id: str, model_ids: list[str]) -> int:
    """The model inputs the target run lacks; returns how many were added."""
    from mlflow.entities import LoggedModelInput

    lacking = missing(client, run_id, model_ids)
    if lacking:
        client.log_inputs(run_id, models=[LoggedModelInput(model_id) for model_id in lacking])
    return len(lacking)


def compare(client, want: list[str], run, originals: dict[str, str]) -> list[tuple[str, str, str]]:
    """One (`model_input:<source model id>`, source's, target's) per model input one side lacks.
    `originals` caches target model id -> source model id (its `original_model_id` tag)."""
    have = set()
    for model_id in read(run):
        if model_id not in originals:
            originals[model_id] = original_of(client, model_id)
        have.add(originals[model_id])
    return ([(f"model_input:{m}", "present", "(absent)") for m in sorted(set(want) - have)]
            + [(f"model_input:{m}", "(absent)", "present") for m in sorted(have - set(want))])


def original_of(client, model_id: str) -> str:
    """The source model a target model was copied from; a model made in the target names itself."""
    try:
        return client.get_logged_model(model_id).tags.get(ORIGINAL_MODEL_ID) or model_id
    except Exception:  # noqa: BLE001 - a model input naming a deleted model still shows, by its id
        return model_id
