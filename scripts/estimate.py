"""`make estimate [PIPELINE=...] DATA=... [SAMPLE=...] [SEED=...]`: what a dataset will cost and how long it will
take, before any chunk runs (llm_assets/estimate.py says how).

Like `make demo`, it starts the local simulator unless `CHUNKWISE_LLM_BASE_URL` points elsewhere, and uses the
demo's Dagster instance under `$CHUNKWISE_HOME`. It registers the file as the pipeline's dataset (idempotent),
sends a seeded sample through every stage for real (billed; spend ledger scope `estimate-<dataset id>`), and
prints a per-stage table, the budget verdict and the sample's spend; the last line is the path of
`estimate.json`. Running it again for the same file and spec reads that file back and sends nothing.
Bad input (an empty file, a sample larger than the dataset, a budget below the sample's worst case): one line on
stderr, exit 2, nothing sent.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from scripts.demo import (
    DEFAULT_PIPELINE,
    demo_sim_config,
    point_at_simulator,
    prepare_instance,
    start_simulator,
)
from scripts.demo_daemon import DEMO_MAX_RUNS


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"chunkwise: {message}; see `python -m scripts.estimate --help`\n")


def main(argv: list[str] | None = None) -> int:
    from llm_assets.estimate import DEFAULT_SAMPLE_SIZE, DEFAULT_SEED

    parser = _OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=str(DEFAULT_PIPELINE), help="the pipeline spec (YAML)")
    parser.add_argument(
        "--data", default=None, help="the file to estimate (default: the spec's input.demo_data)"
    )
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: the spec's)")
    parser.add_argument(
        "--sample-size",
        type=int,
        default=None,
        help=f"items sent for real (default: the spec's estimate.sample_size, else {DEFAULT_SAMPLE_SIZE} and at most "
        "a quarter of the dataset)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"the sample's seed (default: the spec's estimate.seed, {DEFAULT_SEED})",
    )
    parser.add_argument("--force", action="store_true", help="estimate again even if estimate.json exists")
    parser.add_argument(
        "--parallel-runs",
        type=int,
        default=DEMO_MAX_RUNS,
        help=f"chunk runs at once (default {DEMO_MAX_RUNS}: the demo daemon's run queue, as `make demo` runs them; "
        "1: one after another, as `python -m scripts.demo --in-process`)",
    )
    args = parser.parse_args(argv)

    sim = None
    if not os.environ.get("CHUNKWISE_LLM_BASE_URL"):
        from llm_assets.settings import chunkwise_home

        # The demo's simulator, answer key included, so the estimate meets the same models `make demo` runs.
        sim, root = start_simulator(
            demo_sim_config(Path(args.pipeline), chunkwise_home() / "demo" / "simulator")
        )
        point_at_simulator(root)
        print(f"simulator (a local test double, not a real model) at {root}")
    elif not os.environ.get("CHUNKWISE_LLM_API_KEY"):
        print(
            "chunkwise: CHUNKWISE_LLM_BASE_URL is set but CHUNKWISE_LLM_API_KEY is not; export the key",
            file=sys.stderr,
        )
        return 2
    try:
        return _run(args)
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(timeout=10)


def _run(args: argparse.Namespace) -> int:
    # Imported late: the spec reads the provider settings from the environment set above.
    import dagster as dg

    from llm_assets.datasets import DatasetError
    from llm_assets.estimate import (
        EstimateError,
        clear_error,
        estimate_dataset,
        estimate_table,
        rate_limit_need,
    )
    from llm_assets.location import s3_for
    from llm_assets.pipeline_assets import register
    from llm_assets.settings import chunkwise_home
    from llm_assets.spec import PipelineSpecError, load_pipeline
    from resources.llm.errors import JobFatalError

    home = chunkwise_home()
    if not os.environ.get("DAGSTER_HOME"):  # the demo's instance, so `make ui` shows what was registered
        prepare_instance(home)
    try:
        spec = load_pipeline(args.pipeline)
    except PipelineSpecError as exc:
        for line in str(exc).splitlines():
            print(f"chunkwise: {line}", file=sys.stderr)
        return 2
    data = args.data or spec.input.demo_data
    if not data:
        print(
            f"chunkwise: {args.pipeline} has no input.demo_data; give a file with DATA=...", file=sys.stderr
        )
        return 2
    sample_size = args.sample_size if args.sample_size is not None else spec.estimate.sample_size
    seed = args.seed if args.seed is not None else spec.estimate.seed
    instance = dg.DagsterInstance.get()
    try:
        dataset = register(
            spec, str(data), instance, home, s3=s3_for(str(data), specs=[spec]), chunk_size=args.chunk_size
        )
        estimate = estimate_dataset(
            spec,
            dataset,
            instance,
            home,
            sample_size=sample_size,
            seed=seed,
            s3=s3_for(str(data), specs=[spec]),
            force=args.force,
            parallel_runs=max(1, args.parallel_runs),
            launched_runs=True,  # `make demo`'s daemon launches each chunk run in a process of its own
        )
    except (DatasetError, EstimateError, JobFatalError) as exc:
        print(f"chunkwise: {clear_error(exc)}", file=sys.stderr)
        return 2
    print(
        f"{spec.name} on {dataset.dataset_id}: {estimate.total_items:,} items in {estimate.chunks} chunks; text "
        f"tokens mean {estimate.text_tokens_mean:.1f}, p50 {estimate.text_tokens_p50}, p95 "
        f"{estimate.text_tokens_p95}, max {estimate.text_tokens_max} (whole file)"
    )
    print(estimate_table(estimate))
    print(
        f"cost: ${estimate.total_cost_usd:.4f} online, ${estimate.total_cost_usd_batch:.4f} batch "
        f"(${estimate.total_cost_usd_in_mode:.4f} in the spec's modes; 95% from sampling: "
        f"${estimate.total_cost_usd_low:.4f}-${estimate.total_cost_usd_high:.4f})"
    )
    throughput = sum(s.throughput_floor_s for s in estimate.stages)
    print(
        f"wall clock: ~{estimate.wall_clock_s:.1f}s, the longer of {throughput:.1f}s throughput + "
        f"{estimate.overhead_s:.1f}s orchestration ({estimate.chunks} chunk runs x "
        f"{estimate.overhead_per_chunk_s:.2f}s, {estimate.parallel_runs} at a time on {estimate.cores} cores) and "
        f"{rate_limit_need(estimate.stages):.1f}s of rate limits + one chunk run's orchestration (the limits "
        "refill while runs orchestrate)"
    )
    print(f"orchestration per chunk run: {estimate.overhead_source}")
    verdict = (
        "within budget" if estimate.budget.within_budget else "OVER BUDGET: chunks would not be launched"
    )
    print(f"budget: {verdict}: {estimate.budget.message}")
    reused = " (earlier estimate read back: nothing sent now)" if estimate.reused else ""
    print(
        f"sample: {estimate.sample_size} items (seed {estimate.seed}; the first stage {estimate.route_sample_size}, "
        f"to measure the routes), {estimate.sample_requests} requests, "
        f"${estimate.sample_cost_usd:.4f} billed, spend ledger scope {estimate.sample_scope}{reused}"
    )
    print(Path(estimate.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
