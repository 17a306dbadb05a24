"""`make demo` through the daemon, killed with kill -9 (its whole process group: the demo, the daemon, the code
server and the run workers) at seeded points, then run again to the end. Counted from the simulator's request
log: every row lands in exactly one bucket, and the requests billed twice are no more than could have been in
flight at the kills (each run worker has at most the profile's 32 requests out, `DEMO_MAX_RUNS` run at once).

The chaos harness (bench/chaos.py, tests/chaos/) measures the exact in-flight window over many more kills in the
in-process demo; this test shows the daemon path resumes: orphaned runs are marked failed, the restarted demo
asks the backfill sensor to re-run them now (`retry_now`), queued runs start, and nothing is lost."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from bench.chaos import demo_env, write_dataset
from scripts.demo_daemon import DEMO_MAX_RUNS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MAX_CONCURRENCY = 32
ROWS = 800
SEEDS = (11, 12)


def _start(data: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.demo", "--data", str(data), "--chunk-size", "100"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_demo_killed_twice_at_seeded_points_finishes_and_repays_at_most_what_was_in_flight(
    start_sim, tmp_path, seed
) -> None:
    rng = random.Random(seed)
    sim = start_sim({"seed": seed, "latency": {"base_ms": 40, "jitter_ms": 20}})
    data = write_dataset(tmp_path / "messages.csv", ROWS)  # 8 chunks of 100
    home, log = tmp_path / "home", tmp_path / "demo.log"
    env = demo_env(home, sim)
    kills = 0
    # Kill points counted in requests the simulator has seen (classify + enrich send ~1,100 for 800 rows).
    for at_requests in sorted(rng.sample(range(50, 1000), 2)):
        proc = _start(data, env, log)
        deadline = time.monotonic() + 300
        while len(sim.requests()) < at_requests and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
    time.sleep(1.0)  # let processes the kill orphaned (if any) be gone before counting from scratch
    final = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--data", str(data), "--chunk-size", "100"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = final.stdout + final.stderr
    assert final.returncode == 0, f"{out[-3000:]}\n--- earlier runs:\n{log.read_text()[-3000:]}"
    report = json.loads(Path(final.stdout.strip().splitlines()[-1]).read_text())
    assert sum(report["buckets"].values()) == ROWS
    assert report["buckets"]["not_processed"] == 0

    billed = collections.Counter(
        (r["user_sha256"], r["model"]) for r in sim.requests() if r["status"] == "200"
    )
    repaid = sum(n - 1 for n in billed.values())
    assert repaid <= kills * DEMO_MAX_RUNS * MAX_CONCURRENCY, (repaid, kills)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        live = instance.get_runs(
            filters=dg.RunsFilter(
                statuses=[
                    dg.DagsterRunStatus.STARTED,
                    dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.QUEUED,
                ]
            )
        )
    assert live == [], [(r.job_name, r.status) for r in live]
