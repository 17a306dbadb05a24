"""What batch mode saves: cost per 1,000 demo items, online vs batch vs batch with the cascade (not a test).

The first `--items` rows of the shipped BANKING77 split go through the BANKING77 pipeline spec
(pipelines/banking77.yaml: banking77/items -> classified -> enriched, their quality gates, the cost ledger and
completion report; chunks of 250 as in the spec) four times, each against a fresh simulator with no faults and no
latency (deterministic, so the four runs answer alike), with the stages' `mode` and `enriched.route` overridden:
- `online, route all`: every item through both models, request by request (`route: all`);
- `online, cascade`: the stronger model only on low-confidence items (the spec's route, `classified.confidence
  < 0.3`);
- `batch, route all`: both stages through the providers' Batch API (half price), collected the way the
  daemon's batch_poll_sensor does (scripts/demo.py `collect_batches`);
- `batch, cascade`: both savings together.
Per variant: USD per 1,000 items (the completion report's total over its items), USD per stage, accuracy of
the labels against gold (all items) and the sampled gate's accuracy, the simulator's billed USD (must equal
the report), wall time. Writes the section between `<!-- batch:start -->` and `<!-- batch:end -->` of
docs/benchmarks.md and prints a JSON line.

Usage: .venv/bin/python bench/batch_cost.py [--items 1000] [--no-write]
       (`--items 20 --no-write`: a quick check that it runs, one chunk per variant)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.banking77 import banking77_data, banking77_spec, first_rows, simulator  # noqa: E402
from bench.docs import replace_section  # noqa: E402
from llm_assets.location import build_defs  # noqa: E402
from llm_assets.pipeline_assets import register, spec_layout  # noqa: E402
from scripts.demo import collect_batches  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
VARIANTS = [
    ("online, route all", "online", "all"),
    ("online, cascade", "online", None),
    ("batch, route all", "batch", "all"),
    ("batch, cascade", "batch", None),
]
"""(name, every stage's `mode`, `enriched.route`: None keeps the spec's low-confidence route)."""


def run_variant(data: Path, mode: str, route: str | None, workdir: Path) -> dict:
    home = workdir / f"{mode}-{route or 'cascade'}"
    with simulator() as root:
        enriched = {"mode": mode, **({"route": route} if route else {})}
        spec = banking77_spec({"stages": {"classified": {"mode": mode}, "enriched": enriched}})
        layout = spec_layout(spec)
        defs = build_defs([spec], home=home, sensors=[])
        started = time.monotonic()
        with dg.instance_for_test() as instance:
            dataset = register(spec, str(data), instance, home)
            job = defs.resolve_job_def(layout.chunk_job)
            for key in dataset.partition_keys:
                job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False)
            if mode == "batch":
                collect_batches(defs, instance, home, dataset.partition_keys, timeout_s=600, layout=layout)
            instance.add_dynamic_partitions(layout.datasets_partitions, [dataset.dataset_id])
            done = defs.resolve_job_def(layout.completion_job).execute_in_process(
                instance=instance, partition_key=dataset.dataset_id, raise_on_error=False
            )
            if not done.success:
                raise RuntimeError(f"{mode}/{route}: the completion report failed; some chunk is not done")
        wall = time.monotonic() - started
        report = json.loads((home / "reports" / dataset.dataset_id / "completion_report.json").read_text())
        billed = httpx.get(f"{root}/_sim/stats", timeout=5).json()["billed_usd"]
    items = report["total_items"]
    sampled = report["checks"]["sampled_accuracy"]
    return {
        "mode": mode,
        "route": route or spec.stage("enriched").route,
        "items": items,
        "succeeded": report["succeeded"],
        "usd_per_1000": 1000 * report["total_cost_usd"] / items,
        "usd_total": report["total_cost_usd"],
        "cost_by_stage": report["cost_by_stage"],
        "cost_by_mode": report.get("cost_by_mode", {}),
        "billed_usd": billed,
        "accuracy": report["accuracy"],
        "sampled_accuracy": sampled["accuracy"],
        "sampled_n": sampled["scored"],
        "wall_s": wall,
    }


def render(rows: list[dict], n_items: int) -> str:
    base = rows[0]["usd_per_1000"]
    lines = [
        "## Batch mode: cost per 1,000 items (bench/batch_cost.py)",
        "",
        f"The first {n_items:,} BANKING77 items (chunks of 250) through the whole BANKING77 pipeline spec "
        "(pipelines/banking77.yaml, every stage's `mode` and `enriched.route` overridden) against the simulator "
        "(no faults, no latency; batches complete in 2 s). USD from the completion report, which equals the "
        "simulator's ledger (`billed`). Accuracy: labels vs gold over every item, and the sampled quality gate's "
        "pooled sample. Batch lines cost 50% of online at both providers; the cascade sends only low-confidence "
        "items (< 0.3) to the stronger model. Wall time is the simulator's, not a provider's (real batches take "
        "minutes to 24 h).",
        "",
        "| variant | USD / 1,000 items | vs online, route all | classified | enriched | billed USD | accuracy "
        "| sampled accuracy (n) | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (name, _, _), r in zip(VARIANTS, rows, strict=True):
        stage = r["cost_by_stage"]
        lines.append(
            f"| {name} | ${r['usd_per_1000']:.4f} | {r['usd_per_1000'] / base:.0%} | "
            f"${stage.get('classified', 0.0):.4f} | ${stage.get('enriched', 0.0):.4f} | ${r['billed_usd']:.4f} | "
            f"{_share(r['accuracy'])} | {_share(r['sampled_accuracy'])} ({r['sampled_n']}) | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    """An accuracy, or `n/a` when the report has none (no gold label reached it)."""
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chunkwise-batch-bench-") as tmp:
        workdir = Path(tmp)
        # instance_for_test makes its own instance; this keeps any stray state in the temporary folder
        os.environ["DAGSTER_HOME"] = str(workdir)
        data = first_rows(banking77_data(), workdir / f"first-{args.items}.csv", args.items)
        rows = [run_variant(data, mode, route, workdir) for _, mode, route in VARIANTS]
    text = render(rows, args.items)
    print(text)
    print(json.dumps(rows))
    if not args.no_write:
        replace_section(DOCS, "batch", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
