"""Verify's reading of an MLflow-compatible target (an MLflow server, a local store, an Azure ML
workspace's MLflow endpoint): one job's run, metric histories and files against the source's."""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from loguru import logger

from runner.core.records import TERMINAL_STATUSES, JobRecord, MetricPoint, decode_float
from runner.engine import limits as caps
from runner.engine.ledger import ORIGINAL_ERROR, PARENT_TAG, RUN_NAME_TAG, error_tag, fingerprint_of, is_own_tag
from runner.engine.limits import OVERFLOW_PATH, OVERFLOW_TAG, new_overflow
from runner.engine.mapping import Mapping
from runner.engine.metric_digest import Digest, count_differences, digests_by_key, point_hash
from runner.engine.verify import Difference, expected_user_tags, show, user_tags
from runner.files.checks import compare
from runner.files.copier import select
from runner.files.hashing import md5_file
from runner.files.options import REFS_FILE, ArtifactOptions
from runner.files.roots import open_store, source_store
from runner.files.stats import CopyStats
from runner.mlflow import experiment_overflow, logged_model_check, model_inputs, run_inputs
from runner.mlflow.logged_models import reader_for
from runner.mlflow.source import metric_history, run_or_none

CHILDREN_PAGE = 1000  # runs per page of a parent's children search (MLflow's max_results; Azure pages too)


class JobChecker:
    def __init__(self, source, target, ledger, mapping: Mapping | None = None):
        self.source, self.target, self.ledger = source, target, ledger
        self.mapping = mapping or Mapping()
        self.client = target.client
        self.scratch = Path(tempfile.mkdtemp(prefix="replayer-verify-"))
        self._experiment_names: dict[str, str] = {}
        self._names_lock = threading.Lock()
        self.logged_models = True  # False with --skip-logged-models: neither models nor model inputs compared
        self._originals: dict[str, str] = {}  # target model id -> source model id, for model inputs
        self._experiment_ids: dict[str, str | None] = {}  # target experiment name -> id, for children searches
        self.children_page = CHILDREN_PAGE

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def compare_experiments(self, experiments: Iterable, mapping: Mapping) -> list[Difference]:
        out = []
        for experiment in experiments:
            found = self.client.get_experiment_by_name(mapping.experiment_name(experiment.name))
            with self._names_lock:  # a children search needs it: asked here already
                self._experiment_ids[mapping.experiment_name(experiment.name)] = found.experiment_id if found else None
            if found is None:
                out.append(Difference("", experiment.name, "experiment", "present", "missing"))
                continue
            if found.lifecycle_stage != experiment.lifecycle_stage:
                out.append(Difference("", experiment.name, "experiment_lifecycle", experiment.lifecycle_stage, found.lifecycle_stage))
            # Tags the target could not hold sit in a bookkeeping run (runner.mlflow.experiment_overflow).
            mine = {k: v for k, v in {**found.tags, **experiment_overflow.read(self.client, found.tags)}.items() if not is_own_tag(k)}
            theirs = {k: v for k, v in experiment.tags.items() if not is_own_tag(k)}
            if mine != theirs:
                out.append(Difference("", experiment.name, "experiment_tags", show(theirs), show(mine)))
            out += self.compare_logged_models(experiment, found.experiment_id)
        return out

    def compare_logged_models(self, experiment, target_experiment_id: str) -> list[Difference]:
        reader = reader_for(self.source) if self.logged_models else None
        if reader is None:
            return []
        if not hasattr(self, "_selection"):  # the runs the filters pick: models follow them (runner.engine.selection)
            from runner.engine.replay import selects_whole_experiments
            from runner.engine.selection import selected_runs

            self._selection = selected_runs(self.source, selects_whole_experiments(self.source))
        rows = logged_model_check.compare(reader, self._selection, self.source.workspace, self.client, experiment, target_experiment_id)
        return [Difference(*row) for row in rows]

    def compare(self, job: JobRecord, wanted: dict[str, Digest] | None = None, run=None) -> list[Difference]:
        """`wanted`: the source's metric digests per key when the caller streamed them already
        (`migrate --verify`, runner.engine.migrate_verify); None reads the source's histories.
        `run`: the target run as its parent's children search returned it (`read_children`, read
        after the run was done); None reads it alone (runs/get)."""
        try:
            return self._compare(job, wanted, run)
        except Exception as error:  # noqa: BLE001 - a read failure is a difference, not a crash
            logger.opt(exception=error).debug("verify failed on {}", job.source_id)
            return [Difference(job.source_id, job.name, "error", "", f"{type(error).__name__}: {error}")]

    def _compare(self, job: JobRecord, wanted: dict[str, Digest] | None = None, run=None) -> list[Difference]:
        found = self.ledger.find(job.source_id)
        diff = lambda what, a, b: Difference(job.source_id, job.name, what, show(a), show(b))  # noqa: E731
        if found is None:
            return [diff("run", "present", "missing")]
        if not found.complete:
            return [diff("run", "complete", "incomplete (interrupted; rerun replay)")]
        run = run if run is not None else self.read_run(found.run_id)
        if run is None:  # the ledger (or the copy) knew it; the target has it no more
            return [diff("run", "present", "missing")]
        info, data = run.info, run.data
        if not fingerprint_of(data.tags, info.status):  # the run as read now, not as the ledger (or the copy that just wrote it) saw it
            return [diff("run", "complete", "incomplete (interrupted; rerun replay)")]
        # What the target could not hold (its tag/metric caps) sits in replay/overflow.json.
        overflow = self.read_overflow(found.run_id) if OVERFLOW_TAG in data.tags else new_overflow()
        params, tags = {**data.params, **overflow["params"]}, {**data.tags, **overflow["tags"]}
        out = []
        pairs = [
            ("experiment", self.mapping.experiment_name(job.experiment), self.experiment_name(info.experiment_id)),
            ("name", job.name, overflow["tags"].get(RUN_NAME_TAG) or info.run_name or ""),  # a name cut to the cap is whole there
            ("status", job.status, info.status),
            ("start_time", job.start_time, info.start_time),
            ("lifecycle", job.lifecycle_stage, info.lifecycle_stage),
            ("parent", self.expected_parent(job), data.tags.get(PARENT_TAG)),
        ]
        if job.status in TERMINAL_STATUSES:
            pairs.append(("end_time", job.end_time, info.end_time))
        if ORIGINAL_ERROR in data.tags:  # runs copied before the error field have none: nothing to compare
            pairs.append(("error", error_tag(job.error), data.tags[ORIGINAL_ERROR]))
        pairs += keyed("param", job.params, params) + keyed("tag", user_tags(job.tags), expected_user_tags(job, tags))
        pairs += run_inputs.compare(job.datasets, run)
        if self.logged_models:
            pairs += model_inputs.compare(self.client, job.model_inputs, run, self._originals)
        out += [diff(what, a, b) for what, a, b in pairs if a != b]
        out += self.compare_metrics(job, found.run_id, set(data.metrics), overflow["metrics"], wanted)
        out += self.compare_artifacts(job, found.run_id, info.artifact_uri)
        for difference in out:
            difference.target_run = found.run_id
        return out

    def read_run(self, run_id: str):
        """The target run as it is now; None when the target has it no more (deleted for good)."""
        return run_or_none(self.client, run_id)

    def searchable(self, job: JobRecord) -> bool:
        """Whether a search result can stand for this run's runs/get in `_compare`. Not for runs
        with dataset or model inputs: `run_inputs.compare` and `model_inputs.compare` read
        `run.inputs`, and nothing recorded or documented says Azure ML's run search returns inputs
        (MLflow's own search only gained them in some stores); those keep runs/get."""
        return not job.datasets and not (job.model_inputs and self.logged_models)

    def read_children(self, parent_source_id: str, jobs: list[JobRecord]) -> dict:
        """source id -> the target run, for these children of one parent, from one search (paged):
        `tags.mlflow.parentRunId = '<the parent's target run>'`. MLflow's convention for nested
        runs, and Azure ML's documented way to read a run's children ("Getting child (nested) runs"
        in MicrosoftDocs/azure-docs articles/machine-learning/how-to-track-experiments-mlflow.md;
        its support matrix: tag filters with `=` supported, `!=` on tags not, no OR or LIKE).
        Read after every child is done, so each completion tag is as the run holds it now. A child
        the search does not bring (its parent tag changed, deleted, a refused search, a result
        without an artifact root) is left out: `compare` reads it alone, and says "missing" when
        the target has it no more."""
        from mlflow.entities import ViewType
        from mlflow.exceptions import MlflowException

        parent = self.ledger.find(parent_source_id)
        if parent is None or "'" in parent.run_id:
            return {}
        wanted = {}  # target run id -> source id
        for job in jobs:
            found = self.ledger.find(job.source_id)
            if found is not None and found.complete:
                wanted[found.run_id] = job.source_id
        ids = sorted({i for i in (self.experiment_id(self.mapping.experiment_name(j.experiment)) for j in jobs) if i})
        if not wanted or not ids:
            return {}
        runs, token = {}, None
        try:
            while len(runs) < len(wanted):  # stop at the page that brought the last one
                page = self.client.search_runs(ids, f"tags.{PARENT_TAG} = '{parent.run_id}'", ViewType.ALL,
                                               max_results=self.children_page, page_token=token)
                for run in page:
                    if run.info.run_id in wanted and run.info.artifact_uri:  # files are compared from that root
                        runs[wanted[run.info.run_id]] = run
                token = page.token
                if not token:
                    break
        except MlflowException as error:  # a refused search: each child is read alone
            logger.debug("searching the children of {} failed ({}); reading them one by one", parent.run_id, error)
        return runs

    def experiment_id(self, name: str) -> str | None:
        """The target experiment's id: known from compare_experiments or the copy's target, else asked once."""
        with self._names_lock:
            if name not in self._experiment_ids:
                known = getattr(self.target, "known_experiment_id", lambda _: None)(name)
                if known is None:
                    found = self.client.get_experiment_by_name(name)
                    known = found.experiment_id if found else None
                self._experiment_ids[name] = known
            return self._experiment_ids[name]

    def compare_recorded_refs(self, job: JobRecord, run_id: str, chosen) -> list[Difference]:
        """`--artifacts list` copied no bytes but recorded each file: compare that record."""
        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            lines = Path(self.client.download_artifacts(run_id, REFS_FILE, str(folder))).read_text(encoding="utf-8").splitlines()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        recorded = {r["path"]: r for r in map(json.loads, lines[1:]) if r}  # line 1 says where they live
        out = []
        for ref in chosen:
            have = recorded.pop(ref.path, None)
            same = have is not None and have["size"] == ref.size and (not (ref.md5 and have["md5"]) or have["md5"] == ref.md5)
            if not same:
                out.append(Difference(job.source_id, job.name, f"artifact:{ref.path}", show([ref.size, ref.md5]), show(have)))
        out += [Difference(job.source_id, job.name, f"artifact:{path}", "absent", show(r)) for path, r in recorded.items()]
        return out

    def read_overflow(self, run_id: str) -> dict:
        return caps.read(self.client, run_id, self.scratch)

    def experiment_name(self, experiment_id: str) -> str:
        # Under the lock: the checks' threads would otherwise each ask for the same experiment at first.
        with self._names_lock:
            if experiment_id not in self._experiment_names:
                self._experiment_names[experiment_id] = self.client.get_experiment(experiment_id).name
            return self._experiment_names[experiment_id]

    def expected_parent(self, job: JobRecord) -> str | None:
        if not job.parent_id:
            return None
        parent = self.ledger.find(job.parent_id)
        return parent.run_id if parent else f"(replayed {job.parent_id})"

    def compare_metrics(self, job: JobRecord, run_id: str, target_keys: set[str], spilled: dict | None = None,
                        wanted: dict[str, Digest] | None = None) -> list[Difference]:
        """Every key's history on both sides as digests; `wanted` (the source's, already streamed
        by the copy) spares reading the source again. A key that differs is counted exactly, and
        that re-reads its source history: rare, and the count says what is missing."""
        wanted = digests_by_key(self.source.metrics(job)) if wanted is None else wanted  # one stream over every key
        spilled = spilled or {}
        out = []
        for key in sorted(set(wanted) | target_keys | set(spilled)):
            want, have = wanted.get(key, Digest()), Digest()
            for point in self.target_points(run_id, key, spilled):
                have.add(point_hash(point))
            if have == want:
                continue
            missing, extra = count_differences(
                lambda: self.source_points(job, key) if want.count else (), lambda: self.target_points(run_id, key, spilled),
                want.count + have.count, self.scratch,
            )
            out.append(
                Difference(job.source_id, job.name, f"metric:{key}", f"{want.count} points", f"{have.count} points ({missing} missing, {extra} extra or changed)")
            )
        return out

    def source_points(self, job: JobRecord, key: str) -> Iterable[MetricPoint]:
        """The source's points of one key, read again. MLflow and Azure ML sources read the keys
        named in `latest_metrics`: naming this one alone spares reading the others twice."""
        if key in job.latest_metrics:
            job = replace(job, latest_metrics={key: job.latest_metrics[key]})
        return (point for point in self.source.metrics(job) if point.key == key)

    def target_points(self, run_id: str, key: str, spilled: dict) -> Iterable[MetricPoint]:
        """The target run's history of `key`, with the points replay/overflow.json holds for it."""
        yield from metric_history(self.client, run_id, key)
        for step, timestamp, value in spilled.get(key, []):
            yield MetricPoint(key, decode_float(value), timestamp, step)

    def compare_artifacts(self, job: JobRecord, run_id: str, artifact_uri: str | None = None) -> list[Difference]:
        """The source's files (as a copy selects them) against the target run's, by size and MD5.

        Right after this process copied the run (`migrate --verify`), the source side is what that
        copy read: the listing it made and, per file, the source's HEAD (size, Content-MD5) or the
        MD5 of the bytes it streamed (runner.files.copier: `stats.refs`). No second source listing,
        HEAD or download; the target is listed and each file's size and MD5 read (HEAD or download)
        as always, so a file lost, cut or changed on the way still shows."""
        options = getattr(self.target, "artifact_options", None) or ArtifactOptions()
        take = getattr(self.target, "take_copied_files", None)
        copied = take(run_id) if take is not None else None
        if artifact_uri and open_store(artifact_uri, self.client.tracking_uri, options.auth).server_side:
            # A blob root (or run history's, through its blobs) answers size and MD5 per file without downloading.
            found = compare(
                source_store(self.source, job, self.scratch, options.auth), artifact_uri, copied, options,
                tracking_uri=self.client.tracking_uri,
            )
            return [Difference(job.source_id, job.name, f"artifact:{m.path}", m.source, m.target) for m in found]
        chosen = select(self.source.artifacts(job) if copied is None else copied, options, CopyStats())  # as replay chose
        listing = [info for info in self.target.list_artifacts(run_id) if info.path != OVERFLOW_PATH]
        if any(info.path == REFS_FILE for info in listing):
            return self.compare_recorded_refs(job, run_id, chosen)
        want = {}
        for ref in chosen:
            md5 = ref.md5
            if not md5:
                with self.source.fetch_artifact(job, ref, self.scratch) as local:
                    size, md5 = md5_file(local)
                ref = type(ref)(ref.path, size, md5)
            want[ref.path] = (ref.size, md5)
        have = {}
        for info in listing:  # replay/overflow.json left out above: compared through what it holds
            folder = Path(tempfile.mkdtemp(dir=self.scratch))
            try:
                have[info.path] = md5_file(Path(self.client.download_artifacts(run_id, info.path, str(folder))))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        out = []
        for path in sorted(set(want) | set(have)):
            if want.get(path) != have.get(path):
                out.append(Difference(job.source_id, job.name, f"artifact:{path}", show(want.get(path)), show(have.get(path))))
        return out


ABSENT = "(absent)"


def keyed(kind: str, want: dict, have: dict) -> list[tuple[str, str, str]]:
    """One (`param:lr`, source value, target value) per key whose values differ: what to fix,
    not two whole dicts."""
    return [(f"{kind}:{key}", want.get(key, ABSENT), have.get(key, ABSENT))
            for key in sorted(set(want) | set(have)) if want.get(key, ABSENT) != have.get(key, ABSENT)]
