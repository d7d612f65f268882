"""`replayer --help`, `replayer COMMAND --help` and `replayer --version`, answered before any
library is imported: every flag a command takes, with its default, and an example."""
from __future__ import annotations

import inspect

# flag -> (default as shown, what it does). The defaults are the ones the commands apply.
FLAGS = {
    "source": ("-", "where to read: a tracking URI, a folder store, a manifest folder, an Azure ML workspace or a migration YAML"),
    "target": ("-", "where to write: a tracking URI, a folder store, an Azure ML workspace (or its tracking URI) or a migration YAML"),
    "out": ("-", "the manifest folder to write"),
    "manifest": ("-", "a manifest folder written by extract"),
    "uri": ("-", "a tracking URI or manifest folder"),
    "config": ("-", "a migration YAML (source, target, workspace, filters, options); flags win over it"),
    "verbose": ("false", "DEBUG lines on stderr too (the log file always has them)"),
    "parallel": ("8", "runs (or jobs) in flight at once"),
    "dry_run": ("false", "say what would be done; write nothing"),
    "workspace": ("the source URI's", "the source's name, recorded as original_workspace on every replayed run"),
    "retries": ("2", "extra passes over runs that failed"),
    "credential": ("default", "Azure credential: managed | cli | default | obo"),
    "client_id": ("-", "a user-assigned managed identity's client id"),
    "experiments": ("all", "experiment names or globs, comma-separated"),
    "include": ("all", "root run ids or names, comma-separated (names stay text: 000123 is not 123)"),
    "include_file": ("-", "a file of run ids or names, one per line"),
    "since": ("-", "roots started on or after: YYYY-MM-DD, YYYYMMDD, an ISO time or epoch ms (13 digits)"),
    "until": ("-", "roots started before (same forms as --since)"),
    "status": ("all", "root statuses: RUNNING, SCHEDULED, FINISHED, FAILED, KILLED"),
    "limit": ("all", "at most N root runs"),
    "include_deleted": ("false", "deleted runs and experiments too"),
    "shard": ("-", "i/N: only roots whose id hashes to shard i of N"),
    "tags": ("-", "k=v,k2=v2: roots carrying every one of these tags"),
    "max_depth": ("all", "descendants deeper than N are left out (0 = roots only)"),
    "exclude": ("-", "globs on run id or name: a match drops its subtree"),
    "report": ("-", "write a JSON summary (verify, or with --verify: verify's report) to this file"),
    "verify": ("false", "check every selected run as `verify` does, in the same pass as the copy; verify's table, report and exit code"),
    "models": ("-", "registered models to copy too: names, globs or all"),
    "models_only": ("false", "the registered models alone"),
    "skip_traces": ("false", "leave MLflow 3 traces out (copy and verify only runs, models)"),
    "skip_logged_models": ("false", "leave MLflow 3 logged models and the runs' model inputs out (runs only)"),
    "rename_file": ("-", "a YAML of experiment renames (source name: target name)"),
    "import_source_tags": ("false", "the source's own facts as tags on each run"),
    "use_source_user": ("false", "the source's user as the run's mlflow.user"),
    "artifacts": ("copy", "copy | list (record files, no bytes) | none"),
    "max_artifact_size": ("-", "skip (and report) bigger files: 500MB, 1.5GiB, bytes"),
    "artifact_include": ("all", "globs of files to copy"),
    "artifact_exclude": ("-", "globs of files to leave out (wins over include)"),
    "max_tags": ("the target's", "tags a run holds; the rest go to replay/overflow.json"),
    "max_metric_keys": ("the target's", "metric names a run holds; the rest go to replay/overflow.json"),
    "incremental": ("false", "only what changed since the last sync (state kept in the target)"),
    "full": ("false", "with --incremental: read everything and reset the sync state"),
}

# Named arguments of step, submit and wait (the pipeline replay commands), and where a command
# gives a flag another meaning.
FLAGS.update({
    "job_id": ("-", "the manifest's job to replay"),
    "run_id": ("-", "the target run to write (inside an Azure ML job: the job's own)"),
    "logs": ("-", "a folder for the original's logs (logs/<family>/...)"),
    "mirror_status": ("true", "end the step as the original ended (exit 3 for a failed original)"),
    "mark_outputs": ("-", "write a marker into each output folder"),
    "compute": ("serverless", "the compute the replay_step jobs run on"),
    "environment": ("the component's", "the environment of the replay_step jobs"),
    "component": ("the shipped one", "a replay_step component YAML"),
    "manifest_uri": ("uploaded", "the manifest already on a datastore (azureml://datastores/D/paths/P)"),
    "expand_trials": ("false", "a step per sweep/AutoML trial"),
    "trial_sampling": ("best", "which trials: best | first | random"),
    "max_trials": ("all", "at most N trials per sweep/AutoML parent"),
    "trial_metric": ("the primary metric", "the metric that ranks trials"),
    "seed": ("0", "seed of random sampling (demo: of the demo data)"),
    "emit": ("-", "write each job's YAML into this folder"),
    "debug_hierarchy": ("false", "print each planned pipeline as a tree"),
    "wait": ("false", "wait for the submitted jobs"),
    "timeout": ("86400", "seconds to wait at most"),
    "poll": ("10", "seconds between status checks (growing)"),
    "max_poll": ("60", "seconds between status checks at most"),
    "from": ("-", "a `submit --report` file, or one job name per line"),
    "shards": ("8", "nodes the migration would run on (--shard i/N): the projection's second figure"),
    "sample": ("20", "jobs read for their metric keys, points and files"),
    "probe_seconds": ("20", "seconds each probed endpoint (MLflow, run history; per end) gets at most"),
    "max_rate": ("100", "requests/s the probe's ramp (5/s, doubling) stops at"),
})
PER_COMMAND = {
    "step": {"artifacts": ("-", "a folder for the original's files"), "tags": ("-", "extra tags for the run, as JSON")},
    "estimate": {"parallel": ("8", "the migration's --parallel: requests in flight per node, for the latency floor"),
                 "verify": ("true", "count migrate --verify's requests (--no-verify: migrate's)"),
                 "report": ("-", "write the workload, the probes and the projection as JSON to this file")},
}

EXAMPLES = {
    "extract": "replayer extract --source http://127.0.0.1:5000 --out ./manifest --experiments 'fraud-*' --since 2024-01-01",
    "replay": "replayer replay --manifest ./manifest --target ./target-store --parallel 8",
    "migrate": "replayer migrate --source azureml://subscriptions/S/resourcegroups/R/workspaces/OLD "
               "--target azureml://subscriptions/S/resourcegroups/R/workspaces/NEW --experiments 'fraud-*'",
    "verify": "replayer verify --source ./source-store --target ./target-store --report verify-report.json",
    "tree": "replayer tree ./manifest --experiments 'fraud-*'",
    "demo": "replayer demo --out ./source-store",
    "step": "replayer step --manifest ./manifest --job-id JOB --target ./target-store",
    "submit": "replayer submit --manifest ./manifest --target azureml://subscriptions/S/resourcegroups/R/workspaces/W --dry-run",
    "estimate": "replayer estimate --source azureml://subscriptions/S/resourcegroups/R/workspaces/OLD "
                "--target azureml://subscriptions/S/resourcegroups/R/workspaces/NEW --shards 8 --report estimate.json",
    "wait": "replayer wait --from submitted.json --target azureml://subscriptions/S/resourcegroups/R/workspaces/W",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("azureml-replayer")
    except PackageNotFoundError:
        return "unknown (not installed)"


def commands(cls) -> dict[str, object]:
    return {name: method for name, method in vars(cls).items() if callable(method) and not name.startswith("_")}


def overview(cls) -> str:
    lines = [f"replayer {version()}: {inspect.getdoc(cls)}", "", "usage: replayer COMMAND [flags]   (replayer COMMAND --help for its flags)", "", "commands:"]
    for name, method in commands(cls).items():
        lines.append(f"  {name:<8} {inspect.getdoc(method).splitlines()[0]}")
    lines += ["", "exit codes: 0 done and equal, 1 differences or failed runs, 2 bad input, 130 interrupted"]
    return "\n".join(lines)


def command_help(cls, name: str, taken: tuple[str, ...]) -> str:
    """The command's text, then every flag: its own named arguments and what Settings accepts."""
    method = commands(cls)[name]
    doc = inspect.getdoc(method)
    named = {p.name: p.default for p in inspect.signature(method).parameters.values()
             if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if name == "wait":
        named = {"from": None, **named}  # read from **flags: `from` is a Python keyword
    lines = [f"usage: replayer {name} [flags]", "", doc.split("\n\n")[0], "", "flags (default, meaning):"]
    for flag in list(named) + [f for f in taken if f not in named]:
        default, meaning = PER_COMMAND.get(name, {}).get(flag) or FLAGS[flag]
        if named.get(flag) not in (None, inspect.Parameter.empty, False):
            default = str(named[flag]).lower() if isinstance(named[flag], bool) else str(named[flag])
        lines.append(f"  --{flag.replace('_', '-'):<22} {default:<18} {meaning}")
    lines += ["", "example:", f"  {EXAMPLES[name]}"]
    return "\n".join(lines)


def completion(cls, flags_by_command: dict[str, tuple[str, ...]]) -> str:
    """A bash completion script naming each command's real flags (fire's own sees only **flags)."""
    cases = []
    for name, method in commands(cls).items():
        named = [p.name for p in inspect.signature(method).parameters.values() if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        words = " ".join(f"--{f.replace('_', '-')}" for f in dict.fromkeys(named + list(flags_by_command.get(name, ())))) + " --help"
        cases.append(f'        {name}) words="{words}" ;;')
    return "\n".join([
        "# bash completion for replayer: source <(replayer --completion)",
        "_replayer() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" words',
        "    if [ \"$COMP_CWORD\" -eq 1 ]; then words=\"" + " ".join(commands(cls)) + " --help --version\"; else",
        '    case "${COMP_WORDS[1]}" in',
        *cases,
        "    esac; fi",
        '    COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        "}",
        "complete -F _replayer replayer",
    ])
