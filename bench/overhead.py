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
import asyncio
import contextlib
import csv
import json
import os
import random
import re
import resource
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
from scripts.postgres_server import ROLE, PostgresServer  # noqa: E402

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
    requests: int
    wall_s: float
    limits_floor_s: float
    """requests / RPM and tokens / TPM for the busiest model"""
    sim_cpu_s: float
    """the simulator's CPU: it serves on one thread, so no client can finish sooner"""
    bare_s: float
    """a naive asyncio.gather client sending the same requests (`bare_loop_s`)"""
    median_run_s: float
    run_overhead_s: float
    """orchestration per chunk run as the estimate measures it (run time from its launch minus LLM sending)"""
    tree_cpu_s: float
    """CPU of the demo and every process under it (daemon, code server, warm parent, run workers)"""
    workers_cpu_s: float | None
    """of which the run workers' (the warm parent logs each one's; None for the default launcher)"""
    busy_cpu_s: float
    """the whole machine's busy CPU during the run, the simulator's included"""
    cores: int

    @property
    def floor_s(self) -> float:
        return max(self.limits_floor_s, self.sim_cpu_s)

    def ms_per_item(self, seconds: float) -> float:
        return seconds / self.rows * 1000

    def row(self) -> str:
        workers = "-" if self.workers_cpu_s is None else f"{self.ms_per_item(self.workers_cpu_s):.2f}"
        return (
            f"| {self.variant} | {self.rows:,} | {self.runs} | {self.requests:,} | {self.wall_s:.1f} | "
            f"{self.limits_floor_s:.1f} | {self.sim_cpu_s:.1f} | **{self.ms_per_item(self.wall_s - self.floor_s):.2f}** | "
            f"{self.bare_s:.1f} | {self.ms_per_item(self.wall_s - self.bare_s):.2f} | {self.median_run_s:.2f} | "
            f"{self.run_overhead_s:.2f} | "
            f"{self.ms_per_item(self.tree_cpu_s):.2f} | {workers} | "
            f"{self.ms_per_item(self.busy_cpu_s - self.sim_cpu_s):.2f} |"
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


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_variant(
    variant: str,
    data: Path,
    rows: int,
    chunk_size: int,
    bodies: list[dict],
    tmp: Path,
    pg_env: dict[str, str],
) -> Result:
    """`variant` is `<launcher>` or `<launcher>+postgres` (Dagster's storage in `pg_env`'s server)."""
    launcher, _, storage = variant.partition("+")
    storage_env = {"CHUNKWISE_DEMO_STORAGE": "postgres", **pg_env} if storage == "postgres" else {}
    home = tmp / variant
    home.mkdir(parents=True)
    sim, root = start_simulator(config=sim_config(home))
    env = {
        **os.environ,
        **simulator_env(root),
        "CHUNKWISE_HOME": str(home),
        "CHUNKWISE_RUN_LAUNCHER": launcher,
        "DAGSTER_HOME": str(home / "dagster"),
        **storage_env,
    }
    try:
        busy0, sim0, tree0, t0 = _busy_cpu_s(), _process_cpu_s(sim.pid), _children_cpu_s(), time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "scripts.demo", "--data", str(data), "--chunk-size", str(chunk_size)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - t0
        tree = _children_cpu_s() - tree0  # the demo and every process under it, each reaped by its parent
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
    runs, run_overhead = _run_durations(home / "dagster", storage_env)
    per_model = {model: row["requests_total"] for model, row in stats["by_model"].items()}
    return Result(
        variant=variant,
        rows=rows,
        chunk_size=chunk_size,
        runs=len(runs),
        requests=stats["requests_total"],
        wall_s=round(wall, 2),
        limits_floor_s=round(_floor_s(stats), 2),
        sim_cpu_s=round(sim_cpu, 2),
        bare_s=round(bare_loop_s(bodies, per_model, home), 2),
        median_run_s=round(statistics.median(runs), 3),
        run_overhead_s=round(run_overhead, 3),
        tree_cpu_s=round(tree, 2),
        workers_cpu_s=_workers_cpu_s(home / "demo" / "daemon.log") if launcher == "warm" else None,
        busy_cpu_s=round(busy, 2),
        cores=os.cpu_count() or 1,
    )


def capture_bodies(data: Path, tmp: Path) -> list[dict]:
    """The request bodies Chunkwise sends for one 500-item chunk (every stage, the judge): `make demo
    --in-process` on the first 500 rows against a simulator that records them."""
    folder = tmp / "capture"
    folder.mkdir()
    rows = folder / "rows.csv"
    with data.open() as src, rows.open("w") as dst:
        for i, line in enumerate(src):
            if i > 500:
                break
            dst.write(line)
    config = sim_config(folder)
    config.write_text(
        yaml.safe_dump(yaml.safe_load(config.read_text()) | {"server": {"record_bodies": True}})
    )
    sim, root = start_simulator(config=config)
    env = {**os.environ, **simulator_env(root), "CHUNKWISE_HOME": str(folder / "home")}
    try:
        command = [
            sys.executable,
            "-m",
            "scripts.demo",
            "--in-process",
            "--data",
            str(rows),
            "--chunk-size",
            "500",
        ]
        subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True)
        return httpx.get(f"{root}/_sim/bodies", timeout=60).json()
    finally:
        sim.terminate()
        sim.wait(timeout=30)


def bare_loop_s(bodies: list[dict], per_model: dict[str, int], tmp: Path) -> float:
    """Wall seconds for a naive client (asyncio.gather over httpx, 64 in flight in 8 pools: what Chunkwise's
    stages used before resources/llm/transport.py) to send the same number of requests per model, cycling through Chunkwise's own bodies, to a fresh
    simulator with the same config: what the provider and an HTTP client need on this machine, with no
    orchestration at all."""
    by_model: dict[str, list[dict]] = {}
    for body in bodies:
        by_model.setdefault(body["model"], []).append(body)
    work = [
        by_model[m][i % len(by_model[m])] for m, n in per_model.items() if m in by_model for i in range(n)
    ]
    folder = tmp / "bare"
    folder.mkdir()
    sim, root = start_simulator(config=sim_config(folder))

    async def send_all() -> None:
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        headers = {"Authorization": f"Bearer {simulator_env(root)['CHUNKWISE_LLM_API_KEY']}"}
        clients = [httpx.AsyncClient(limits=limits, headers=headers, timeout=60) for _ in range(8)]
        queue = list(reversed(work))

        async def worker(client: httpx.AsyncClient) -> None:
            while queue:
                (await client.post(f"{root}/v1/chat/completions", json=queue.pop())).raise_for_status()

        await asyncio.gather(*(worker(clients[i % 8]) for i in range(64)))
        for client in clients:
            await client.aclose()

    try:
        started = time.monotonic()
        asyncio.run(send_all())
        return time.monotonic() - started
    finally:
        sim.terminate()
        sim.wait(timeout=30)


def _workers_cpu_s(daemon_log: Path) -> float:
    """The run workers' CPU seconds, from the warm parent's lines in the daemon's log."""
    found = re.findall(r"run worker \d+ exited \(-?\d+\) after ([\d.]+) s of CPU", daemon_log.read_text())
    return round(sum(float(x) for x in found), 2)


def _floor_s(stats: dict) -> float:
    """The provider's own floor: for each model, requests / RPM and tokens / TPM; the slowest model's binds."""
    floors = []
    for model in stats["by_model"].values():
        tokens = model["input"] + model["cached_input"] + model["cache_write"] + model["output"]
        floors.append(60 * max(model["requests_total"] / RPM, tokens / TPM))
    return max(floors, default=0.0)


def _run_durations(dagster_home: Path, storage_env: dict[str, str]) -> tuple[list[float], float]:
    """Start-to-end seconds of every chunk run the instance recorded, and the orchestration seconds per chunk run
    the estimate would measure on this instance (llm_assets/estimate.py `measured_overhead_per_chunk`)."""
    code = (
        "import dagster as dg, json\n"
        "from llm_assets.estimate import measured_overhead_per_chunk\n"
        "from llm_assets.spec import load_pipeline\n"
        "i = dg.DagsterInstance.get()\n"
        "rs = i.get_run_records(dg.RunsFilter(job_name='banking77__chunk_job'))\n"
        "spec = load_pipeline('pipelines/banking77.yaml', require_secrets=False)\n"
        "overhead = measured_overhead_per_chunk(spec, i, launched_runs=True)[0]\n"
        "print(json.dumps([[r.end_time - r.start_time for r in rs if r.start_time and r.end_time], overhead]))\n"
    )
    env = {**os.environ, **storage_env, "DAGSTER_HOME": str(dagster_home)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    durations, overhead = json.loads(done.stdout.strip().splitlines()[-1])
    return durations, overhead


def table(results: list[Result]) -> str:
    lines = [
        "| launcher | items | chunk runs | requests | wall s | limits floor s | simulator CPU s | "
        "(wall - provider floor) ms/item | bare loop s | (wall - bare loop) ms/item | median run s | "
        "orchestration per run s | "
        "Chunkwise + Dagster CPU ms/item | of which run workers | machine CPU ms/item (simulator excluded) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
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
    parser.add_argument(
        "--section", default="overhead", help="the docs/benchmarks.md section to write (one per kind of run)"
    )
    args = parser.parse_args(argv)
    results = []
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="chunkwise-overhead-") as folder, contextlib.ExitStack() as stack:
        tmp = Path(folder)
        server = None
        if any(v.endswith("+postgres") for v in variants):
            server = stack.enter_context(PostgresServer(fast=False))  # durable, as a deployment runs it
        data = write_dataset(args.rows, tmp / "synthetic.csv")
        bodies = capture_bodies(data, tmp)
        for i, variant in enumerate(variants):
            pg_env = {}
            if server is not None:
                pg_env = {
                    "CHUNKWISE_PG_HOST": "127.0.0.1",
                    "CHUNKWISE_PG_PORT": str(server.port),
                    "CHUNKWISE_PG_USER": ROLE,
                    "CHUNKWISE_PG_PASSWORD": "",
                    "CHUNKWISE_PG_DB": f"bench{i}",
                }
                server.create_database(f"bench{i}")
            result = run_variant(variant, data, args.rows, args.chunk_size, bodies, tmp, pg_env)
            print(table([result]).splitlines()[-1], flush=True)
            results.append(result)
    print(table(results))
    if len(results) == 2:
        a, b = results
        print(f"{b.variant} / {a.variant}: wall {b.wall_s / a.wall_s:.2f}x")
    if not args.no_write:
        replace_section(ROOT / "docs" / "benchmarks.md", args.section, _section(results))
    print(
        json.dumps(
            [
                asdict(r) | {"overhead_ms_per_item": round(r.ms_per_item(r.wall_s - r.floor_s), 3)}
                for r in results
            ]
        )
    )
    return 0


def _section(results: list[Result]) -> str:
    first = results[0]
    ratio = ""
    if len(results) == 2:
        a, b = results
        ratio = f"\n\n{b.variant} / {a.variant}: wall time {b.wall_s / a.wall_s:.2f}x, CPU {b.tree_cpu_s / a.tree_cpu_s:.2f}x."
    return (
        "## Orchestration overhead per item (`python bench/overhead.py`)\n\n"
        f"{first.rows:,} synthetic items (BANKING77 rows drawn with replacement) through the BANKING77 spec as "
        f"`make demo` runs them: new-dataset sensor, run queue (4 runs at once), one run per {first.chunk_size}-item "
        f"chunk (classified, enriched for the routed rows, the quality gates with their judge), completion report. "
        f"Simulator: no latency, no faults, RPM {RPM:,} and TPM {TPM:,} per model. {first.cores} cores, shared by "
        "the simulator. The provider floor is the larger of its limits' floor and its own CPU time (it serves on "
        "one thread, so no client finishes sooner); the bare loop is a naive `asyncio.gather` client sending the "
        "same requests (Chunkwise's own bodies, captured) to a fresh simulator: the provider plus an HTTP client, "
        f"no orchestration. Target: (wall - provider floor) <= {TARGET_MS_PER_ITEM} ms per item.\n\n"
        f"{table(results)}{ratio}\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
