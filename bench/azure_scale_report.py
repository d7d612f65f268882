"""Counting, tables and the projection of the Azure-shaped bench (bench/bench_azure_scale.py).

What a command cost is read off the fake's counters (tests/fakes/azureml_latency.py): requests
carried out by family (`family:F` less `throttled:F`), by route (`route:F METHOD TEMPLATE`) and by
workspace (`ws:NAME F`), and the 429s met. The projection for `project` jobs scales the run's
requests by project / jobs and has two bounds; the larger wins:
- latency floor: requests x mean latency / (`parallel` requests in flight per node x nodes);
- throttle: per family, (requests past one bucket's burst) / its rate. Which requests share a bucket
  is the scope: "workspace", the busiest workspace's requests of the family (ARM: the subscription's,
  all of them here: the bench's workspaces share one); "shared", all of the family's. Either way the
  shards of one migration read the same source and write the same target, so they share the
  buckets: the throttle bound is the same for any node count. Both scopes are computed, whichever
  the run measured under (the real one is not documented for Azure ML: azureml_latency's docstring).
The latency floor is a floor (requests within a job go one after another, the node's CPU has its
share), so `measured_scale_h` also scales the run's own wall time by jobs and nodes.

Break-even: the rate per second one bucket would have to allow for the projection to fit in
`goal_h` hours: (requests of the family in that bucket x scale - burst) / (goal_h x 3600), for each
family and scope (per workspace: the busiest workspace's requests). It does not depend on the node
count; it is enough only where the latency floor on those nodes fits in the goal too
(`latency_fits_goal`): no service rate makes a node faster.
"""
from __future__ import annotations

FAMILIES = ("arm", "discovery", "history", "artifacts", "mlflow", "blob")
PER_FILE = ("artifacts", "blob")  # the families whose requests grow with files rather than jobs


def made(before: dict, after: dict) -> dict:
    """What happened between two snapshots of the fake's counters: requests carried out by family, by route
    and by workspace, and 429s by family and by workspace."""
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
        "workspaces": by_workspace(delta, "ws:"),
        "throttled_workspaces": by_workspace(delta, "ws_throttled:"),
    }


def by_workspace(delta: dict, prefix: str) -> dict[str, dict[str, int]]:
    """`PREFIX NAME FAMILY` counters as {workspace: {family: n}}."""
    out: dict[str, dict[str, int]] = {}
    for key, n in sorted(delta.items()):
        if key.startswith(prefix):
            workspace, _, family = key[len(prefix):].rpartition(" ")
            out.setdefault(workspace, {})[family] = n
    return out


def per_unit(row: dict, jobs: int, files: int) -> dict:
    """Requests per job of every route, and per file for the families that grow with files."""
    out = {}
    for family, routes in row["routes"].items():
        for route, n in routes.items():
            out[f"{family} {route}"] = {"total": n, "per_job": round(n / jobs, 3),
                                        "per_file": round(n / files, 3) if family in PER_FILE and files else None}
    return out


SCOPES = ("workspace", "shared")
GOAL_H = 1.0  # issue 18: 100,000 jobs in under an hour on 8 shards


def bucket_load(row: dict, family: str, scope: str) -> tuple[int, str | None]:
    """(requests, whose) that one bucket of `family` took in `row` under `scope`: under "workspace" the busiest
    workspace's (ARM: all of them, its bucket is the subscription's); under "shared" all of the family's. A row
    without per-workspace counts is taken as one workspace."""
    total = row["requests"].get(family, 0)
    if scope == "shared" or family == "arm" or not row.get("workspaces"):
        return total, "subscription" if family == "arm" and scope == "workspace" else None
    name, load = max(((ws, counts.get(family, 0)) for ws, counts in row["workspaces"].items()), key=lambda pair: pair[1])
    return load, name


def throttle_seconds(row: dict, scale: float, buckets: dict, scope: str) -> dict[str, float]:
    """Per family: seconds its busiest bucket under `scope` needs for `scale` x the row's requests."""
    return {f: max(0.0, bucket_load(row, f, scope)[0] * scale - burst) / rate for f, (rate, burst) in buckets.items()}


def break_even(row: dict, scale: float, buckets: dict, scope: str, goal_h: float = GOAL_H) -> dict[str, float]:
    """Per family: the rate (requests/s) one bucket under `scope` must allow to take its share of `scale` x the
    row's requests in `goal_h` hours (the module docstring)."""
    return {f: round(max(0.0, bucket_load(row, f, scope)[0] * scale - burst) / (goal_h * 3600), 2) for f, (_, burst) in buckets.items()}


def projection(row: dict, jobs: int, latency_ms: dict, buckets: dict, parallel: int, project: int, nodes: int,
               scope: str = "workspace", goal_h: float = GOAL_H, priced: dict | None = None) -> dict:
    """Hours for `project` jobs on `nodes` nodes (module docstring), under the `scope` the run was measured
    with, and the other scope's throttle bound and both scopes' break-even rates beside it. `latency_ms`:
    family -> mean ms; `buckets`: family -> (per second, burst), the run's; `priced`: the families (and their
    bursts) to give a break-even rate for, the run's buckets unless given (a run without buckets still
    says what rate its requests need)."""
    scale = project / jobs
    priced = buckets if priced is None else priced
    latency_s = sum(row["requests"][f] * scale * latency_ms.get(f, 0) / 1000 for f in FAMILIES) / (parallel * nodes)
    throttle = {s: throttle_seconds(row, scale, buckets, s) for s in SCOPES}
    worst = max(throttle[scope], key=throttle[scope].get) if buckets else None
    bound = throttle[scope].get(worst, 0.0)
    return {"nodes": nodes, "scope": scope, "hours": round(max(latency_s, bound) / 3600, 2), "latency_bound_h": round(latency_s / 3600, 2),
            "throttle_bound_h": round(bound / 3600, 2), "throttle_family": worst,
            "throttle_h": {f: round(s / 3600, 2) for f, s in throttle[scope].items()},
            "throttle_h_by_scope": {s: {f: round(v / 3600, 2) for f, v in throttle[s].items()} for s in SCOPES},
            "busiest_workspace": {f: bucket_load(row, f, "workspace")[1] for f in {**priced, **buckets}},
            "goal_h": goal_h, "latency_fits_goal": latency_s <= goal_h * 3600,
            "break_even_per_s": {s: break_even(row, scale, priced, s, goal_h) for s in SCOPES},
            "measured_scale_h": round(max(row["wall_s"] * scale / nodes, bound) / 3600, 2)}


def modelled_seconds(row: dict, latency_ms: dict, buckets: dict, parallel: int, scope: str = "workspace") -> float:
    """The same model for the bench's own workload, to set against its measured wall time."""
    latency_s = sum(row["requests"][f] * latency_ms.get(f, 0) / 1000 for f in FAMILIES) / parallel
    return round(max([latency_s, *throttle_seconds(row, 1.0, buckets, scope).values()]), 1)


def combined(name: str, rows: list[dict]) -> dict:
    """Several commands as one (migrate + verify: a migration with full checks; the peer's export + import)."""
    workspaces: dict[str, dict[str, int]] = {}
    for row in rows:
        for ws, counts in row.get("workspaces", {}).items():
            for family, n in counts.items():
                workspaces.setdefault(ws, {})[family] = workspaces.get(ws, {}).get(family, 0) + n
    return {"name": name, "wall_s": round(sum(r["wall_s"] for r in rows), 1),
            "requests": {f: sum(r["requests"][f] for r in rows) for f in FAMILIES}, "workspaces": workspaces}


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


def workspace_table(commands: dict, jobs: int, roles: dict[str, str]) -> list[str]:
    """Requests per job carried out in each workspace by family (source reads against target writes), one
    column per command; `roles` names the workspaces (source, target, ...)."""
    names = list(commands)
    keys = sorted({(ws, f) for row in commands.values() for ws, counts in row.get("workspaces", {}).items() for f in counts},
                  key=lambda k: (list(roles).index(k[0]) if k[0] in roles else len(roles), k[0], FAMILIES.index(k[1])))
    labels = {key: f"{roles.get(key[0], key[0])} {key[1]}" for key in keys}
    width = max([len(label) for label in labels.values()] + [20])
    lines = [f"requests per job by workspace ({', '.join(f'{role}: {ws}' for ws, role in roles.items())})",
             f"{'workspace family':<{width}}" + "".join(f"{n:>18}" for n in names)]
    for key in keys:
        cells = [commands[n].get("workspaces", {}).get(key[0], {}).get(key[1], 0) for n in names]
        lines.append(f"{labels[key]:<{width}}" + "".join(f"{(f'{c / jobs:.2f}' if c else '-'):>18}" for c in cells))
    return lines


def _by_nodes(projections: list[dict], key: str) -> str:
    """`1 node X h | 8 nodes Y h` of one field of a row's projections."""
    return " | ".join(f"{p['nodes']} node{'s' if p['nodes'] > 1 else ''} {p[key]} h" for p in projections)


def _rates(rates: dict[str, float]) -> str:
    return ", ".join(f"{f} {r}/s" for f, r in sorted(rates.items(), key=lambda kv: -kv[1]))


def projection_block(rows: dict[str, dict], jobs: int, data: dict, buckets: dict, scope: str) -> list[str]:
    """The projection of every row (each command, full checks) as one block; `data` the bench's run settings
    (project, shards, parallel). The arithmetic is the module docstring's, its inputs printed in the header."""
    project, shards = data["project"], data["shards"]
    other = next(s for s in SCOPES if s != scope)
    lines = [f"projection: {project:,} jobs from this run's {jobs} (x{project / jobs:,.2f}); {data['parallel']} requests in flight "
             f"per node; this run's buckets: {'per workspace (ARM per subscription)' if scope == 'workspace' else 'one per family, shared'}; "
             f"rates: {', '.join(f'{f} {r:g}/s burst {b}' for f, (r, b) in buckets.items()) or 'none'}",
             "  latency floor = requests x mean latency / in flight / nodes; throttle = (one bucket's requests - burst) / rate, "
             "the same on any node count (shards share the workspaces);",
             f"  break-even = (one bucket's requests - burst) / {GOAL_H * 3600:,.0f} s: the rate a bucket must allow for {GOAL_H:g} h "
             "(enough only if the latency floor fits too)"]
    for name, row in rows.items():
        one, many = row["projection"][0], row["projection"][-1]
        per_job = sum(row["requests"].values()) / jobs
        split = ", ".join(f"{f} {n / jobs:.2f}" for f, n in row["requests"].items() if n)
        lines.append(f"{name}: {per_job:.1f} requests/job ({split})")
        lines.append(f"  latency floor          {_by_nodes(row['projection'], 'latency_bound_h')}")
        if buckets:
            for s in (scope, other):
                family = max(one["throttle_h_by_scope"][s], key=one["throttle_h_by_scope"][s].get)
                whose = one["busiest_workspace"].get(family) if s == "workspace" else "all workspaces"
                lines.append(f"  throttle, {s:<9}    {one['throttle_h_by_scope'][s][family]} h on {family} ({whose})"
                             + ("  <- this run's scope" if s == scope else ""))
        lines.append(f"  projected              {_by_nodes(row['projection'], 'hours')}; "
                     f"this run's wall time scaled: {_by_nodes(row['projection'], 'measured_scale_h')}")
        if many["break_even_per_s"]["workspace"]:
            fits = "fits" if many["latency_fits_goal"] else "does NOT fit: no rate is enough"
            lines.append(f"  break-even for {GOAL_H:g} h on {shards} nodes (latency floor {many['latency_bound_h']} h: {fits})")
            lines.append(f"    per workspace       {_rates(many['break_even_per_s']['workspace'])}")
            lines.append(f"    one bucket for all  {_rates(many['break_even_per_s']['shared'])}")
    return lines


def formula_line(row: dict, jobs: int, files: int, keys: int, verify: bool = True) -> str:
    """The per-job formula `replayer estimate` projects with (runner.engine.estimate.requests_per_job, the one
    copy of it) set against what this run carried out, so the two cannot drift unseen: K the bench's metric
    keys, F its files a job, B the `runs/log-batch` requests it measured a job. Families the formula counts:
    MLflow, run history artifacts, blob (runs, children, ARM and discovery are per parent: left out)."""
    from runner.engine.estimate import requests_per_job, total

    batches = sum(n for route, n in row.get("routes", {}).get("mlflow", {}).items() if route.endswith("/runs/log-batch")) / jobs
    # The formula's ceil()s are per job: the bench's jobs all have the same number of files.
    formula = total(requests_per_job(keys, batches, files // jobs, verify))
    measured = sum(row["requests"].get(f, 0) for f in ("mlflow", "artifacts", "blob")) / jobs
    return (f"formula (runner.engine.estimate, K {keys}, B {batches:.2f}, F {files / jobs:g}): {formula:.1f} requests a job "
            f"(MLflow, run history artifacts, blob) against {measured:.1f} carried out")
