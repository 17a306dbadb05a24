"""`make demo` through the daemon vs in process: wall time, side by side, on the shipped BANKING77 test split.

Issue 13 asks that the demo, now launched through the run queue and the daemon (each chunk run its own process,
`DEMO_MAX_RUNS` at once, the sensors ticking), take no more than 1.5x the seconds it took in process (every chunk
in the demo's own process, one after another: `--in-process`). Each variant runs `python -m scripts.demo` from a
fresh `CHUNKWISE_HOME` with its own simulator (scripts/demo_sim.yaml: latency, 429s, 5xx), alternating
in-process / daemon `--rounds` times, so a noisy neighbour hurts both alike. It prints the numbers and writes them
to docs/benchmarks.md (section `demo_time`).

    python bench/demo_time.py [--rounds 2] [--rows 3080]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.docs import replace_section  # noqa: E402
from scripts.demo_daemon import DEMO_MAX_RUNS  # noqa: E402

DATA = ROOT / "data" / "banking77" / "test.csv"
VARIANTS = {"in process": ["--in-process"], "daemon": []}
DEMO_ENV = ("CHUNKWISE_LLM_BASE_URL", "CHUNKWISE_LLM_API_KEY", "CHUNKWISE_ANTHROPIC_BASE_URL",
            "CHUNKWISE_ANTHROPIC_API_KEY", "DAGSTER_HOME", "CHUNKWISE_MODE", "CHUNKWISE_OUTPUTS_URI")  # fmt: skip


def _data(rows: int, folder: Path) -> Path:
    if rows >= 3080:
        return DATA
    path = folder / f"banking77-{rows}.csv"
    with DATA.open(newline="") as src, path.open("w", newline="") as dst:
        reader = csv.reader(src)
        writer = csv.writer(dst)
        for n, row in enumerate(reader):
            if n > rows:
                break
            writer.writerow(row)
    return path


def _one(variant: str, data: Path, work: Path, n: int) -> tuple[float, int]:
    home = work / f"{variant.replace(' ', '-')}-{n}"
    env = {k: v for k, v in os.environ.items() if k not in DEMO_ENV}
    env["CHUNKWISE_HOME"] = str(home)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo", *VARIANTS[variant], "--data", str(data)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{variant} demo exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return seconds, done.stdout.count("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=3080)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="chunkwise-demo-time-") as tmp:
        work = Path(tmp)
        data = _data(args.rows, work)
        for n in range(args.rounds):
            for variant in VARIANTS:
                took, _ = _one(variant, data, work, n)
                seconds[variant].append(took)
                print(f"round {n + 1}: {variant}: {took:.1f}s", flush=True)
    median = {v: statistics.median(s) for v, s in seconds.items()}
    ratio = median["daemon"] / median["in process"]
    lines = [
        "## `make demo` wall time: through the daemon vs in process (`python bench/demo_time.py`)",
        "",
        f"{args.rows:,} BANKING77 rows (chunks of 250), the demo's simulator, a fresh `CHUNKWISE_HOME` per run, "
        f"{args.rounds} rounds alternating the two; median seconds from the command's start to its exit "
        f"(simulator start and stop included). Through the daemon: {DEMO_MAX_RUNS} chunk runs at once, each its "
        "own process, launched by the sensors through the run queue.",
        "",
        "| variant | median s | every run (s) |",
        "|---|---:|---|",
        *(f"| {v} | {median[v]:.1f} | {', '.join(f'{x:.1f}' for x in s)} |" for v, s in seconds.items()),
        "",
        f"Daemon / in process: **{ratio:.2f}x** (issue 13's bound: 1.5x). Measured on {os.cpu_count()} cores.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "docs" / "benchmarks.md", "demo_time", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
