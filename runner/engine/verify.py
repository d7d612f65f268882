"""Verify: compare source and target record by record; any difference is a failure.

Compared for every selected source job: presence and completion in the target, experiment,
name, status, start/end time, lifecycle, params, user tags (tool tags excluded), parent link,
full metric histories (every key, step, timestamp and value, NaN equal to NaN) and artifacts
(path, size, md5 of the bytes on both sides). With `--models`, registered models too (see
the target's `compare_models`). With a rename file, experiments are expected under their new names.

The march is here; reading the target is the target's (`target.checker(...)`, a `Checker`: for
MLflow-compatible targets runner.mlflow.check.JobChecker).
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

from loguru import logger

from runner.core.progress import Progress
from runner.core.records import Experiment, JobRecord
from runner.engine.child_groups import ChildGroups
from runner.engine.ledger import PARENT_TAG, is_own_tag
from runner.engine.mapping import USER_TAG, Mapping, source_user


@dataclass
class Difference:
    job: str
    name: str
    field: str
    source: str
    target: str
    target_run: str = ""  # the target's run id, where there is one


@dataclass
class VerifyReport:
    source: dict
    target: dict
    compared: int = 0
    equal: int = 0
    models: int = 0  # registered models compared (with --models)
    traces: int = 0  # MLflow 3 traces compared (an MLflow source's; not with --skip-traces)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict:
        kinds = Counter(d.field for d in self.differences)
        return {
            "source": self.source,
            "target": self.target,
            "summary": {
                "compared": self.compared, "equal": self.equal, "differing": self.compared - self.equal,
                "models": self.models, "traces": self.traces, "by_field": dict(kinds),
            },
            "differences": [asdict(d) for d in self.differences],
        }


class Checker(Protocol):
    """What verify asks a target: the differences of one job, and of the experiments."""

    scratch: Path  # a folder for downloads, removed by close()

    def compare(self, job: JobRecord, wanted: dict | None = None, run=None) -> list["Difference"]:
        """`wanted`: the source run's metric digests by key, when already read (runner.engine.migrate_verify);
        `run`: the target run a children search returned (with `read_children`: runner.engine.child_groups)."""
        ...

    def compare_experiments(self, experiments: Iterable[Experiment], mapping: Mapping) -> list["Difference"]: ...

    def close(self) -> None: ...


def verify(source, target, parallel: int = 8, mapping: Mapping | None = None, models: list[str] | None = None,
           runs: bool = True, traces: bool = True, logged_models: bool = True) -> VerifyReport:
    """Source against target: every selected run (unless `runs=False`, e.g. the pipeline's models
    step) and the registered models `models` names; `logged_models=False` leaves MLflow 3 logged
    models and model inputs out (--skip-logged-models)."""
    mapping = mapping or Mapping()
    report = VerifyReport(source=source.describe(), target=target.describe())
    if target.client is None:
        report.differences.append(Difference("", "", "target", "exists", "no store at that location"))
        return report
    ledger = target.ledger(source.workspace)
    if runs and not ledger.runs:
        explain_other_sources(source, target)
    checker = target.checker(source, ledger, mapping)
    if hasattr(checker, "logged_models"):
        checker.logged_models = logged_models
    if runs:
        compare_runs(source, target, ledger, checker, report, mapping, parallel)
    if models:
        report.models, found = target.compare_models(source, ledger, models, checker.scratch)
        report.differences += found
    if traces and hasattr(target, "compare_traces"):
        report.traces, found = target.compare_traces(source, ledger, mapping, parallel)
        report.differences += found
    checker.close()
    return report


def explain_other_sources(source, target) -> None:
    """No run in the target comes from this source: say in one line which sources it does hold
    (the usual cause: the migration ran with another --workspace name than this verify)."""
    others = getattr(target, "other_workspaces", lambda _: {})(source.workspace)
    if others:
        named = ", ".join(f"{name!r} ({count} runs)" for name, count in sorted(others.items(), key=lambda kv: -kv[1])[:3])
        logger.warning("the target holds no run replayed from {!r}, but runs from {}; if that is this source under "
                       "another name, verify with --workspace NAME (as the migration ran)", source.workspace, named)


def compare_runs(source, target, ledger, checker: "Checker", report: "VerifyReport", mapping: Mapping, parallel: int) -> None:
    """Every selected run (and the target's duplicates, orphans and runs the source lacks) into `report`."""
    if ledger.duplicates:
        report.differences.append(Difference("", "", "duplicates", "0", str(ledger.duplicates)))
    if ledger.orphans:
        report.differences.append(Difference("", "", "orphans", "0", str(len(ledger.orphans))))
    report.differences += checker.compare_experiments(source.experiments(), mapping)
    progress = Progress("verify", source.count())
    lock = threading.Lock()
    seen: set[str] = set()

    def one(job: JobRecord, run=None) -> None:
        found = checker.compare(job, None, run)
        with lock:
            report.compared += 1
            report.equal += not found
            report.differences += found
        progress.tick()

    with ThreadPoolExecutor(parallel) as pool:
        # A parent's children are read with one search once the stream has passed its tree
        # (runner.engine.child_groups); parents and standalone runs alone, right away.
        groups = ChildGroups(checker, lambda job, _, run: pool.submit(one, job, run))
        for job in source.jobs():
            seen.add(job.source_id)
            groups.queued(job)
            if not groups.done(job, None):
                pool.submit(one, job)
        groups.finish()
    if not has_filters(source):
        for original_id, run in ledger.runs.items():
            if original_id not in seen and run.lifecycle_stage == "active":
                report.differences.append(Difference(original_id, "", "target_only", "", run.run_id))


def has_filters(source) -> bool:
    """Whether the source is a selection (then target runs outside it are not "target only").

    A manifest extracted with filters or `--shard` is a selection too, whatever the flags now.
    """
    f = getattr(source, "filters", None)
    if f and (f.experiments or f.include or f.since or f.until or f.status or f.limit or f.shard):
        return True
    if ((getattr(source, "header", None) or {}).get("source") or {}).get("window"):  # an incremental extract (runner.mlflow.sync_state)
        return True
    recorded = (getattr(source, "header", None) or {}).get("filters") or {}
    return any(recorded.get(key) for key in ("experiments", "include", "since", "until", "status", "limit", "shard"))


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not is_own_tag(k) and k != PARENT_TAG}


def expected_user_tags(job: JobRecord, target_tags: dict[str, str]) -> dict[str, str]:
    """The target's user tags, less an `mlflow.user` that --use-source-user added (the source's user)."""
    tags = user_tags(target_tags)
    if USER_TAG not in job.tags and source_user(job) and tags.get(USER_TAG) == source_user(job):
        del tags[USER_TAG]
    return tags


def show(value) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 300 else text[:297] + "..."


def write_report(report: VerifyReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False), encoding="utf-8")


def print_table(report: VerifyReport, limit: int = 50) -> None:
    """Runs counted as runs, each difference on a line with the key and both values, then what
    fixes which kind."""
    differing = report.compared - report.equal
    others = sum(1 for d in report.differences if not d.job)
    models = f", {report.models} models compared" if report.models else ""
    models += f", {report.traces} traces compared" if report.traces else ""
    print(f"verify: {report.compared} runs compared, {report.equal} equal, {differing} differ{models}"
          + (f"; {others} other differences (experiments, runs only the target has, registry)" if others else ""))
    if not report.differences:
        return
    print(f"{'source run':<34} {'target run':<34} {'field':<28} source -> target")
    for d in report.differences[:limit]:
        print(f"{d.job or '-':<34} {d.target_run or '-':<34} {d.field:<28} {d.source[:80]} -> {d.target[:80]}")
    if len(report.differences) > limit:
        print(f"... {len(report.differences) - limit} more with --report FILE")
    for hint in fixes(report.differences):
        print(hint)


NOT_CHANGES = {"run", "experiment", "target_only", "duplicates", "orphans", "target", "error"}


def fixes(differences: list[Difference]) -> list[str]:
    """What fixes which kind of difference, one line each."""
    kinds = {d.field for d in differences if not d.field.startswith("trace")}
    hints = []
    if len(kinds) < len({d.field for d in differences}):
        hints.append("fix: missing or unfinished traces: rerun the same `replayer migrate`; a trace changed in the target "
                     "since its copy: delete it there (`mlflow traces delete`) and rerun migrate")
    if kinds & {"run", "experiment"}:
        hints.append("fix: missing or interrupted runs: rerun the same `replayer migrate` (or replay); it creates and repairs only those")
    if kinds - NOT_CHANGES:
        hints.append("fix: a run that differs after a complete copy was changed on one side since; migrate does not overwrite it: "
                     "delete that target run, purge it (`mlflow gc`), and rerun migrate")
    if "target_only" in kinds:
        hints.append("note: runs only the target has came from outside this selection or were deleted in the source")
    return hints
