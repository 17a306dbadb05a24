"""The shipped BANKING77 gate tells an honest run from a degraded one: against the simulator the demo runs (its
config and answer key, scripts/demo.py `demo_sim_config`; latency zeroed), every chunk of the shipped test split
goes through the real chunk job (`items` and `classified` with their checks), and the shipped `sampled_quality`
gate (its sample size, confidence and threshold, its own check) fails at most 5% of the chunks of an honest run
and at least 90% of them when the simulator turns 30% of the labels wrong (bench/quality_baseline.py measures the
same over more seeds)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import httpx
import pytest
import yaml
from pipeline_support import evaluation

from llm_assets.pipeline_checks import SAMPLED_QUALITY
from llm_assets.spec import load_pipeline
from llm_sim.launcher import SimHandle
from scripts.demo import demo_sim_config
from tests.spec_pipelines import BANKING77_SPEC, layout_of, point_at, register_file, run_chunk, spec_defs

pytestmark = pytest.mark.slow


def gate_verdicts(spec_path: Path, home: Path) -> list[bool]:
    """Whether the shipped gate passed each chunk of the spec's demo data, each chunk run as the sensors run it."""
    spec = load_pipeline(spec_path)
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    selection = [layout.key("items"), layout.key("classified")]
    with dg.instance_for_test() as instance:
        keys = register_file(spec, spec.input.demo_data, instance, home).partition_keys
        return [
            evaluation(run_chunk(defs, spec, instance, key, asset_selection=selection), layout, "classified",
                       SAMPLED_QUALITY).passed
            for key in keys
        ]  # fmt: skip


# 26 chunk runs of 250 items: about 3 min on a quiet 2-core machine, more when it is shared.
@pytest.mark.timeout(900)
def test_the_shipped_gate_fails_a_30_percent_degradation_and_passes_an_honest_run(
    start_sim: Callable[..., SimHandle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    config = demo_sim_config(BANKING77_SPEC, tmp_path / "sim", {"latency": {}})
    sim = start_sim(yaml.safe_load(config.read_text()))
    assert httpx.get(f"{sim.base_url}/_sim/config").json()["answer_key"]["entries"] == 3080  # the demo's key
    point_at(sim, monkeypatch)

    honest = gate_verdicts(BANKING77_SPEC, tmp_path / "honest")
    sim.set_faults(degrade_rate=0.3)
    degraded = gate_verdicts(
        BANKING77_SPEC, tmp_path / "degraded"
    )  # a fresh home: nothing answered from a checkpoint

    print(
        f"chunks failing: honest {honest.count(False)}/{len(honest)}, degraded {degraded.count(False)}/{len(degraded)}"
    )
    assert len(honest) == len(degraded) == 13
    assert honest.count(False) <= 0.05 * len(honest)
    assert degraded.count(False) >= 0.9 * len(degraded)
