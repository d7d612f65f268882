"""Filters, dry runs, tree, demo and logs, on embedded (folder) stores: fast, no server needed."""
from __future__ import annotations

import json

import pytest
from mlflow.entities import ViewType

from conftest import run_cli
from runner.mlflow import uris
from runner.core.errors import UsageError
from runner.core.filters import Filters
from runner.mlflow.source import MlflowSource

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """alpha: 3 roots a day apart (the 2nd with two children); beta: one failed root; one deleted.

    Tags: a1 team=risk; a2 team=risk, stage=prod; a2-child stage=prod (a child's tags select nothing).
    """
    folder = tmp_path_factory.mktemp("filters") / "store"
    client = uris.open_client(str(folder), create=True)
    ids = {}

    def run(exp, name, day, parent=None, status="FINISHED", **user_tags):
        tags = {"mlflow.parentRunId": ids[parent], **user_tags} if parent else dict(user_tags)
        run_id = client.create_run(exp, start_time=T0 + day * DAY, tags=tags, run_name=name).info.run_id
        client.set_terminated(run_id, status, end_time=T0 + day * DAY + 1000)
        ids[name] = run_id

    alpha = client.create_experiment("alpha-train")
    beta = client.create_experiment("beta-eval")
    run(alpha, "a1", 0, team="risk")
    run(alpha, "a2", 1, team="risk", stage="prod")
    run(alpha, "a2-child", 1, parent="a2", stage="prod")
    run(alpha, "a2-grandchild", 1, parent="a2-child", status="FAILED")
    run(alpha, "a3", 2)
    run(beta, "b1", 3, status="FAILED")
    run(beta, "gone", 4)
    client.delete_run(ids["gone"])
    return {"uri": str(folder), "ids": ids}


def names(store, **filters) -> list[str]:
    source = MlflowSource(store["uri"], Filters.build(**filters))
    by_id = {v: k for k, v in store["ids"].items()}
    return [by_id[job.source_id] for job in source.jobs()]


def test_everything_parents_first_in_start_order(store):
    assert names(store) == ["a1", "a2", "a2-child", "a2-grandchild", "a3", "b1"]


def test_experiment_globs_and_names(store):
    assert names(store, experiments="beta-*") == ["b1"]
    assert names(store, experiments=["alpha-train"]) == ["a1", "a2", "a2-child", "a2-grandchild", "a3"]


def test_include_by_id_or_name_brings_whole_tree(store):
    assert names(store, include=store["ids"]["a3"]) == ["a3"]
    assert names(store, include="a2-grandchild") == ["a2", "a2-child", "a2-grandchild"]


def test_include_file(store, tmp_path):
    listing = tmp_path / "ids.txt"
    listing.write_text(f"# wanted\n{store['ids']['a1']}\n\nb1\n")
    assert names(store, include_file=str(listing)) == ["a1", "b1"]


def test_since_until_on_root_start(store):
    assert names(store, since="2024-01-02", until="2024-01-04") == ["a2", "a2-child", "a2-grandchild", "a3"]
    assert names(store, since=T0 + 3 * DAY) == ["b1"]


def test_status_applies_to_roots(store):
    assert names(store, status="failed") == ["b1"]
    assert names(store, status=["FINISHED"], experiments="alpha*", limit=2) == ["a1", "a2", "a2-child", "a2-grandchild"]


def test_limit_counts_roots_children_follow(store):
    assert names(store, limit=2) == ["a1", "a2", "a2-child", "a2-grandchild"]


def test_tags_match_every_pair_on_the_root(store):
    assert names(store, tags="team=risk") == ["a1", "a2", "a2-child", "a2-grandchild"]
    assert names(store, tags="team=risk,stage=prod") == ["a2", "a2-child", "a2-grandchild"]
    assert names(store, tags={"stage": "prod"}) == ["a2", "a2-child", "a2-grandchild"]  # the YAML form; a2-child is no root
    assert names(store, tags=["team=other"]) == []
    with pytest.raises(UsageError, match="--tags 'team': expected KEY=VALUE"):
        Filters.build(tags="team")


def test_max_depth_cuts_descendants(store):
    assert names(store, max_depth=0) == ["a1", "a2", "a3", "b1"]
    assert names(store, max_depth="1") == ["a1", "a2", "a2-child", "a3", "b1"]
    assert names(store, max_depth=2) == names(store)
    for bad in (-1, "x", True):
        with pytest.raises(UsageError, match="--max-depth .*expected a whole number >= 0"):
            Filters.build(max_depth=bad)


def test_exclude_drops_trees_and_subtrees(store):
    assert names(store, exclude="a2") == ["a1", "a3", "b1"]  # a root matches: its whole tree
    assert names(store, exclude="*-child") == ["a1", "a2", "a3", "b1"]  # a child matches: it and its subtree
    assert names(store, exclude=[store["ids"]["a2-grandchild"], "b?"]) == ["a1", "a2", "a2-child", "a3"]  # ids too
    assert names(store, exclude="a2-child", include="a2-grandchild") == []  # --include looks inside what is left
    assert names(store, exclude="a1", limit=1) == ["a2", "a2-child", "a2-grandchild"]  # an excluded root is not counted


def test_new_filters_read_the_same_from_a_manifest(store, tmp_path):
    from runner.engine.extract import extract
    from runner.engine.manifest import ManifestSource

    out = tmp_path / "manifest"
    extract(MlflowSource(store["uri"], Filters()), str(out), parallel=2)
    by_id = {v: k for k, v in store["ids"].items()}

    def manifest_names(**filters):
        return [by_id[job.source_id] for job in ManifestSource(str(out), Filters.build(**filters)).jobs()]

    for filters in ({"tags": "team=risk,stage=prod"}, {"max_depth": 1}, {"exclude": "*-child"}, {"exclude": "a2"}):
        assert manifest_names(**filters) == names(store, **filters), filters


def test_new_filters_from_config_and_flags(store, tmp_path):
    config = tmp_path / "migration.yml"
    config.write_text(f"source: {store['uri']}\ntarget: {tmp_path / 'target'}\nfilters:\n  tags: {{team: risk}}\n  max_depth: 1\n")
    result = run_cli("migrate", "--config", str(config), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "would create 3, repair 0, skip 0" in result.stderr  # a1, a2, a2-child
    result = run_cli("migrate", "--config", str(config), "--dry-run", "--exclude", "a1", "--tags", "team=risk,stage=prod", "--max-depth", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "would create 3, repair 0, skip 0" in result.stderr and "a2-grandchild" in result.stdout
    bad = run_cli("migrate", "--config", str(config), "--dry-run", "--max-depth", "deep", cwd=tmp_path)
    assert bad.returncode == 2 and "--max-depth 'deep'" in bad.stderr
    assert not (tmp_path / "target").exists()


def test_include_deleted(store):
    assert "gone" in names(store, include_deleted=True)


def test_dry_run_writes_nothing(store, tmp_path):
    target = tmp_path / "target"
    result = run_cli("migrate", "--source", store["uri"], "--target", str(target), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not target.exists()
    assert "+ alpha-train / a1" in result.stdout and "+     a2-grandchild" in result.stdout
    assert "would create 6, repair 0, skip 0" in result.stderr


def test_dry_run_on_partly_copied_target_shows_skips(store, tmp_path):
    target = tmp_path / "target"
    first = run_cli("migrate", "--source", store["uri"], "--target", str(target), "--experiments", "beta-*", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    client = uris.open_client(str(target), create=False)
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()], "", ViewType.ALL))
    plan = run_cli("migrate", "--source", store["uri"], "--target", str(target), "--dry-run", cwd=tmp_path)
    assert "= beta-eval / b1" in plan.stdout and "would create 5, repair 0, skip 1" in plan.stderr
    after = len(client.search_runs([e.experiment_id for e in client.search_experiments()], "", ViewType.ALL))
    assert before == after == 1


def test_tree_prints_hierarchy(store, tmp_path):
    result = run_cli("tree", store["uri"], "--experiments", "alpha*", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("alpha-train / a2 [FINISHED]")
    assert lines[2].startswith("  └─ a2-child") and lines[3].startswith("    └─ a2-grandchild [FAILED]")
    assert "5 runs: 1 FAILED, 4 FINISHED" in result.stdout


def test_demo_local_run_flow_and_logs(tmp_path):
    """The embedded default: demo -> migrate -> verify, with log files and a report."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert run_cli("demo", "--out", str(src), cwd=tmp_path).returncode == 0
    again = run_cli("demo", "--out", str(src), cwd=tmp_path)
    assert again.returncode == 2 and "already has experiment" in again.stderr
    migrate = run_cli("migrate", "--source", str(src), "--target", str(dst), "--parallel", "3", cwd=tmp_path)
    assert migrate.returncode == 0, migrate.stderr
    assert "created 15, repaired 0, skipped 0, failed 0" in migrate.stderr
    assert "replay: 15/15 (100%)" in migrate.stderr
    check = run_cli("verify", "--source", str(src), "--target", str(dst), "--report", "r.json", cwd=tmp_path)
    assert check.returncode == 0, check.stdout
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["equal"] == 15
    logs = sorted(p.name.split("_")[0] for p in (tmp_path / "logs").glob("*.log"))
    assert logs == ["demo", "demo", "migrate", "verify"]
    migrate_log = next((tmp_path / "logs").glob("migrate_*.log")).read_text()
    assert "summary: created 15" in migrate_log


def test_config_file_drives_migration_and_flags_override(store, tmp_path):
    target = tmp_path / "target"
    config = tmp_path / "migration.yml"
    config.write_text(f"source: {store['uri']}\ntarget: {target}\nfilters:\n  experiments: [beta-*]\noptions:\n  parallel: 2\n")
    result = run_cli("migrate", "--config", str(config), "--experiments", "alpha-train", "--limit", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created 1, repaired 0, skipped 0" in result.stderr
    # the config path works in place of a URI too
    check = run_cli("verify", "--source", str(config), "--target", str(config), "--experiments", "alpha-train", "--limit", "1", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 runs compared, 1 equal" in check.stdout


# -- flags arrive as typed; bad values are usage errors (exit 2, one line), never misreads ----------


def test_numeric_looking_names_stay_strings(tmp_path):
    """python-fire would read `000000000000000000000` (an Azure ML job name form) as 0 and `1e5` as
    100000.0: the CLI hands every value over as text, so --include selects those runs by name."""
    folder = tmp_path / "store"
    client = uris.open_client(str(folder), create=True)
    experiment = client.create_experiment("digits")
    for name in ("000000000000000000000", "1e5", "other"):
        run_id = client.create_run(experiment, start_time=T0, run_name=name).info.run_id
        client.set_terminated(run_id, "FINISHED", end_time=T0 + 1)
    out = tmp_path / "manifest"
    done = run_cli("extract", "--source", str(folder), "--out", str(out), "--include", "000000000000000000000,1e5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    names = sorted(json.loads(line)["name"] for line in (out / "jobs.jsonl").read_text().splitlines())
    assert names == ["000000000000000000000", "1e5"]


@pytest.mark.parametrize("flags, says", [
    (["--parallel", "abc"], "--parallel 'abc': expected a whole number >= 1"),
    (["--parallel", "0"], "--parallel 0: expected 1 or more"),
    (["--retries", "-1"], "--retries -1: expected 0 or more"),
    (["--limit", "two"], "--limit 'two': expected a whole number >= 1"),
    (["--status", "FINISHD"], "--status FINISHD: not a run status; did you mean FINISHED?"),
    (["--since", "20990101x"], "--since '20990101x': not a date"),
    (["--since", "1700000"], "--since 1700000: not a date; use YYYY-MM-DD"),
    (["--max-tags", "many"], "--max-tags 'many': expected a whole number >= 1"),
])
def test_bad_flag_values_are_usage_errors(store, tmp_path, flags, says):
    done = run_cli("migrate", "--source", str(store["uri"]), "--target", str(tmp_path / "t"), *flags, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and says in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "t").exists()  # refused before anything is written


def test_a_bad_date_in_the_yaml_is_a_usage_error(store, tmp_path):
    config = tmp_path / "m.yml"
    config.write_text(f"source: {store['uri']}\ntarget: {tmp_path / 't'}\nfilters:\n  since: 2024-13-45\n")
    done = run_cli("migrate", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2 and "since '2024-13-45': not a date" in done.stderr, done.stderr[-2000:]


def test_dates_compact_iso_and_epoch_milliseconds():
    assert Filters.build(since="20240501").since == Filters.build(since="2024-05-01").since == 1_714_521_600_000
    assert Filters.build(since="1714521600000").since == 1_714_521_600_000
    with pytest.raises(UsageError, match="epoch milliseconds"):
        Filters.build(since="20990101000")


@pytest.mark.parametrize("uri", ["s3://bucket/x", "mlflw://typo:5000", "gs://bucket"])
def test_unknown_schemes_are_refused_naming_the_accepted_forms(store, tmp_path, uri):
    done = run_cli("migrate", "--source", store["uri"], "--target", uri, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "is not a tracking store this tool reads or writes; use a folder" in done.stderr and "postgresql://" in done.stderr
    assert not any(tmp_path.rglob("mlflow.db"))  # not taken for a local folder named `s3:`
    source = run_cli("extract", "--source", uri, "--out", str(tmp_path / "m"), cwd=tmp_path)
    assert source.returncode == 2 and "is not a tracking store" in source.stderr, source.stderr[-2000:]


def test_every_mlflow_backend_form_is_taken_as_a_store():
    for uri in ("postgresql://u@db:5432/mlflow", "mysql+pymysql://u@db/mlflow", "mssql://db/mlflow", "sqlite:///x.db",
                "databricks", "databricks://profile", "HTTP://LOCALHOST:5000"):
        assert uris.tracking_uri(uri) == uri
    assert uris.tracking_uri("file:///tmp/x").startswith("sqlite:///")


def test_one_source_identity_however_its_uri_is_spelled():
    names = {uris.workspace_name(u) for u in ("http://127.0.0.1:5000", "http://localhost:5000/", "http://[::1]:5000", "HTTP://LOCALHOST:5000")}
    assert names == {"http://127.0.0.1:5000"}
    assert uris.workspace_name("https://h.example:443/a/") == uris.workspace_name("https://H.EXAMPLE/a")
    assert uris.workspace_name("postgresql://user:secret@db/mlflow") == "postgresql://db/mlflow"  # no password kept


def test_a_rerun_spelled_differently_creates_nothing(servers, tmp_path):
    """127.0.0.1, localhost, a trailing slash: one source, so the 2nd and 3rd passes skip."""
    source, target = servers
    experiment = f"spelled-{tmp_path.name}"
    client = uris.open_client(source.uri, create=False)
    exp = client.create_experiment(experiment)
    for i in range(3):
        run_id = client.create_run(exp, start_time=T0 + i, run_name=f"r{i}").info.run_id
        client.set_terminated(run_id, "FINISHED", end_time=T0 + i + 1)
    port = source.uri.rsplit(":", 1)[1].strip("/")
    for spelled, created in ((f"http://127.0.0.1:{port}", 3), (f"http://localhost:{port}", 0), (f"http://127.0.0.1:{port}/", 0)):
        done = run_cli("migrate", "--source", spelled, "--target", target.uri, "--experiments", experiment, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"created {created}," in done.stderr, done.stderr[-1500:]


def test_verify_without_the_migrations_workspace_name_says_why_in_one_line(tmp_path):
    """`make local-run` migrates with --workspace local-demo; a verify of the same folders without
    it finds none of its runs, and says which source the target does hold and what to pass."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert run_cli("demo", "--out", str(src), cwd=tmp_path).returncode == 0
    assert run_cli("migrate", "--source", str(src), "--target", str(dst), "--workspace", "local-demo", cwd=tmp_path).returncode == 0
    plain = run_cli("verify", "--source", str(src), "--target", str(dst), cwd=tmp_path)
    assert plain.returncode == 1
    said = [line for line in plain.stderr.splitlines() if "holds no run replayed from" in line]
    assert len(said) == 1 and "'local-demo' (15 runs)" in said[0] and "--workspace NAME" in said[0], plain.stderr[-2000:]
    named = run_cli("verify", "--source", str(src), "--target", str(dst), "--workspace", "local-demo", cwd=tmp_path)
    assert named.returncode == 0 and "holds no run" not in named.stderr, named.stderr[-2000:]


def test_nothing_lands_in_the_working_directory_and_the_log_path_is_printed(tmp_path):
    """Without REPLAYER_LOG_DIR logs go to the user's state folder; verify writes a report only
    with --report; every command ends by naming its log file."""
    import os
    import subprocess
    import sys

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("REPLAYER_LOG_DIR", "XDG_STATE_HOME")}
    env["HOME"] = str(home)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "runner", *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    assert cli("demo", "--out", str(tmp_path / "src")).returncode == 0
    assert cli("migrate", "--source", str(tmp_path / "src"), "--target", str(tmp_path / "dst")).returncode == 0
    checked = cli("verify", "--source", str(tmp_path / "src"), "--target", str(tmp_path / "dst"))
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert list(work.iterdir()) == []  # no ./logs, no ./verify-report.json, no ./mlflow.db
    folder = home / ".local" / "state" / "replayer" / "logs"
    assert sorted(p.name.split("_")[0] for p in folder.glob("*.log")) == ["demo", "migrate", "verify"]
    named = checked.stderr.strip().splitlines()[-1]
    assert named.endswith(".log") and f"log: {folder}/verify_" in named


def test_help_lists_every_flag_of_every_command_with_a_default_and_an_example():
    """`replayer COMMAND --help` (fire alone said "unknown flag --help") and `replayer --help`,
    answered without importing mlflow."""
    import subprocess
    import sys

    from runner.cli import COMMAND_FLAGS, Replayer
    from runner.help import commands

    overview = run_cli("--help")
    assert overview.returncode == 0 and all(f"  {name} " in overview.stdout for name in commands(Replayer)), overview.stdout
    assert run_cli("--version").stdout.startswith("replayer 0.1.0")
    for name in commands(Replayer):
        shown = run_cli(name, "--help")
        assert shown.returncode == 0, shown.stderr[-1000:]
        rows = {line.split()[0]: line for line in shown.stdout.splitlines() if line.startswith("  --")}
        for flag in COMMAND_FLAGS[name]:
            row = rows.get(f"--{flag.replace('_', '-')}")
            assert row and len(row.split()) >= 3, (name, flag, shown.stdout)
        assert f"example:\n  replayer {name} " in shown.stdout
    code = "import sys; from runner.cli import main; main(['migrate', '--help']); print('mlflow' in sys.modules)"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip().endswith("False"), probe.stdout[-500:] + probe.stderr[-500:]


def test_verify_output_names_the_key_both_values_the_target_run_and_the_fix(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    client = uris.open_client(str(src), create=True)
    experiment = client.create_experiment("edited")
    run_ids = []
    for i in range(3):
        run_id = client.create_run(experiment, start_time=T0 + i, run_name=f"r{i}", tags={"team": "risk", "note": "x" * 200}).info.run_id
        client.log_param(run_id, "lr", "0.1")
        client.set_terminated(run_id, "FINISHED", end_time=T0 + 10)
        run_ids.append(run_id)
    assert run_cli("migrate", "--source", str(src), "--target", str(dst), cwd=tmp_path).returncode == 0
    target = uris.open_client(str(dst), create=False)
    copied = {r.data.tags["original_job_id"]: r.info.run_id for r in target.search_runs([e.experiment_id for e in target.search_experiments()])}
    target.set_tag(copied[run_ids[0]], "team", "fraud")  # changed in the target after the copy
    target.set_tag(copied[run_ids[0]], "extra", "1")
    check = run_cli("verify", "--source", str(src), "--target", str(dst), cwd=tmp_path)
    assert check.returncode == 1
    out = check.stdout
    assert "verify: 3 runs compared, 2 equal, 1 differ" in out, out
    row = next(line for line in out.splitlines() if "tag:team" in line)
    assert run_ids[0] in row and copied[run_ids[0]] in row and "risk -> fraud" in row, out
    assert any("tag:extra" in line and "(absent) -> 1" in line for line in out.splitlines()), out
    assert "tag:note" not in out  # an equal key is not shown, however long its value
    assert "migrate does not overwrite it: delete that target run" in out


def test_completion_script_names_every_real_flag(tmp_path):
    """fire's own completion sees only **flags; ours names what Settings accepts, and bash runs it."""
    import subprocess

    script = tmp_path / "replayer.bash"
    done = run_cli("--completion")
    assert done.returncode == 0
    script.write_text(done.stdout)
    probe = f'source {script}; COMP_WORDS=(replayer migrate --inc); COMP_CWORD=2; _replayer; echo "${{COMPREPLY[@]}}"'
    words = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30).stdout.split()
    assert words == ["--include", "--include-file", "--include-deleted", "--incremental"]


def test_an_experiment_without_runs_comes_over_with_its_tags_and_description(tmp_path):
    src, dst, picked = tmp_path / "src", tmp_path / "dst", tmp_path / "picked"
    client = uris.open_client(str(src), create=True)
    client.create_experiment("genai-app", tags={"team": "agents", "mlflow.note.content": "a runless GenAI project"})
    experiment = client.create_experiment("with-runs")
    run_id = client.create_run(experiment, start_time=T0, run_name="only").info.run_id
    client.set_terminated(run_id, "FINISHED", end_time=T0 + 1)
    for _ in range(2):  # the rerun creates nothing twice
        assert run_cli("migrate", "--source", str(src), "--target", str(dst), cwd=tmp_path).returncode == 0
    target = uris.open_client(str(dst), create=False)
    found = {e.name: e.tags for e in target.search_experiments()}
    assert found["genai-app"] == {"team": "agents", "mlflow.note.content": "a runless GenAI project"}
    assert sorted(found) == ["Default", "genai-app", "with-runs"]
    check = run_cli("verify", "--source", str(src), "--target", str(dst), cwd=tmp_path)
    assert check.returncode == 0, check.stdout[-2000:]
    # A selection of runs (here by name) brings only their experiments.
    assert run_cli("migrate", "--source", str(src), "--target", str(picked), "--include", "only", cwd=tmp_path).returncode == 0
    assert "genai-app" not in {e.name for e in uris.open_client(str(picked), create=False).search_experiments()}
