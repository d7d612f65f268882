"""Write runs straight into an MLflow-compatible tracking store (no compute needed).

A plain MLflow server, sqlite, an embedded folder, or an AzureML workspace's MLflow endpoint.
Every run keeps its original start/end time, status, name, params, tags and full metric
history; parents are created first and children point at the new parent run id.
"""
from __future__ import annotations

import itertools
import threading
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator
from uuid import uuid4

from loguru import logger

from runner.files.copier import copy_run_artifacts
from runner.files.options import ArtifactOptions
from runner.files.stats import CopyStats
from runner.files.roots import source_store
from runner.mlflow import artifact_store  # noqa: F401 - registers MLflow artifact roots with runner.files
from runner.mlflow import experiment_overflow, run_inputs, uris
from runner.core.errors import ReplayerError, UsageError
from runner.engine.ledger import (COMPLETE, ORIGINAL_WORKSPACE, PARENT_TAG, RUN_NAME_TAG, Ledger, TargetRun, awaiting, fingerprint_of,
                                  is_own_tag, lineage_tags)
from runner.engine import limits as caps
from runner.engine.limits import MAX_ENTITIES_PER_BATCH, OVERFLOW_PATH, OVERFLOW_TAG, limits_for, new_overflow
from runner.core.records import TERMINAL_STATUSES, Experiment, JobRecord, MetricPoint
from runner.mlflow.source import metric_history
from runner.mlflow.batching import MAX_PARAMS_TAGS_PER_BATCH, RowCaps

PAGE = 1000


class DirectTarget:
    def __init__(self, uri: str, dry_run: bool = False):
        self.uri = uri
        self.dry_run = dry_run
        resolved = uris.tracking_uri(uri)
        # A dry run never creates a store; an absent local store simply holds nothing yet.
        self.client = None if dry_run and not uris.exists(resolved) else uris.open_client(uri, create=not dry_run)
        if self.client is None and uris.is_remote(resolved):
            uris.check_reachable(resolved)
        self._artifact_root = uris.artifact_root(resolved)
        self._experiments: dict[str, str] = {}
        self._lock = threading.Lock()
        self._artifact_uris: dict[str, str] = {}  # runs created by this process, until finished
        self.limits = limits_for(resolved)  # cli.open_target applies --max-tags / --max-metric-keys
        self.overflowed = 0  # runs that needed replay/overflow.json
        self.overflow_counts: Counter = Counter()  # what those files hold, by kind, for the summary
        self._tag_overflow: dict[str, dict[str, str]] = {}  # run id -> tags create_run could not hold
        self.artifact_options = ArtifactOptions()  # cli.open_target sets the --artifacts flags
        self.artifact_stats = CopyStats()  # totals over all runs, for the summary
        # Plain MLflow stores apply a log_batch's params, then metrics, then tags (SqlAlchemyStore and
        # FileStore alike), so a new run's completion tag can ride on its last batch: one request
        # less per run. AzureML's endpoint promises no such order: there a new run whose source
        # finished carries its completion tag from its create-run, awaiting its status
        # (runner.engine.ledger.awaiting), and the status update is its last write; any other run's
        # tag stays a request of its own.
        self.completes_in_batch = not uris.is_azureml_endpoint(resolved)
        self._completed: set[str] = set()  # runs whose completion tag is written already
        self._awaiting: set[str] = set()  # runs created with a tag awaiting their status
        self._row_caps: RowCaps | None = None  # see row_caps()
        self.inputs = run_inputs.InputWriter()  # dataset inputs; remembers a target without that route
        self.remember_copied_files = False  # --verify sets it (runner.engine.migrate_verify)
        self._copied_files: dict[str, list] = {}  # run id -> the source files its copy read, until checked

    def describe(self) -> dict:
        return {"kind": "direct", "uri": uris.redact(self.uri)}

    # -- what is there already ----------------------------------------------------------

    def checker(self, source, ledger: Ledger, mapping=None):
        """Verify's reader of this target (runner.engine.verify.Checker)."""
        from runner.mlflow.check import JobChecker

        return JobChecker(source, self, ledger, mapping)

    def compare_models(self, source, ledger: Ledger, patterns: list[str], scratch):
        """Verify's registry part: (models compared, differences)."""
        from runner.mlflow.model_check import compare_models

        return compare_models(source, self, ledger, patterns, scratch)

    def ledger(self, workspace: str) -> Ledger:
        from mlflow.entities import ViewType

        ledger = Ledger(runs={})
        if self.client is None:
            return ledger
        if "'" in workspace:
            raise UsageError(f"workspace name {workspace!r} contains a quote; set a plain `workspace:` name in the config")
        with uris.refusals_named(self.uri):  # the target's first request: a refused credential shows here
            ids = [e.experiment_id for e in self._all_experiments()]
        query = f"tags.{ORIGINAL_WORKSPACE} = '{workspace}'"
        for start in range(0, len(ids), 100):
            token = None
            while True:
                page = self.client.search_runs(ids[start : start + 100], query, ViewType.ALL, max_results=PAGE, page_token=token)
                for run in page:
                    tags = run.data.tags
                    fingerprint = fingerprint_of(tags, run.info.status)
                    if run.info.lifecycle_stage == "deleted" and not fingerprint:
                        continue  # an abandoned attempt someone deleted: not ours to resume
                    ledger.add(tags["original_job_id"], TargetRun(run.info.run_id, run.info.experiment_id, fingerprint, run.info.lifecycle_stage))
                token = page.token
                if not token:
                    break
        return ledger

    def other_workspaces(self, workspace: str) -> dict[str, int]:
        """Sources other than `workspace` whose runs this target holds (from the first page of runs):
        what verify names when it finds none of `workspace`'s."""
        from mlflow.entities import ViewType

        ids = [e.experiment_id for e in self._all_experiments()][:100]
        found: dict[str, int] = {}
        for run in self.client.search_runs(ids, "", ViewType.ACTIVE_ONLY, max_results=PAGE) if ids else []:
            name = run.data.tags.get(ORIGINAL_WORKSPACE)
            if name and name != workspace:
                found[name] = found.get(name, 0) + 1
        return found

    def _all_experiments(self):
        from mlflow.entities import ViewType

        found, token = [], None
        while True:
            page = self.client.search_experiments(view_type=ViewType.ALL, max_results=PAGE, page_token=token)
            found += page
            token = page.token
            if not token:
                return found

    # -- writing ---------------------------------------------------------------------------

    def ensure_experiment(self, experiment: Experiment) -> str:
        """The target experiment of that name, created with the source's tags when missing."""
        with self._lock:
            if experiment.name in self._experiments:
                return self._experiments[experiment.name]
            found = self.client.get_experiment_by_name(experiment.name)
            have = {} if found is None else found.tags
            # Tags the target experiment holds that the source's do not name take room too.
            taken = len([k for k in have if k not in experiment.tags and not is_own_tag(k)])
            tags, spill = caps.fit_experiment_tags(self.limits, experiment.tags, taken)
            if found is None:
                experiment_id = self._create_experiment(experiment, tags)
            else:
                experiment_id = found.experiment_id
                if found.lifecycle_stage == "deleted":
                    logger.warning("target experiment {} was deleted; restoring it to write runs into it", experiment.name)
                    self.client.restore_experiment(experiment_id)
                for key, value in tags.items():
                    if have.get(key) != value:
                        self.client.set_experiment_tag(experiment_id, key, value)
            if spill or OVERFLOW_TAG in have:
                experiment_overflow.store(self.client, experiment_id, experiment.name, spill, have.get(OVERFLOW_TAG))
            self._experiments[experiment.name] = experiment_id
            return experiment_id

    def known_experiment_id(self, name: str) -> str | None:
        """The id of an experiment this process ensured already (no request): verify's children
        searches (runner.mlflow.check `read_children`) name it."""
        with self._lock:
            return self._experiments.get(name)

    def _create_experiment(self, experiment: Experiment, tags: dict[str, str]) -> str:
        from mlflow.exceptions import MlflowException

        location = f"{self._artifact_root}/{uuid4().hex}" if self._artifact_root else None
        try:
            experiment_id = self.client.create_experiment(experiment.name, artifact_location=location, tags=tags)
        except MlflowException:
            # A retried create whose first answer was lost finds the name taken: by itself.
            found = self.client.get_experiment_by_name(experiment.name)
            if found is None:
                raise
            return found.experiment_id
        logger.debug("created experiment {} ({})", experiment.name, experiment_id)
        return experiment_id

    def run_tags(self, job: JobRecord, workspace: str, parent_run_id: str | None) -> dict[str, str]:
        tags = {k: v for k, v in job.tags.items() if k != PARENT_TAG and not is_own_tag(k)}
        tags.update(lineage_tags(job, workspace))
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        return tags

    def create_run(self, job: JobRecord, experiment_id: str, tags: dict[str, str]) -> str:
        awaits = not self.completes_in_batch and job.status in TERMINAL_STATUSES
        if awaits:  # complete once finish() sets its status: the run's last write (ledger.awaiting)
            tags = {**tags, COMPLETE: awaiting(job.fingerprint(), job.status)}
        kept, overflow_tags = self.fit_run_tags(job, tags)
        run_name = kept.pop(RUN_NAME_TAG, None)  # the store sets that tag from the run name
        run = self.client.create_run(experiment_id, start_time=job.start_time, tags=kept, run_name=run_name)
        with self._lock:
            self._artifact_uris[run.info.run_id] = run.info.artifact_uri
            self._tag_overflow[run.info.run_id] = overflow_tags
            if awaits:
                self._awaiting.add(run.info.run_id)
        return run.info.run_id

    def write_new(self, run_id: str, job: JobRecord, source, scratch: Path) -> int:
        """Params, metrics and artifacts into a run we just created. Returns metric points written."""
        with self._lock:
            overflow = new_overflow(self._tag_overflow.pop(run_id, {}))
        params = self.fit_params(job.params, overflow)
        self.inputs.write(self.client, run_id, job.datasets)  # before the completion tag, like every write
        if not self.completes_in_batch:
            written = self._log(run_id, params, self.fit_metrics(job, source.metrics(job), overflow))
            self._copy_artifacts(run_id, None, job, source, scratch, fresh=True)
            self.write_overflow(run_id, overflow, scratch)
            return written
        # Status and files first, then the data, the completion tag in its last batch: still the
        # last write. A run cut short meanwhile has no tag, whatever its status says, and is repaired.
        if job.status in TERMINAL_STATUSES:
            self.client.set_terminated(run_id, job.status, end_time=job.end_time)
        self._copy_artifacts(run_id, None, job, source, scratch, fresh=True)
        complete = {COMPLETE: job.fingerprint()}
        # Points past a metric-key cap are known only once the stream is read: then the overflow
        # file comes after the data and the tag after it, as a request of its own.
        last = lambda: {} if any(overflow.values()) else complete  # noqa: E731
        written = self._log(run_id, params, self.fit_metrics(job, source.metrics(job), overflow), last_tags=last)
        if any(overflow.values()):
            self.write_overflow(run_id, overflow, scratch)
            self.client.set_tag(run_id, COMPLETE, job.fingerprint())
        with self._lock:
            self._completed.add(run_id)
        return written

    def repair(self, run_id: str, job: JobRecord, tags: dict[str, str], source, scratch: Path) -> int:
        """Bring an interrupted or outdated run level with the source by adding what it lacks."""
        run = self.client.get_run(run_id)
        if run.info.lifecycle_stage == "deleted":
            self.client.restore_run(run_id)
        if COMPLETE in run.data.tags:
            self.client.delete_tag(run_id, COMPLETE)  # incomplete until this repair finishes
        tags, overflow_tags = self.fit_run_tags(job, tags)
        overflow = new_overflow(overflow_tags)
        changed_tags = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
        for key, value in self.fit_params(job.params, new_overflow({})).items():
            have = run.data.params.get(key)
            if have is not None and have != value:
                raise ReplayerError(
                    f"run {run_id}: param {key!r} is {have!r} in the target but {value!r} in the source; "
                    "MLflow params cannot change: delete that target run and rerun"
                )
        params = self.fit_params(job.params, overflow)
        missing_params = {k: v for k, v in params.items() if k not in run.data.params}
        self._log(run_id, missing_params, [], changed_tags)
        if not getattr(run.inputs, "dataset_inputs", None):  # inputs cannot be removed: a run holding some keeps them
            self.inputs.write(self.client, run_id, job.datasets)
        written = 0
        for key, points in itertools.groupby(self.fit_metrics(job, source.metrics(job), overflow), key=lambda p: p.key):
            have = Counter(self._history_identities(run_id, key))
            missing = []
            for point in points:
                if have[point.identity()] > 0:
                    have[point.identity()] -= 1
                else:
                    missing.append(point)
            written += self._log(run_id, {}, missing)
        self._copy_artifacts(run_id, run.info.artifact_uri, job, source, scratch, fresh=False)
        self.write_overflow(run_id, overflow, scratch)
        return written

    # -- target limits (runner/limits.py) ------------------------------------------------------

    def fit_tags(self, tags: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        return caps.fit_tags(self.limits, tags)

    def fit_run_tags(self, job: JobRecord, tags: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """fit_tags with the run name as the `mlflow.runName` tag the store makes of it: counted
        among the run's tags and cut to the target's display name cap. A run without a name gets
        one from the store all the same, so room for that tag is kept too."""
        named = {RUN_NAME_TAG: job.name, **tags} if job.name else tags
        return caps.fit_tags(self.limits, named, taken=0 if RUN_NAME_TAG in named else 1)

    def fit_params(self, params: dict[str, str], overflow: dict) -> dict[str, str]:
        return caps.fit_params(self.limits, params, overflow)

    def fit_metrics(self, job: JobRecord, points: Iterable[MetricPoint], overflow: dict) -> Iterator[MetricPoint]:
        return caps.fit_metrics(self.limits, job, points, overflow)

    def write_overflow(self, run_id: str, overflow: dict, scratch: Path) -> None:
        counts = caps.write(self.client, run_id, overflow, scratch)
        if not counts:
            return
        with self._lock:
            self.overflowed += 1
            self.overflow_counts.update(counts)
        logger.info("run {}: {} went to {}", run_id, counts, OVERFLOW_PATH)

    def copy_logged_models(self, source, mapping, selection=None, parallel: int = 8):
        """The MLflow 3 logged models of the source's experiments (a live MLflow store or a manifest
        holding them), after its runs, then the runs' model inputs (runner.mlflow.logged_models);
        None from a source that has none (Azure ML jobs, Azure ML's MLflow endpoint)."""
        from runner.mlflow.logged_models import LoggedModelCopier, reader_for

        if reader_for(source) is None:
            return None
        found = LoggedModelCopier(source, self, mapping, selection, parallel).run()
        self._models_left_out = {"logged models": found.left_out, "model inputs": found.inputs_left_out}
        return found

    def copy_traces(self, source, mapping, parallel: int = 8, dry_run: bool = False):
        """The MLflow 3 traces of the source's experiments (a live MLflow store or a manifest holding
        them), after its runs and logged models (runner.mlflow.traces); None from a source that has none. A dry run only counts them."""
        from runner.mlflow.trace_readers import reader_for
        from runner.mlflow.traces import TraceCopier

        reader = reader_for(source)
        if reader is None:
            return None
        copier = TraceCopier(source, self, mapping, reader, parallel)
        if dry_run:
            return copier.plan()
        found = copier.run()
        self._traces_left_out = found.left_out
        return found

    def compare_traces(self, source, ledger, mapping, parallel: int = 8):
        """Verify's trace part: (traces compared, differences) (runner.mlflow.traces_check)."""
        from runner.mlflow.traces_check import compare_traces

        return compare_traces(source, self, ledger, mapping, parallel)

    def count_logged_models(self, source, selection) -> dict[str, int]:
        """The dry run's counts: logged models the selection takes, and the selected runs' model inputs."""
        from runner.mlflow.logged_models import reader_for

        reader = reader_for(source)
        if reader is None:
            return {}
        models = sum(1 for e in source.experiments() for _ in selection.chosen(reader.models(e)))
        return {"logged models": models, "model inputs": sum(map(len, selection.model_inputs.values()))}

    def left_out(self) -> dict[str, int]:
        """What the target had no API for, by kind: runs whose part of that kind was not copied."""
        models = {kind: n for kind, n in getattr(self, "_models_left_out", {}).items() if n}
        traces = getattr(self, "_traces_left_out", 0)
        return {**self.inputs.left_out_counts(), **models, **({"traces": traces} if traces else {})}

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def finish(self, run_id: str, job: JobRecord) -> None:
        """Status and end time, then the completion tag: always the last write. A run created with
        its tag awaiting its status (create_run) is complete with the status: no tag to write."""
        with self._lock:
            done = run_id in self._completed
            self._completed.discard(run_id)
            awaited = run_id in self._awaiting
            self._awaiting.discard(run_id)
        if not done:
            if job.status in TERMINAL_STATUSES:
                self.client.set_terminated(run_id, job.status, end_time=job.end_time)
            if not awaited:
                self.client.set_tag(run_id, COMPLETE, job.fingerprint())
        if job.lifecycle_stage == "deleted":
            self.client.delete_run(run_id)
        with self._lock:
            self._artifact_uris.pop(run_id, None)

    # -- helpers ---------------------------------------------------------------------------

    def _history_identities(self, run_id: str, key: str):
        for point in metric_history(self.client, run_id, key):
            yield point.identity()

    def _log(self, run_id: str, params: dict[str, str], points: Iterable[MetricPoint], tags: dict[str, str] | None = None,
             last_tags=None) -> int:
        """log_batch requests; `last_tags()`, asked once the points are all read, rides on the last one."""
        from mlflow.entities import RunTag

        written = 0
        pending = None
        for batch in self.row_caps().batches(params, tags or {}, points):
            if pending is not None:
                written += self._send(run_id, *pending)
            pending = batch
        extra = [RunTag(k, v) for k, v in (last_tags() if last_tags else {}).items()]
        if pending is not None or extra:
            metrics, param_batch, tag_batch = pending or ([], [], [])
            if len(metrics) + len(param_batch) + len(tag_batch) + len(extra) > MAX_ENTITIES_PER_BATCH or len(tag_batch) + len(extra) > MAX_PARAMS_TAGS_PER_BATCH:
                written += self._send(run_id, metrics, param_batch, tag_batch)
                metrics, param_batch, tag_batch = [], [], []
            written += self._send(run_id, metrics, param_batch, tag_batch + extra)
        return written

    def _send(self, run_id: str, metrics: list, params: list, tags: list) -> int:
        return self.row_caps().send(self.client, run_id, metrics, params, tags)

    def row_caps(self) -> RowCaps:
        """This target's metric-row caps per request, made once from its limits (cli.open_target
        replaces `limits` after __init__), then shared by every thread: a fallback holds for all."""
        with self._lock:
            if self._row_caps is None:
                self._row_caps = RowCaps(self.limits, f"the target {uris.redact(self.uri)}")
            return self._row_caps

    def _copy_artifacts(self, run_id: str, artifact_uri: str | None, job: JobRecord, source, scratch: Path, fresh: bool) -> None:
        """The job's files into the run's artifact root: server-side when both roots are blob
        storage, else streamed (through MLflow for MLflow roots); skips files already there."""
        if artifact_uri is None:
            with self._lock:
                artifact_uri = self._artifact_uris.get(run_id)
        if artifact_uri is None:
            artifact_uri = self.client.get_run(run_id).info.artifact_uri
        options = self.artifact_options
        stats = copy_run_artifacts(
            source_store(source, job, scratch, options.auth), artifact_uri, None, options,
            tracking_uri=self.client.tracking_uri, fresh=fresh, label=f"artifacts of {job.source_id}",
        )
        copied, stats.refs = stats.refs, []
        with self._lock:
            self.artifact_stats.merge(stats)
            # --verify: what this copy read of the source files (path, size, MD5 of the bytes or the
            # source's HEAD), for the check right after (take_copied_files). Only a run created now:
            # a repair's "already there" files carry the target's MD5, not the source's.
            if self.remember_copied_files and fresh and options.mode == "copy" and not stats.failed:
                self._copied_files[run_id] = copied
        if stats.failed:
            path, reason = stats.failed[0]
            raise ReplayerError(f"{len(stats.failed)} artifacts not copied (first: {path}: {reason}); rerun to resume")

    def take_copied_files(self, run_id: str) -> list | None:
        """The source files (ArtifactRefs with MD5) the copy of a run created by this process read,
        once, for its check; None when not remembered (verify alone, a repaired or skipped run)."""
        with self._lock:
            return self._copied_files.pop(run_id, None)

    def list_artifacts(self, run_id: str) -> Iterator:
        pending = [""]
        while pending:
            folder = pending.pop()
            for info in self.client.list_artifacts(run_id, folder or None):
                if info.is_dir:
                    pending.append(info.path)
                else:
                    yield info
