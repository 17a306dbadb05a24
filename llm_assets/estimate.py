"""Estimate: what a registered dataset will cost and how long it will take, before any chunk runs.

`estimate_dataset(spec, dataset, instance, home)` returns an `Estimate` and writes it to
`<home>/estimates/<pipeline>/<dataset_id>/estimate.json`. How it is made:

1. **Token distribution over the whole file**, streamed chunk by chunk (`read_chunk`, then `validate_chunk` with
   the spec's length policy, as the `items` asset does; one chunk in memory at a time): valid items, the text
   tokens of every item (the one token counter, resources/llm/tokens.py), mean, p50, p95, max.
2. **A seeded sample** of `sample_size` valid items, the same for the same seed on any machine: the items with
   the smallest sha256(`seed|item_id`), kept in a bounded heap while streaming (the bottom-k rule of
   llm_assets/quality_stats.py `sample_item_ids`, over the whole file instead of one chunk). A sample larger
   than the dataset is refused (`EstimateError`), not clipped: an estimate that samples everything is a run.
3. **The sample is sent for real**, stage by stage, through each stage's own LLM resource and prompt
   (`build_llm_resource`, `stage_prompt`): later stages see only the sample items their route selects, with
   their user template rendered on the earlier stages' real answers. Every attempt is billed and written to
   Chunkwise's spend ledger under dataset id `estimate-<dataset_id>` and run id `estimate-<dataset_id>`, so
   the sample's spend is visible apart from the dataset's own run (the completion report's cost is the run).
   The budgets of the spec apply to the sample too (its run and dataset scopes are the sample's own, the day is
   the day's); before anything is sent, the sample's worst case (every sample item at every stage, one attempt,
   max output tokens, the dearest input rate) is checked against `budgets.run_usd`, `budgets.dataset_usd` and
   `budgets.day_usd` and refused with one message when it does not fit.
   **The route sample.** A later stage's route rate is the estimate's main error (BANKING77's `enriched` sees 16%
   of the items: measured on 400, +-11% at one standard error, and half the cost rides on it). A route that reads
   only the first stage's answers (and input columns) needs only the first stage, the cheapest per item in the
   shipped specs; so once the sample has gone through every stage, the first stage is also sent the next items
   of the same seeded order, as many as bring the route rates' share of the cost's standard error down to
   ROUTE_PRECISION (3.5%), at most ROUTE_POOL_FACTOR x the sample and within the budgets' room, and those routes
   are measured on all of them (`_widen_route_sample`). Later stages are still sent only the sample's routed
   items: their per-item tokens vary far less than a route rate (the measurements: "Sample size" below).
4. **Projection**, per stage: items = valid items x (route sample items routed / route sample size); per item, the mean
   attempts (requests), input, cached, cache-write and output tokens measured on the sample (they include
   retries and repairs). Input tokens are corrected by the difference between the dataset's mean text tokens
   and the sample's, per request. Prompt caching: the sample's items that read nothing from the cache are the
   cold start (the first wave of concurrent requests before the shared prefix is cached); the run is assumed
   to pay that cold start once (a cold cache at launch) and the rest at the warm items' means. Cost online and
   in batch mode comes from the one price lookup (`ModelPrice.cost_usd`, `batch=True` for the batch price).
   The total's 95% interval from sampling (`total_cost_usd_low`/`_high`, `cost_stderr`): each stage's route
   error (cost x the rate's standard error / rate, with the finite-population correction), added up, and the
   per-item cost spreads, in quadrature; it does not cover what sampling cannot see (a provider's price change,
   retries the run meets and the sample did not).
5. **Wall time**, the floor: the larger of two bounds (`total_floor`).
   - Throughput: each stage's chunks, each as long as its makespan (`chunk_makespan`): the chunk's items for
     the stage over the stage's concurrency, each taking the time of a sample item of the stage answered at
     its first attempt, plus, as often as the endpoint's sample items needed a retry, what a retry took there
     (`retry_profiles`: first send to last, backoff and retry-after included, pooled over the stages that
     share a provider and base URL: faults are the endpoint's, and a later stage's few dozen sample items hold
     one retry or none). A chunk waits for its slowest item, so a retry's backoff is every chunk's tail. At
     least requests x latency / concurrency and the client's CPU per request over the cores; at least half the
     sample's own pace (its elapsed time outside rate-limit waits, scaled to the run: what the model of the
     client leaves out, such as a send window 429s narrowed). Divided over `parallel_runs`; stages add up (a
     chunk runs them in order). The sample's elapsed time, scaled, was the measure before: one retry's ~1 s
     backoff in a 61-item later-stage sample or none moved that stage's floor between 2.6 s and 10.9 s for the
     same file (BANKING77, five samples at three simulator seeds).
   - Rate limits: every bucket refills the whole run long, so each bounds the run on its own (stages that
     share a bucket, the same provider and model, add up). What a request takes from a bucket is the adapter's
     own accounting (`bucket_actuals`: both wire formats count `max_output_tokens`, not the reply's length).
     When the profile configures a limit, Chunkwise's own admission governs: the need is
     max(0, amount - the bucket's level now) / its rate, read from the shared limit store
     (`LLMResource.bucket_levels`: the level the sample left, as a launch right after the estimate finds it;
     a bucket idle for longer holds up to its capacity, so a later launch can take up to capacity / rate
     less). The sample's own wait on those buckets (its amounts minus the level before it, over the rate) is
     what the throughput bound leaves out. When the profile configures none, the provider's enforcement
     governs: its limits as stated in its rate-limit headers, as the store recorded them, a bucket holding a
     minute's worth assumed full at launch: 60 x max(0, amount - limit) / limit. The store keeps stated limits
     only for resources with a configured limit, so then the first sample item of each stage is sent through a
     copy of the stage's resource with a nominal request limit (PROBE_RPM, never binding): one request, whose
     headers the store records. (Sending the whole sample that way paced it through the store: 62 s instead of
     7 s for 400 items on a loaded machine.) Side effect: the store keeps a `requests` bucket at that nominal
     rate for the provider and model; it matters only if the profile later configures a token limit but no
     request limit.
   Orchestration overhead is `overhead_per_chunk_s` per chunk run, divided over `parallel_runs` but at most
   the machine's cores (`usable_cores`: it is mostly CPU, process start and imports included): measured on
   the pipeline's own last successful chunk runs on the instance (run duration from its launch minus the
   stages' `duration_s`, median of up to 10; `measured_overhead_per_chunk`), else a measured default: per step
   of a chunk run (OVERHEAD_PER_STEP_S x `chunk_run_steps`), plus, with `launched_runs` (the estimate job,
   `make estimate`: the sensors launch each chunk run in a process of its own), LAUNCH_OVERHEAD_S; scaled by
   this machine's speed against the machine it was measured on (llm_assets/machine_probe.py: BANKING77's
   in-process chunk run took 0.58 s of orchestration on one 2-core machine and 2.2 s on another).
   Measured against real runs by bench/estimate_accuracy.py (docs/benchmarks.md, "Estimate vs the run").
6. **Budget verdict**: the projected cost (in each stage's mode) against `budgets.dataset_usd`, and the
   largest chunk's projected cost against `budgets.run_usd` (each chunk is one run). `within_budget` false
   means the new-dataset sensor holds the chunks (sensors/new_datasets.py) when the spec's
   `estimate.before_launch` is on.

Idempotent: an `estimate.json` for the same dataset, the same stage versions (prompt, model, route...),
sample size, seed and `parallel_runs` is read back instead of paying again (`reused: true`); `force=True` pays
again (so does another `parallel_runs`: the wall time's concurrency floor is measured with it).

Sample size: the default is 400 items, at most a quarter of the dataset (reviews' 122 items: 30); the route
sample (2, above) then measures the routes on up to 4x that. The spread, against one real run at 20 sample seeds
each (bench/estimate_accuracy.py --sample-seeds 20, docs/benchmarks.md): BANKING77 0.961-1.069 of the bill and
reviews 0.943-1.078, every bill inside the stated 95% interval; with the routes measured on the sample alone it
was 0.904-1.063 (12 seeds) and 0.752-1.411 (8 of 20 off by more than 10%). The price: the sample's spend went from
about $0.11 to $0.17 on BANKING77's 3,080 items (a fifth of the run's bill on a file this small; on 100,000 items
the same sample is under 1% of it).

The job `<pipeline>__estimate_job` (`build_estimate_job`, wired in pipeline_assets.pipeline_definitions) runs
the same function from the Launchpad. No `from __future__ import annotations` here: Dagster resolves the op's
config annotation (`EstimateConfig`) at definition time.
"""

import hashlib
import heapq
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg
import pandas as pd
from pydantic import BaseModel, Field

from llm_assets.datasets import RegisteredDataset, read_chunk
from llm_assets.machine_probe import REFERENCE_PROBE_S, probe_s, speed_factor
from llm_assets.pipeline_assets import build_llm_resource, stage_prompt, stage_values
from llm_assets.spec import PipelineSpec, StageSpec
from llm_assets.spec_template import render
from llm_assets.stages import idempotency_key
from llm_assets.validation import validate_chunk
from resources.llm import BudgetScope, LLMRequest, LLMResource
from resources.llm.errors import JobFatalError
from resources.llm.providers import adapter_for
from resources.llm.state_store import CAPACITY_SAFETY
from resources.llm.tokens import conservative_input_tokens, count_tokens, estimate_prompt_tokens
from resources.llm.types import ItemResult, TokenUsage
from resources.shared_docs import SharedDocuments
from resources.state_url import state_url

ESTIMATE_FILE = "estimate.json"
ESTIMATE_KIND = "estimate"
"""The shared backend's document kind for estimates (resources/shared_docs.py), keyed `<pipeline>/<dataset id>`."""
DEFAULT_SAMPLE_SIZE = 400
"""Items sent for real when no size is given, capped at a quarter of the dataset (`default_sample_size`): the
route rate's sampling error sets the accuracy (BANKING77: 200 items gave -7% on the billed cost, 400 -2%)."""
DEFAULT_SEED = 0
OVERHEAD_PER_STEP_S = 0.42
"""Seconds of orchestration per step of a chunk run executed in process (`chunk_run_steps`: the items step, each
stage's step and its checks' step), before the instance has any chunk run of the pipeline's own to measure, as
`measured_overhead_per_chunk` measures it, on the reference machine (llm_assets/machine_probe.py). Per step, not
per run: BANKING77's 5-step runs took 2.10-2.34 s and reviews' 7-step runs 2.76-2.88 s on one machine (0.42 and
0.40 s a step), 0.55-0.61 s and 0.72-0.82 s on a faster one (0.12 and 0.11 s), so the step count carries
between pipelines and the machine probe between machines (bench/estimate_accuracy.py; docs/benchmarks.md,
"Estimate vs the run")."""
LAUNCH_OVERHEAD_S = 5.0
"""What a chunk run a launcher starts in a process of its own (the daemon's, `make demo`'s, a deployment's) costs
on top, as `measured_overhead_per_chunk` measures it from the launch, on the reference machine: 7.08 s a run in
all for 250-item BANKING77 chunks forked by the warm run launcher (llm_assets/run_launcher.py), 4 runs at once on
2 cores as `make demo` runs them (bench/overhead.py --rows 3080 --chunk-size 250), less its 5 steps x
OVERHEAD_PER_STEP_S. (2.02 s in all on the faster machine: 3.5 times less, as its in-process overhead was 3.7
times less.) Dagster's default launcher (a fresh process per run) costs more: 5.22 s run alone on the faster
machine (docs/benchmarks.md "Per-partition fixed cost")."""


def chunk_run_steps(spec: PipelineSpec) -> int:
    """Steps of one chunk run: the items step, then each stage's asset and its checks (every stage has checks:
    outputs valid, success rate, cost per item)."""
    return 1 + 2 * len(spec.stages)


class EstimateError(ValueError):
    """Bad input for an estimate (empty dataset, sample too large, budget below the sample): nothing was sent."""


class StageEstimate(BaseModel):
    """One stage, projected to the whole dataset. Tokens in tokens, money in USD, time in seconds."""

    stage: str
    model: str
    mode: str
    route: str
    sample_items_sent: int
    route_sample_items: int = Field(
        default=0,
        description="sample items the route rate was measured on: the sample, or more for a route that reads only "
        "the first stage's answers (`_widen_route_sample`)",
    )
    sample_route_rate: float = Field(description="routed sample items / route sample items")
    sample_route_rate_stderr: float = Field(
        description="the route rate's standard error, sqrt(p(1-p)/n (N-n)/(N-1)): the estimate's main source of "
        "error"
    )
    cost_per_item_stderr_usd: float = Field(
        default=0.0, description="the standard error of the mean cost of an item sent to this stage (online)"
    )
    sample_cost_usd: float
    sample_requests: int
    sample_cold_items: int = Field(description="sample items that read nothing from the prompt cache")
    items: int
    requests: int
    input_tokens: int = Field(description="every input token, cached and cache writes included")
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    output_tokens_per_item: float
    cached_share: float = Field(description="cached / input tokens")
    cost_usd: float = Field(description="online price")
    cost_usd_batch: float = Field(description="batch price (the price table's batch multiplier)")
    cost_usd_in_mode: float = Field(description="the price of the stage's configured mode")
    floor_s: float = Field(description="the larger of the stage's own rate and concurrency floors")
    binding_limit: str
    limits: dict[str, float] = Field(description="per minute, by kind; `concurrency`: requests in flight")
    throughput_floor_s: float = Field(
        description="requests x the sample's seconds per request outside rate-limit waits / parallel runs (at "
        "least requests x latency / (concurrency x parallel runs))"
    )
    rate_floors_s: dict[str, float] = Field(
        default_factory=dict,
        description='seconds a rate limit needs for this stage\'s requests, by "provider|model|kind": stages that '
        "share one (the same model) add up",
    )


class BudgetVerdict(BaseModel):
    within_budget: bool
    message: str
    dataset_usd: float | None = None
    run_usd: float | None = None
    largest_chunk_cost_usd: float = 0.0


class Estimate(BaseModel):
    """What `make estimate` prints and `estimate.json` holds."""

    dataset_id: str
    pipeline: str
    spec_version: str
    created_at: str
    reused: bool = False
    total_items: int
    items_invalid: int
    chunks: int
    text_tokens_total: int
    text_tokens_mean: float
    text_tokens_p50: int
    text_tokens_p95: int
    text_tokens_max: int
    sample_size: int
    seed: int
    sample_cost_usd: float
    sample_requests: int
    sample_scope: str = Field(description="dataset id and run id of the sample's rows in the spend ledger")
    stages: list[StageEstimate]
    total_requests: int
    total_input_tokens: int
    total_cached_input_tokens: int
    total_output_tokens: int
    total_cost_usd: float = Field(description="online")
    total_cost_usd_batch: float
    total_cost_usd_in_mode: float = Field(description="each stage in its configured mode")
    route_sample_size: int = Field(
        default=0, description="items the first stage was sent to measure the later stages' routes"
    )
    total_cost_usd_stderr: float = Field(
        default=0.0,
        description="the in-mode total's standard error from sampling (the route rates' errors added up, the "
        "per-item spreads in quadrature)",
    )
    total_cost_usd_low: float = Field(default=0.0, description="in mode, minus 1.96 standard errors")
    total_cost_usd_high: float = Field(default=0.0, description="in mode, plus 1.96 standard errors")
    floor_s: float
    overhead_s: float
    overhead_per_chunk_s: float
    overhead_source: str = Field(description="where the per-chunk overhead comes from")
    wall_clock_s: float
    parallel_runs: int
    cores: int = Field(
        default=1,
        description="CPUs the chunk runs share (`usable_cores`): CPU work divides over at most these",
    )
    budget: BudgetVerdict
    path: str = ""


def estimate_path(home: Path, pipeline: str, dataset_id: str) -> Path:
    """Where a dataset's estimate lives: `<home>/estimates/<pipeline>/<dataset_id>/estimate.json`."""
    return home / "estimates" / pipeline / dataset_id / ESTIMATE_FILE


def load_estimate(home: Path, pipeline: str, dataset_id: str) -> Estimate | None:
    """The dataset's recorded estimate, None when there is none (or it cannot be read). With the shared backend
    (CHUNKWISE_STATE_URL) the copy in its database, which every machine sees (`write_estimate`)."""
    url = state_url()
    if url is not None:
        doc = SharedDocuments(url, ESTIMATE_KIND).get(f"{pipeline}/{dataset_id}")
        try:
            return Estimate.model_validate(doc) if doc is not None else None
        except ValueError:
            return None
    path = estimate_path(home, pipeline, dataset_id)
    try:
        return Estimate.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def default_sample_size(total_items: int) -> int:
    """DEFAULT_SAMPLE_SIZE, at most a quarter of the dataset (at least one item)."""
    return max(1, min(DEFAULT_SAMPLE_SIZE, total_items // 4))


def sample_scope(dataset_id: str) -> str:
    """The spend ledger's dataset id (and run id) of an estimate's sample."""
    return f"estimate-{dataset_id}"


def spec_version(spec: PipelineSpec) -> str:
    """The stages' versions (prompt, model, route, ...) and modes: a different one makes a new estimate."""
    parts = [[s.version(), s.mode] for s in spec.stages]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ the scan


class _Scan(BaseModel):
    total_items: int = 0
    items_invalid: int = 0
    chunk_items: list[int] = []
    token_counts: dict[int, int] = {}
    """Histogram: text tokens -> items (bounded by `length_policy.max_input_tokens`)."""
    sample: list[dict[str, Any]] = []

    def quantile(self, q: float) -> int:
        target = q * self.total_items
        seen = 0
        for tokens in sorted(self.token_counts):
            seen += self.token_counts[tokens]
            if seen >= target:
                return tokens
        return 0

    @property
    def tokens_total(self) -> int:
        return sum(t * n for t, n in self.token_counts.items())


def _rank(seed: int, item_id: str) -> bytes:
    return hashlib.sha256(f"{seed}|{item_id}".encode()).digest()


def scan_dataset(
    spec: PipelineSpec, dataset: RegisteredDataset, sample_size: int, seed: int, s3: Any = None
) -> _Scan:
    """Stream every chunk once: the token histogram and the seeded bottom-k sample (valid items only)."""
    scan = _Scan()
    heap: list[tuple[bytes, int, dict[str, Any]]] = []  # max-heap by negated rank: the k smallest ranks
    order = 0
    for index in range(dataset.n_chunks):
        checked = validate_chunk(
            read_chunk(dataset, index, s3=s3),
            chunk_index=index,
            max_input_tokens=spec.length_policy.max_input_tokens,
            length_policy=spec.length_policy.action,
            count_tokens=count_tokens,
            duplicate_rows=dataset.duplicate_rows,
        )
        valid = checked.valid
        scan.items_invalid += len(checked.rejected)
        scan.total_items += len(valid)
        scan.chunk_items.append(len(valid))
        for tokens in valid["input_tokens"]:
            scan.token_counts[int(tokens)] = scan.token_counts.get(int(tokens), 0) + 1
        for row in valid.to_dict(orient="records"):
            negated = bytes(255 - b for b in _rank(seed, str(row["item_id"])))
            order += 1
            if len(heap) < sample_size:
                heapq.heappush(heap, (negated, order, row))
            elif sample_size and negated > heap[0][0]:
                heapq.heapreplace(heap, (negated, order, row))
    scan.sample = [row for _, _, row in sorted(heap, reverse=True)]
    return scan


# ------------------------------------------------------------------------------------------------ estimate


def estimate_dataset(
    spec: PipelineSpec,
    dataset: RegisteredDataset,
    instance: dg.DagsterInstance,
    home: Path,
    *,
    sample_size: int | None = None,
    seed: int = DEFAULT_SEED,
    s3: Any = None,
    parallel_runs: int = 1,
    overhead_per_chunk_s: float | None = None,
    launched_runs: bool = False,
    force: bool = False,
    log: Any = None,
) -> Estimate:
    """Estimate `dataset` under `spec` (see the module docstring) and write `estimate.json`.

    The stages' LLM resources are built from the spec with `instance` (limit and spend state beside its storage,
    as a run's). Raises EstimateError for bad input, before anything is sent; JobFatalError from the provider
    (bad key, budget) as a run would."""
    path = estimate_path(home, spec.name, dataset.dataset_id)
    version = spec_version(spec)
    if sample_size is None:
        sample_size = default_sample_size(dataset.total_rows)
    if not force:
        known = load_estimate(home, spec.name, dataset.dataset_id)
        if known and (known.spec_version, known.sample_size, known.seed, known.parallel_runs) == (
            version,
            sample_size,
            seed,
            parallel_runs,
        ):
            # The budgets may have changed since: the verdict is the current spec's, on the recorded projection.
            verdict = budget_verdict(spec, known.total_cost_usd_in_mode, known.budget.largest_chunk_cost_usd)
            return known.model_copy(update={"reused": True, "path": str(path), "budget": verdict})
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
        raise EstimateError(f"sample size must be a whole number of items, 1 or more, got {sample_size!r}")
    scan = scan_dataset(spec, dataset, sample_size * ROUTE_POOL_FACTOR, seed, s3=s3)
    if scan.total_items == 0:
        raise EstimateError(
            f"dataset {dataset.dataset_id} ({dataset.uri}) has no valid item to estimate "
            f"({scan.items_invalid} rows rejected by validation); fix the file and register it again"
        )
    if sample_size > scan.total_items:
        raise EstimateError(
            f"sample of {sample_size} items is larger than dataset {dataset.dataset_id} ({scan.total_items} valid "
            f"items); give a sample of at most {scan.total_items} (an estimate that samples everything is a run)"
        )

    def overhead() -> tuple[float, str]:
        """Asked once the sample is known to be affordable: bad input stops before the machine probe runs."""
        if overhead_per_chunk_s is not None:
            return overhead_per_chunk_s, "given"
        return measured_overhead_per_chunk(spec, instance, launched_runs=launched_runs)

    resources: dict[str, LLMResource] = {}
    for stage in spec.stages:
        resources[stage.name] = build_llm_resource(spec, stage, home)
        if not _configures_limits(resources[stage.name]):
            resources[f"{stage.name}{PROBE}"] = _probe(resources[stage.name])
    with dg.build_resources(resources, instance=instance) as built:
        llms = {name: getattr(built, name) for name in resources}
        return _estimate(spec, dataset, scan, llms, home, path, version, sample_size, seed, parallel_runs,
                         overhead, log)  # fmt: skip


def _estimate(
    spec: PipelineSpec,
    dataset: RegisteredDataset,
    scan: _Scan,
    llms: dict[str, LLMResource],
    home: Path,
    path: Path,
    version: str,
    sample_size: int,
    seed: int,
    parallel_runs: int,
    overhead: Callable[[], tuple[float, str]],
    log: Any,
) -> Estimate:
    deep_rows, pool = scan.sample[:sample_size], scan.sample[sample_size:]
    _check_sample_budget(spec, llms, deep_rows)
    per_chunk = overhead()
    pool = _affordable_pool(spec, llms, deep_rows, pool)
    scope = sample_scope(dataset.dataset_id)
    items = pd.DataFrame(deep_rows)
    sample_text_mean = float(items["input_tokens"].mean())
    dataset_text_mean = scan.tokens_total / scan.total_items
    earlier: dict[str, pd.DataFrame] = {}
    reached = items
    sent: list[_StageSample] = []
    for stage in spec.stages:
        llm = llms[stage.name]
        values = stage_values(spec, reached, earlier)
        requests = _stage_requests(stage, llm, scope, reached, values)
        levels_before = llm.bucket_levels() if _configures_limits(llm) else {}
        t0 = time.monotonic()
        results: list[ItemResult] = []
        # The first item through the probe (when the profile configures no limit), the rest as a run sends them;
        # the throughput is timed on the rest (a run sends no item alone).
        probe = llms.get(f"{stage.name}{PROBE}")
        timed = (t0, 0, time.process_time())
        for resource, batch in ((probe, requests[:1]), (llm, requests[1:])) if probe else ((llm, requests),):
            if not batch:
                continue
            if resource is llm:
                timed = (time.monotonic(), len(results), time.process_time())
            results += _send(resource, stage, scope, batch, log)
        elapsed = time.monotonic() - t0
        if log is not None:
            log.info(f"estimate {stage.name}: {len(requests)} sample items sent in {elapsed:.1f}s")
        timing = _SampleTiming(
            time.monotonic() - timed[0],
            time.process_time() - timed[2],
            timed[1],
            levels_before,
            len(results),
        )
        sent.append(_StageSample(stage, llm, results, len(results), len(items), timing))
        earlier[stage.name] = _answers(stage, results)
        # Items a stage dead-lettered leave the chunk; the rest go on (routed or carried through).
        failed = _failed_items(results)
        reached = reached[~reached["item_id"].astype(str).isin(failed)]
    _widen_route_sample(spec, llms, scope, scan.total_items, items, pool, sent, log)
    text_delta = dataset_text_mean - sample_text_mean
    retries = retry_profiles([(endpoint_of(x.llm), x.results) for x in sent])
    stages = [
        _project(
            x.stage,
            x.llm,
            x.results,
            x.routed,
            x.sampled,
            scan.total_items,
            text_delta,
            parallel_runs,
            x.timing,
            scan.chunk_items,
            retries[endpoint_of(x.llm)],
        )
        for x in sent
    ]
    return _finish(spec, dataset, scan, stages, home, path, version, sample_size, seed, parallel_runs,
                   per_chunk)  # fmt: skip


class _StageSample(NamedTuple):
    """What one stage's sample sent and measured. `routed` of `sampled` sample items reached the stage and were
    routed to it (the route rate); `results` are the items sent (the per-item means)."""

    stage: StageSpec
    llm: LLMResource
    results: list[ItemResult]
    routed: int
    sampled: int
    timing: "_SampleTiming"


def _stage_requests(
    stage: StageSpec, llm: LLMResource, scope: str, reached: pd.DataFrame, values: pd.DataFrame
) -> list[LLMRequest]:
    """The requests of the sample items in `reached` that the stage's route selects, as a chunk run builds them."""
    chosen = stage.route_condition().evaluate(values) if len(values) else pd.Series(dtype=bool)
    routed_ids = set(values.index[chosen.to_numpy(dtype=bool)]) if len(values) else set()
    to_send = reached[reached["item_id"].astype(str).isin(routed_ids)]
    prompt = stage_prompt(stage)
    return [
        LLMRequest(
            key=idempotency_key(scope, str(row.item_id), stage.name, prompt.version, llm.model),
            text=render(stage.user_template, values.loc[str(row.item_id)].to_dict()),
            team=row.team if isinstance(row.team, str) else "",
        )
        for row in to_send.itertuples(index=False)
    ]


def _send(
    resource: LLMResource, stage: StageSpec, scope: str, batch: list[LLMRequest], log: Any
) -> list[ItemResult]:
    prompt = stage_prompt(stage)
    outcome = resource.run_prompts(
        batch,
        system_prompt=prompt.system_prompt,
        schema=prompt.schema,
        schema_name=prompt.schema_name,
        scope=BudgetScope(run_id=scope, dataset_id=scope, partition_key="estimate"),
        stage=stage.name,
        log=log,
        normalize=dict(stage.normalize) or None,
    )
    return list(outcome.results)


def _item_of(key: str) -> str:
    return key.split("|")[1]  # idempotency_key: scope|item|stage|prompt version|model


def _answers(stage: StageSpec, results: list[ItemResult]) -> pd.DataFrame:
    answers = [{"item_id": _item_of(r.key), **(r.output or {})} for r in results if r.ok]
    return pd.DataFrame(answers, columns=["item_id", *stage.output_fields()])


def _failed_items(results: list[ItemResult]) -> set[str]:
    return {_item_of(r.key) for r in results if not r.ok}


ROUTE_POOL_FACTOR = 4
"""The first stage's wider sample (`_widen_route_sample`) draws on up to this many times the sample's items."""
ROUTE_PRECISION = 0.035
"""The route rates' share of the projected cost's relative standard error that the wider first-stage sample aims
for: with the per-item spread added, the 10% target is about 2.5 standard errors away."""


def _route_error(sent: list[_StageSample], total_items: int, n: int, widened: set[str]) -> float:
    """The projected cost's relative standard error from the route rates of the `widened` stages (measured on n
    items), added up (their routes read one stage's answers: they err together); the others as measured."""
    costs = {x.stage.name: _sample_cost_per_routed(x) * x.routed / x.sampled * total_items for x in sent}
    total = sum(costs.values())
    if total <= 0:
        return 0.0
    error = 0.0
    for x in sent:
        if x.stage.name not in widened or not x.routed or x.routed == x.sampled:
            continue
        p = x.routed / x.sampled
        error += costs[x.stage.name] * _stderr(round(p * n), n, total_items) / p
    return error / total


def _sample_cost_per_routed(x: _StageSample) -> float:
    return sum(r.usage.cost_usd for r in x.results) / len(x.results) if x.results else 0.0


def _widen_route_sample(
    spec: PipelineSpec,
    llms: dict[str, LLMResource],
    scope: str,
    total_items: int,
    items: pd.DataFrame,
    pool: list[dict[str, Any]],
    sent: list[_StageSample],
    log: Any,
) -> None:
    """Measure the route rates on more items than the sample, where that is cheap: the route rate is the
    estimate's main error (a stage that sees 16% of the items, measured on 400, is +-11% off at one standard
    error), and the routes that read only the first stage's answers (and input columns) need only the first
    stage, the stage every item passes through (its price per item is the lowest of the pipeline's in the shipped
    specs). So the first stage is sent the next items of the seeded order (`pool`: up to ROUTE_POOL_FACTOR x the
    sample, within the budgets), as few as bring the route rates' error to ROUTE_PRECISION of the projected cost,
    and those routes are evaluated on all of them. The later stages are still sent only the sample's routed items:
    their per-item tokens vary far less than a route rate does. Updates `sent` in place (the first stage's results
    and every widened stage's `routed`/`sampled`); the extra items are billed under the sample's scope and count in
    its cost. Their time counts in the first stage's pace, as the sample's does (more requests timed, less noise)."""
    first = sent[0]
    widened = {x.stage.name for x in sent if set(x.stage.route_condition().stages()) <= {first.stage.name}}
    later = widened - {first.stage.name}
    n = len(items)
    if not pool or not later or _route_error(sent, total_items, n, widened) <= ROUTE_PRECISION:
        return
    wanted = len(pool)
    for extra in range(0, len(pool) + 1, max(1, n // 8)):
        if _route_error(sent, total_items, n + extra, widened) <= ROUTE_PRECISION:
            wanted = extra
            break
    if wanted == 0:
        return
    more = pd.DataFrame(pool[:wanted])
    stage, llm = first.stage, first.llm
    values = stage_values(spec, more, {})
    requests = _stage_requests(stage, llm, scope, more, values)
    t0, cpu0 = time.monotonic(), time.process_time()
    results = _send(llm, stage, scope, requests, log) if requests else []
    # Sent as the sample's were (the same client and concurrency): their time adds to the pace's measurement.
    timing = first.timing._replace(
        elapsed_s=first.timing.elapsed_s + time.monotonic() - t0,
        cpu_s=first.timing.cpu_s + time.process_time() - cpu0,
        timed_results=first.timing.timed_results + len(results),
    )
    if log is not None:
        log.info(
            f"estimate {stage.name}: {len(requests)} more items sent to measure the later stages' routes"
        )
    wide = pd.concat([items, more], ignore_index=True)
    answers = pd.concat([_answers(stage, first.results), _answers(stage, results)], ignore_index=True)
    failed = _failed_items(first.results) | _failed_items(results)
    reached = wide[~wide["item_id"].astype(str).isin(failed)]
    values = stage_values(spec, reached, {stage.name: answers})
    for index, x in enumerate(sent):
        if x is first:
            sent[index] = x._replace(results=x.results + results, routed=x.routed + len(requests),
                                     sampled=len(wide), timing=timing)  # fmt: skip
        elif x.stage.name in widened:
            chosen = x.stage.route_condition().evaluate(values) if len(values) else pd.Series(dtype=bool)
            sent[index] = x._replace(routed=int(chosen.to_numpy(dtype=bool).sum()), sampled=len(wide))


def measured_overhead_per_chunk(
    spec: PipelineSpec, instance: dg.DagsterInstance, *, launched_runs: bool = False
) -> tuple[float, str]:
    """Seconds of orchestration per chunk run, and where the number comes from: the median, over the pipeline's
    last 10 successful chunk runs on this instance, of the run's duration (from its launch, RUN_STARTING, when
    a launcher started it in a process of its own) minus its stages' `duration_s` (the time spent sending
    requests). When there are none: OVERHEAD_PER_STEP_S per step of a chunk run, plus LAUNCH_OVERHEAD_S if the
    chunk runs will be `launched_runs` (each in a process of its own), scaled by this machine's speed against
    the reference machine (llm_assets/machine_probe.py `speed_factor`)."""
    from llm_assets.pipeline_assets import PIPELINE_TAG, chunk_job_name

    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=chunk_job_name(spec),
            statuses=[dg.DagsterRunStatus.SUCCESS],
            tags={PIPELINE_TAG: spec.name},
        ),
        limit=10,
    )
    stage_keys = {dg.AssetKey([spec.name, s.name]) for s in spec.stages}
    overheads = []
    for record in records:
        if record.start_time is None or record.end_time is None:
            continue
        run_id = record.dagster_run.run_id
        sending = 0.0
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            materialization = entry.asset_materialization
            if materialization is not None and materialization.asset_key in stage_keys:
                value = materialization.metadata.get("duration_s")
                sending += float(value.value) if value is not None else 0.0
        # A launched run (the daemon's) starts when the launcher starts its worker process, before RUN_START:
        # the interpreter start and the code location's imports are the run's cost too.
        launched = [e.timestamp for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_STARTING)]
        started = min([record.start_time, *launched])
        overheads.append(max(0.0, record.end_time - started - sending))
    if not overheads:
        factor, steps = speed_factor(), chunk_run_steps(spec)
        base = OVERHEAD_PER_STEP_S * steps + (LAUNCH_OVERHEAD_S if launched_runs else 0.0)
        how = "a run the warm run launcher started" if launched_runs else "a run in process"
        return (
            base * factor,
            f"no chunk run of this pipeline on the instance yet: {base:.2f} s for {how} of {steps} steps on the "
            f"reference machine (OVERHEAD_PER_STEP_S x steps{' + LAUNCH_OVERHEAD_S' if launched_runs else ''}), "
            f"x {factor:.2f}, this machine's speed against it (llm_assets/machine_probe.py: {probe_s():.2f} s "
            f"here, {REFERENCE_PROBE_S:.2f} s there)",
        )
    overheads.sort()
    return overheads[len(overheads) // 2], f"median of the pipeline's last {len(overheads)} chunk runs"


PROBE = "__limits_probe"
PROBE_RPM = 1e9
"""The nominal request limit of the probe: never binds, but puts the shared limit store in use for one request, so
it records the limits the provider states in that reply's headers."""


def _configures_limits(llm: LLMResource) -> bool:
    return any(
        v is not None
        for v in (
            llm.requests_per_minute,
            llm.tokens_per_minute,
            llm.input_tokens_per_minute,
            llm.output_tokens_per_minute,
        )
    )


def _probe(llm: LLMResource) -> LLMResource:
    """The stage's resource with a nominal request limit (PROBE_RPM): the first sample item goes through it."""
    fields = {name: getattr(llm, name) for name in type(llm).model_fields}
    return type(llm)(**{**fields, "requests_per_minute": PROBE_RPM})


def _sample_caps(spec: PipelineSpec) -> dict[str, float]:
    caps = {
        "budgets.run_usd": spec.budgets.run_usd,
        "budgets.dataset_usd": spec.budgets.dataset_usd,
        "budgets.day_usd": spec.budgets.day_usd,
    }
    return {k: v for k, v in caps.items() if v is not None}


def _worst_case_usd(stages: list[StageSpec], llms: dict[str, LLMResource], rows: list[dict]) -> list[float]:
    """Per row, the worst case of sending it to every stage in `stages` (one attempt each, max output tokens)."""
    worst = [0.0] * len(rows)
    for stage in stages:
        price = llms[stage.name].price()
        prompt = stage_prompt(stage)
        out = stage.effective_max_output_tokens()
        for i, row in enumerate(rows):
            tokens = estimate_prompt_tokens([prompt.system_prompt, str(row["text"])], prompt.schema)
            worst[i] += price.worst_case_usd(conservative_input_tokens(tokens), out)
    return worst


def _check_sample_budget(spec: PipelineSpec, llms: dict[str, LLMResource], sample: list[dict]) -> None:
    """Refuse before sending anything when the sample's worst case does not fit the run or dataset cap."""
    caps = _sample_caps(spec)
    if not caps:
        return
    worst = sum(_worst_case_usd(spec.stages, llms, sample))  # every sample item may be routed everywhere
    for name, cap in caps.items():
        if worst > cap:
            raise EstimateError(
                f"the estimate's sample of {len(sample)} items could cost up to ${worst:.4f} (one attempt each, "
                f"every stage), more than `{name}` = ${cap:.4f}: nothing was sent; raise `{name}` or give a "
                "smaller sample"
            )


def _affordable_pool(
    spec: PipelineSpec, llms: dict[str, LLMResource], sample: list[dict], pool: list[dict]
) -> list[dict]:
    """The first items of `pool` whose first-stage worst case still fits every cap beside the sample's worst
    case (`_widen_route_sample` sends at most these): the wider route sample never makes an estimate refuse."""
    caps = _sample_caps(spec)
    if not caps or not pool:
        return pool
    room = min(caps.values()) - sum(_worst_case_usd(spec.stages, llms, sample))
    fits = 0
    for cost in _worst_case_usd(spec.stages[:1], llms, pool):
        room -= cost
        if room < 0:
            break
        fits += 1
    return pool[:fits]


class _SampleTiming(NamedTuple):
    """How long a stage's sample took (from after the probe's item), and the limit store's buckets before it
    (empty: the provider governs)."""

    elapsed_s: float
    cpu_s: float  # this process's CPU time over the same span (the simulator or provider is elsewhere)
    skipped: int  # the first results, sent before the timing started (the probe's item)
    levels_before: dict[str, tuple[float, float, float]]
    timed_results: int  # the stage's results of the sample itself (the wider route sample's come after)


def _project(
    stage: StageSpec,
    llm: LLMResource,
    results: list[ItemResult],
    routed: int,
    sampled: int,
    total_items: int,
    text_delta: float,
    parallel_runs: int,
    timing: _SampleTiming,
    chunks: list[int],
    retries: "RetryProfile",
) -> StageEstimate:
    """The stage projected to `total_items`: `routed` of `sampled` sample items routed to it, `results` the
    items it was sent (their per-item means); `chunks`: the valid items of each chunk; `retries`: how often an
    item at the stage's endpoint was sent more than once and what that cost in time."""
    price = llm.price()
    items = round(total_items * routed / sampled) if sampled else 0
    cold = [r for r in results if r.usage.cached_input_tokens == 0]
    warm = [r for r in results if r.usage.cached_input_tokens > 0] or cold
    n_cold = min(len(cold), items) if warm is not cold else items
    n_warm = items - n_cold

    def mean(group: list[ItemResult], field: str) -> float:
        return sum(getattr(r.usage, field) for r in group) / len(group) if group else 0.0

    def total(field: str) -> float:
        return n_cold * mean(cold, field) + n_warm * mean(warm, field)

    attempts = total("attempts")
    input_tokens = max(0.0, total("input_tokens") + text_delta * attempts)
    cached = total("cached_input_tokens")
    written = total("cache_write_tokens")
    output = total("output_tokens")
    usage = TokenUsage(round(input_tokens), round(cached), round(written), round(output))
    cost, cost_batch = price.cost_usd(usage), price.cost_usd(usage, batch=True)
    share = routed / sampled if sampled else 0.0
    chunk_items = [round(share * n) for n in chunks]
    floors, limits = _floors(llm, attempts, usage, results, parallel_runs, timing, chunk_items, retries)
    binding = max(floors, key=lambda k: floors[k])
    return StageEstimate(
        stage=stage.name,
        model=stage.model,
        mode=stage.mode,
        route=stage.route,
        sample_items_sent=len(results),
        route_sample_items=sampled,
        sample_route_rate=routed / sampled if sampled else 0.0,
        sample_route_rate_stderr=_stderr(routed, sampled, total_items),
        cost_per_item_stderr_usd=_mean_stderr([r.usage.cost_usd for r in results], items),
        sample_cost_usd=sum(r.usage.cost_usd for r in results),
        sample_requests=sum(r.usage.attempts for r in results),
        sample_cold_items=len(cold),
        items=items,
        requests=round(attempts),
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
        output_tokens_per_item=output / items if items else 0.0,
        cached_share=cached / input_tokens if input_tokens else 0.0,
        cost_usd=cost,
        cost_usd_batch=cost_batch,
        cost_usd_in_mode=cost_batch if stage.mode == "batch" else cost,
        floor_s=floors[binding],
        binding_limit=binding,
        limits=limits,
        throughput_floor_s=floors["throughput"],
        rate_floors_s={
            f"{llm.provider}|{llm.model}|{kind.removesuffix('_per_minute')}": v
            for kind, v in floors.items()
            if kind != "throughput"
        },
    )


def _stderr(hits: int, n: int, population: int) -> float:
    """The standard error of a rate measured on n of `population` items drawn without replacement."""
    if not n:
        return 0.0
    p = hits / n
    finite = (population - n) / (population - 1) if population > n > 0 and population > 1 else 0.0
    return (p * (1 - p) / n * finite) ** 0.5


def _mean_stderr(values: list[float], population: int) -> float:
    """The standard error of the mean of `values`, a sample of `population` items drawn without replacement."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    finite = max(0.0, (population - n) / (population - 1)) if population > 1 else 0.0
    return (variance / n * finite) ** 0.5


def _floors(
    llm: LLMResource,
    requests: float,
    usage: TokenUsage,
    results: list[ItemResult],
    parallel_runs: int,
    timing: _SampleTiming,
    chunk_items: list[int],
    retries: "RetryProfile",
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds the stage needs at least under each rate limit ("<kind>_per_minute") and at the throughput the
    sample showed ("throughput"), and the limits (module docstring, 5). `chunk_items`: the stage's items in each
    chunk run; `retries`: the endpoint's retry profile (`retry_profiles`)."""
    adapter = adapter_for(llm.provider, llm.dialect)

    def bucket_amounts(n: float, tokens: TokenUsage) -> dict[str, float]:
        """What n requests of `tokens` in all take from each bucket, by the adapter's own accounting (both wire
        formats count max_output_tokens, not the reply's length), on the mean request."""
        if not n:
            return {}
        per = TokenUsage(*(round(getattr(tokens, f) / n) for f in _TOKEN_FIELDS))
        actual = adapter.bucket_actuals(per, max(llm.max_output_tokens, per.output_tokens))
        return {kind: amount * n for kind, amount in actual.items()}

    amounts = bucket_amounts(requests, usage)
    floors: dict[str, float] = {}
    limits_out: dict[str, float] = {}
    sample_wait_s = 0.0
    if _configures_limits(llm):
        # Chunkwise's own admission governs (resources/llm/state_store.py): each bucket refills at its rate and
        # holds what it holds now (the sample just drew on it); the run needs what it does not hold.
        own = results[: timing.timed_results]
        sample_amounts = bucket_amounts(sum(r.usage.attempts for r in own), _sum_usage(own))
        for kind, (rate, capacity, level) in llm.bucket_levels().items():
            if kind in amounts and 0 < rate < PROBE_RPM / 60.0:
                floors[f"{kind}_per_minute"] = max(0.0, amounts[kind] - level) / rate
                limits_out[f"{kind}_per_minute"] = rate * 60.0
                limits_out[f"{kind}_bucket"] = capacity
                # A bucket the store did not have yet started full at its first capacity.
                fresh = rate * llm.rate_limit_burst_s * CAPACITY_SAFETY
                before = timing.levels_before.get(kind, (rate, fresh, fresh))[2]
                wait = max(0.0, sample_amounts.get(kind, 0.0) - before) / rate
                sample_wait_s = max(sample_wait_s, wait)
    else:
        # The provider's enforcement governs: its limits as stated in its headers. Its bucket holds a minute's
        # worth (a token bucket, as Anthropic documents and the simulator does), assumed full at launch.
        for kind, limit in llm.stated_limits().items():
            if kind in amounts and limit > 0:
                floors[f"{kind}_per_minute"] = 60.0 * max(0.0, amounts[kind] - limit) / limit
                limits_out[f"{kind}_per_minute"] = limit
    sent = sum(r.usage.attempts for r in results)
    latency = sum(r.usage.latency_s for r in results) / sent if sent else 0.0
    concurrency = llm.effective_max_concurrency()
    limits_out["concurrency"] = float(concurrency)
    # The sample ran at the stage's own concurrency, through the same client (prompt building, validation,
    # retries and their backoff). Each chunk run's stage lasts its makespan: its items, `concurrency` at a time,
    # each as long as a sample item of the stage took at its first attempt, plus, as often as the endpoint's
    # items needed a retry, what a retry took there. Parallel runs divide that waiting, but the client's CPU
    # work only over the cores there are. (The sample's own elapsed time, scaled to the run, was the measure
    # before: a sample of a few seconds holds one retry's backoff or none, which moved the floor by half.)
    timed = sum(r.usage.attempts for r in results[timing.skipped : timing.timed_results])
    cpu_pace = timing.cpu_s / timed if timed else 0.0
    runs = max(1, parallel_runs)
    # An item answered at its first send took one latency; a retried one's extra time is in `retries`.
    sent_items = [r for r in results if r.usage.attempts]
    clean = [r.usage.latency_s / r.usage.attempts for r in sent_items if not retry_spread(r)]
    clean = clean or [r.usage.latency_s / r.usage.attempts for r in sent_items]
    by_size = Counter(chunk_items)
    floors["throughput"] = max(
        requests * max(cpu_pace / min(runs, usable_cores()), latency / (concurrency * runs)),
        sum(count * chunk_makespan(clean, n, concurrency, retries) for n, count in by_size.items()) / runs,
        max(0.0, timing.elapsed_s - sample_wait_s) / timed * requests / runs / PACE_SLACK if timed else 0.0,
    )
    return floors, limits_out


def retry_spread(r: ItemResult) -> float:
    """Seconds from an item's first send to its last: its retries' latencies and the waits between them (backoff,
    a 429's retry-after, which is not an attempt); 0 for an item answered at its first send."""
    if r.first_attempt_at is None or r.last_attempt_at is None:
        return 0.0
    return max(0.0, (r.last_attempt_at - r.first_attempt_at).total_seconds())


MAKESPAN_DRAWS = 20
PACE_SLACK = 2.0
"""The sample's plain pace (its elapsed time over its requests, scaled to the run) bounds the floor from below
at half its value: the makespan models the client's known behaviour, and this catches what it does not (a send
window the provider's 429s narrowed, a client slower than its latencies) without letting one backoff in a
few-second sample set the run's floor."""


class RetryProfile(NamedTuple):
    """How often an item at one endpoint (provider and base URL) was sent more than once (`rate`, over
    every stage's sample items there) and how much longer each such item took (`extra_s`: from its first send
    to its last, backoff and retry-after included). Faults are the endpoint's, not a stage's: pooled over the
    stages, a later stage's few dozen items do not decide alone whether retries happen."""

    rate: float = 0.0
    extra_s: tuple[float, ...] = ()


def endpoint_of(llm: LLMResource) -> str:
    return f"{llm.provider}|{llm.base_url.rstrip('/')}"


def retry_profiles(sent: list[tuple[str, list[ItemResult]]]) -> dict[str, RetryProfile]:
    """Each endpoint's `RetryProfile` from the (endpoint, results) of every stage the sample sent."""
    items: Counter[str] = Counter()
    extra: dict[str, list[float]] = {}
    for endpoint, results in sent:
        items[endpoint] += len(results)
        spreads = extra.setdefault(endpoint, [])
        spreads += [spread for spread in map(retry_spread, results) if spread > 0]
    return {e: RetryProfile(len(extra[e]) / items[e] if items[e] else 0.0, tuple(extra[e])) for e in items}


def chunk_makespan(
    durations: list[float], items: int, concurrency: int, retries: RetryProfile = RetryProfile()
) -> float:
    """How long one chunk run's stage takes to answer `items` items, `concurrency` at a time, when each takes a
    duration drawn from `durations` (answered at the first attempt) and, at the rate `retries` measured, a
    retry's extra time on top: each item goes to the first free slot, and the stage ends with its slowest slot.
    A chunk waits for its last item, so one retry's backoff is a chunk's tail. The mean of MAKESPAN_DRAWS
    seeded draws."""
    if not durations or items <= 0:
        return 0.0
    rng = random.Random(items)
    total = 0.0
    for _ in range(MAKESPAN_DRAWS):
        slots = [0.0] * max(1, min(concurrency, items))
        for _ in range(items):
            took = rng.choice(durations)
            if retries.extra_s and rng.random() < retries.rate:
                took += rng.choice(retries.extra_s)
            heapq.heapreplace(slots, slots[0] + took)
        total += max(slots)
    return total / MAKESPAN_DRAWS


def usable_cores() -> int:
    """CPUs this process may run on: what concurrent chunk runs on this machine share."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _sum_usage(results: list[ItemResult]) -> TokenUsage:
    return TokenUsage(*(sum(getattr(r.usage, f) for r in results) for f in _TOKEN_FIELDS))


_TOKEN_FIELDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens")


def total_floor(stages: list[StageEstimate]) -> float:
    """The run's floor: the stages' throughput floors add up (a chunk runs its stages in order), while every
    rate-limit bucket refills the whole time, so the slowest bucket's need (its stages' needs added) bounds it
    on its own; the larger of the two."""
    return max(sum(s.throughput_floor_s for s in stages), rate_limit_need(stages))


def rate_limit_need(stages: list[StageEstimate]) -> float:
    """Seconds the slowest rate-limit bucket needs, its stages' needs added (stages of one provider and model
    share its buckets)."""
    by_bucket: dict[str, float] = {}
    for stage in stages:
        for bucket, seconds in stage.rate_floors_s.items():
            by_bucket[bucket] = by_bucket.get(bucket, 0.0) + seconds
    return max(by_bucket.values(), default=0.0)


def wall_clock(stages: list[StageEstimate], overhead_s: float, overhead_per_chunk_s: float) -> float:
    """The run's wall time: the stages' throughput plus the orchestration, or the rate-limit buckets' need plus
    one chunk run's orchestration, whichever is longer. A bucket refills while the runs start, write and check,
    so orchestration does not add to its need; only the last chunk's, after its last request, does (counted
    whole: how a run's orchestration splits around its requests is not measured). reviews, bound by its output
    limit on a machine with 2.9 s of orchestration per chunk run: 1.24 and 1.15 of the wall time with the
    orchestration added to the bucket's need."""
    throughput = sum(s.throughput_floor_s for s in stages)
    return max(throughput + overhead_s, rate_limit_need(stages) + min(overhead_s, overhead_per_chunk_s))


def _finish(
    spec: PipelineSpec,
    dataset: RegisteredDataset,
    scan: _Scan,
    stages: list[StageEstimate],
    home: Path,
    path: Path,
    version: str,
    sample_size: int,
    seed: int,
    parallel_runs: int,
    overhead: tuple[float, str],
) -> Estimate:
    overhead_per_chunk_s, overhead_source = overhead
    chunks = dataset.n_chunks
    floor_s = total_floor(stages)
    # Mostly CPU (process start, imports, events, Parquet): parallel runs share the cores.
    overhead_s = chunks * overhead_per_chunk_s / min(max(1, parallel_runs), usable_cores())
    in_mode = sum(s.cost_usd_in_mode for s in stages)
    stderr = cost_stderr(stages)
    largest = max(scan.chunk_items) if scan.chunk_items else 0
    largest_chunk = in_mode * largest / scan.total_items
    estimate = Estimate(
        dataset_id=dataset.dataset_id,
        pipeline=spec.name,
        spec_version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        total_items=scan.total_items,
        items_invalid=scan.items_invalid,
        chunks=chunks,
        text_tokens_total=scan.tokens_total,
        text_tokens_mean=scan.tokens_total / scan.total_items,
        text_tokens_p50=scan.quantile(0.5),
        text_tokens_p95=scan.quantile(0.95),
        text_tokens_max=max(scan.token_counts),
        sample_size=sample_size,
        seed=seed,
        sample_cost_usd=sum(s.sample_cost_usd for s in stages),
        sample_requests=sum(s.sample_requests for s in stages),
        sample_scope=sample_scope(dataset.dataset_id),
        stages=stages,
        total_requests=sum(s.requests for s in stages),
        total_input_tokens=sum(s.input_tokens for s in stages),
        total_cached_input_tokens=sum(s.cached_input_tokens for s in stages),
        total_output_tokens=sum(s.output_tokens for s in stages),
        total_cost_usd=sum(s.cost_usd for s in stages),
        total_cost_usd_batch=sum(s.cost_usd_batch for s in stages),
        total_cost_usd_in_mode=in_mode,
        route_sample_size=max((s.route_sample_items for s in stages), default=0),
        total_cost_usd_stderr=stderr,
        total_cost_usd_low=max(0.0, in_mode - 1.96 * stderr),
        total_cost_usd_high=in_mode + 1.96 * stderr,
        floor_s=floor_s,
        overhead_s=overhead_s,
        overhead_per_chunk_s=overhead_per_chunk_s,
        overhead_source=overhead_source,
        wall_clock_s=wall_clock(stages, overhead_s, overhead_per_chunk_s),
        cores=usable_cores(),
        parallel_runs=parallel_runs,
        budget=budget_verdict(spec, in_mode, largest_chunk),
        path=str(path),
    )
    write_estimate(estimate, path)
    return estimate


def cost_stderr(stages: list[StageEstimate]) -> float:
    """The in-mode total's standard error from sampling: each stage's route-rate error (cost x stderr / rate),
    added up (the routes read the same sample's answers: they err together), and each stage's per-item spread
    (items x the mean's stderr), in quadrature."""
    route = 0.0
    spread = 0.0
    for s in stages:
        scale = s.cost_usd_in_mode / s.cost_usd if s.cost_usd else 1.0  # the batch price, for a batch stage
        if 0 < s.sample_route_rate < 1:
            route += s.cost_usd_in_mode * s.sample_route_rate_stderr / s.sample_route_rate
        spread += (s.items * s.cost_per_item_stderr_usd * scale) ** 2
    return (route**2 + spread) ** 0.5


def budget_verdict(spec: PipelineSpec, cost_usd: float, largest_chunk_usd: float) -> BudgetVerdict:
    """The projected cost against `budgets.dataset_usd`, the largest chunk's against `budgets.run_usd`."""
    return verdict_for(spec.budgets.dataset_usd, spec.budgets.run_usd, cost_usd, largest_chunk_usd)


def verdict_for(
    dataset_cap: float | None, run_cap: float | None, cost_usd: float, largest_chunk_usd: float
) -> BudgetVerdict:
    """`budget_verdict` for caps given as numbers (USD; None: no cap): what the new-dataset sensor judges with."""
    over = []
    if dataset_cap is not None and cost_usd > dataset_cap:
        over.append(
            f"the dataset would cost ~${cost_usd:.4f}, over `budgets.dataset_usd` = ${dataset_cap:.4f}"
        )
    if run_cap is not None and largest_chunk_usd > run_cap:
        over.append(
            f"its largest chunk would cost ~${largest_chunk_usd:.4f}, over `budgets.run_usd` = ${run_cap:.4f}"
        )
    if over:
        message = (
            "; ".join(over)
            + ": raise the budget in the pipeline spec, or split the file, then estimate again"
        )
    elif dataset_cap is None and run_cap is None:
        message = f"~${cost_usd:.4f}; no budget set"
    else:
        message = f"~${cost_usd:.4f} fits the budgets"
    return BudgetVerdict(
        within_budget=not over,
        message=message,
        dataset_usd=dataset_cap,
        run_usd=run_cap,
        largest_chunk_cost_usd=largest_chunk_usd,
    )


def write_estimate(estimate: Estimate, path: Path) -> None:
    """Atomically (temp file + rename); with the shared backend also into its database, where the new-dataset
    sensor and the completion report on any machine read it (`load_estimate`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(estimate.model_dump_json(indent=2))
    os.replace(tmp, path)
    url = state_url()
    if url is not None:
        key = f"{estimate.pipeline}/{estimate.dataset_id}"
        SharedDocuments(url, ESTIMATE_KIND).put(key, estimate.model_dump(mode="json"))


# ------------------------------------------------------------------------------------------------ reading


def estimate_table(estimate: Estimate) -> str:
    """The per-stage table `make estimate` prints."""
    header = (
        f"{'stage':<14}{'model':<20}{'mode':<8}{'items':>8}{'requests':>10}{'input tok':>13}{'cached':>13}"
        f"{'output tok':>12}{'online $':>11}{'batch $':>10}{'floor s':>9}  binds"
    )
    lines = [header]
    for s in estimate.stages:
        lines.append(
            f"{s.stage:<14}{s.model:<20}{s.mode:<8}{s.items:>8,}{s.requests:>10,}{s.input_tokens:>13,}"
            f"{s.cached_input_tokens:>13,}{s.output_tokens:>12,}{s.cost_usd:>11.4f}{s.cost_usd_batch:>10.4f}"
            f"{s.floor_s:>9.1f}  {s.binding_limit}"
        )
    lines.append(
        f"{'total':<42}{estimate.total_items:>8,}{estimate.total_requests:>10,}{estimate.total_input_tokens:>13,}"
        f"{estimate.total_cached_input_tokens:>13,}{estimate.total_output_tokens:>12,}"
        f"{estimate.total_cost_usd:>11.4f}{estimate.total_cost_usd_batch:>10.4f}{estimate.floor_s:>9.1f}"
    )
    return "\n".join(lines)


def estimate_metadata(estimate: Estimate) -> dict[str, dg.MetadataValue]:
    """Numeric metadata for the UI (the estimate job's materialization)."""
    meta: dict[str, dg.MetadataValue] = {
        "dataset_id": dg.MetadataValue.text(estimate.dataset_id),
        "total_items": dg.MetadataValue.int(estimate.total_items),
        "total_cost_usd": dg.MetadataValue.float(round(estimate.total_cost_usd, 6)),
        "total_cost_usd_batch": dg.MetadataValue.float(round(estimate.total_cost_usd_batch, 6)),
        "total_cost_usd_low": dg.MetadataValue.float(round(estimate.total_cost_usd_low, 6)),
        "total_cost_usd_high": dg.MetadataValue.float(round(estimate.total_cost_usd_high, 6)),
        "route_sample_size": dg.MetadataValue.int(estimate.route_sample_size),
        "wall_clock_s": dg.MetadataValue.float(round(estimate.wall_clock_s, 2)),
        "sample_cost_usd": dg.MetadataValue.float(round(estimate.sample_cost_usd, 6)),
        "sample_size": dg.MetadataValue.int(estimate.sample_size),
        "within_budget": dg.MetadataValue.bool(estimate.budget.within_budget),
        "budget": dg.MetadataValue.text(estimate.budget.message),
        "estimate_json": dg.MetadataValue.path(estimate.path),
        "reused": dg.MetadataValue.bool(estimate.reused),
    }
    for s in estimate.stages:
        meta[f"{s.stage}_cost_usd"] = dg.MetadataValue.float(round(s.cost_usd, 6))
        meta[f"{s.stage}_requests"] = dg.MetadataValue.int(s.requests)
        meta[f"{s.stage}_floor_s"] = dg.MetadataValue.float(round(s.floor_s, 2))
    return meta


def clear_error(exc: BaseException) -> str:
    """One line for a user: an EstimateError's or a job-fatal provider answer's message."""
    if isinstance(exc, JobFatalError):
        return exc.description or str(exc)
    return str(exc)


__all__ = [
    "Estimate",
    "EstimateError",
    "StageEstimate",
    "estimate_dataset",
    "estimate_path",
    "load_estimate",
]


# ------------------------------------------------------------------------------------------------ the job


class EstimateConfig(dg.Config):
    dataset_id: str
    """A registered dataset of this pipeline (its manifest under CHUNKWISE_HOME/datasets)."""
    sample_size: int = 0
    """Items sent for real; 0: the spec's `estimate.sample_size`, else 400 at most a quarter of the dataset."""
    seed: int = -1
    """The sample's seed; -1: the spec's `estimate.seed`."""
    force: bool = False
    """Estimate again (and pay the sample again) even if `estimate.json` exists for the same spec and sample."""
    parallel_runs: int = 4
    """Chunk runs at once: the run queue's limit per provider in deploy/dagster.yaml and the demo's daemon."""


def estimate_job_name(pipeline: str) -> str:
    return f"{pipeline}__estimate_job"


def estimate_op_name(pipeline: str) -> str:
    return f"{pipeline}__estimate_dataset"


def estimate_asset_key(pipeline: str) -> dg.AssetKey:
    """`<pipeline>/estimate`: one materialization per estimate made, partition = dataset id; its metadata is
    the estimate (the UI plots it)."""
    return dg.AssetKey([pipeline, "estimate"])


def estimate_run_config(pipeline: str, dataset_id: str) -> dict[str, Any]:
    return {"ops": {estimate_op_name(pipeline): {"config": {"dataset_id": dataset_id}}}}


def build_estimate_job(spec: PipelineSpec) -> dg.JobDefinition:
    """`<pipeline>__estimate_job`: estimate one registered dataset (run config `dataset_id`, optional
    `sample_size`, `seed`, `force`), launched from the Launchpad or by the new-dataset sensor when the spec's
    `estimate.before_launch` is on. Records the estimate as an `AssetMaterialization` of `<pipeline>/estimate`
    (partition = dataset id) with numeric metadata. Needs the `settings` and `s3` resources."""
    from llm_assets.datasets import DatasetError, load_dataset

    @dg.op(
        name=estimate_op_name(spec.name),
        required_resource_keys={"settings", "s3"},
        out=dg.Out(dg.Nothing),
        description=f"Sends a seeded sample of a registered `{spec.name}` dataset through every stage (billed, "
        "spend ledger scope `estimate-<dataset id>`), projects cost and wall time to the whole dataset and writes "
        "`estimate.json` (llm_assets/estimate.py).",
    )
    def _estimate_op(context: dg.OpExecutionContext, config: EstimateConfig) -> Iterator[Any]:
        home = context.resources.settings.home_path()
        try:
            dataset = load_dataset(config.dataset_id, home)
        except DatasetError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        try:
            estimate = estimate_dataset(
                spec,
                dataset,
                context.instance,
                home,
                sample_size=config.sample_size or spec.estimate.sample_size,
                seed=spec.estimate.seed if config.seed < 0 else config.seed,
                s3=context.resources.s3,
                parallel_runs=max(1, config.parallel_runs),
                launched_runs=True,  # the sensors' chunk runs, each launched in a process of its own
                force=config.force,
                log=context.log,
            )
        except (EstimateError, JobFatalError) as exc:
            raise dg.Failure(description=clear_error(exc), allow_retries=False) from None
        context.log.info("\n" + estimate_table(estimate))
        context.log.info(f"budget: {estimate.budget.message}; estimate.json at {estimate.path}")
        metadata = estimate_metadata(estimate)
        yield dg.AssetMaterialization(
            asset_key=estimate_asset_key(spec.name),
            partition=dataset.dataset_id,
            description=f"Estimate of {dataset.dataset_id}: {estimate.budget.message}",
            metadata=metadata,
        )
        yield dg.Output(None, metadata=metadata)

    @dg.job(
        name=estimate_job_name(spec.name),
        tags={"chunkwise/pipeline": spec.name},
        executor_def=dg.in_process_executor,
        description=f"Estimate what a registered `{spec.name}` dataset will cost and how long it will take "
        "(a paid, seeded sample through every stage, projected to the whole file). Launch it with the dataset id "
        "in the run config; the result is `<home>/estimates/<pipeline>/<dataset id>/estimate.json` and the "
        f"metadata of `{spec.name}/estimate`.",
    )
    def _job() -> None:
        _estimate_op()

    return _job
