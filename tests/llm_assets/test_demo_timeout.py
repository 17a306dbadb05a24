"""`make demo` through the daemon, given less time than the job needs (`--timeout-s`): it stops the daemon, lets
the runs in progress end, says what is left and exits 1, without a traceback. (The timeout path used to raise a
TypeError before saying anything.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos import demo_env, write_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_a_demo_out_of_time_stops_cleanly_and_says_so(start_sim, tmp_path) -> None:
    sim = start_sim({"seed": 5, "latency": {"base_ms": 300}})
    data = write_dataset(tmp_path / "messages.csv", 400)  # 4 chunks of 100, ~30 s at this latency
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--data", str(data), "--chunk-size", "100", "--timeout-s", "2"],
        cwd=ROOT, env=demo_env(tmp_path / "home", sim), capture_output=True, text=True, timeout=500, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "the report was not written within 2s" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
