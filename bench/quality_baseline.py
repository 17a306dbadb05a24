"""The demo's quality baseline: how often does the `classified` stage's sampled_quality gate fail a chunk of an
honest run, and of a degraded one? The spec's `gates.sampled_quality.min_accuracy` is set from this
(docs/quality_gates.md).

For each simulator seed, starts the simulator as a process with the demo's config and answer key
(scripts/demo.py `demo_sim_config`: the cheap classifier right on 75% of BANKING77, the strong model on 92%;
latency zeroed, it changes no answer), registers the shipped BANKING77 test split exactly as `make demo` does
(pipelines/banking77.yaml: chunks of 250), sends every item through the `classified` stage's own LLM resource and
prompt, and asks the gate's own verdict function (llm_assets/checks.py `sampled_quality_outcome`: the seeded
sample of `sample_size`, Wilson lower bound at the one-sided `confidence`) whether each chunk passes. Repeats
with the simulator's `degrade_rate` raised (the label of that share of items replaced by a wrong one).

The threshold it derives is the highest `min_accuracy` (in steps of 0.01) at which at most 1% of the honest
chunks fail, as measured and as a binomial model of the sample expects (`sample_size` items at the measured
accuracy: 65 chunks alone cannot show a 1% rate); at it, it reports the honest and each degraded fail rate,
measured and expected. It also reports the accuracy of the
items under and over the `enriched` stage's route (`classified.confidence < 0.3`), and the strong model's
accuracy as the gate's judge (on the first seed).

    .venv/bin/python bench/quality_baseline.py [--seeds 7,1,2,3,4] [--degrade 0,0.3] [--items N] [--no-write]
    (`--seeds 7 --degrade 0 --items 300 --no-write`: a quick check that it runs, two chunks)

Writes its section of docs/benchmarks.md between `<!-- quality:start -->` and `<!-- quality:end -->`. Numbers,
not a pass/fail.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from math import comb
from pathlib import Path
from statistics import NormalDist

import dagster as dg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.banking77 import BANKING77_SPEC, banking77_data, banking77_spec, first_rows, simulator  # noqa: E402
from bench.docs import replace_section  # noqa: E402
from llm_assets.checks import sampled_quality_outcome  # noqa: E402
from llm_assets.datasets import read_chunk  # noqa: E402
from llm_assets.pipeline_assets import build_llm_resource, register, stage_prompt  # noqa: E402
from llm_assets.pipeline_checks import judge_llm_resource, judge_prompt  # noqa: E402
from llm_assets.quality_stats import sample_item_ids, wilson_lower_bound  # noqa: E402
from llm_assets.spec import SampledQualityGate, load_pipeline  # noqa: E402
from llm_assets.spec_template import render  # noqa: E402
from resources.llm import BudgetScope, LLMRequest  # noqa: E402
from scripts.demo import DEMO_ACCURACY, demo_sim_config  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
STAGE = "classified"
ROUTE_AT = 0.3
"""pipelines/banking77.yaml: `enriched` takes the items with `classified.confidence < 0.3`."""
MAX_HONEST_FAILS = 0.01
"""The derived threshold fails at most this share of honest chunks."""


@dataclass(frozen=True)
class ChunkAnswers:
    """One chunk's `classified` answers as the gate sees them: item id -> label / confidence (items the stage
    answered) and -> gold label."""

    partition: str
    items: int
    labels: dict[str, str]
    confidence: dict[str, float]
    gold: dict[str, str]

    def verdict(self, gate: SampledQualityGate, threshold: float) -> tuple[bool, float, int, int]:
        """(passed, lower bound, correct, sampled) from the gate's own verdict function at `threshold`."""
        sample = sample_item_ids(self.labels, self.partition, gate.sample_size)
        outcome = sampled_quality_outcome(
            sample, self.labels, {i: self.gold[i] for i in sample}, {},
            field=gate.field, threshold=threshold, confidence=gate.confidence, not_scored="not scored",
        )  # fmt: skip
        meta = outcome.metadata
        return (
            outcome.passed,
            float(meta["accuracy_lower_bound"].value),
            int(meta["sample_correct"].value),
            int(meta["sample_size"].value),
        )

    @property
    def right(self) -> dict[str, bool]:
        return {i: label == self.gold[i] for i, label in self.labels.items()}


@dataclass(frozen=True)
class Pass:
    """Every chunk of the split through `classified`, at one seed and degrade rate."""

    seed: int
    degrade_rate: float
    dataset_id: str
    chunks: list[ChunkAnswers]

    def accuracy(self) -> float:
        right = [r for c in self.chunks for r in c.right.values()]
        return sum(right) / len(right) if right else 0.0


def run_pass(base_url: str, seed: int, degrade: float, data: Path, home: Path) -> Pass:
    httpx.post(f"{base_url}/_sim/faults", json={"degrade_rate": degrade}, timeout=10).raise_for_status()
    spec = banking77_spec()
    stage = spec.stage(STAGE)
    prompt = stage_prompt(stage)
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(data), instance, home)
        # As a run builds it: the API key read from the variable the profile names, state beside the instance.
        with dg.build_resources(
            {"llm": build_llm_resource(spec, stage, home)}, instance=instance
        ) as resources:
            chunks = []
            for index, key in enumerate(dataset.partition_keys):
                frame = read_chunk(dataset, index)
                texts = dict(zip(frame["id"].astype(str), frame["text"], strict=True))
                outcome = resources.llm.run_prompts(
                    [LLMRequest(key=i, text=t) for i, t in texts.items()],
                    system_prompt=prompt.system_prompt, schema=prompt.schema, schema_name=prompt.schema_name,
                    scope=BudgetScope(run_id=f"bench-quality-{seed}-{degrade}", dataset_id=dataset.dataset_id),
                    stage=STAGE,
                )  # fmt: skip
                answered = [r for r in outcome.results if r.ok and r.output]
                chunks.append(
                    ChunkAnswers(
                        partition=key,
                        items=len(frame),
                        labels={r.key: r.output["label"] for r in answered},
                        confidence={r.key: float(r.output["confidence"]) for r in answered},
                        gold=dict(zip(frame["id"].astype(str), frame["label"], strict=True)),
                    )
                )
    return Pass(seed, degrade, dataset.dataset_id, chunks)


def judge_accuracy(data: Path, home: Path) -> tuple[str, float, int]:
    """(model, share right, items) of the gate's judge (the strong model) on every item, scored against gold."""
    spec = banking77_spec()
    stage = spec.stage(STAGE)
    gate = stage.gates.sampled_quality
    assert gate is not None and gate.judge is not None
    prompt = judge_prompt(stage)
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(data), instance, home)
        with dg.build_resources(
            {"llm": judge_llm_resource(spec, stage, home)}, instance=instance
        ) as resources:
            right = []
            for index in range(dataset.n_chunks):
                frame = read_chunk(dataset, index)
                gold = dict(zip(frame["id"].astype(str), frame["label"], strict=True))
                requests = [
                    LLMRequest(key=i, text=render(gate.judge.user_template, {"text": t}))
                    for i, t in zip(frame["id"].astype(str), frame["text"], strict=True)
                ]
                outcome = resources.llm.run_prompts(
                    requests, system_prompt=prompt.system_prompt, schema=prompt.schema,
                    schema_name=prompt.schema_name, stage=prompt.stage,
                    scope=BudgetScope(run_id="bench-quality-judge", dataset_id=dataset.dataset_id),
                )  # fmt: skip
                field = gate.judge.answer_field or gate.field
                right += [r.output[field] == gold[r.key] for r in outcome.results if r.ok and r.output]
    return gate.judge.model, sum(right) / len(right), len(right)


def fail_share(passes: list[Pass], gate: SampledQualityGate, threshold: float) -> tuple[int, int]:
    """(chunks failed, chunks) over `passes` at `threshold`."""
    verdicts = [c.verdict(gate, threshold)[0] for p in passes for c in p.chunks]
    return sum(not v for v in verdicts), len(verdicts)


def derive_threshold(honest: list[Pass], gate: SampledQualityGate) -> float:
    """The highest threshold (steps of 0.01) at which at most `MAX_HONEST_FAILS` of the honest chunks fail, both
    as measured and as a binomial sample of the measured honest accuracy expects (a few dozen chunks cannot
    show a 1% rate on their own)."""
    accuracy = sum(p.accuracy() for p in honest) / len(honest)
    for step in range(99, 0, -1):
        failed, total = fail_share(honest, gate, step / 100)
        expected = expected_fail_rate(accuracy, gate.sample_size, gate.confidence, step / 100)
        if failed <= MAX_HONEST_FAILS * total and expected <= MAX_HONEST_FAILS:
            return step / 100
    return 0.0


def expected_fail_rate(accuracy: float, n: int, confidence: float, threshold: float) -> float:
    """P(the Wilson lower bound of a sample of `n` items, each right with probability `accuracy`, < threshold)."""
    z = NormalDist().inv_cdf(confidence)
    return sum(
        comb(n, k) * accuracy**k * (1 - accuracy) ** (n - k)
        for k in range(n + 1)
        if wilson_lower_bound(k, n, z) < threshold
    )


def route_split(honest: list[Pass]) -> dict[str, float]:
    """The honest items under and over the route's confidence: their share and accuracy."""
    under, over = [], []
    for p in honest:
        for c in p.chunks:
            for i, right in c.right.items():
                (under if c.confidence[i] < ROUTE_AT else over).append(right)
    total = len(under) + len(over)
    return {
        "share_under": len(under) / total,
        "accuracy_under": sum(under) / len(under) if under else 0.0,
        "accuracy_over": sum(over) / len(over) if over else 0.0,
    }


def _per_pass_table(passes: list[Pass], gate: SampledQualityGate, threshold: float) -> str:
    lines = [
        f"| seed | degrade_rate | accuracy | worst chunk | sample lower bounds (min / median / max) "
        f"| chunks failing at {threshold:.2f} |",
        "| ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for p in passes:
        verdicts = [c.verdict(gate, threshold) for c in p.chunks]
        bounds = sorted(v[1] for v in verdicts)
        worst = min(sum(c.right.values()) / len(c.right) for c in p.chunks)
        lines.append(
            f"| {p.seed} | {p.degrade_rate} | {p.accuracy():.3f} | {worst:.3f} | {bounds[0]:.3f} / "
            f"{bounds[len(bounds) // 2]:.3f} / {bounds[-1]:.3f} | {sum(not v[0] for v in verdicts)}/{len(verdicts)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seeds", default="7,1,2,3,4", help="simulator seeds, comma-separated (7: the demo's own)"
    )
    parser.add_argument("--degrade", default="0,0.3", help="comma-separated simulator degrade rates")
    parser.add_argument(
        "--items", type=int, default=None, help="only the first N rows of the split (default: all 3,080)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",")]
    rates = [float(x) for x in args.degrade.split(",")]
    if 0.0 not in rates:
        parser.error("--degrade must include 0 (the honest run the threshold is derived from)")
    passes: list[Pass] = []
    judge = None
    with tempfile.TemporaryDirectory() as tmp:
        data = banking77_data()
        if args.items is not None:
            data = first_rows(data, Path(tmp) / f"first-{args.items}.csv", args.items)
        for seed in seeds:
            for rate in rates:
                # A fresh simulator per pass: the demo's token-per-minute limit is sized for one pass.
                config = demo_sim_config(BANKING77_SPEC, Path(tmp) / "sim", {"seed": seed, "latency": {}})
                with simulator(config) as base_url, tempfile.TemporaryDirectory(dir=tmp) as home:
                    passes.append(run_pass(base_url, seed, rate, data, Path(home)))
                    if judge is None and rate == 0.0:
                        judge = judge_accuracy(data, Path(home))
                print(f"seed {seed}, degrade_rate {rate}: accuracy {passes[-1].accuracy():.3f}", flush=True)
    spec = load_pipeline(BANKING77_SPEC, require_secrets=False)  # the gate as shipped
    gate = spec.stage(STAGE).gates.sampled_quality
    assert gate is not None, f"pipelines/banking77.yaml: stage {STAGE} has a sampled_quality gate"
    honest = [p for p in passes if p.degrade_rate == 0.0]
    threshold = derive_threshold(honest, gate)
    summary = {
        "model": spec.stage(STAGE).model,
        "configured_accuracy": DEMO_ACCURACY,
        "seeds": seeds,
        "sample_size": gate.sample_size,
        "confidence": gate.confidence,
        "spec_min_accuracy": gate.min_accuracy,
        "derived_threshold": threshold,
        "by_degrade_rate": {},
        "route": {"at": ROUTE_AT, **{k: round(v, 4) for k, v in route_split(honest).items()}},
    }
    if judge is not None:
        summary["judge"] = {"model": judge[0], "accuracy": round(judge[1], 4), "items": judge[2]}
    for rate in rates:
        at_rate = [p for p in passes if p.degrade_rate == rate]
        failed, total = fail_share(at_rate, gate, threshold)
        spec_failed, _ = fail_share(at_rate, gate, gate.min_accuracy)
        accuracy = sum(p.accuracy() for p in at_rate) / len(at_rate)
        summary["by_degrade_rate"][str(rate)] = {
            "accuracy": round(accuracy, 4),
            "chunks": total,
            "failing_at_derived": failed,
            "fail_rate_at_derived": round(failed / total, 4),
            "expected_fail_rate_at_derived": round(
                expected_fail_rate(accuracy, gate.sample_size, gate.confidence, threshold),
                4,
            ),
            "failing_at_spec": spec_failed,
        }
    table = _per_pass_table(passes, gate, threshold)
    print(table, end="\n\n")
    print(json.dumps(summary, indent=1))
    if not args.no_write:
        items = sum(c.items for c in passes[0].chunks)
        route = summary["route"]
        lines = [
            f"| degrade_rate | accuracy | chunks failing at {threshold:.2f} | expected (binomial) |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for rate, r in summary["by_degrade_rate"].items():
            lines.append(
                f"| {rate} | {r['accuracy']:.3f} | {r['failing_at_derived']}/{r['chunks']} "
                f"({r['fail_rate_at_derived']:.1%}) | {r['expected_fail_rate_at_derived']:.1%} |"
            )
        text = (
            "## Quality baseline (`python bench/quality_baseline.py`)\n\n"
            f"The `{STAGE}` stage of pipelines/banking77.yaml (`{summary['model']}`) on BANKING77 ({items:,} items, "
            f"chunks of 250) against the simulator with the demo's answer key (scripts/demo.py `demo_sim_config`: "
            f"configured accuracy {json.dumps(DEMO_ACCURACY)}), seeds {', '.join(map(str, seeds))}; "
            f"sampled_quality gate as in the spec: {gate.sample_size} items per chunk, Wilson lower bound at "
            f"{gate.confidence:.0%} one-sided, judged by `sampled_quality_outcome`.\n\n"
            f"Derived threshold: **{threshold:.2f}**, the highest at which at most {MAX_HONEST_FAILS:.0%} of the "
            "honest chunks fail, both measured and expected. Expected: the fail rate of a binomial sample of "
            f"{gate.sample_size} items at the accuracy measured at that degrade rate (the short last chunk, 80 "
            "items, is sampled whole and fails a little more often).\n\n"
            + "\n".join(lines)
            + "\n\nPer seed:\n\n"
            + table
            + "\n\n"
            f"Route `classified.confidence < {ROUTE_AT}` (honest runs): {route['share_under']:.0%} of the items "
            f"are under it, {route['accuracy_under']:.0%} of those are right; {route['accuracy_over']:.0%} of the "
            "rest are right."
            + (
                f" The judge (`{judge[0]}`) labels {judge[1]:.1%} of {judge[2]:,} items right (seed {seeds[0]})."
                if judge
                else ""
            )
            + f"\n\n```json\n{json.dumps(summary)}\n```"
        )
        replace_section(DOCS, "quality", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
