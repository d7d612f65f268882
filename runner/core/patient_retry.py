"""Patience for throttled MLflow requests: urllib3's Retry, but a throttle past its budget waits.

Why a Retry policy and not a wrapper around MlflowClient: every MLflow request the tool makes
(MlflowClient and azureml-mlflow's store through `call_endpoint`, bulk metric reads through
`http_request`, the fluent `mlflow.artifacts` calls, mlflow-artifacts downloads) goes through one
`requests` session that mlflow builds in mlflow/utils/request_utils.py
(`_cached_get_request_session`, mlflow 3.15) with urllib3's `Retry` as its adapter's policy. At
that level the refused request is the one sent again, byte for byte, and its status and
Retry-After are at hand. Above it, a client call that gave up is only an MlflowException whose
text says "too many 429 error responses": no status, no Retry-After, and one client call may be
several requests (a wrapper would resend the ones already applied).

What changes: nothing while the client's own budget lasts (MLFLOW_HTTP_REQUEST_MAX_RETRIES
retries, urllib3 sleeping Retry-After or its backoff). When a throttle (retry.throttled_for: a
429, or a 503 with Retry-After) would spend the last of it, the request is sent again instead,
after the service's Retry-After or our own growing backoff (factor x 2^n, capped at MAX_BACKOFF),
whichever is longer, plus jitter so threads refused together do not return together; until
retry.THROTTLE_PATIENCE has passed since its first refusal. A wait that would end past that
deadline is not begun: urllib3 raises as before (MLflow: "... too many 429 error responses").
Every other error (a 400, a 500, a 503 without Retry-After, a reset) spends the budget as before.

Why resending is safe, POSTs included: a throttled request is refused, not carried out. ARM
documents it ("If you send a request before the retry value has elapsed, your request isn't
processed", MicrosoftDocs/azure-docs articles/azure-resource-manager/management/
request-limits-and-throttling.md); for Azure ML's MLflow endpoint it is assumed alike (nothing
documents its throttle; tests/recordings/README.md). What it fixes: mlflow/mlflow#11462, Azure ML's
MLflow endpoint refusing `runs/log-batch` past the client's retries ("Max retries exceeded ... too
many 429 error responses"), and the same on the Azure-shaped bench at --parallel 16.

`install(policy)` (from retry.configure) takes runner.core.retry itself: THROTTLE_PATIENCE,
MAX_BACKOFF and throttled_for are read at each refusal (a test may lower the patience), and this
module does not import retry back (retry imports it; the layers allow no circle). It puts the
class where mlflow looks its Retry up, the module global `Retry` of mlflow.utils.request_utils
(with urllib3 2 mlflow builds `Retry(**kwargs)` from it), and drops the sessions mlflow cached
with the old one; if mlflow is not loaded yet, as that module loads. tests/test_faults.py (the throttle patience tests)
fails if a new mlflow stops building its session that way.
"""
from __future__ import annotations

import importlib.machinery
import random
import sys
import time

from loguru import logger
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import RequestHistory, Retry


class PatientRetry(Retry):
    """urllib3's Retry that keeps resending a throttled request past its budget (module docstring).

    `policy` is runner.core.retry (set by `install`). `deadline` (time.monotonic()) is set on the
    request's first throttle; the session's own instance never carries one (urllib3 derives a new
    object per attempt through `new`, so one request's deadline is not another's). `patient_rounds` counts the sends past the budget; `patient_wait` is the wait chosen for the
    next one (urllib3 calls `sleep` on the object `increment` returned).
    """

    policy = None

    def __init__(self, *args, deadline: float | None = None, patient_rounds: int = 0, patient_wait: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline, self.patient_rounds, self.patient_wait = deadline, patient_rounds, patient_wait

    def new(self, **kw) -> "PatientRetry":
        kw.setdefault("deadline", self.deadline)
        kw.setdefault("patient_rounds", self.patient_rounds)
        kw.setdefault("patient_wait", 0.0)
        return super().new(**kw)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None) -> "PatientRetry":
        throttle = self.policy.throttled_for(response.status, response.headers) if response is not None and not error else None
        deadline = self.deadline
        if throttle is not None and deadline is None:
            deadline = time.monotonic() + self.policy.THROTTLE_PATIENCE
        try:
            return super().increment(method, url, response, error, _pool, _stacktrace).new(deadline=deadline)
        except MaxRetryError:
            if throttle is None:
                raise
            wait = self._patient_wait(throttle)
            if time.monotonic() + wait > deadline:
                raise  # patience spent: the refusal stands, as it did before
            # No URL: a presigned artifact URL (cloud_storage_http_request) carries its SAS.
            logger.debug("MLflow throttled ({}) past the client's retries: {} again in {:.1f} s",
                         response.status, method, wait)
            history = self.history + (RequestHistory(method, url, None, response.status, None),)
            return self.new(history=history, deadline=deadline, patient_rounds=self.patient_rounds + 1, patient_wait=wait)

    def _patient_wait(self, asked: float) -> float:
        """The service's wait or our own growing one, whichever is longer, plus jitter."""
        own = min(self.policy.MAX_BACKOFF, self.backoff_factor * 2 ** self.patient_rounds)
        return max(asked, own) + random.uniform(0, max(self.backoff_jitter, 0.0))

    def sleep(self, response=None) -> None:
        if self.patient_rounds:
            time.sleep(self.patient_wait)  # chosen in increment, where the deadline was checked
        else:
            super().sleep(response)


SESSION_MODULE = "mlflow.utils.request_utils"  # where mlflow builds its session (mlflow 3.15)


def install(policy) -> None:
    """Make MLflow's HTTP session use PatientRetry with `policy`'s numbers (module docstring): now if
    mlflow is loaded, else as it loads (importing mlflow costs ~2 s; `wait` or `--help` never need it)."""
    PatientRetry.policy = policy
    if SESSION_MODULE in sys.modules:
        put_into(sys.modules[SESSION_MODULE])
    elif not any(isinstance(finder, _OnMlflowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OnMlflowImport())


def put_into(request_utils) -> None:
    """mlflow builds each session's Retry from this module global: make it ours (once)."""
    if request_utils.Retry is not PatientRetry:
        request_utils.Retry = PatientRetry
        request_utils._cached_get_request_session.cache_clear()  # sessions built with the old policy


class _OnMlflowImport:
    """A meta path finder that lets SESSION_MODULE load as usual, then puts PatientRetry into it."""

    def find_spec(self, name, path=None, target=None):
        if name != SESSION_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            put_into(module)

        spec.loader.exec_module = exec_module
        return spec
