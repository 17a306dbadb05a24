"""The demo's quality baseline: how accurate is the simulator on BANKING77, chunk by chunk, and what does the
sampled gate see? The demo's `min_sampled_accuracy` is set from this (docs/quality_gates.md).

Starts the simulator as a process with the demo's config (scripts/demo_sim.yaml), registers the shipped
BANKING77 test split exactly as `make demo` does (chunks of 250), sends every item through the product's
LLMResource with the demo's classification prompt (taxonomy + data/banking77/few_shot.csv), and scores each
chunk against the gold labels: the whole chunk, and the gate's seeded sample (50 items, Wilson lower bound at
95% one-sided confidence). Repeats with the simulator's `degrade_rate` raised, to show what the gate catches.

    .venv/bin/python bench/quality_baseline.py [--degrade 0,0.4,0.8] [--no-write]

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
sys.path.insert(0, str(ROOT / "scripts"))

from demo import BANKING, SIM_KEY, start_simulator  # noqa: E402

from llm_assets.datasets import DatasetSpec, load_team_rules, read_chunk, register_dataset  # noqa: E402
from llm_assets.prompts import classify_prompt, load_few_shot, load_taxonomy  # noqa: E402
from llm_assets.quality_stats import sample_item_ids, wilson_lower_bound  # noqa: E402
from llm_assets.settings import DEFAULT_TAXONOMY  # noqa: E402
from resources.llm import BudgetScope, LLMRequest, LLMResource  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- quality:start -->", "<!-- quality:end -->"
SAMPLE_SIZE = 50
CONFIDENCE = 0.95
MODEL = "gpt-6-luna"


def measure(base_url: str, degrade: float, home: Path) -> dict:
    httpx.post(f"{base_url}/_sim/faults", json={"degrade_rate": degrade}, timeout=10).raise_for_status()
    taxonomy = load_taxonomy(DEFAULT_TAXONOMY)
    prompt = classify_prompt(taxonomy, load_few_shot(BANKING.parent / "few_shot.csv", taxonomy))
    llm = LLMResource(provider="openai", base_url=f"{base_url}/v1", api_key=SIM_KEY, model=MODEL,
                      state_dir=str(home / "llm_state"), max_concurrency=32)  # fmt: skip
    z = NormalDist().inv_cdf(CONFIDENCE)
    with dg.instance_for_test() as instance:
        spec = DatasetSpec(
            uri=str(BANKING), name="banking77", chunk_size=250, column_map={"category": "label"}, id_column=None,
            team_from_label=load_team_rules(BANKING.parent / "teams.json"),
        )  # fmt: skip
        dataset = register_dataset(spec, instance, home)
        chunks = []
        for index, key in enumerate(dataset.partition_keys):
            frame = read_chunk(dataset, index)
            gold = dict(zip(frame["id"].astype(str), frame["label"], strict=True))
            texts = dict(zip(frame["id"].astype(str), frame["text"], strict=True))
            outcome = llm.run_prompts(
                [LLMRequest(key=i, text=t) for i, t in texts.items()],
                system_prompt=prompt.system_prompt, schema=prompt.schema, schema_name=prompt.schema_name,
                scope=BudgetScope(run_id=f"bench-quality-{degrade}", dataset_id=dataset.dataset_id), stage="classified",
            )  # fmt: skip
            labels = {r.key: r.output["label"] for r in outcome.results if r.ok and r.output}
            correct = {i: labels.get(i) == gold[i] for i in labels}
            sample = sample_item_ids(correct, key, SAMPLE_SIZE)
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
        "--threshold", type=float, default=0.10, help="the gate threshold to show verdicts for"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    results = []
    for rate in (float(x) for x in args.degrade.split(",")):
        # A fresh simulator per rate: the demo's token-per-minute limit is sized for one pass, not three.
        proc, base_url = start_simulator()
        try:
            with tempfile.TemporaryDirectory() as home:
                results.append(measure(base_url, rate, Path(home)))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        print(_table(results[-1], args.threshold), end="\n\n", flush=True)
    summary = {
        str(r["degrade_rate"]): {
            "accuracy": round(r["accuracy"], 4),
            "min_chunk_accuracy": round(r["min_chunk_accuracy"], 4),
            "min_lower_bound": round(r["min_lower_bound"], 4),
            "chunks_failing": sum(c["lower_bound"] < args.threshold for c in r["chunks"]),
            "chunks": len(r["chunks"]),
        }
        for r in results
    }
    if not args.no_write:
        section = (
            f"{START}\n## Quality baseline (`python bench/quality_baseline.py`)\n\n"
            f"Simulator `{MODEL}` on BANKING77 (3,080 items, chunks of 250), the demo prompt with "
            f"data/banking77/few_shot.csv; sampled gate: {SAMPLE_SIZE} items per chunk, Wilson lower bound at "
            f"{CONFIDENCE:.0%} one-sided, threshold {args.threshold:.2f}.\n\n"
            + "\n\n".join(_table(r, args.threshold) for r in results)
            + f"\n\n```json\n{json.dumps(summary)}\n```\n{END}"
        )
        text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
        if START in text and END in text:
            text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        DOCS.write_text(text)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
