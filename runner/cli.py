"""The `replayer` command (python-fire). Each command: read flags, call the library, exit.

Flags override the migration YAML (`--config FILE`, or a .yml path given as source/target).
Exit codes: 0 ok, 1 differences or failed runs, 2 bad input (one line saying what and how to fix).
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

import fire
from loguru import logger

from runner import config as config_file
from runner import ends  # noqa: F401 - loads both ends: their stores and tracking auth register
from runner.core import logs
from runner.core import retry
from runner.mlflow import sync_state
from runner.core.errors import EXIT_DIFFERENCES, EXIT_OK, EXIT_USAGE, ReplayerError, UsageError
from runner.core.filters import Filters, as_bool, as_int, as_list, as_rate, as_seconds

COMMON_FLAGS = ("config", "verbose", "parallel", "dry_run", "workspace", "retries", "credential", "client_id")


class Settings:
    """Flags merged over the config file."""

    def __init__(self, flags: dict, endpoints: dict, allowed: tuple[str, ...]):
        flags = {k.replace("-", "_"): v for k, v in flags.items()}
        for key in flags:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean --{close[0].replace('_', '-')}?" if close else ""
                raise UsageError(f"unknown flag --{key.replace('_', '-')}{hint}")
        path = flags.pop("config", None) or next((v for v in endpoints.values() if config_file.is_config_path(v)), None)
        cfg = config_file.load(path) if path else config_file.MigrationConfig()
        self.endpoints = {}
        for name, value in endpoints.items():
            if config_file.is_config_path(value) or value is None:
                value = getattr(cfg, name if name in ("source", "target") else "source", None)
            self.endpoints[name] = value
        self.workspace = flags.pop("workspace", None) or cfg.workspace
        merged = {**cfg.filters, **{k: v for k, v in flags.items() if k in config_file.FILTER_KEYS}}
        self.filters = Filters.build(**merged)
        options = {**cfg.options, **{k: v for k, v in flags.items() if k in config_file.OPTION_KEYS}}
        self.parallel = as_int(options.get("parallel"), "--parallel", minimum=1, default=8)
        self.dry_run = as_bool(options.get("dry_run", False), "--dry-run")
        self.retries = as_int(options.get("retries"), "--retries", minimum=0, default=2)
        self.report = options.get("report")
        from runner.files.options import ArtifactOptions

        self.artifacts = ArtifactOptions.build(**{k: options.get(k) for k in config_file.ARTIFACT_KEYS})
        # None: the target kind's own
        self.limits = {k: as_int(options.get(k), f"--{k.replace('_', '-')}", minimum=1) for k in ("max_tags", "max_metric_keys")}
        from runner.engine.mapping import Mapping

        self.mapping = Mapping.build(options.get("rename_file"), options.get("import_source_tags"), options.get("use_source_user"))
        self.models = as_list(options.get("models"))  # registered model names or globs, or `all`
        self.models_only = as_bool(options.get("models_only", False), "--models-only")
        self.logged_models = not as_bool(options.get("skip_logged_models", False), "--skip-logged-models")
        if self.models_only and not self.models:
            raise UsageError("--models-only needs --models NAME,GLOB|all")
        self.skip_traces = as_bool(options.get("skip_traces", False), "--skip-traces")
        self.verify = "verify" in allowed and as_bool(options.get("verify", False), "--verify")  # migrate, replay
        if self.verify and self.dry_run:
            raise UsageError("--verify checks what the copy wrote, and --dry-run writes nothing: give one of them")
        # runner.mlflow.sync_state: --incremental continues from the sync state in the target; --full reads all and resets it
        self.full = as_bool(flags.get("full", False), "--full")
        self.incremental = as_bool(flags.get("incremental", False), "--incremental") or self.full
        if options.get("credential") or options.get("client_id"):
            from runner.azureml import credentials

            credentials.configure(options.get("credential"), options.get("client_id"))

    def need(self, name: str, flag: str) -> str:
        value = self.endpoints.get(name)
        if not value:
            raise UsageError(f"missing --{flag}: give a tracking URI, a manifest folder or a migration YAML")
        return str(value)


FILTER_FLAGS = tuple(config_file.FILTER_KEYS)
SELECT = COMMON_FLAGS + FILTER_FLAGS
MAPPING_FLAGS = ("rename_file", "import_source_tags", "use_source_user")
ARTIFACT_FLAGS = tuple(config_file.ARTIFACT_KEYS) + ("max_tags", "max_metric_keys")  # what a target run holds
SYNC_FLAGS = ("incremental", "full")  # runner.mlflow.sync_state
KIND_FLAGS = ("skip_logged_models",)  # kinds beyond runs that can be left out
# What each command takes besides its named arguments (Settings refuses the rest; --help lists them).
COMMAND_FLAGS = {
    "extract": SELECT + tuple(config_file.ARTIFACT_KEYS) + SYNC_FLAGS + KIND_FLAGS + ("skip_traces",),
    "replay": SELECT + ("report", "skip_traces", "verify") + MAPPING_FLAGS + ARTIFACT_FLAGS + KIND_FLAGS,
    "migrate": SELECT + ("report", "models", "models_only", "skip_traces", "verify") + MAPPING_FLAGS + ARTIFACT_FLAGS + SYNC_FLAGS + KIND_FLAGS,
    "verify": SELECT + ("report", "models", "models_only", "rename_file", "skip_traces") + ARTIFACT_FLAGS + KIND_FLAGS,
    "tree": SELECT,
    "demo": ("verbose",),
    "step": COMMON_FLAGS + ("max_tags", "max_metric_keys"),
    "submit": SELECT + ("report",) + MAPPING_FLAGS,
    "wait": ("verbose", "config", "parallel", "credential", "client_id"),
    "estimate": ("config", "verbose", "parallel", "workspace", "credential", "client_id") + FILTER_FLAGS + ("report",),
}


def run(command: str, flags: dict, body) -> None:
    """Logging, one-line errors, exit code: the same for every command."""
    log_path = logs.setup(command, verbose=bool(flags.pop("verbose", False)))
    retry.configure()
    try:
        code = body()
    except ReplayerError as error:
        logger.error("{}", error)
        code = error.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted; rerun the same command to resume")
        code = 130
    except Exception as error:  # noqa: BLE001 - last resort: one line here, the traceback in the log file
        logger.opt(exception=error).debug("unexpected failure")
        logger.error("unexpected {}: {} (details in {})", type(error).__name__, error, log_path)
        code = EXIT_DIFFERENCES
    logger.debug("exit code {}", code)
    if code != EXIT_USAGE:  # bad input stays one line; work done (or failed) names its log
        logger.info("log: {}", log_path)
    sys.exit(code)


def open_target(uri: str, dry_run: bool = False, artifacts=None, limits: dict | None = None):
    from runner.azureml.workspace import is_azureml
    from runner.mlflow import uris
    from runner.mlflow.target import DirectTarget, limits_for

    if is_azureml(uri):  # a workspace (azureml://subscriptions/... or its config.json): its MLflow endpoint
        from runner.azureml.source import AzuremlSource

        uri = AzuremlSource(uri, Filters()).tracking_uri

    target = DirectTarget(uri, dry_run=dry_run)
    target.limits = limits_for(uris.tracking_uri(uri), **(limits or {}))
    if artifacts is not None:  # --artifacts & co. (runner.files.options.ArtifactOptions), used per run by the target
        target.artifact_options = artifacts
    return target


def skip_model_inputs(source, s: Settings) -> None:
    """--skip-logged-models: a live MLflow source then spares the get_run per run that model inputs cost."""
    if not s.logged_models and hasattr(source, "reads_model_inputs"):
        source.reads_model_inputs = False


def finish_replay(summary, dry_run: bool, report: str | None = None) -> int:
    logger.info("summary: {}", summary.line(dry_run))
    for job_id, reason in summary.failures[:20]:
        logger.info("  failed {}: {}", job_id, reason)
    if report:  # the summary as JSON, e.g. a pipeline step's output
        import dataclasses
        import json

        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps({"dry_run": dry_run, **dataclasses.asdict(summary)}, indent=2), encoding="utf-8")
    return EXIT_DIFFERENCES if summary.failed else EXIT_OK


def run_check(src, dst, s: Settings):
    """--verify: the check that rides along the copy (runner.engine.migrate_verify), or None."""
    if not s.verify:
        return None
    from runner.engine.migrate_verify import RunCheck

    return RunCheck(src, dst, s.mapping, s.parallel, s.logged_models)


def finish_verify(check, src, dst, s: Settings, failures: list) -> int:
    """--verify after the copy: verify's table, its report (`--report FILE`) and its exit code.
    With --models-only no run was copied: verify's own registry pass."""
    from runner.engine.verify import verify

    if s.models_only:
        report = verify(src, dst, parallel=s.parallel, mapping=s.mapping, models=s.models, runs=False, traces=False,
                        logged_models=s.logged_models)
    else:
        report = check.finish(failures, models=s.models, traces=not s.skip_traces)
    return end_verify(report, s)


def end_verify(report, s: Settings) -> int:
    """verify's ending, alone or after a copy: its table, its report (`--report FILE`; written only
    when asked, nothing lands in the working directory by itself) and its exit code."""
    from runner.engine.verify import print_table, write_report

    print_table(report)
    if s.report:
        write_report(report, Path(s.report))
        logger.info("report written to {}", s.report)
    return EXIT_OK if report.ok else EXIT_DIFFERENCES


def estimate_options(shards, sample, probe_seconds, max_rate, verify, no_verify) -> dict:
    """estimate's own flags, checked: one line naming the flag for anything else."""
    return {"shards": as_int(shards, "--shards", minimum=1), "sample": as_int(sample, "--sample", minimum=1),
            "probe_seconds": as_seconds(probe_seconds, "--probe-seconds"), "max_rate": as_rate(max_rate, "--max-rate"),
            "verify": as_bool(verify, "--verify") and not as_bool(no_verify, "--no-verify")}


def batch_counter(target_uri: str):
    """How many log-batch requests a job takes on this target (runner.mlflow.batching within its caps),
    batched as the copy batches a new run (DirectTarget.write_new): its params and its points; its
    tags go with runs/create."""
    from runner.azureml.workspace import is_azureml
    from runner.engine.limits import limits_for
    from runner.mlflow.batching import batches

    limits = limits_for("azureml://" if is_azureml(target_uri) else target_uri)

    def count(job, points) -> int:
        return sum(1 for _ in batches(job.params, {}, points, rows_per_metric=limits.rows_per_metric_per_batch))

    return count


class Replayer:
    """Replay AzureML / MLflow run history into another workspace or tracking store."""

    def extract(self, source=None, out=None, target=None, **flags):
        """Read a source into a manifest folder.

        --source URI|config.yml  --out DIR  [--experiments a,b*] [--include ids|names] [--include-file F]
        [--since DATE] [--until DATE] [--status FINISHED,FAILED] [--limit N] [--include-deleted]
        [--tags k=v,k2=v2] [--max-depth N] [--exclude GLOBS]
        [--parallel N] [--dry-run] [--workspace NAME] [--config FILE] [--verbose]
        [--incremental [--full] --target URI] (only what changed since the sync state in that target)
        [--artifacts copy|list|none] [--max-artifact-size 500MB] [--artifact-include GLOBS] [--artifact-exclude GLOBS]
        [--skip-logged-models] [--skip-traces]
        """

        def body():
            from runner.engine.extract import extract
            from runner.ends import open_source

            s = Settings(flags, {"source": source, "target": target}, COMMAND_FLAGS["extract"])
            if not out:
                raise UsageError("missing --out: give an empty folder for the manifest")
            src = open_source(s.need("source", "source"), s.filters, s.workspace, parallel=s.parallel)
            skip_model_inputs(src, s)
            sync = sync_state.begin(src, s.endpoints.get("target"), s.full) if s.incremental else None
            from runner.mlflow.logged_models import reader_for

            from runner.mlflow.trace_readers import reader_for as trace_reader

            models = reader_for(src) if s.logged_models else None
            traces = None if s.skip_traces else trace_reader(src)
            header = extract(src, str(out), parallel=s.parallel, dry_run=s.dry_run, artifacts=s.artifacts, models=models,
                             traces=traces)
            if sync and not s.dry_run:  # replay writes it into the target once the manifest is in
                sync_state.write_pending(str(out), sync, src)
            logger.info("summary: {}", header.get("counts"))
            return EXIT_OK

        run("extract", flags, body)

    def replay(self, manifest=None, target=None, **flags):
        """Replay a manifest folder into a target tracking store.

        --manifest DIR  --target URI|config.yml  [filters as in extract] [--parallel N] [--dry-run]
        [--report summary.json] [--skip-logged-models] [--skip-traces]
        [--artifacts copy|list|none] [--max-artifact-size 500MB] [--artifact-include GLOBS] [--artifact-exclude GLOBS]
        [--verify [--report verify-report.json]] (check each run as `verify` does, against the manifest, as it is written)
        """

        def body():
            from runner.engine.extract import require_files
            from runner.engine.manifest import ManifestSource
            from runner.engine.replay import ReplayOptions, replay

            s = Settings(flags, {"target": target}, COMMAND_FLAGS["replay"])
            if not manifest:
                raise UsageError("missing --manifest: give a folder written by `replayer extract`")
            if not Path(str(manifest)).is_dir():
                raise UsageError(f"--manifest {manifest}: no such folder; give a folder written by `replayer extract`")
            src = ManifestSource(str(manifest), s.filters)
            require_files(src, s.artifacts.mode, "replay")
            s.mapping.check_against(src.experiments())
            dst = open_target(s.need("target", "target"), s.dry_run, s.artifacts, s.limits)
            check = run_check(src, dst, s)
            options = ReplayOptions(dry_run=s.dry_run, parallel=s.parallel, retries=s.retries, mapping=s.mapping,
                                    skip_traces=s.skip_traces, logged_models=s.logged_models, check=check)
            summary = replay(src, dst, options)
            code = finish_replay(summary, s.dry_run, None if check else s.report)  # --verify: --report is verify's
            if check:  # the check decides the exit code, and so whether the sync state may move on
                code = max(code, finish_verify(check, src, dst, s, summary.failures))
            if code == EXIT_OK and not s.dry_run:  # an incremental extract's sync state, once all of it is in (and equal)
                sync_state.commit_pending(str(manifest), s.need("target", "target"), dst.client, whole=s.filters == Filters())
            return code

        run("replay", flags, body)

    def migrate(self, source=None, target=None, **flags):
        """Extract and replay in one go, straight from source to target (no manifest on disk).

        --source URI|config.yml  --target URI|config.yml  [filters as in extract] [--parallel N] [--dry-run]
        [--models NAME,GLOB|all] [--models-only] [--rename-file F] [--import-source-tags] [--use-source-user] [--skip-traces]
        [--artifacts copy|list|none] [--max-artifact-size 500MB] [--artifact-include GLOBS] [--artifact-exclude GLOBS]
        [--incremental [--full]] (only what changed since the last incremental sync; state kept in the target)
        [--verify [--report verify-report.json]] (check every selected run as `verify` does, in the same pass: the source's
        metric histories are digested as they are copied, not read again; verify's table, report and exit code)
        """

        def body():
            from runner.engine.replay import ReplayOptions, replay
            from runner.ends import open_source

            s = Settings(flags, {"source": source, "target": target}, COMMAND_FLAGS["migrate"])
            src = open_source(s.need("source", "source"), s.filters, s.workspace, parallel=s.parallel)
            skip_model_inputs(src, s)
            sync = sync_state.begin(src, s.need("target", "target"), s.full) if s.incremental else None
            s.mapping.check_against(src.experiments())  # an unknown --experiments name fails here, before the target is created
            dst = open_target(s.need("target", "target"), s.dry_run, s.artifacts, s.limits)
            code, copied_clean = EXIT_OK, False
            check = run_check(src, dst, s)
            summary_file = None if check else s.report  # --verify: --report is verify's report
            failures = []
            if not s.models_only:
                options = ReplayOptions(dry_run=s.dry_run, parallel=s.parallel, retries=s.retries, mapping=s.mapping,
                                        skip_traces=s.skip_traces, logged_models=s.logged_models, check=check)
                summary = replay(src, dst, options)
                failures = summary.failures
                code = finish_replay(summary, s.dry_run, summary_file)
                copied_clean = sync is not None and code == EXIT_OK and not s.dry_run
            if s.models:  # after the runs: versions link to the replayed runs
                from runner.mlflow.model_copy import RegistryOptions, finish_models, migrate_models

                options = RegistryOptions(s.models, dry_run=s.dry_run, parallel=s.parallel, mapping=s.mapping)
                code = max(code, finish_models(migrate_models(src, dst, options), s.dry_run, summary_file))
            if check:  # after the registry's copy: its versions are compared too
                code = max(code, finish_verify(check, src, dst, s, failures))
            # The sync state moves on only after a clean pass (a failed sync redoes its window); with --verify,
            # only after an equal one too.
            if copied_clean and (not check or code == EXIT_OK):
                sync_state.commit(dst.client, sync.next_state(src))
            return code

        run("migrate", flags, body)

    def verify(self, source=None, target=None, **flags):
        """Compare source (URI or manifest folder) and target run by run; exit 1 on any difference.

        --source URI|DIR|config.yml  --target URI|config.yml  [--report verify-report.json] [filters]
        [--models NAME,GLOB|all [--models-only]] [--rename-file F] [--skip-traces]
        """

        def body():
            from runner.ends import open_source
            from runner.engine.verify import verify

            s = Settings(flags, {"source": source, "target": target}, COMMAND_FLAGS["verify"])
            src = open_source(s.need("source", "source"), s.filters, s.workspace, parallel=s.parallel)
            skip_model_inputs(src, s)
            dst = open_target(s.need("target", "target"), dry_run=True, artifacts=s.artifacts, limits=s.limits)
            # --models-only: the registry alone, e.g. the pipeline's models step (its verify step compares the runs)
            report = verify(src, dst, parallel=s.parallel, mapping=s.mapping, models=s.models, runs=not s.models_only,
                            traces=not (s.skip_traces or s.models_only), logged_models=s.logged_models)
            return end_verify(report, s)

        run("verify", flags, body)

    def tree(self, uri=None, **flags):
        """Print the run hierarchy of a tracking URI or manifest folder.  URI|DIR [filters]"""

        def body():
            from runner.ends import open_source
            from runner.tree import print_tree

            s = Settings(flags, {"source": uri}, COMMAND_FLAGS["tree"])
            print_tree(open_source(s.need("source", "uri"), s.filters, s.workspace))
            return EXIT_OK

        run("tree", flags, body)

    def demo(self, out=None, seed=7, **flags):
        """Seed a small realistic demo source into a tracking store.  --out URI|DIR [--seed N]"""

        def body():
            from runner.demo import seed as seed_demo

            Settings(flags, {}, COMMAND_FLAGS["demo"])
            if not out:
                raise UsageError("missing --out: give a tracking URI or a folder for the demo store")
            counts = seed_demo(str(out), as_int(seed, "--seed", minimum=0))
            logger.info("demo seeded into {}: {}", out, counts)
            return EXIT_OK

        run("demo", flags, body)

    def step(self, manifest=None, job_id=None, target=None, run_id=None, logs=None, artifacts=None, mirror_status=True, tags=None, mark_outputs=None, **flags):
        """Replay one job of a manifest into one run: the body of the replay_step component.

        --manifest DIR  --job-id ID  [--logs DIR] [--artifacts DIR] [--mirror-status true|false] [--tags JSON]
        [--target URI [--run-id RUN]] (inside an Azure ML job the run is the job's own; exit 3 mirrors a failed original)
        [--max-tags N] [--max-metric-keys N] (default: the tracking store's kind; the excess goes to replay/overflow.json)
        """

        def body():
            from runner.azureml import step as replay_step

            s = Settings(flags, {}, COMMAND_FLAGS["step"])
            if not manifest or not job_id:
                raise UsageError("missing --manifest DIR or --job-id ID: the manifest folder and the original job to replay")
            result = replay_step.run_step(
                str(manifest), str(job_id), target=str(target) if target else None, run_id=str(run_id) if run_id else None,
                logs=logs, artifacts=artifacts, mark_outputs=as_list(mark_outputs), extra_tags=replay_step.parse_tags(tags),
                mirror_status=as_bool(mirror_status, "--mirror-status"), **s.limits,
            )
            replay_step.summary(result, str(job_id))
            return replay_step.EXIT_MIRRORED if result.mirrored_failure else EXIT_OK

        run("step", flags, body)

    def submit(self, manifest=None, target=None, compute="serverless", environment=None, component=None, manifest_uri=None,
               expand_trials=False, trial_sampling="best", max_trials=None, trial_metric=None, seed=0, mirror_status=True,
               emit=None, debug_hierarchy=False, wait=False, timeout=86_400, **flags):
        """Replay a manifest as real Azure ML jobs (pipeline replay): one command or pipeline job per root.

        --manifest DIR  --target azureml://subscriptions/S/resourcegroups/R/workspaces/W  [--compute serverless|CLUSTER]
        [--environment azureml:replayer:0.1.0] [--manifest-uri azureml://datastores/D/paths/P] [--expand-trials]
        [--trial-sampling best|first|random] [--max-trials N] [--trial-metric NAME] [--seed N] [--mirror-status true|false]
        [--dry-run] [--debug-hierarchy] [--emit DIR] [--parallel N] [--report FILE] [--wait [--timeout S]] [filters]
        [--rename-file F] [--import-source-tags] [--use-source-user]
        """

        def body():
            from runner.engine.manifest import ManifestSource
            from runner.azureml import pipeline

            s = Settings(flags, {"target": target}, COMMAND_FLAGS["submit"])
            if not manifest or not Path(str(manifest)).is_dir():
                raise UsageError(f"--manifest {manifest}: no such folder; give a folder written by `replayer extract`")
            options = pipeline.PipelineOptions(
                compute=str(compute), environment=environment, component=component, expand_trials=as_bool(expand_trials, "--expand-trials"),
                trial_sampling=str(trial_sampling), max_trials=as_int(max_trials, "--max-trials", minimum=1), trial_metric=trial_metric, seed=as_int(seed, "--seed", minimum=0),
                mirror_status=as_bool(mirror_status, "--mirror-status"), parallel=s.parallel, mapping=s.mapping,
            ).check()
            src = ManifestSource(str(manifest), s.filters)
            uri = s.endpoints.get("target")
            if not uri and not s.dry_run:
                raise UsageError("missing --target azureml://subscriptions/S/resourcegroups/R/workspaces/W (or use --dry-run)")
            dst = pipeline.PipelineTarget(str(uri)) if uri else None
            summary = pipeline.submit(
                src, dst, options, manifest_uri=str(manifest_uri or Path(str(manifest)).resolve()), dry_run=s.dry_run,
                debug_hierarchy=as_bool(debug_hierarchy, "--debug-hierarchy"), emit_dir=emit,
            )
            logger.info("summary: {}", summary.line(s.dry_run))
            for job_id, reason in summary.failed[:20]:
                logger.info("  failed {}: {}", job_id, reason)
            if s.report:
                import dataclasses
                import json

                Path(s.report).parent.mkdir(parents=True, exist_ok=True)
                Path(s.report).write_text(json.dumps({"dry_run": s.dry_run, **dataclasses.asdict(summary)}, indent=2), encoding="utf-8")
            if not as_bool(wait, "--wait") or s.dry_run or not summary.submitted:
                return summary.exit_code
            from runner.azureml.wait import azureml_status, print_table, wait_for

            labels = {row["name"]: row["original_job_id"] for row in summary.submitted}
            result = wait_for(list(labels), azureml_status(dst.ml), timeout=as_seconds(timeout, "--timeout"), labels=labels, parallel=s.parallel)
            print_table(result)
            return summary.exit_code or result.exit_code

        run("submit", flags, body)

    def wait(self, *jobs, target=None, timeout=86_400, poll=10, max_poll=60, **flags):
        """Wait for Azure ML jobs; exit 0 only when all completed (1 failed, 3 canceled, 4 timed out).

        JOB... | --from FILE (a `submit --report`, or one name per line)  --target azureml://subscriptions/S/resourcegroups/R/workspaces/W
        [--timeout SECONDS] [--poll SECONDS] [--max-poll SECONDS] [--parallel N]
        """
        from_file = flags.pop("from", None)

        def body():
            from runner.azureml.pipeline import PipelineTarget
            from runner.azureml.wait import azureml_status, print_table, read_names, wait_for

            s = Settings(flags, {"target": target}, COMMAND_FLAGS["wait"])
            names, labels = read_names(str(from_file)) if from_file else ([], {})
            names += [str(job) for job in jobs if str(job) not in names]
            uri = s.endpoints.get("target")
            if not uri:
                raise UsageError("missing --target azureml://subscriptions/S/resourcegroups/R/workspaces/W: the workspace of the jobs")
            ml = PipelineTarget(str(uri)).ml
            result = wait_for(names, azureml_status(ml), timeout=as_seconds(timeout, "--timeout"), poll=as_seconds(poll, "--poll"), max_poll=as_seconds(max_poll, "--max-poll"), labels=labels, parallel=s.parallel)
            print_table(result)
            return result.exit_code

        run("wait", flags, body)

    def estimate(self, source=None, target=None, shards=8, sample=20, probe_seconds=20, max_rate=100, verify=True, **flags):
        """Project how long a migration takes: the source's workload sampled, request rates probed (reads only).

        --source URI|config.yml  --target URI|config.yml  [filters as in extract] [--parallel N] [--shards N]
        [--sample N] [--probe-seconds S] [--max-rate R] [--verify|--no-verify] [--report estimate.json]
        Each end's MLflow endpoint and run history (a workspace's, also when given as its MLflow tracking URI) get
        one cheap read at a ramp (5/s doubling every ~2 s up to --max-rate, for at most --probe-seconds each),
        stopped at the first 429 after its Retry-After; both ends in one workspace: probed and projected once.
        Blob is never probed: a workspace's storage account is projected at Azure's documented 20,000 requests/s.
        """
        no_verify = flags.pop("no_verify", False)

        def body():
            from runner.engine import estimate as plan
            from runner.ends import estimate_reads, open_source

            s = Settings(flags, {"source": source, "target": target}, COMMAND_FLAGS["estimate"])
            options = estimate_options(shards, sample, probe_seconds, max_rate, verify, no_verify)
            source_uri, target_uri = s.need("source", "source"), s.need("target", "target")
            src = open_source(source_uri, s.filters, s.workspace, parallel=s.parallel)
            workload = plan.sample_workload(src, options["sample"], batch_counter(target_uri), options["verify"])
            if not workload.sampled:
                raise UsageError("the filters select no jobs in the source: nothing to estimate; check --experiments and the other filters")
            experiment, run_id = workload.first
            reads = estimate_reads(src, source_uri, target_uri, experiment, run_id)  # one workspace: probed once
            results, measured = plan.probe_all(reads, options["max_rate"], options["probe_seconds"])
            measured.update(plan.documented_rates(measured))  # blob: Azure's documented rate, never probed
            projected = plan.projection(workload, measured, s.parallel, options["shards"])  # one workspace: its buckets, as probed
            for line in plan.table(workload, measured, results, projected):
                print(line)
            print(plan.summary_line(projected))
            if s.report:
                import json

                Path(s.report).parent.mkdir(parents=True, exist_ok=True)
                Path(s.report).write_text(json.dumps(plan.report(workload, results, projected), indent=2), encoding="utf-8")
                logger.info("report written to {}", s.report)
            return EXIT_OK

        run("estimate", flags, body)


# Packages the image does not ship (it has mlflow-skinny, not mlflow): mlflow imports them when
# they are installed, for dataset and model flavours the tool never uses, and they are 90 MB of
# a process whose work needs ~150 MB. The CLI sees them as absent, exactly as in the image.
NOT_IN_IMAGE = ("pandas", "numpy", "scipy", "pyarrow")


class _NotInImage:
    """A meta path finder answering "no such module" for NOT_IN_IMAGE (mlflow then skips them)."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in NOT_IN_IMAGE:
            raise ModuleNotFoundError(f"No module named {name!r} (left out as in the replayer image)", name=name)
        return None


def as_text(argv: list[str]) -> list[str]:
    """python-fire reads each value as a Python literal (`000...0` -> 0, `1e5` -> 100000.0, `a,b`
    -> a tuple): hand it every value as a string literal, so ids, names and tags reach the
    commands exactly as typed; the commands turn numbers into numbers (runner.core.filters.as_int)."""
    out = []
    for position, token in enumerate(argv):
        if token.startswith("--") and "=" in token:
            name, _, value = token.partition("=")
            token = f"{name}={value!r}"
        elif position > 0 and not token.startswith("-"):  # argv[0] is the command
            token = repr(token)
        out.append(token)
    return out


def answered_without_fire(argv: list[str]) -> bool:
    """--help, -h and --version, ours: fire's own help neither lists a command's flags (they arrive
    through **flags) nor takes `COMMAND --help` without a `--` before it."""
    from runner import help as texts

    asks = any(token in ("--help", "-h") for token in argv)
    if not argv or argv[0] in ("--help", "-h", "help"):
        print(texts.overview(Replayer))
    elif argv[0] == "--version":
        print(f"replayer {texts.version()}")
    elif argv[0] == "--completion" or argv[:2] == ["--", "--completion"]:
        print(texts.completion(Replayer, COMMAND_FLAGS))
    elif asks and argv[0] in COMMAND_FLAGS:
        print(texts.command_help(Replayer, argv[0], COMMAND_FLAGS[argv[0]]))
    else:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if answered_without_fire(argv):
        return
    if not any(isinstance(finder, _NotInImage) for finder in sys.meta_path):
        sys.meta_path.insert(0, _NotInImage())
    fire.Fire(Replayer, command=as_text(argv), name="replayer")


if __name__ == "__main__":
    main()
