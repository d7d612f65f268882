"""The read `replayer estimate` probes an MLflow endpoint with (runner.engine.rate_probe): one
`GET experiments/get-by-name`, a route every migration sends (the target's experiment lookup), read
only. Sent with MLflow's own request function and the store's own credentials (an Azure ML
workspace's: the token of `--credential`, runner.azureml.auth), but with no retries, so the probe
sees the service's 429 and its Retry-After instead of MLflow's client absorbing them.
"""
from __future__ import annotations

from typing import Callable

from runner.core import retry
from runner.engine.rate_probe import Answer

ROUTE = "/api/2.0/mlflow/experiments/get-by-name"


def experiment_read(client, experiment: str) -> Callable[[], Answer] | None:
    """A `send` for the probe: get-by-name of `experiment` on `client`'s server; None for a store that is no
    server (sqlite, a folder): no request rate to measure there."""
    from mlflow.utils.rest_utils import http_request

    creds = getattr(client._tracking_client.store, "get_host_creds", None)
    if creds is None or not str(client.tracking_uri).startswith(("http://", "https://", "azureml://")):
        return None

    def send() -> Answer:
        # creds per request: the store's own, with the cached token (one token per scope until near expiry)
        answer = http_request(creds(), ROUTE, "GET", max_retries=0, retry_codes=frozenset(), raise_on_status=False,
                              timeout=30, params={"experiment_name": experiment})
        return Answer(answer.status_code, retry.throttled_for(answer.status_code, answer.headers))

    return send
