"""What the run pass selected, for the kinds copied after it (MLflow 3 logged models, model inputs).

Run filters (`--include`, `--since`, `--limit`, ...) pick runs; a logged model follows its source
run: it is copied when that run was selected, so no copy links a run the target does not hold. A
model logged without a run comes only when whole experiments are selected.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Selection:
    whole_experiments: bool = True
    runs: set[str] = field(default_factory=set)
    experiments: set[str] = field(default_factory=set)  # names of the experiments the selected runs are in
    model_inputs: dict[str, list[str]] = field(default_factory=dict)  # source run -> source model ids it evaluated
    dataset_inputs: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, job) -> None:
        with self._lock:
            self.runs.add(job.source_id)
            self.experiments.add(job.experiment)
            self.dataset_inputs += len(job.datasets)
            if job.model_inputs:
                self.model_inputs[job.source_id] = list(job.model_inputs)

    def wants(self, model) -> bool:
        if model.source_run_id:
            return model.source_run_id in self.runs
        return self.whole_experiments

    def chosen(self, models):
        """The models this selection takes, each with only the metric points of selected runs (a
        model's metric lives on a run: one not copied holds none of it)."""
        for model in models:
            if self.wants(model):
                model.metrics = [m for m in model.metrics if not m.run_id or m.run_id in self.runs]
                yield model


def selected_runs(source, whole_experiments: bool) -> Selection:
    """The selection without reading run records: a live MLflow source's plan holds the ids."""
    plan = getattr(source, "plan", None)
    ids = [node.run_id for node in plan()] if plan is not None else [job.source_id for job in source.jobs()]
    return Selection(whole_experiments=whole_experiments, runs=set(ids))


def kinds_line(counts: dict[str, int]) -> str:
    """`3 runs, 2 logged models, ...`: the dry run's and the summary's counts per kind."""
    return ", ".join(f"{count} {kind}" for kind, count in counts.items())
