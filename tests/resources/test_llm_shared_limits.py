"""Several processes share one budget and one rate limit through the SQLite store, as chunks run by Dagster's
multiprocess executor would."""

from __future__ import annotations

import random

import pytest
from llm_support import run_children, texts


@pytest.mark.slow
def test_budget_is_never_exceeded_by_several_processes_seeded_random_workloads(start_sim, tmp_path):
    for seed in (1, 2):
        rng = random.Random(seed)
        sim = start_sim({"latency": {"base_ms": rng.choice([0, 20]), "jitter_ms": 30}, "seed": seed})
        cap = round(rng.uniform(0.002, 0.006), 4)
        state_dir = str(tmp_path / f"state{seed}")
        n_procs = 3
        configs = [
            dict(
                provider="openai",
                base_url=sim.base_url + "/v1",
                api_key=sim.api_key,
                model="gpt-6.2-sol",
                max_output_tokens=rng.choice([16, 32, 64]),
                max_concurrency=rng.choice([4, 16, 32]),
                budget_dataset_usd=cap,
                state_dir=state_dir,
                progress_interval_s=3600,
            )
            for _ in range(n_procs)
        ]
        item_sets = [
            [(f"p{p}-{i}", t) for i, t in enumerate(texts(rng.randint(40, 80), seed=p))]
            for p in range(n_procs)
        ]
        reports = run_children(configs, item_sets, [(f"run{p}", "shared-dataset") for p in range(n_procs)])
        billed = sim.stats()["billed_usd"]
        assert billed <= cap, f"seed {seed}: provider billed ${billed} past the ${cap} cap"
        assert sum(r["cost"] for r in reports) == pytest.approx(billed, rel=1e-9)
        assert any(r["fatal"] == "budget" for r in reports), "the workload was sized to hit the cap"
        assert billed > 0.5 * cap  # and it was not stopped absurdly early
        sim.stop()


@pytest.mark.slow
def test_two_processes_sharing_a_limit_are_rarely_rate_limited(start_sim, tmp_path):
    tps = 6000  # tokens per second; ~100-token requests + 32 output tokens -> ~45 requests/s between both
    sim = start_sim(
        {
            "models": {
                "gpt-6-luna": {
                    "provider": "openai",
                    "input": 0.1,
                    "cached_input": 0.01,
                    "cache_write": 0.125,
                    "output": 0.5,
                    "limits": {"tpm": tps, "per": "second"},
                }
            },
            "latency": {"base_ms": 30, "jitter_ms": 40},
            "seed": 4,
        }
    )
    config = dict(
        provider="openai",
        base_url=sim.base_url + "/v1",
        api_key=sim.api_key,
        model="gpt-6-luna",
        max_output_tokens=32,
        max_concurrency=32,
        tokens_per_minute=tps * 60,
        state_dir=str(tmp_path),
        progress_interval_s=3600,
    )
    item_sets = [[(f"p{p}-{i}", t) for i, t in enumerate(texts(180, seed=p))] for p in range(2)]
    reports = run_children([config, config], item_sets, [("r0", "d"), ("r1", "d")])
    log = sim.requests()
    limited = sum(1 for r in log if str(r["status"]) == "429")
    assert all(r["ok"] == 180 for r in reports)
    assert limited / len(log) < 0.02, f"{limited} of {len(log)} requests were rate-limited"
    # and the limit was actually binding: the run could not have been faster than the limit allows
    span = max(r["t"] for r in log) - min(r["t"] for r in log)
    assert span > 2.0
