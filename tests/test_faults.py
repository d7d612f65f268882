"""Migrations through a fault-injecting proxy: throttling, 5xx, lost answers, resets, slowness.

The same on the AzureML side, injected by the fake control plane itself: a direct migration into
an `azureml://` target and an extraction from an AzureML workspace.
Nothing may be lost or duplicated, and verify (run without faults) must be clean.
"""
from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType

from runner.core import retry
from runner.mlflow import uris
from runner.core.filters import Filters
from runner.core.records import MetricPoint

from conftest import run_cli
from fakes import azureml_seed
from fakes.azureml_control_plane import FAULT_KINDS as FAKE_FAULT_KINDS
from fakes.azureml_control_plane import FakeControlPlane, FakeCredential, FakeWorkspace, cli_environment
from fakes.fault_proxy import FAULTS, FaultProxy
from servers import MlflowServer

FAST_RETRIES = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.1"}


retry.configure()  # no "View run" chatter while seeding


def seed(client: MlflowClient, experiment: str, scratch, roots: int = 6, children: int = 4) -> int:
    exp = client.create_experiment(experiment)
    count = 0
    for r in range(roots):
        root = client.create_run(exp, start_time=1_700_000_000_000 + r, run_name=f"root-{r}").info.run_id
        count += 1
        for c in range(children):
            child = client.create_run(exp, run_name=f"child-{r}-{c}", tags={"mlflow.parentRunId": root}).info.run_id
            client.log_batch(child, params=[Param("c", str(c))],
                             metrics=[Metric(k, i * 0.5, 1_700_000_000_000 + i, i) for k in ("a", "b") for i in range(60)])
            artifact = scratch / f"{child}.txt"
            artifact.write_text(f"artifact of {child}")
            client.log_artifact(child, str(artifact), "out")
            client.set_terminated(child, "FINISHED")
            count += 1
        client.set_terminated(root, "FAILED" if r == 0 else "FINISHED")
    return count


def active_copies(client: MlflowClient, workspace: str) -> list[str]:
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(exps, f"tags.original_workspace = '{workspace}'", ViewType.ACTIVE_ONLY, max_results=5000)
    return [r.data.tags["original_job_id"] for r in runs]


@pytest.mark.parametrize("faults", [FAULTS, ("lost",)], ids=["all-faults", "lost-answers"])
def test_migration_through_faults_is_exact(servers, unique, tmp_path, faults):
    source, target = servers
    experiment = f"faults-{unique}"
    total = seed(MlflowClient(source.uri), experiment, tmp_path, roots=8, children=5)  # ~400 requests: ~80 faults
    workspace = f"ws-{unique}"
    with FaultProxy(source.uri, rate=0.2, faults=faults, seed=3) as src_proxy, \
            FaultProxy(target.uri, rate=0.2, faults=faults, seed=4) as dst_proxy:
        result = run_cli("migrate", "--source", src_proxy.uri, "--target", dst_proxy.uri, "--experiments", experiment,
                         "--workspace", workspace, "--parallel", "4", cwd=tmp_path, env=FAST_RETRIES)
        injected = src_proxy.injected + dst_proxy.injected
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(injected) == set(faults) and sum(injected.values()) > 50, injected
    copies = active_copies(MlflowClient(target.uri), workspace)
    assert len(copies) == len(set(copies)) == total
    check = run_cli("verify", "--source", source.uri, "--target", target.uri, "--experiments", experiment,
                    "--workspace", workspace, cwd=tmp_path)
    assert check.returncode == 0, check.stdout[-3000:]


# -- the AzureML side: faults injected by the fake control plane ------------------------------------

AZ_SUB, AZ_RG = "2f1e0c4d-0000-4000-8000-00000000fa17", "rg-faults"
LOST_AND_RESET = ("reset", "lost", "lost_reset")


class LocalArtifactServer(MlflowServer):
    """Artifacts in a folder the client writes itself: the fake serves no artifact routes, and an
    `mlflow-artifacts:` URI needs an http tracking URI (on Azure ML the client writes to blob storage)."""

    def artifact_args(self) -> list[str]:
        return ["--default-artifact-root", (self.folder / "artifacts").as_uri(), "--no-serve-artifacts"]


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    """The fixture workspace (tests/fakes/azureml_seed.py) as a source, an empty one as a target."""
    base = tmp_path_factory.mktemp("azureml-faults")
    specs, builders = azureml_seed.build_specs()
    azureml_seed.seed_mlflow(base / "mlflow", specs)
    server = LocalArtifactServer(base / "mlflow").start()
    fake = FakeControlPlane(base / "fake", server.uri).start()
    source = fake.add(FakeWorkspace(AZ_SUB, AZ_RG, "ws-source"))
    azureml_seed.install(source, specs, builders)
    fake.add(FakeWorkspace(AZ_SUB, AZ_RG, "ws-target"))
    try:
        with cli_environment(fake, base / "az") as env:
            yield SimpleNamespace(fake=fake, specs=specs, env=env, target=(
                f"azureml://127.0.0.1:{fake.port}/mlflow/v2.0/subscriptions/{AZ_SUB}/resourceGroups/{AZ_RG}"
                "/providers/Microsoft.MachineLearningServices/workspaces/ws-target"))
    finally:
        fake.stop()
        server.stop()


@contextmanager
def injected(fake, share: float, kinds, seed: str):
    fake.fault_share, fake.fault_kinds, fake.fault_seed = share, tuple(kinds), seed
    fake.faults.clear()
    try:
        yield fake.faults
    finally:
        fake.fault_share = 0.0


def test_direct_migration_into_azureml_through_faults_is_exact(azure, unique, tmp_path):
    """429, 503, resets and lost answers (done, then a 500 or a dropped connection) on the AzureML
    endpoint: one copy per source run, verify clean (the target's caps apply: azureml:// URI)."""
    source = tmp_path / "src"
    total = seed(uris.open_client(str(source), create=True), f"az-faults-{unique}", tmp_path, roots=4, children=3)
    args = ["--workspace", f"ws-{unique}", "--parallel", "4"]
    with injected(azure.fake, 0.6, FAKE_FAULT_KINDS, unique) as faults:
        result = run_cli("migrate", "--source", str(source), "--target", azure.target, *args, cwd=tmp_path, env=FAST_RETRIES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(faults[kind] for kind in FAKE_FAULT_KINDS) and faults["mlflow"] > 20, faults
    assert f"created {total}," in result.stderr
    copies = active_copies(MlflowClient(azure.fake.mlflow_uri), f"ws-{unique}")
    assert len(copies) == len(set(copies)) == total
    check = run_cli("verify", "--source", str(source), "--target", azure.target, "--workspace", f"ws-{unique}", cwd=tmp_path)
    assert check.returncode == 0 and f"{total} runs compared, {total} equal" in check.stdout, check.stdout[-3000:]


def test_extraction_through_lost_answers_and_resets_is_exact(azure):
    """Every ARM, run history and MLflow request may be reset unanswered or answered after a lost
    reply: the records and every metric point still equal the fixture's."""
    from runner.azureml.source import AzuremlSource

    uri = f"azureml://subscriptions/{AZ_SUB}/resourcegroups/{AZ_RG}/workspaces/ws-source"

    def extract() -> tuple[dict, dict]:
        src = AzuremlSource(uri, Filters(), credential=FakeCredential(), parallel=8)
        jobs = list(src.jobs())
        return {j.source_id: j.to_json() for j in jobs}, {j.source_id: sorted(p.identity() for p in src.metrics(j)) for j in jobs}

    records, _ = extract()
    with injected(azure.fake, 0.3, LOST_AND_RESET, "lost-and-reset") as faults:
        got_records, got_histories = extract()
    assert all(faults[kind] > 3 for kind in LOST_AND_RESET) and faults["arm"] and faults["history"] and faults["mlflow"], faults
    assert got_records == records and len(records) == len(azure.specs)
    assert got_histories == {s.name: sorted(MetricPoint(k, v, ts, step).identity() for k, rows in s.metrics.items() for step, ts, v in rows)
                             for s in azure.specs}


# -- throttling past the client's own retries (runner/core/patient_retry.py) ------------------------


@contextmanager
def refusing(answers: list[tuple[int, dict]], method: str, route: str):
    """A REQUEST_HOOK answering `method` requests whose path ends with `route` with `answers` in
    turn (status, headers); the last one again once they run out when `answers` ends with None, else
    the request goes on to the fake. Yields the list of statuses answered, one per refused request."""
    from fakes.azureml_control_plane import REQUEST_HOOKS

    answered: list[int] = []
    forever = answers[-1] is None
    script = answers[:-1] if forever else answers

    def hook(handler, path: str) -> bool:
        if handler.command != method or not path.endswith(route):
            return False
        if len(answered) >= len(script) and not forever:
            return False
        status, headers = script[min(len(answered), len(script) - 1)]
        answered.append(status)
        code = {429: "TooManyRequests", 503: "ServiceUnavailable", 400: "BadRequest"}.get(status, "Error")
        handler._error(status, code, "refused by the test", headers)
        return True

    REQUEST_HOOKS.insert(0, hook)
    try:
        yield answered
    finally:
        REQUEST_HOOKS.remove(hook)


def test_a_create_throttled_past_mlflows_retries_is_sent_again_and_the_run_copied_once(azure, unique, tmp_path):
    """Azure ML's MLflow endpoint refuses the same runs/create 10 times running (MLflow's client has
    7 retries: without patience the 8th refusal fails the run, as on the Azure-shaped bench at
    --parallel 16), then takes it. One thread and --retries 0, so every refusal is the same request
    and no whole-command rerun hides a failure. A refused POST was not carried out: one copy per run."""
    source = tmp_path / "src"
    experiment = f"az-patience-{unique}"
    total = seed(uris.open_client(str(source), create=True), experiment, tmp_path, roots=1, children=2)
    throttled = (429, {"Retry-After": "0"})
    with refusing([throttled] * 10, "POST", "/api/2.0/mlflow/runs/create") as refused:
        result = run_cli("migrate", "--source", str(source), "--target", azure.target, "--workspace", f"ws-{unique}",
                         "--parallel", "1", "--retries", "0", cwd=tmp_path, env=FAST_RETRIES)
    assert f"created {total}, repaired 0, skipped 0, failed 0" in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0 and refused == [429] * 10, refused
    copies = active_copies(MlflowClient(azure.fake.mlflow_uri), f"ws-{unique}")
    assert len(copies) == len(set(copies)) == total
    check = run_cli("verify", "--source", str(source), "--target", azure.target, "--workspace", f"ws-{unique}", cwd=tmp_path)
    assert check.returncode == 0 and f"{total} runs compared, {total} equal" in check.stdout, check.stdout[-3000:]


def probe(azure, route: str):
    """One MLflow GET to the fake as the tool sends it (mlflow's own http_request and session,
    7 retries), fast backoff; returns the response, or the MlflowException it raised."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    try:
        return http_request(MlflowHostCreds(azure.fake.url), route, "GET", max_retries=7, backoff_factor=0, backoff_jitter=0.1)
    except MlflowException as error:
        return error


def test_mlflow_throttle_patience_ends_when_the_wait_would_pass_the_deadline(azure, unique, monkeypatch):
    """Past the 7 retries a throttled request is sent again while the wait fits the patience; a
    Retry-After reaching past the deadline ends it: the 429 stands, as it did without patience."""
    from runner.core.patient_retry import PatientRetry

    retry.configure()
    monkeypatch.setattr(retry, "THROTTLE_PATIENCE", 60.0)
    route = f"/mlflow/v2.0/patience/{unique}/deadline"
    answers = [(429, {"Retry-After": "0"})] * 9 + [(429, {"Retry-After": "3600"})]
    with refusing(answers + [None], "GET", route) as refused:
        outcome = probe(azure, route)
    assert isinstance(outcome, Exception) and "too many 429 error responses" in str(outcome), outcome
    assert len(refused) == 10  # 8 of the client's own attempts, 2 sent in patience, then 3600 s > 60 s
    from mlflow.utils import request_utils
    assert request_utils.Retry is PatientRetry

    monkeypatch.setattr(retry, "THROTTLE_PATIENCE", 0.0)  # no patience left: the client's own attempts only
    with refusing([(429, {"Retry-After": "0"}), None], "GET", route + "/none") as refused:
        outcome = probe(azure, route + "/none")
    assert isinstance(outcome, Exception) and len(refused) == 8


@pytest.mark.parametrize("status, headers, attempts", [(400, {}, 1), (503, {}, 8), (500, {}, 8)],
                         ids=["400-not-retried", "503-without-retry-after", "500"])
def test_mlflow_errors_other_than_throttling_keep_the_clients_own_budget(azure, unique, status, headers, attempts):
    """A 400 is answered at once; a 503 without Retry-After and a 500 get MLflow's 7 retries, then
    the error: only a throttle (429, or 503 with Retry-After) is waited out."""
    retry.configure()
    route = f"/mlflow/v2.0/patience/{unique}/{status}"
    with refusing([(status, headers), None], "GET", route) as refused:
        outcome = probe(azure, route)
    assert len(refused) == attempts
    if status == 400:
        assert outcome.status_code == 400
    else:
        assert isinstance(outcome, Exception) and f"too many {status} error responses" in str(outcome), outcome


def test_mlflow_gets_the_patient_policy_when_it_loads_after_configure():
    """The CLI configures before mlflow is imported (importing it costs ~2 s; `wait` never does):
    the policy goes in as mlflow's session module loads."""
    import subprocess
    import sys

    code = ("import sys; from runner.core import retry; retry.configure(); assert 'mlflow' not in sys.modules; "
            "from mlflow.utils import request_utils; from runner.core.patient_retry import PatientRetry; "
            "session = request_utils._get_request_session(7, 1, 1.0, (429,), True, True); "
            "print(type(session.get_adapter('https://x').max_retries).__name__)")
    from conftest import ROOT

    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "PatientRetry", done.stderr[-2000:]
