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
from runner import logs, retry
from runner.errors import EXIT_DIFFERENCES, EXIT_OK, ReplayerError, UsageError
from runner.filters import Filters, as_bool

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
        self.parallel = int(options.get("parallel") or 8)
        if self.parallel < 1:
            raise UsageError(f"--parallel {self.parallel}: expected 1 or more threads")
        self.dry_run = as_bool(options.get("dry_run", False), "--dry-run")
        self.retries = int(options.get("retries", 2))
        if self.retries < 0:
            raise UsageError(f"--retries {self.retries}: expected 0 or more extra passes")
        self.report = options.get("report")
        if options.get("credential") or options.get("client_id"):
            from runner import credentials

            credentials.configure(options.get("credential"), options.get("client_id"))

    def need(self, name: str, flag: str) -> str:
        value = self.endpoints.get(name)
        if not value:
            raise UsageError(f"missing --{flag}: give a tracking URI, a manifest folder or a migration YAML")
        return str(value)


FILTER_FLAGS = tuple(config_file.FILTER_KEYS)
SELECT = COMMON_FLAGS + FILTER_FLAGS


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
    sys.exit(code)


def open_target(uri: str, dry_run: bool = False):
    from runner.targets.direct import DirectTarget

    return DirectTarget(uri, dry_run=dry_run)


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


class Replayer:
    """Replay AzureML / MLflow run history into another workspace or tracking store."""

    def extract(self, source=None, out=None, **flags):
        """Read a source into a manifest folder.

        --source URI|config.yml  --out DIR  [--experiments a,b*] [--include ids|names] [--include-file F]
        [--since DATE] [--until DATE] [--status FINISHED,FAILED] [--limit N] [--include-deleted]
        [--parallel N] [--dry-run] [--workspace NAME] [--config FILE] [--verbose]
        """

        def body():
            from runner.extract import extract
            from runner.sources import open_source

            s = Settings(flags, {"source": source}, SELECT)
            if not out:
                raise UsageError("missing --out: give an empty folder for the manifest")
            src = open_source(s.need("source", "source"), s.filters, s.workspace, parallel=s.parallel)
            header = extract(src, str(out), parallel=s.parallel, dry_run=s.dry_run)
            logger.info("summary: {}", header.get("counts"))
            return EXIT_OK

        run("extract", flags, body)

    def replay(self, manifest=None, target=None, **flags):
        """Replay a manifest folder into a target tracking store.

        --manifest DIR  --target URI|config.yml  [filters as in extract] [--parallel N] [--dry-run]
        [--report summary.json]
        """

        def body():
            from runner.manifest import ManifestSource
            from runner.replay import ReplayOptions, replay

            s = Settings(flags, {"target": target}, SELECT + ("report",))
            if not manifest:
                raise UsageError("missing --manifest: give a folder written by `replayer extract`")
            if not Path(str(manifest)).is_dir():
                raise UsageError(f"--manifest {manifest}: no such folder; give a folder written by `replayer extract`")
            src = ManifestSource(str(manifest), s.filters)
            dst = open_target(s.need("target", "target"), s.dry_run)
            return finish_replay(replay(src, dst, ReplayOptions(dry_run=s.dry_run, parallel=s.parallel, retries=s.retries)), s.dry_run, s.report)

        run("replay", flags, body)

    def migrate(self, source=None, target=None, **flags):
        """Extract and replay in one go, straight from source to target (no manifest on disk).

        --source URI|config.yml  --target URI|config.yml  [filters as in extract] [--parallel N] [--dry-run]
        """

        def body():
            from runner.replay import ReplayOptions, replay
            from runner.sources import open_source

            s = Settings(flags, {"source": source, "target": target}, SELECT + ("report",))
            src = open_source(s.need("source", "source"), s.filters, s.workspace, parallel=s.parallel)
            src.experiments()  # an unknown --experiments name fails here, before the target is created
            dst = open_target(s.need("target", "target"), s.dry_run)
            return finish_replay(replay(src, dst, ReplayOptions(dry_run=s.dry_run, parallel=s.parallel, retries=s.retries)), s.dry_run, s.report)

        run("migrate", flags, body)

    def verify(self, source=None, target=None, **flags):
        """Compare source (URI or manifest folder) and target run by run; exit 1 on any difference.

        --source URI|DIR|config.yml  --target URI|config.yml  [--report verify-report.json] [filters]
        """

        def body():
            from runner.sources import open_source
            from runner.verify import print_table, verify, write_report

            s = Settings(flags, {"source": source, "target": target}, SELECT + ("report",))
            src = open_source(s.need("source", "source"), s.filters, s.workspace, parallel=s.parallel)
            dst = open_target(s.need("target", "target"), dry_run=True)
            report = verify(src, dst, parallel=s.parallel)
            path = Path(s.report or "verify-report.json")
            write_report(report, path)
            print_table(report)
            logger.info("report written to {}", path)
            return EXIT_OK if report.ok else EXIT_DIFFERENCES

        run("verify", flags, body)

    def tree(self, uri=None, **flags):
        """Print the run hierarchy of a tracking URI or manifest folder.  URI|DIR [filters]"""

        def body():
            from runner.sources import open_source
            from runner.tree import print_tree

            s = Settings(flags, {"source": uri}, SELECT)
            print_tree(open_source(s.need("source", "uri"), s.filters, s.workspace))
            return EXIT_OK

        run("tree", flags, body)

    def demo(self, out=None, seed=7, **flags):
        """Seed a small realistic demo source into a tracking store.  --out URI|DIR [--seed N]"""

        def body():
            from runner.demo import seed as seed_demo

            Settings(flags, {}, ("verbose",))
            if not out:
                raise UsageError("missing --out: give a tracking URI or a folder for the demo store")
            counts = seed_demo(str(out), int(seed))
            logger.info("demo seeded into {}: {}", out, counts)
            return EXIT_OK

        run("demo", flags, body)


def main() -> None:
    fire.Fire(Replayer, name="replayer")


if __name__ == "__main__":
    main()
