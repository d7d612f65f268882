"""How source experiments and runs land in the target: renames, source facts as tags, users.

- Renames (`--rename-file F`): the target experiment gets the new name. Runs still pair through
  `original_job_id` (the ledger never looks at names), `original_experiment` keeps the source
  name, and verify takes the same file to expect the new names. Several old names may map to
  one new name (a merge).
- Source facts (`--import-source-tags`): what the source knew about a run beyond params, tags and
  metrics, as `original_src.<field>` tags (the tool's own prefix, so verify ignores them): source
  experiment id, user, status, times, lifecycle, and for AzureML jobs kind, created_by, compute,
  environment, command, description. Renamed or not, the target experiment gets
  `original_src.experiment_id`. Written on runs created or repaired from then on.
- Source user (`--use-source-user`): user tags, `mlflow.user` included, are always copied exactly,
  and MLflow derives a run's user from that tag. A source run can still have a user but no such
  tag (AzureML jobs, runs whose tag was removed); the flag then writes `mlflow.user` = the source
  run's user id (else its AzureML `created_by`), so the target run's user is the source's.
  Where the target sets the user from the caller's identity (AzureML's "Created by"), the tag
  is still written but the identity stays the migrating one.
"""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from runner.core.errors import UsageError
from runner.core.records import Experiment, JobRecord

SOURCE_PREFIX = "original_src."
USER_TAG = "mlflow.user"
MAX_TAG_VALUE = 5000  # MLflow allows 8000 on runs; 5000 also fits experiment tags and older servers
UNKNOWN_USER = "unknown"  # what MLflow records when a run was created without a user


@dataclass
class Mapping:
    renames: dict[str, str] = field(default_factory=dict)  # source experiment name -> target name
    source_tags: bool = False
    source_user: bool = False

    @classmethod
    def build(cls, rename_file=None, import_source_tags=False, use_source_user=False) -> "Mapping":
        from runner.core.filters import as_bool

        return cls(
            renames=load_renames(rename_file) if rename_file else {},
            source_tags=as_bool(import_source_tags, "--import-source-tags"),
            source_user=as_bool(use_source_user, "--use-source-user"),
        )

    def experiment_name(self, name: str) -> str:
        return self.renames.get(name, name)

    def target_experiment(self, experiment: Experiment) -> Experiment:
        """The experiment as the target should hold it: renamed, and with its source id on request."""
        tags = dict(experiment.tags)
        if self.source_tags and experiment.source_id:
            tags[SOURCE_PREFIX + "experiment_id"] = experiment.source_id
        return dataclasses.replace(experiment, name=self.experiment_name(experiment.name), tags=tags)

    def run_tags(self, job: JobRecord, experiment: Experiment | None, tags: dict[str, str]) -> dict[str, str]:
        """The target's tags for a run (from the target end) plus what the options add."""
        out = dict(tags)
        user = source_user(job)
        if self.source_user and USER_TAG not in job.tags and user:
            out[USER_TAG] = user
        if self.source_tags:
            out.update(source_facts(job, experiment))
        return out

    def job_tags(self, job: JobRecord, experiment: Experiment | None) -> dict[str, str]:
        """What the options add on a job the target runs itself (pipeline replay): source facts, and
        the source user as `mlflow.user`, the target's own user being whoever submits."""
        out = {}
        user = job.tags.get(USER_TAG) or source_user(job)
        if self.source_user and user:
            out[USER_TAG] = user
        if self.source_tags:
            out.update(source_facts(job, experiment))
        return out

    def check_against(self, experiments: list[Experiment]) -> None:
        """Warn about renames that name no selected experiment (a typo, or another selection's)."""
        names = {e.name for e in experiments}
        for old in sorted(set(self.renames) - names):
            logger.warning("rename file: no selected source experiment is named {!r}; that line does nothing", old)


def source_user(job: JobRecord) -> str:
    """The source run's user, as MLflow or AzureML knew it; '' when unknown."""
    for user in (job.user_id, job.created_by):
        if user and user != UNKNOWN_USER:
            return user
    return ""


def source_facts(job: JobRecord, experiment: Experiment | None) -> dict[str, str]:
    """`original_src.*` tags: the source record's fields that have no home in a target run."""
    facts = {
        "experiment_id": experiment.source_id if experiment else "",
        "user_id": job.user_id,
        "status": job.status,
        "source_status": job.source_status,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "created_time": job.created_time,
        "lifecycle_stage": job.lifecycle_stage,
        "kind": job.kind if job.kind != "run" else "",
        "step_name": job.step_name,
        "created_by": job.created_by,
        "compute": job.compute,
        "environment": job.environment,
        "command": job.command,
        "description": job.description,
    }
    out = {}
    for key, value in facts.items():
        if value is None or value == "":
            continue
        text = str(value)
        if len(text) > MAX_TAG_VALUE:
            logger.debug("source fact {} of {} cut to {} characters", key, job.source_id, MAX_TAG_VALUE)
            text = text[: MAX_TAG_VALUE - 12] + " [truncated]"
        out[SOURCE_PREFIX + key] = text
    return out


def load_renames(path) -> dict[str, str]:
    """old -> new experiment names from a CSV (`old,new` rows) or a YAML mapping (`old: new`)."""
    file = Path(str(path))
    if not file.is_file():
        raise UsageError(f"--rename-file {path}: no such file; give a CSV of old,new rows or a YAML mapping old: new")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--rename-file {path}: not UTF-8 text; save it as UTF-8") from None
    pairs = _csv_pairs(file, text) if file.suffix.lower() == ".csv" else _yaml_pairs(file, text)
    renames: dict[str, str] = {}
    for where, old, new in pairs:
        old, new = str(old).strip(), str(new).strip()
        if not old or not new:
            raise UsageError(f"{file}{where}: an old and a new experiment name are both needed")
        if old in renames and renames[old] != new:
            raise UsageError(f"{file}{where}: {old!r} is renamed twice ({renames[old]!r} and {new!r}); keep one")
        renames[old] = new
    return renames


def _csv_pairs(file: Path, text: str):
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise UsageError(f"{file}:{number}: expected two columns old,new; found {len(row)}")
        if number == 1 and [c.strip().lower() for c in row] in (["old", "new"], ["source", "target"]):
            continue  # a header
        yield f":{number}", row[0], row[1]


def _yaml_pairs(file: Path, text: str):
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise UsageError(f"{file}{f':{mark.line + 1}' if mark else ''}: malformed YAML; fix the file") from None
    if not isinstance(data, dict):
        raise UsageError(f"{file}: expected a YAML mapping of old name: new name (or a .csv file of old,new rows)")
    for old, new in data.items():
        if not isinstance(new, (str, int, float)):
            raise UsageError(f"{file}: the new name for {old!r} must be text")
        yield "", old, new


def sync_deleted_experiments(source, target, mapping: Mapping) -> int:
    """Experiments deleted in the source (selected with --include-deleted) end deleted in the target.

    Writing a run into a deleted target experiment restores it first (see the direct target);
    this puts it back afterwards. A target name that several source experiments merge into is
    deleted only when all of them are. Returns how many experiments were deleted.
    """
    client = getattr(target, "client", None)
    if not hasattr(client, "get_experiment_by_name"):  # no MLflow store behind this target (dry run, pipeline)
        return 0
    by_target: dict[str, list[Experiment]] = {}
    for experiment in source.experiments():
        by_target.setdefault(mapping.experiment_name(experiment.name), []).append(experiment)
    deleted = 0
    for name, experiments in by_target.items():
        if not all(e.lifecycle_stage == "deleted" for e in experiments):
            continue
        found = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == "active":
            logger.info("experiment {} is deleted in the source: deleting it in the target too", name)
            client.delete_experiment(found.experiment_id)
            deleted += 1
    return deleted
