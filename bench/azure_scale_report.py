"""Counting, tables and the projection of the Azure-shaped bench (bench/bench_azure_scale.py).

What a command cost is read off the fake's counters (tests/fakes/azureml_latency.py): requests
carried out by family (`family:F` less `throttled:F`) and by route (`route:F METHOD TEMPLATE`), and
the 429s met. The projection for a number of jobs has two bounds, and the larger wins:
- latency: every request's mean latency, `parallel` requests in flight per node, nodes side by side;
- throttle: per family, the requests past its bucket's burst at its rate; buckets belong to the
  workspace and the subscription, not the node, so shards share them (the same for any node count).
The latency bound is a floor (requests within a job go one after another, the node's CPU has its
share), so `measured_scale_h` also scales the run's own wall time by jobs and nodes.
"""
from __future__ import annotations

FAMILIES = ("arm", "discovery", "history", "artifacts", "mlflow", "blob")
PER_FILE = ("artifacts", "blob")  # the families whose requests grow with files rather than jobs


def made(before: dict, after: dict) -> dict:
    """What happened between two snapshots of the fake's counters: requests carried out by family and by
    route, and 429s by family."""
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    routes: dict[str, dict[str, int]] = {}
    for key, n in delta.items():
        if key.startswith("route:"):
            family, _, route = key[len("route:"):].partition(" ")
            routes.setdefault(family, {})[route] = n
    return {
        "requests": {f: delta.get(f"family:{f}", 0) - delta.get(f"throttled:{f}", 0) for f in FAMILIES},
        "throttled": {f: delta[f"throttled:{f}"] for f in FAMILIES if delta.get(f"throttled:{f}")},
        "routes": {f: dict(sorted(routes[f].items())) for f in FAMILIES if f in routes},
    }


def per_unit(row: dict, jobs: int, files: int) -> dict:
    """Requests per job of every route, and per file for the families that grow with files."""
    out = {}
    for family, routes in row["routes"].items():
        for route, n in routes.items():
            out[f"{family} {route}"] = {"total": n, "per_job": round(n / jobs, 3),
                                        "per_file": round(n / files, 3) if family in PER_FILE and files else None}
    return out


def projection(row: dict, jobs: int, latency_ms: dict, buckets: dict, parallel: int, project: int, nodes: int) -> dict:
    """Hours for `project` jobs on `nodes` nodes (module docstring). `latency_ms`: family -> mean ms;
    `buckets`: family -> (per second, burst)."""
    scale = project / jobs
    latency_s = sum(row["requests"][f] * scale * latency_ms.get(f, 0) / 1000 for f in FAMILIES) / (parallel * nodes)
    throttle = {f: max(0.0, row["requests"][f] * scale - burst) / rate for f, (rate, burst) in buckets.items()}
    worst = max(throttle, key=throttle.get) if throttle else None
    bound = throttle.get(worst, 0.0)
    return {"nodes": nodes, "hours": round(max(latency_s, bound) / 3600, 2), "latency_bound_h": round(latency_s / 3600, 2),
            "throttle_bound_h": round(bound / 3600, 2), "throttle_family": worst,
            "throttle_h": {f: round(s / 3600, 2) for f, s in throttle.items()},
            "measured_scale_h": round(max(row["wall_s"] * scale / nodes, bound) / 3600, 2)}


def modelled_seconds(row: dict, latency_ms: dict, buckets: dict, parallel: int) -> float:
    """The same model for the bench's own workload, to set against its measured wall time."""
    latency_s = sum(row["requests"][f] * latency_ms.get(f, 0) / 1000 for f in FAMILIES) / parallel
    throttle = [max(0.0, row["requests"][f] - burst) / rate for f, (rate, burst) in buckets.items()]
    return round(max([latency_s, *throttle]), 1)


def combined(name: str, rows: list[dict]) -> dict:
    """Several commands as one (migrate + verify: a migration with full checks; the peer's export + import)."""
    return {"name": name, "wall_s": round(sum(r["wall_s"] for r in rows), 1),
            "requests": {f: sum(r["requests"][f] for r in rows) for f in FAMILIES}}


SHORT = (("/history/v1.0/{ws}/experiments/{experiment}/runs/{run}", "/history/.../runs/{run}"),
         ("/history/v1.0/{ws}", "/history/{ws}"), ("/mlflow/v2.0/{ws}/api/2.0/mlflow", "/mlflow/..."))


def short(route: str) -> str:
    """A route as printed: the prefixes every route of its family shares abbreviated (the JSON keeps them)."""
    for long, brief in SHORT:
        route = route.replace(long, brief)
    return route


def route_table(commands: dict, jobs: int, files: int) -> list[str]:
    """Requests per job (per file for artifacts and blob) of every route, one column per command."""
    names = list(commands)
    keys = sorted({(f, r) for row in commands.values() for f, routes in row["routes"].items() for r in routes},
                  key=lambda k: (FAMILIES.index(k[0]), k[1]))
    width = max([len(f"{f} {short(r)}") for f, r in keys] + [20])
    lines = [f"requests per job (per file: artifacts, blob) by route; {jobs} jobs, {files} files",
             f"{'route':<{width}}" + "".join(f"{n:>18}" for n in names)]
    for family, route in keys:
        cells = []
        for name in names:
            n = commands[name]["routes"].get(family, {}).get(route, 0)
            cell = f"{n / jobs:.2f}" + (f" ({n / files:.2f})" if family in PER_FILE and files else "") if n else "-"
            cells.append(f"{cell:>18}")
        lines.append(f"{family + ' ' + short(route):<{width}}" + "".join(cells))
    totals = []
    for name in names:
        row = commands[name]
        job_side = sum(n for f, n in row["requests"].items() if f not in PER_FILE)
        file_side = sum(n for f, n in row["requests"].items() if f in PER_FILE)
        totals.append(f"{job_side / jobs:.1f} + {file_side / files if files else 0:.2f}/f".rjust(18))  # 18: `migrate --verify` and a gap
    lines.append(f"{'per job + per file':<{width}}" + "".join(totals))
    return lines
