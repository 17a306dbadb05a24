"""A job-fatal answer stops the whole job, not one chunk: counted from the simulator's request log.

Drives the real demo (`python -m scripts.demo`) as a new user does, against a simulator this test starts.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos import write_dataset
from scripts.demo_daemon import DEMO_MAX_RUNS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

MAX_CONCURRENCY = 32  # the spec profile's default for a cloud API, per run
# What may be in flight at the first refusal: the demo runs DEMO_MAX_RUNS chunk runs at once, each its own process.
MAX_IN_FLIGHT = MAX_CONCURRENCY * DEMO_MAX_RUNS
SIM = {"seed": 3, "latency": {"base_ms": 20, "jitter_ms": 10}}


def _demo(data: Path, home: Path, sim, extra_env: dict[str, str] | None = None, key: str | None = None):
    env = {
        **os.environ,
        "CHUNKWISE_HOME": str(home),
        "CHUNKWISE_LLM_BASE_URL": sim.openai_base_url,
        "CHUNKWISE_LLM_API_KEY": key or sim.api_key,
        **(extra_env or {}),
    }
    env.pop("CHUNKWISE_MODE", None)
    return subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--data", str(data), "--chunk-size", "100"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _billed(sim) -> tuple[int, float]:
    records = [r for r in sim.requests() if r["status"] == "200"]
    return len(records), sum(r["billed_usd"] for r in records)


def _billed_once_each(sim) -> None:
    billed = collections.Counter(
        (r["user_sha256"], r["model"]) for r in sim.requests() if r["status"] == "200"
    )
    assert billed and max(billed.values()) == 1, billed.most_common(3)


# One scenario for two facts (each demo start is a daemon, a code server and a run worker per chunk): the wrong
# key's fixed-key rerun is the clean run whose bill the budget half measures against, and is checked to be one:
# nothing was billed before it (every request got a 401) and it bills each (text, model) once.
@pytest.mark.timeout(900)
def test_a_wrong_key_stops_the_whole_job_and_a_budget_halt_then_raise_resumes_without_paying_twice(
    start_sim, tmp_path
) -> None:
    # A wrong key stops the whole job after the requests in flight.
    sim = start_sim(SIM)
    data = write_dataset(tmp_path / "messages.csv", 600)  # 6 chunks
    done = _demo(data, tmp_path / "home", sim, key="sk-not-the-right-key")
    out = done.stdout + done.stderr
    refused = [r for r in sim.requests() if r["status"] == "401"]
    assert done.returncode == 3, out
    assert 0 < len(refused) <= MAX_IN_FLIGHT, f"{len(refused)} requests after the first 401"
    assert len(sim.requests()) == len(refused)
    assert "Traceback" not in out
    stops = [line for line in done.stderr.splitlines() if line.startswith("chunkwise: stopped (auth)")]
    assert len(stops) == 1 and "CHUNKWISE_LLM_API_KEY" in stops[0]
    assert "sk-not-the-right-key" not in out
    assert [line for line in done.stderr.splitlines() if "chunks not done" in line]

    # The next start (a person fixed the key) lifts the stop and finishes the job.
    again = _demo(data, tmp_path / "home", sim)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "lifted the earlier stop (auth)" in again.stdout
    # Only 401s before it, and each (text, model) billed once: this is a clean run's bill.
    _billed_once_each(sim)
    clean_requests, clean_usd = _billed(sim)

    # A budget halt, then a raise: resumes without paying twice (same data and simulator config, a new home).
    sim = start_sim(SIM)
    cap = round(0.3 * clean_usd, 4)
    halted = _demo(data, tmp_path / "budget", sim, {"CHUNKWISE_BUDGET_DATASET_USD": str(cap)})
    out = halted.stdout + halted.stderr
    assert halted.returncode == 3, out[-3000:]
    assert "Traceback" not in out
    assert [line for line in halted.stderr.splitlines() if line.startswith("chunkwise: stopped (budget)")]
    _, spent = _billed(sim)
    assert spent <= cap + 1e-9

    resumed = _demo(data, tmp_path / "budget", sim, {"CHUNKWISE_BUDGET_DATASET_USD": str(clean_usd * 3)})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    requests, usd = _billed(sim)
    # Every item is billed once: the halt sent nothing past the cap and the resume re-paid nothing.
    assert requests - clean_requests <= MAX_IN_FLIGHT
    assert requests == clean_requests
    assert usd == pytest.approx(clean_usd, rel=0.02)


def test_sigterm_stops_the_demo_without_a_traceback_and_a_rerun_pays_nothing_twice(
    start_sim, tmp_path
) -> None:
    import signal
    import time

    sim = start_sim({"seed": 3, "latency": {"base_ms": 150, "jitter_ms": 20}})
    data = write_dataset(tmp_path / "messages.csv", 600)
    env = {
        **os.environ,
        "CHUNKWISE_HOME": str(tmp_path / "home"),
        "CHUNKWISE_LLM_BASE_URL": sim.openai_base_url,
        "CHUNKWISE_LLM_API_KEY": sim.api_key,
    }
    env.pop("CHUNKWISE_MODE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.demo", "--data", str(data), "--chunk-size", "100"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while len(sim.requests()) < 40 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (3, 130), out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err
    assert [line for line in err.splitlines() if line.startswith("chunkwise: stopped")]

    again = _demo(data, tmp_path / "home", sim)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    billed = collections.Counter(
        (r["user_sha256"], r["model"]) for r in sim.requests() if r["status"] == "200"
    )
    assert (
        max(billed.values()) == 1
    )  # every reply that arrived before the stop was checkpointed, none re-paid
