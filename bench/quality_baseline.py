"""The demo's quality baseline: how accurate is the simulator on BANKING77, chunk by chunk, and what does the
sampled gate see? The spec's `gates.sampled_quality.min_accuracy` is set from this (docs/quality_gates.md).

Starts the simulator as a process with the demo's config (scripts/demo_sim.yaml), registers the shipped
BANKING77 test split exactly as `make demo` does (the BANKING77 pipeline spec, pipelines/banking77.yaml: chunks
of 250), sends every item through the `classified` stage's own LLM resource and prompt (taxonomy and
data/banking77/few_shot.csv filled into its system prompt, its output schema), and scores each chunk against the
gold labels: the whole chunk, and the stage's sampled_quality gate's seeded sample (its `sample_size`, Wilson
lower bound at its one-sided `confidence`). Repeats with the simulator's `degrade_rate` raised, to show what the
gate catches.

    .venv/bin/python bench/quality_baseline.py [--degrade 0,0.4,0.8] [--items N] [--no-write]
    (`--degrade 0 --items 300 --no-write`: a quick check that it runs, two chunks)

Prints a table per degrade rate; writes its section of docs/benchmarks.md between `<!-- quality:start -->` and
`<!-- quality:end -->`. Numbers, not a pass/fail.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import NormalDist

import dagster as dg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.banking77 import banking77_data, banking77_spec, first_rows, simulator  # noqa: E402
from bench.docs import replace_section  # noqa: E402
from llm_assets.datasets import read_chunk  # noqa: E402
from llm_assets.pipeline_assets import build_llm_resource, register, stage_prompt  # noqa: E402
from llm_assets.quality_stats import sample_item_ids, wilson_lower_bound  # noqa: E402
from resources.llm import BudgetScope, LLMRequest  # noqa: E402
from scripts.demo import SIM_CONFIG  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
STAGE = "classified"


def measure(base_url: str, degrade: float, data: Path, home: Path) -> dict:
    httpx.post(f"{base_url}/_sim/faults", json={"degrade_rate": degrade}, timeout=10).raise_for_status()
    spec = banking77_spec()
    stage = spec.stage(STAGE)
    gate = stage.gates.sampled_quality
    assert gate is not None, f"pipelines/banking77.yaml: stage {STAGE} has a sampled_quality gate"
    prompt = stage_prompt(stage)
    z = NormalDist().inv_cdf(gate.confidence)
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(data), instance, home)
        # As a run builds it: the API key read from the variable the profile names, state beside the instance.
        with dg.build_resources(
            {"llm": build_llm_resource(spec, stage, home)}, instance=instance
        ) as resources:
            llm = resources.llm
            chunks = []
            for index, key in enumerate(dataset.partition_keys):
                frame = read_chunk(dataset, index)
                gold = dict(zip(frame["id"].astype(str), frame["label"], strict=True))
                texts = dict(zip(frame["id"].astype(str), frame["text"], strict=True))
                outcome = llm.run_prompts(
                    [LLMRequest(key=i, text=t) for i, t in texts.items()],
                    system_prompt=prompt.system_prompt, schema=prompt.schema, schema_name=prompt.schema_name,
                    scope=BudgetScope(run_id=f"bench-quality-{degrade}", dataset_id=dataset.dataset_id),
                    stage=STAGE,
                )  # fmt: skip
                labels = {r.key: r.output[gate.field] for r in outcome.results if r.ok and r.output}
                correct = {i: labels.get(i) == gold[i] for i in labels}
                sample = sample_item_ids(correct, key, gate.sample_size)
                k = sum(correct[i] for i in sample)
                chunks.append(
                    {
                        "partition": key,
                        "items": len(frame),
                        "labelled": len(labels),
                        "accuracy": sum(correct.values()) / len(correct) if correct else 0.0,
                        "sample_correct": k,
                        "sample_size": len(sample),
                        "lower_bound": wilson_lower_bound(k, len(sample), z),
                    }
                )
    total = sum(c["labelled"] for c in chunks)
    return {
        "degrade_rate": degrade,
        "dataset_id": dataset.dataset_id,
        "model": stage.model,
        "sample_size": gate.sample_size,
        "confidence": gate.confidence,
        "min_accuracy": gate.min_accuracy,
        "accuracy": sum(c["accuracy"] * c["labelled"] for c in chunks) / total if total else 0.0,
        "min_chunk_accuracy": min(c["accuracy"] for c in chunks),
        "min_lower_bound": min(c["lower_bound"] for c in chunks),
        "chunks": chunks,
    }


def _table(result: dict, threshold: float) -> str:
    lines = [
        f"degrade_rate={result['degrade_rate']}: accuracy {result['accuracy']:.3f} over {result['dataset_id']}; "
        f"worst chunk {result['min_chunk_accuracy']:.3f}; lowest sample bound {result['min_lower_bound']:.3f}",
        "",
        f"| chunk | items | chunk accuracy | sample | lower bound | gate at {threshold:.2f} |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in result["chunks"]:
        verdict = "pass" if c["lower_bound"] >= threshold else "FAIL"
        lines.append(
            f"| {c['partition']} | {c['items']} | {c['accuracy']:.3f} | {c['sample_correct']}/{c['sample_size']} "
            f"| {c['lower_bound']:.3f} | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--degrade", default="0,0.4,0.8", help="comma-separated simulator degrade rates")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the gate threshold to show verdicts for (default: the spec's sampled_quality min_accuracy)",
    )
    parser.add_argument(
        "--items", type=int, default=None, help="only the first N rows of the split (default: all 3,080)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = banking77_data()
        if args.items is not None:
            data = first_rows(data, Path(tmp) / f"first-{args.items}.csv", args.items)
        for rate in (float(x) for x in args.degrade.split(",")):
            # A fresh simulator per rate: the demo's token-per-minute limit is sized for one pass, not three.
            with simulator(SIM_CONFIG) as base_url, tempfile.TemporaryDirectory(dir=tmp) as home:
                results.append(measure(base_url, rate, data, Path(home)))
            threshold = args.threshold if args.threshold is not None else results[-1]["min_accuracy"]
            print(_table(results[-1], threshold), end="\n\n", flush=True)
    summary = {
        str(r["degrade_rate"]): {
            "accuracy": round(r["accuracy"], 4),
            "min_chunk_accuracy": round(r["min_chunk_accuracy"], 4),
            "min_lower_bound": round(r["min_lower_bound"], 4),
            "chunks_failing": sum(c["lower_bound"] < threshold for c in r["chunks"]),
            "chunks": len(r["chunks"]),
        }
        for r in results
    }
    if not args.no_write:
        first = results[0]
        items = sum(c["items"] for c in first["chunks"])
        text = (
            "## Quality baseline (`python bench/quality_baseline.py`)\n\n"
            f"Simulator `{first['model']}` on BANKING77 ({items:,} items, chunks of 250), the `{STAGE}` stage's "
            "prompt of pipelines/banking77.yaml (taxonomy and data/banking77/few_shot.csv filled in); sampled gate "
            f"as in the spec: {first['sample_size']} items per chunk, Wilson lower bound at "
            f"{first['confidence']:.0%} one-sided, threshold {threshold:.2f}.\n\n"
            + "\n\n".join(_table(r, threshold) for r in results)
            + f"\n\n```json\n{json.dumps(summary)}\n```"
        )
        replace_section(DOCS, "quality", text)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
