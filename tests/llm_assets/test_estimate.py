"""The estimate (llm_assets/estimate.py) against a real simulator process and a real Dagster instance: what it
records, that its sample is billed once and seen by both ledgers, that asking again pays nothing, that bad input
spends nothing, and the `<pipeline>__estimate_job` a user launches from the Launchpad.

Spend is counted on the simulator's side (`/_sim/stats`, its billing ledger), not by Chunkwise's counters."""

import csv
import datetime as dt
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from llm_assets.estimate import (
    OVERHEAD_PER_STEP_S,
    EstimateError,
    RetryProfile,
    chunk_makespan,
    chunk_run_steps,
    estimate_asset_key,
    estimate_dataset,
    estimate_job_name,
    estimate_path,
    estimate_run_config,
    retry_profiles,
    sample_scope,
)
from llm_assets.machine_probe import REFERENCE_PROBE_S, probe_s
from llm_assets.pipeline_assets import register
from resources.llm.resource import spend_ledger_for
from resources.llm.types import ItemResult, ItemUsage
from tests.spec_pipelines import BANKING77_SPEC, ROOT, run_chunk, spec_defs, test_spec

BANKING = ROOT / "data" / "banking77" / "test.csv"


def write_banking_rows(
    path: Path, n: int, *, header: tuple[str, ...] = ("id", "text", "team", "label")
) -> Path:
    """The first n BANKING77 rows: with the tests' columns (`id,text,team,label`), or as shipped (`text,category`)."""
    with BANKING.open(newline="") as f:
        rows = [row for _, row in zip(range(n), csv.DictReader(f), strict=False)]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, row in enumerate(rows):
            if header == ("text", "category"):
                w.writerow([row["text"], row["category"]])
            else:
                w.writerow([f"item-{i:04d}", row["text"], "cards" if i % 2 else "payments", row["category"]])
    return path


def billed(sim) -> tuple[int, float]:
    stats = sim.stats()
    return stats["requests_total"], stats["billed_usd"]


def test_estimate_records_every_field_and_its_sample_is_billed_once_in_both_ledgers(spec_sim, tmp_path):
    spec = test_spec()
    data = write_banking_rows(tmp_path / "tickets.csv", 120)
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(data), instance, tmp_path)
        estimate = estimate_dataset(spec, dataset, instance, tmp_path, sample_size=20, seed=3)

        path = estimate_path(tmp_path, spec.name, dataset.dataset_id)
        saved = json.loads(path.read_text())
        for field in ("dataset_id", "total_items", "total_cost_usd", "total_cost_usd_batch", "wall_clock_s",
                      "sample_cost_usd", "stages"):  # fmt: skip
            assert field in saved, field
        assert saved["dataset_id"] == dataset.dataset_id and saved["total_items"] == 120
        assert [s["stage"] for s in saved["stages"]] == ["classified", "enriched"]
        classified, enriched = estimate.stages
        assert classified.items == 120
        # The later stage's route reads only the first stage's answers: the first stage was sent more items
        # than the sample (the next of the seeded order) to measure it; the later stage only the sample's.
        assert (
            classified.sample_items_sent == classified.route_sample_items == enriched.route_sample_items > 20
        )
        assert estimate.route_sample_size == classified.route_sample_items and estimate.sample_size == 20
        assert 0 < enriched.sample_items_sent <= 20
        assert 0 < enriched.items < 120  # only the routed share, projected
        assert estimate.total_cost_usd_low < estimate.total_cost_usd_in_mode < estimate.total_cost_usd_high
        # Counted at the provider: each stage's model got what the estimate says it sent.
        by_model = Counter(r["model"] for r in spec_sim.requests())
        assert by_model == {
            classified.model: classified.sample_requests,
            enriched.model: enriched.sample_requests,
        }
        assert estimate.total_cost_usd_batch == pytest.approx(estimate.total_cost_usd / 2, rel=1e-6)
        assert estimate.wall_clock_s > 0 and estimate.budget.within_budget
        assert estimate.text_tokens_p50 <= estimate.text_tokens_p95 <= estimate.text_tokens_max

        # The sample's spend: what the simulator billed, and what Chunkwise's spend ledger recorded, equal.
        requests, sim_usd = billed(spec_sim)
        assert requests == estimate.sample_requests
        assert sim_usd == pytest.approx(estimate.sample_cost_usd, abs=1e-9)
        ledger = spend_ledger_for(instance.storage_directory())
        assert ledger.billed_usd(sample_scope(dataset.dataset_id)) == pytest.approx(sim_usd, abs=1e-9)
        assert ledger.billed_usd(dataset.dataset_id) == 0.0  # the dataset's own bill starts with its run

        # Asking again for the same dataset, spec and sample reads the file back: nothing sent.
        again = estimate_dataset(spec, dataset, instance, tmp_path, sample_size=20, seed=3)
        assert again.reused and again.total_cost_usd == estimate.total_cost_usd
        assert billed(spec_sim) == (requests, sim_usd)
        # Before any chunk run: the reference machine's per-step overhead, scaled by this machine's probe.
        steps = chunk_run_steps(spec)
        assert steps == 1 + 2 * len(spec.stages)
        assert estimate.overhead_per_chunk_s == pytest.approx(
            OVERHEAD_PER_STEP_S * steps * probe_s() / REFERENCE_PROBE_S, rel=1e-9
        )
        assert estimate.overhead_source.startswith("no chunk run of this pipeline on the instance yet")
        assert "a run in process" in estimate.overhead_source
        assert f"{probe_s():.2f} s here" in estimate.overhead_source

        # Once the pipeline has run chunks on the instance, their own orchestration time is the overhead.
        run_chunk(spec_defs(spec, tmp_path), spec, instance, dataset.partition_keys[0])
        paid = billed(spec_sim)
        measured = estimate_dataset(spec, dataset, instance, tmp_path, sample_size=20, seed=3, force=True)
        assert measured.overhead_source == "median of the pipeline's last 1 chunk runs"
        assert billed(spec_sim)[0] > paid[0]  # `force` pays the sample again


def test_bad_input_gets_one_message_and_spends_nothing(spec_sim, tmp_path):
    spec = test_spec(budgets={"run_usd": 0.001})
    data = write_banking_rows(tmp_path / "tickets.csv", 40)
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(data), instance, tmp_path)
        with pytest.raises(
            EstimateError, match=r"sample of 41 items is larger than dataset .* \(40 valid items\)"
        ):
            estimate_dataset(spec, dataset, instance, tmp_path, sample_size=41)
        with pytest.raises(
            EstimateError, match=r"could cost up to \$.*more than `budgets.run_usd` = \$0.0010"
        ):
            estimate_dataset(spec, dataset, instance, tmp_path, sample_size=10)
        with pytest.raises(EstimateError, match="sample size must be"):
            estimate_dataset(spec, dataset, instance, tmp_path, sample_size=0)
    assert billed(spec_sim) == (0, 0.0)
    assert not (tmp_path / "estimates").exists()


def _cli(tmp_path: Path, sim, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "CHUNKWISE_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": "",
        "CHUNKWISE_LLM_BASE_URL": sim.openai_base_url,
        "CHUNKWISE_LLM_API_KEY": sim.api_key,
        "CHUNKWISE_ANTHROPIC_BASE_URL": sim.base_url,
        "CHUNKWISE_ANTHROPIC_API_KEY": sim.api_key,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "scripts.estimate", "--pipeline", str(BANKING77_SPEC), *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_make_estimate_prints_a_table_and_ends_with_the_path_and_bad_input_is_one_line(spec_sim, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,category\n")
    small = write_banking_rows(tmp_path / "small.csv", 60, header=("text", "category"))

    for args, env, expected in (
        (["--data", str(empty)], {}, "empty"),
        (["--data", str(small), "--sample-size", "61"], {}, "larger than dataset"),
        (
            ["--data", str(small), "--sample-size", "20"],
            {"CHUNKWISE_BUDGET_RUN_USD": "0.001"},
            "budgets.run_usd",
        ),
    ):
        done = _cli(tmp_path, spec_sim, *args, **env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("chunkwise: "), done.stderr
        assert expected in lines[0], lines[0]
    assert billed(spec_sim) == (0, 0.0)

    done = _cli(tmp_path, spec_sim, "--data", str(small), "--sample-size", "15")
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip().splitlines()
    print(done.stdout)
    path = Path(out[-1])
    assert path.name == "estimate.json" and path.is_file()
    assert any(line.startswith("classified") for line in out) and any(
        line.startswith("budget:") for line in out
    )
    saved = json.loads(path.read_text())
    assert saved["sample_cost_usd"] == pytest.approx(billed(spec_sim)[1], abs=1e-9)
    spent = billed(spec_sim)

    again = _cli(tmp_path, spec_sim, "--data", str(small), "--sample-size", "15")
    assert again.returncode == 0 and "nothing sent now" in again.stdout
    assert Path(again.stdout.strip().splitlines()[-1]) == path
    assert billed(spec_sim) == spent


def test_the_estimate_job_runs_from_the_launchpad_and_records_numeric_metadata(spec_sim, tmp_path):
    spec = test_spec()
    data = write_banking_rows(tmp_path / "tickets.csv", 80)
    defs = spec_defs(spec, tmp_path)
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(data), instance, tmp_path)
        job = defs.resolve_job_def(estimate_job_name(spec.name))
        config = estimate_run_config(spec.name, dataset.dataset_id)
        config["ops"][f"{spec.name}__estimate_dataset"]["config"]["sample_size"] = 12
        result = job.execute_in_process(instance=instance, run_config=config)
        assert result.success
        [event] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=estimate_asset_key(spec.name)), limit=5
        ).records
        assert event.partition_key == dataset.dataset_id
        meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        assert meta["total_items"] == 80 and meta["sample_size"] == 12
        for key in ("total_cost_usd", "total_cost_usd_batch", "wall_clock_s", "sample_cost_usd",
                    "classified_cost_usd", "enriched_cost_usd"):  # fmt: skip
            assert isinstance(meta[key], float), key
        assert meta["sample_cost_usd"] == pytest.approx(billed(spec_sim)[1], abs=1e-6)
        assert Path(meta["estimate_json"]).is_file()

        # A dataset id that is not registered: the run fails with what to do, and sends nothing.
        before = billed(spec_sim)
        bad = job.execute_in_process(
            instance=instance,
            run_config=estimate_run_config(spec.name, "nope-00000000"),
            raise_on_error=False,
        )
        assert not bad.success and billed(spec_sim) == before


def test_a_chunk_waits_for_its_slowest_item():
    """The wall-time floor's per-chunk part (`chunk_makespan`): items go to the first free of `concurrency`
    slots and a chunk's stage ends with its slowest slot, so one item's retry backoff is the whole chunk's tail."""
    assert chunk_makespan([1.0], 64, 32) == 2.0  # two full waves
    assert chunk_makespan([1.0], 10, 32) == 1.0  # one partial wave
    assert chunk_makespan([0.1, 5.0], 250, 32) >= 5.0  # the slow item (a retry-after) bounds the chunk
    assert chunk_makespan([], 250, 32) == chunk_makespan([1.0], 0, 32) == 0.0
    # A retry's extra time lands on an item as often as the endpoint's items needed one.
    assert chunk_makespan([0.1], 64, 32, RetryProfile(1.0, (5.0,))) == pytest.approx(10.2)
    assert chunk_makespan([0.1], 64, 32, RetryProfile(0.0, (5.0,))) == pytest.approx(0.2)
    sometimes = chunk_makespan([0.1], 250, 32, RetryProfile(0.02, (1.0,)))
    assert 1.0 < sometimes < 2.0  # ~5 retried items in 250: the chunk ends with one of them


def test_retries_are_the_endpoints_not_a_stages():
    """`retry_profiles`: the stages sharing a provider and base URL pool their items, so a later stage's few
    items (here none retried) get the rate the endpoint showed over all of them."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def item(attempts: int, spread_s: float) -> ItemResult:
        usage = ItemUsage("k", "sim", "m", "s", attempts=attempts, latency_s=0.1 * attempts)
        return ItemResult(
            key="k", ok=True, output={}, error_class=None, error_message=None, attempts=attempts,
            first_attempt_at=t0, last_attempt_at=t0 + dt.timedelta(seconds=spread_s), usage=usage,
        )  # fmt: skip

    # 4 items retried after a backoff, 1 sent again after a 429's retry-after (a 429 is not an attempt).
    first = [item(1, 0.0)] * 95 + [item(2, 1.1)] * 4 + [item(1, 0.5)]
    later = [item(1, 0.0)] * 20
    profiles = retry_profiles([("sim|http://a", first), ("sim|http://a", later), ("other|http://b", later)])
    assert profiles["sim|http://a"] == RetryProfile(5 / 120, (1.1,) * 4 + (0.5,))
    assert profiles["other|http://b"] == RetryProfile(0.0, ())
