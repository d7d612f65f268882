"""One retry policy for every remote call the tool makes.

Per call: MLflow's REST client (urllib3 underneath) and azure-core both retry 408/429/5xx and
connection errors with jittered exponential backoff and honour Retry-After; `configure` sets
MLflow's knobs from this one place (an environment value set by the user wins), and
`azure_retry_kwargs` gives azure-ai-ml / azure-storage clients the same numbers.

Non-idempotent calls: MLflow retries POSTs too, so a `create_run` whose response was lost can
leave a second, empty run behind. Those orphans never get the completion tag (only the run id
we hold is written to) and carry `original_job_id`, so the ledger finds and removes them after
each pass (see `replay.remove_orphans`): safe through the ledger rather than by not retrying.

Throttling: a 429 (or a 503 with Retry-After) is the service pacing us, not failing. Past the
client's own attempts the refused request is sent again, after the wait the service names (and
our own growing, capped backoff, with jitter), until THROTTLE_PATIENCE has passed; then the error
stands. Run history does this in `RunHistory._send`; every MLflow request through `PatientRetry`
(below), installed into MLflow's own session by `configure`. A request refused with 429 was not
carried out, so sending it again (a POST too) adds nothing: the orphans above come only from lost
answers (a 5xx or a dropped connection after the work was done), which keep the client's budget.

Whole command: `--retries N` runs the idempotent copy again for runs that failed (rclone's
`--retries`): complete runs are skipped, interrupted ones repaired.
"""
from __future__ import annotations

import os

MAX_ATTEMPTS = 7  # per call
BACKOFF_FACTOR = 1  # seconds: 1, 2, 4, ... plus jitter (MLflow takes a whole number here)
BACKOFF_JITTER = 1.0
MAX_BACKOFF = 60
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
# A throttled request (429, or 503 with Retry-After) is the service pacing us, not failing: past the
# client's own attempts it is sent again after the wait the service names, for this long in all.
# Seen on the Azure-shaped bench at 2,000 jobs: 16 threads sharing one run history bucket, a
# children listing was refused 8 times running and the whole extract stopped.
THROTTLE_PATIENCE = 600.0


def configure() -> None:
    """Give MLflow's client our policy unless the user set its variables explicitly."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(MAX_ATTEMPTS))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(BACKOFF_FACTOR))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", str(BACKOFF_JITTER))
    # set_terminated otherwise prints "View run ... at" and spends one more GET per run on it.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A migration tool does not phone home; offline, telemetry also costs ~1 s at exit.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    patient_mlflow()


def patient_mlflow() -> None:
    """Every MLflow request waits out throttling past the client's retries (runner.core.patient_retry)."""
    import sys

    from runner.core import patient_retry

    patient_retry.install(sys.modules[__name__])


def azure_retry_kwargs() -> dict:
    """The same policy for azure-core based clients (MLClient, BlobServiceClient)."""
    return {
        "retry_total": int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", MAX_ATTEMPTS)),
        "retry_backoff_factor": float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", BACKOFF_FACTOR)),
        "retry_backoff_max": MAX_BACKOFF,
    }


def get_with_retries(url: str, timeout: float = 10):
    """A plain idempotent GET (health checks, discovery) under the same policy, on urllib3's Retry
    as MLflow's own client does; returns the last response.

    A refused or reset connection is tried twice more only: an address that is wrong should fail
    within seconds, not after the full backoff.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    attempts = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", MAX_ATTEMPTS))
    policy = Retry(
        total=attempts, connect=min(attempts, 2), read=attempts, status=attempts,
        backoff_factor=float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", BACKOFF_FACTOR)),
        backoff_jitter=float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", BACKOFF_JITTER)),
        backoff_max=MAX_BACKOFF, status_forcelist=TRANSIENT_STATUS, allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True, raise_on_status=False,
    )
    with requests.Session() as session:
        adapter = HTTPAdapter(max_retries=policy)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session.get(url, timeout=timeout)


def throttled_for(status: int, headers) -> float | None:
    """Seconds the service asks us to wait (Retry-After on a 429, or on a 503), None otherwise."""
    if status not in (429, 503):
        return None
    value = (headers or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else (1.0 if status == 429 else None)
    except ValueError:
        return 1.0 if status == 429 else None  # an HTTP date: wait a little, then ask again

