"""Orchestration overhead per item: a large synthetic job through the daemon and its run queue (not a test).

`--rows` (default 100,000) rows drawn, seeded, from BANKING77's test split go through the BANKING77 pipeline
spec exactly as `make demo DATA=... CHUNK=500` runs them: the new-dataset sensor, the run queue (4 runs at once),
one run per chunk, the completion report. The simulator is a fast provider with high limits (no latency, no
faults; RPM and TPM below), so the provider's floor (its limits: requests / RPM, tokens / TPM, for the busiest
model) is small and almost all the wall time is what Chunkwise and Dagster add on this machine.

Variants, run one after the other on the same file, each with a fresh home and simulator:
- `warm`: the demo's default run launcher (llm_assets/run_launcher.py), each run forked from a process that
  has the code location loaded;
- `default`: Dagster's default run launcher, each run a fresh Python process (what the target's "~3 s fixed"
  was measured on).

For each: wall time (the demo process, start to report), the provider floor, (wall - floor) per item (target
<= 2 ms), the simulator's own CPU (the provider's work, on the same cores) and everything else's CPU (the
machine's busy time minus the simulator's), per item; the runs' count and their median duration. Counts come
from the simulator (its stats), not from Chunkwise's report. Prints a table, writes the section between
`<!-- overhead:start -->` and `<!-- overhead:end -->` of docs/benchmarks.md (unless `--no-write`), and prints a
JSON line.

Usage: python bench/overhead.py [--rows 100000] [--chunk-size 500] [--variants warm,default] [--no-write]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.banking77 import banking77_data, simulator_env  # noqa: E402
from bench.docs import replace_section  # noqa: E402
from scripts.demo import start_simulator  # noqa: E402

RPM = 1_000_000
TPM = 2_000_000_000
"""The simulator's limits per model: high, as a provider tier for a large nightly job."""
TARGET_MS_PER_ITEM = 2.0


@dataclass
class Result:
    variant: str
    rows: int
    chunk_size: int
    runs: int
    wall_s: float
    floor_s: float
    requests: int
    median_run_s: float
    sim_cpu_s: float
    other_cpu_s: float
    cores: int

    @property
    def overhead_ms_per_item(self) -> float:
        return (self.wall_s - self.floor_s) / self.rows * 1000

    def row(self) -> str:
        per_item = 1000 / self.rows
        return (
            f"| {self.variant} | {self.rows:,} | {self.runs} | {self.requests:,} | {self.wall_s:.1f} | "
            f"{self.floor_s:.1f} | **{self.overhead_ms_per_item:.2f}** | {self.median_run_s:.2f} | "
            f"{self.sim_cpu_s * per_item:.2f} | {self.other_cpu_s * per_item:.2f} |"
        )


def write_dataset(rows: int, path: Path, seed: int = 0) -> Path:
    """`rows` rows drawn with replacement from BANKING77's test split (`text,category`), seeded."""
    with banking77_data().open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        source = list(reader)
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rng.choice(source) for _ in range(rows))
    return path


def sim_config(folder: Path) -> Path:
    path = folder / "sim.yaml"
    path.write_text(yaml.safe_dump({"seed": 7, "limits": {"rpm": RPM, "tpm": TPM, "per": "minute"}}))
    return path


def _busy_cpu_s() -> float:
    """Seconds of CPU the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_variant(variant: str, data: Path, rows: int, chunk_size: int, tmp: Path) -> Result:
    home = tmp / variant
    home.mkdir(parents=True)
    sim, root = start_simulator(config=sim_config(home))
    env = {
        **os.environ,
        **simulator_env(root),
        "CHUNKWISE_HOME": str(home),
        "CHUNKWISE_RUN_LAUNCHER": variant,
        "DAGSTER_HOME": str(home / "dagster"),
    }
    try:
        busy0, sim0, t0 = _busy_cpu_s(), _process_cpu_s(sim.pid), time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "scripts.demo", "--data", str(data), "--chunk-size", str(chunk_size)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - t0
        sim_cpu = _process_cpu_s(sim.pid) - sim0
        busy = _busy_cpu_s() - busy0
        if done.returncode != 0:
            raise SystemExit(
                f"{variant}: the demo exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        stats = httpx.get(f"{root}/_sim/stats", timeout=60).json()
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    runs = _run_durations(home / "dagster")
    return Result(
        variant=variant,
        rows=rows,
        chunk_size=chunk_size,
        runs=len(runs),
        wall_s=round(wall, 2),
        floor_s=round(_floor_s(stats), 2),
        requests=stats["requests_total"],
        median_run_s=round(statistics.median(runs), 3),
        sim_cpu_s=round(sim_cpu, 2),
        other_cpu_s=round(busy - sim_cpu, 2),
        cores=os.cpu_count() or 1,
    )


def _floor_s(stats: dict) -> float:
    """The provider's own floor: for each model, requests / RPM and tokens / TPM; the slowest model's binds."""
    floors = []
    for model in stats["by_model"].values():
        tokens = model["input"] + model["cached_input"] + model["cache_write"] + model["output"]
        floors.append(60 * max(model["requests_total"] / RPM, tokens / TPM))
    return max(floors, default=0.0)


def _run_durations(dagster_home: Path) -> list[float]:
    """Start-to-end seconds of every chunk run the instance recorded."""
    code = (
        "import dagster as dg, json\n"
        "i = dg.DagsterInstance.get()\n"
        "rs = i.get_run_records(dg.RunsFilter(job_name='banking77__chunk_job'))\n"
        "print(json.dumps([r.end_time - r.start_time for r in rs if r.start_time and r.end_time]))\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[Result]) -> str:
    lines = [
        "| launcher | items | chunk runs | requests | wall s | provider floor s | (wall - floor) ms/item | "
        "median run s | simulator CPU ms/item | Chunkwise + Dagster CPU ms/item |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [r.row() for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--variants", default="warm,default")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="chunkwise-overhead-") as folder:
        tmp = Path(folder)
        data = write_dataset(args.rows, tmp / "synthetic.csv")
        for variant in args.variants.split(","):
            result = run_variant(variant, data, args.rows, args.chunk_size, tmp)
            print(table([result]).splitlines()[-1], flush=True)
            results.append(result)
    print(table(results))
    if len(results) == 2:
        a, b = results
        print(f"{b.variant} / {a.variant}: wall {b.wall_s / a.wall_s:.2f}x")
    if not args.no_write:
        replace_section(ROOT / "docs" / "benchmarks.md", "overhead", _section(results))
    print(
        json.dumps([asdict(r) | {"overhead_ms_per_item": round(r.overhead_ms_per_item, 3)} for r in results])
    )
    return 0


def _section(results: list[Result]) -> str:
    first = results[0]
    ratio = ""
    if len(results) == 2:
        ratio = f"\n\n{results[1].variant} / {results[0].variant} wall time: {results[1].wall_s / results[0].wall_s:.2f}x."
    return (
        f"## Orchestration overhead per item (`python bench/overhead.py`)\n\n"
        f"{first.rows:,} synthetic items (BANKING77 rows drawn with replacement) through the BANKING77 spec as "
        f"`make demo` runs them: new-dataset sensor, run queue (4 runs at once), one run per {first.chunk_size}-item "
        f"chunk, completion report. Simulator: no latency, no faults, RPM {RPM:,} and TPM {TPM:,} per model. "
        f"{first.cores} cores. Target: (wall - provider floor) <= {TARGET_MS_PER_ITEM} ms per item.\n\n"
        f"{table(results)}{ratio}\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
