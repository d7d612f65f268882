"""The read `replayer estimate` probes a workspace's run history with (runner.engine.rate_probe): the
first page of a run's file listing, `GET .../experiments/E/runs/R/artifacts` (RunArtifacts_
ListInContainerByExperimentName), a route of the same family as the listings and registrations a
migration sends per run (runner.azureml.run_history) and one that hands out no SAS, read only. A
404 (a run the target does not hold yet) is an answer like any other. Sent through a run history
client of its own with azure-core's retries off, so the probe sees the service's 429 and its
Retry-After (the source's client would absorb them).
"""
from __future__ import annotations

from typing import Callable

from runner.core import retry
from runner.engine.rate_probe import Answer


def listing_read(source, experiment: str, run_id: str) -> Callable[[], Answer]:
    """A `send` for the probe: one listing page of `run_id`'s files in `source`'s workspace (an AzuremlSource)."""
    from azure.ai.ml._restclient.runhistory.operations._operations import (
        build_run_artifacts_list_in_container_by_experiment_name_request as build,
    )

    client = source.history_client(retry_total=0)
    scope = (source.ref.subscription_id, source.ref.resource_group, source.ref.workspace_name)

    def send() -> Answer:
        answer = client.send_request(build(*scope, experiment, run_id))  # a request each: threads share the client only
        return Answer(answer.status_code, retry.throttled_for(answer.status_code, answer.headers))

    return send
