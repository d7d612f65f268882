"""How long a migration will take (`replayer estimate`): the workload read from the source, the
requests it costs by the formula of docs/performance.md, and a projection from rates measured on
the user's own workspaces (runner.engine.rate_probe).

The formula (docs/performance.md, "Fewer requests per job and per file"; checked against the
Azure-shaped bench's measured counts in tests/test_estimate.py), for a job with K metric keys, B
log-batch requests and F files, pages of `page` files a listing:

    migrate          = 3 + K + B + ceil(F / page) + ceil(F / 50) + 2 F
    migrate --verify = 4 + 2 K + B + 2 ceil(F / page) + ceil(F / 50) + 3 F

split by where each request goes (`requests_per_job`): the source's MLflow a `runs/get` and K
`get-history`; the target's MLflow create, status and B `log-batch` (the completion tag rides on the
create on Azure ML, awaiting the status, and on the last batch elsewhere; the check: a
`runs/get` and K `get-history`); a child's `runs/get` is 0 at either end, its parent's one search
of children standing for them (`sample_workload` adds a 1/siblings share of that search per child
sampled); run history's artifact routes a listing page per `page` files on
the source, a registration per 50 new paths on the target (the check: the target's listing); blob
a HEAD per file on the source, the copy on the target (the check: a HEAD there). Per experiment and
per parent a few more (get-by-name, a children page) that the formula leaves out.

The projection for the selected jobs on `nodes` nodes is the larger of two bounds (as the bench's,
bench/azure_scale_report.py, whose measured counts the formula matches):
- latency floor: requests x p50 latency / (`parallel` requests in flight per node x nodes);
- throttle: per bucket, its requests / the rate measured for it. A workspace's buckets serve every
  node of the migration (shards read the same source and write the same target), so this bound
  does not fall with more nodes. One bucket per (workspace, family) is an assumption (Azure
  documents none for run history or MLflow; tests/fakes/azureml_latency.py says why).
Buckets are named `end family`, end `source` or `target`; when both ends are one workspace (or one
MLflow server), Azure meters the workspace, not the end: one bucket per family, `workspace family`,
carries both ends' requests (`buckets(..., shared=True)`).
A rate measured without a 429 is a lower bound: the throttle bound it gives is then an upper bound.
Blob is never probed (no request of it can be made without a SAS): a workspace's blob bucket (its
storage account) gets the rate Azure documents, `BLOB_RATE` (`documented_rates`), marked documented,
never measured or found.
Break-even: the rate each bucket must allow for the migration to fit in `goal_h` hours, its
requests / (goal_h x 3600); enough only where the latency floor fits too.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from runner.core.records import JobRecord, MetricPoint
from runner.engine.protocols import Source

LISTING_PAGE = 100  # files a listing page: the service's own size, 100 on the bench (no recorded page says more)
REGISTER_BATCH = 50  # paths per batch/metadata request (runner.azureml.run_history.REGISTER_BATCH)
FAMILIES = ("mlflow", "artifacts", "blob")  # artifacts: run history's artifact routes (the bench's family of that name)
ENDS = ("source", "target")
SHARED = "workspace"  # the end of a bucket both ends share (one workspace, one MLflow server)
GOAL_H = 1.0
# "Maximum request rate per storage account: 20,000 requests per second" (MicrosoftDocs/azure-docs,
# includes/azure-storage-account-limits-standard.md; learn.microsoft.com "Scalability and performance
# targets for standard storage accounts" now lists 40,000/s in about 30 regions, East US and West
# Europe among them, 20,000/s elsewhere).
# A target, not a measurement: a workspace's default storage account is a standard one.
BLOB_RATE = 20_000.0


def requests_per_job(keys: int, batches: int, files: int, verify: bool = True, page: int = LISTING_PAGE,
                     child: bool = False) -> dict[str, dict[str, int]]:
    """The one formula (module docstring): requests of one job by end and family."""
    listing, register = math.ceil(files / page), math.ceil(files / REGISTER_BATCH)
    get = 0 if child else 1  # a child comes in its parent's search of children
    source = {"mlflow": get + keys, "artifacts": listing, "blob": files}
    target = {"mlflow": 2 + batches, "artifacts": register, "blob": files}  # create (with the completion tag), status
    if verify:  # the check reads the target only: runs/get, K histories, the listing, a HEAD per file
        target = {"mlflow": target["mlflow"] + get + keys, "artifacts": register + listing, "blob": 2 * files}
    return {"source": source, "target": target}


def total(per_job: dict[str, dict[str, float]]) -> float:
    return sum(n for families in per_job.values() for n in families.values())


@dataclass
class Workload:
    jobs: int  # selected by the filters
    sampled: int
    verify: bool
    keys: float = 0.0  # means over the sample
    points_per_key: float = 0.0
    files: float = 0.0
    batches: float = 0.0
    per_job: dict[str, dict[str, float]] = field(default_factory=dict)  # end -> family -> mean requests
    first: tuple[str, str] | None = None  # (experiment, job id) of the first sampled job: what the probes read

    def line(self) -> str:
        return (f"workload: {self.jobs:,} jobs selected, {self.sampled} sampled: {self.keys:.1f} metric keys x "
                f"{self.points_per_key:,.0f} points, {self.files:.1f} files, {self.batches:.1f} log-batch requests a job; "
                f"{total(self.per_job):.1f} requests a job ({'migrate --verify' if self.verify else 'migrate'})")


def sample_workload(source: Source, sample: int, count_batches: Callable[[JobRecord, Iterator[MetricPoint]], int],
                    verify: bool = True) -> Workload:
    """Count the selected jobs, read `sample` of them spread evenly over the selection (`Source.sample`: their
    metric histories and file lists, as a migration would; the first N would be one experiment's first
    pipeline and its steps) and average the formula over them. `count_batches(job, points)` says how many
    log-batch requests the target takes."""
    workload = Workload(jobs=source.count(), sampled=0, verify=verify)
    rows = []
    for job, siblings in source.sample(sample):
        workload.first = workload.first or (job.experiment, job.source_id)
        keys: dict[str, int] = {}
        batches = count_batches(job, counted(source.metrics(job), keys))  # streamed: a long history is never held
        files = sum(1 for _ in source.artifacts(job))
        rows.append((len(keys), sum(keys.values()), files, batches, siblings))
    if not rows:
        return workload
    workload.sampled = len(rows)
    workload.keys = sum(r[0] for r in rows) / len(rows)
    workload.points_per_key = sum(r[1] for r in rows) / max(1, sum(r[0] for r in rows))
    workload.files = sum(r[2] for r in rows) / len(rows)
    workload.batches = sum(r[3] for r in rows) / len(rows)
    each = [requests_per_job(k, b, f, verify, child=bool(siblings)) for k, _, f, b, siblings in rows]  # the mean of ceil()
    workload.per_job = {end: {f: sum(e[end][f] for e in each) / len(each) for f in FAMILIES} for end in ENDS}
    # One search of children per parent, each end: a sampled child carries 1/siblings of its parent's, so
    # the mean over a spread sample is parents with children per job, whichever children were drawn.
    searches = sum(1 / siblings for *_, siblings in rows if siblings) / len(rows)
    workload.per_job["source"]["mlflow"] += searches
    if verify:
        workload.per_job["target"]["mlflow"] += searches
    return workload


def counted(points: Iterator[MetricPoint], keys: dict[str, int]) -> Iterator[MetricPoint]:
    for point in points:
        keys[point.key] = keys.get(point.key, 0) + 1
        yield point


@dataclass
class Measured:
    """What the probe measured for one bucket (`end family`), as the projection needs it."""
    rate: float  # requests/s; 0: none measured
    found: bool  # a 429 was met (else the rate is a lower bound)
    p50_ms: float | None
    documented: bool = False  # the rate is the one Azure documents (BLOB_RATE), not measured


def documented_rates(measured: dict[str, Measured]) -> dict[str, Measured]:
    """The blob bucket of every end whose run history was probed (a workspace: its files are blobs in its
    storage account) at the documented BLOB_RATE; its latency stays its end's artifacts' (p50_for)."""
    ends = [key.split(" ")[0] for key in measured if key.split(" ")[1] == "artifacts"]
    return {f"{end} blob": Measured(BLOB_RATE, found=False, p50_ms=None, documented=True) for end in ends}


def p50_for(key: str, measured: dict[str, Measured]) -> float | None:
    """A bucket's p50: its own; blob's (not probed: no request of it can be made without a SAS) its end's
    run history artifacts'; else the other end's of the same family (none for a shared bucket); None if
    nothing was measured."""
    end, family = key.split(" ")
    other = {"source": "target", "target": "source"}.get(end)
    for candidate in (key, f"{end} artifacts" if family == "blob" else None, f"{other} {family}" if other else None):
        if candidate in measured and measured[candidate].p50_ms is not None:
            return measured[candidate].p50_ms
    return None


def buckets(workload: Workload, shared: bool = False) -> dict[str, float]:
    """Requests a job per bucket: `end family`, or with `shared` (both ends one workspace) `workspace family`,
    both ends' requests together."""
    if shared:
        return {f"{SHARED} {family}": sum(workload.per_job.get(end, {}).get(family, 0.0) for end in ENDS) for family in FAMILIES}
    return {f"{end} {family}": n for end, families in workload.per_job.items() for family, n in families.items()}


def loads(workload: Workload, shared: bool = False) -> dict[str, float]:
    """Requests of the whole migration per bucket (`buckets`)."""
    return {key: workload.jobs * n for key, n in buckets(workload, shared).items()}


def projection(workload: Workload, measured: dict[str, Measured], parallel: int, shards: int, goal_h: float = GOAL_H) -> dict:
    """Hours on 1 node and on `shards` nodes, the bounding bucket and the break-even rates (module docstring).
    Both ends are one workspace, its buckets `workspace family` (`buckets`), when the probes' buckets say so
    (runner.ends.estimate_reads names them `workspace family` then): the two cannot disagree."""
    shared = any(key.split(" ")[0] == SHARED for key in measured)
    load = loads(workload, shared)
    unmeasured = sorted(k for k in load if load[k] and p50_for(k, measured) is None)
    latency_s = sum(n * (p50_for(k, measured) or 0.0) / 1000 for k, n in load.items())
    throttle = {k: n / measured[k].rate for k, n in load.items() if k in measured and measured[k].rate > 0}
    bound = max(throttle, key=throttle.get) if throttle else None
    throttle_s = throttle.get(bound, 0.0)
    out = {"jobs": workload.jobs, "parallel": parallel, "shards": shards, "goal_h": goal_h, "shared": shared,
           "per_job": {k: round(n, 2) for k, n in buckets(workload, shared).items()}, "requests": {k: round(n) for k, n in load.items()},
           "throttle_h": {k: round(s / 3600, 2) for k, s in throttle.items()}, "unmeasured_latency": unmeasured,
           "lower_bound_rates": sorted(k for k in throttle if not measured[k].found and not measured[k].documented),
           "documented_rates": sorted(k for k in throttle if measured[k].documented),
           "break_even_per_s": {k: round(n / (goal_h * 3600), 2) for k, n in load.items() if n}}
    for nodes in dict.fromkeys((1, shards)):
        floor_s = latency_s / (parallel * nodes)
        out[f"latency_floor_h_{nodes}"] = round(floor_s / 3600, 2)
        out[f"hours_{nodes}"] = round(max(floor_s, throttle_s) / 3600, 2)
        out[f"seconds_{nodes}"] = round(max(floor_s, throttle_s), 1)  # for a small workload (the bench's), where hours round to 0
        out[f"bound_{nodes}"] = bound if throttle_s > floor_s else "latency"
    out["throttle_bound"] = bound
    return out


def summary_line(p: dict) -> str:
    """The one-line projection."""
    one, many = p["shards"] == 1, p["shards"]
    hours = f"{p['hours_1']} h on 1 node" + ("" if one else f", {p[f'hours_{many}']} h on {many} nodes")
    bound = p[f"bound_{many}"]
    caveat = (", at most: its rate is a lower bound" if bound in p["lower_bound_rates"]
              else ", at its documented rate" if bound in p.get("documented_rates", ()) else "")
    why = (f"bound by {bound} (throttle {p['throttle_h'][bound]} h{caveat})"
           if bound != "latency" else f"bound by latency (floor {p[f'latency_floor_h_{many}']} h)")
    busiest = max(p["break_even_per_s"], key=p["break_even_per_s"].get) if p["break_even_per_s"] else None
    even = f"; break-even for {p['goal_h']:g} h: {busiest} {p['break_even_per_s'][busiest]}/s" if busiest else ""
    return f"projection: {p['jobs']:,} jobs: {hours}; {why}{even}"


def table(workload: Workload, measured: dict[str, Measured], results: dict[str, dict], p: dict) -> list[str]:
    """Per bucket: requests a job and in all, the rate (measured, or documented for blob), latency, hours at
    that rate, break-even. A bucket both ends share reads `workspace family`, its per-job column both ends'."""
    lines = [workload.line(),
             f"{'bucket':<20}{'per job':>9}{'requests':>13}  {'rate':<30}{'p50 ms':>8}{'p95 ms':>8}{'throttle h':>11}{'1 h needs':>11}"]
    for key, n in p["requests"].items():
        result = results.get(key)
        rate = result["describe"] if result else rate_described(measured.get(key))
        p50 = p50_for(key, measured)
        p95 = result.get("p95_ms") if result else None
        lines.append(f"{key:<20}{p['per_job'][key]:>9.2f}{n:>13,}  {rate:<30}{fmt(p50):>8}{fmt(p95):>8}"
                     f"{fmt(p['throttle_h'].get(key)):>11}{fmt(p['break_even_per_s'].get(key)):>11}")
    if p["unmeasured_latency"]:
        lines.append(f"no latency measured for {', '.join(p['unmeasured_latency'])}: left out of the latency floor")
    return lines


def rate_described(measured: Measured | None) -> str:
    """The rate column of a bucket no probe ran for."""
    return f"{measured.rate:,.0f}/s documented" if measured is not None and measured.documented else "not probed"


def fmt(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def report(workload: Workload, results: dict[str, dict], p: dict) -> dict:
    """The JSON of `--report`."""
    return {"workload": asdict(workload), "probes": results, "projection": p}


def probe_all(reads: dict[str, Callable], max_rate: float, seconds: float, probe=None) -> tuple[dict[str, dict], dict[str, Measured]]:
    """Probe each bucket's read in turn (`end family` -> send; runner.engine.rate_probe), one after the
    other so that no probe's load lands on another's answer. The results as JSON rows, and what the
    projection needs of them."""
    from loguru import logger

    from runner.engine import rate_probe

    probe = probe or rate_probe.probe
    results, measured = {}, {}
    for key, send in reads.items():
        logger.info("probing {} (read only): up to {:g} requests/s for at most {:g} s", key, max_rate, seconds)
        result = probe(send, max_rate, seconds, key)
        row = asdict(result)
        row["describe"] = result.describe()
        results[key] = row
        measured[key] = Measured(result.rate, result.found, result.p50_ms)
        if result.error:
            logger.warning("probing {}: {} ({} of {} requests)", key, result.error, result.errors, result.requests + result.errors)
    return results, measured
