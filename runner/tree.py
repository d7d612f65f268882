"""Print the run hierarchy of a source (a tracking URI or a manifest folder)."""
from __future__ import annotations

from collections import Counter


def print_tree(source) -> Counter:
    """One line per run, indented by depth; returns counts by status."""
    statuses: Counter = Counter()
    for job in source.jobs():
        statuses[job.status] += 1
        branch = "  " * job.depth + ("└─ " if job.depth else "")
        where = f"{job.experiment} / " if job.depth == 0 else ""
        extras = []
        if job.latest_metrics:
            extras.append(f"{len(job.latest_metrics)} metrics")
        if job.lifecycle_stage == "deleted":
            extras.append("deleted")
        suffix = f" ({', '.join(extras)})" if extras else ""
        print(f"{branch}{where}{job.name or job.source_id} [{job.status}] {job.source_id}{suffix}")
    print(f"{sum(statuses.values())} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    return statuses
