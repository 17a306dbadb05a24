"""Rate-limit benchmark: how close to a provider's tokens-per-minute limit each client runs, and how often it is
refused, alone and with four processes sharing the limit (as four chunks of a Dagster backfill would).

Against the local simulator (a test double, started here as a subprocess) with a binding TPM limit
(continuously refilled, one second of burst), 2% injected 5xx and 150-250 ms latency, over the BANKING77 test
items with the full intent list in the prompt. Variants:
  chunkwise       the LLMResource (shared SQLite limit store, reservation + reconciliation, AIMD)
  naive_gather    asyncio.gather over all items, at most 64 in flight, retry after 1 s on any error (5 attempts)
  fixed_throttle  requests paced at 75% of the token limit, 64 in flight, retry after 1 s (5 attempts)
And the shared backend: `chunkwise_postgres_2homes`, four processes on two homes (two per CHUNKWISE_HOME and
state dir, as two machines would be) sharing the limit through PostgreSQL (CHUNKWISE_STATE_URL; a throwaway
durable cluster started here, scripts/postgres_server.py). Also the requests/s the resource reaches with no limit
and zero latency.

Prints a table; the last line is one JSON object keyed by variant. Writes its section of docs/benchmarks.md.
Never passes or fails on time. Usage: python bench/ratelimit.py [--seconds 60] [--items N]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import multiprocessing as mp
import os
import resource as os_resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.docs import replace_section  # noqa: E402
from llm_sim.launcher import SimHandle, launch_sim  # noqa: E402
from resources.llm import BudgetScope, ChunkRetryableError, LLMRequest, LLMResource  # noqa: E402
from resources.llm.state_store import STATE_URL_ENV  # noqa: E402
from resources.llm.tokens import estimate_prompt_tokens  # noqa: E402
from scripts.postgres_server import PostgresServer  # noqa: E402

DATA = ROOT / "data" / "banking77"
DOCS = ROOT / "docs" / "benchmarks.md"
MODEL = "gpt-6-luna"
API_KEY = "sk-sim-local"
MAX_OUTPUT_TOKENS = 48
IN_FLIGHT = 64
NAIVE_ATTEMPTS = 5
WARMUP_S = 3.0  # the initial burst is not steady state


# -- workload ---------------------------------------------------------------------------------------------
def load_items(limit: int | None) -> tuple[list[LLMRequest], list[str]]:
    labels = json.loads((DATA / "categories.json").read_text())
    if isinstance(labels, dict):
        labels = list(labels.get("categories", labels))
    with open(DATA / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    items = [LLMRequest(f"b77-{i}", row["text"]) for i, row in enumerate(rows)]
    return (items[:limit] if limit else items), [str(x) for x in labels]


def prompt_parts(labels: list[str]) -> tuple[str, dict]:
    system = (
        "You classify customer messages sent to a bank. Choose exactly one intent from this list "
        "and give your confidence between 0 and 1.\nIntents:\n" + "\n".join(f"- {label}" for label in labels)
    )
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": labels}, "confidence": {"type": "number"}},
        "required": ["label", "confidence"],
        "additionalProperties": False,
    }
    return system, schema


def request_body(system: str, schema: dict, text: str) -> dict:
    """The same wire body the resource sends (json_schema mode), for the baseline clients."""
    return {
        "model": MODEL,
        "max_completion_tokens": MAX_OUTPUT_TOKENS,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "intent", "strict": True, "schema": schema},
        },
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
    }


def admitted_tokens(system: str, schema: dict, text: str) -> int:
    """What the provider's TPM bucket counts for one request: prompt tokens + max_completion_tokens."""
    return estimate_prompt_tokens([system, text], schema) + MAX_OUTPUT_TOKENS


# -- the simulator ---------------------------------------------------------------------------------------
def Sim(config: dict) -> SimHandle:  # noqa: N802
    """The simulator as a separate process (llm_sim.launcher), like a provider on the network."""
    return launch_sim(config)


# -- variants --------------------------------------------------------------------------------------------
def run_chunkwise(
    base: str, items: list[LLMRequest], system: str, schema: dict, tpm: float, state_dir: str
) -> dict:
    llm = LLMResource(
        provider="openai",
        base_url=base + "/v1",
        api_key=API_KEY,
        model=MODEL,
        max_output_tokens=MAX_OUTPUT_TOKENS,
        max_concurrency=IN_FLIGHT,
        tokens_per_minute=tpm,
        state_dir=state_dir,
        progress_interval_s=3600,
        circuit_breaker_failures=1000,
    )
    try:
        outcome = llm.run_prompts(
            items,
            system_prompt=system,
            schema=schema,
            schema_name="intent",
            scope=BudgetScope("bench", "banking77"),
            stage="bench",
        )
    except ChunkRetryableError as exc:
        outcome = exc.outcome
    assert outcome is not None and outcome.summary is not None
    return {"ok": outcome.summary.items_succeeded, "total": len(items)}


async def _baseline(
    base: str, items: list[LLMRequest], system: str, schema: dict, pace_tokens_per_s: float | None
) -> dict:
    sem = asyncio.Semaphore(IN_FLIGHT)
    ok = 0
    next_slot = time.monotonic()
    lock = asyncio.Lock()

    async def pace(tokens: int) -> None:
        nonlocal next_slot
        if pace_tokens_per_s is None:
            return
        async with lock:
            now = time.monotonic()
            start = max(now, next_slot)
            next_slot = start + tokens / pace_tokens_per_s
        await asyncio.sleep(max(0.0, start - time.monotonic()))

    async def one(client: httpx.AsyncClient, item: LLMRequest) -> None:
        nonlocal ok
        body = request_body(system, schema, item.text)
        tokens = admitted_tokens(system, schema, item.text)
        async with sem:
            for _ in range(NAIVE_ATTEMPTS):
                await pace(tokens)
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                    if r.status_code == 200:
                        ok += 1
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:
        await asyncio.gather(*(one(client, it) for it in items))
    return {"ok": ok, "total": len(items)}


def run_variant(
    variant: str, base: str, items: list[LLMRequest], labels: list[str], tpm: float, state_dir: str
) -> dict:
    system, schema = prompt_parts(labels)
    if variant == "chunkwise":
        return run_chunkwise(base, items, system, schema, tpm, state_dir)
    pace = None if variant == "naive_gather" else 0.75 * tpm / 60.0
    return asyncio.run(_baseline(base, items, system, schema, pace))


def _child(
    variant: str,
    base: str,
    items: list[LLMRequest],
    labels: list[str],
    tpm: float,
    state_dir: str,
    start_at: float,
    out: Any,
    env: dict[str, str],
) -> None:
    os.environ.update(env)  # this process's home and shared store, as its machine would set them
    time.sleep(max(0.0, start_at - time.time()))
    out.put(run_variant(variant, base, items, labels, tpm, state_dir))


# -- measurement -----------------------------------------------------------------------------------------
def measure(
    sim: Sim,
    variant: str,
    processes: int,
    items: list[LLMRequest],
    labels: list[str],
    tps: float,
    homes: int = 1,
    state_url: str = "",
) -> dict:
    """One run; with `homes` > 1 the processes are spread over that many CHUNKWISE_HOMEs (own state dirs) and
    share the limit only through the store at `state_url`."""
    sim.reset()
    time.sleep(1.5)  # let the simulator's bucket refill: every variant starts from the same state
    system, schema = prompt_parts(labels)
    tokens_by_sha = {}
    import hashlib

    for it in items:
        tokens_by_sha[hashlib.sha256(it.text.encode()).hexdigest()] = admitted_tokens(system, schema, it.text)
    state_dir = tempfile.mkdtemp(prefix="bench-state-")
    home_dirs = [tempfile.mkdtemp(prefix=f"bench-home{h}-") for h in range(homes)]
    t0 = time.time()
    if processes == 1:
        results = [run_variant(variant, sim.base_url, items, labels, tps * 60, state_dir)]
    else:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        shares = [items[i::processes] for i in range(processes)]
        start_at = time.time() + 3.0
        procs = []
        for i, share in enumerate(shares):
            home = home_dirs[i * homes // processes]
            env = {"CHUNKWISE_HOME": home, STATE_URL_ENV: state_url} if homes > 1 else {}
            own_state = os.path.join(home, "state") if homes > 1 else state_dir
            procs.append(
                ctx.Process(
                    target=_child,
                    args=(variant, sim.base_url, share, labels, tps * 60, own_state, start_at, queue, env),
                )
            )
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        t0 = start_at
    wall = time.time() - t0
    log = [r for r in sim.requests() if r["endpoint"] == "chat"]
    total_requests = len(log)
    limited = sum(1 for r in log if str(r["status"]) == "429")
    admitted = sorted(
        (r["t"], tokens_by_sha.get(r["user_sha256"], 0)) for r in log if str(r["status"]) != "429"
    )
    ok = sum(r["ok"] for r in results)
    utilization = 0.0
    if admitted:
        start, end = admitted[0][0] + WARMUP_S, admitted[-1][0]
        # The steady part: after the initial burst, until the last item was admitted (the tail is in the wall time).
        window = [tok for t, tok in admitted if start <= t <= end]
        if end > start:
            utilization = sum(window) / ((end - start) * tps)
    return {
        "variant": variant if homes == 1 else f"{variant}_postgres_{homes}homes",
        "processes": processes,
        "utilization": round(utilization, 4),
        "rate_limited_fraction": round(limited / total_requests, 4) if total_requests else 0.0,
        "items_lost": len(items) - ok,
        "items": len(items),
        "wall_s": round(wall, 1),
        "requests": total_requests,
        "requests_per_s": round(total_requests / wall, 1) if wall > 0 else 0.0,
    }


def measure_unlimited(n: int) -> dict:
    """Requests/s of the resource with no limit, no latency, no faults; and its client CPU per request."""
    sim = Sim({"seed": 1})
    try:
        items = [LLMRequest(f"u{i}", f"where is my card {i}") for i in range(n)]
        llm = LLMResource(
            provider="openai",
            base_url=sim.base_url + "/v1",
            api_key=API_KEY,
            model=MODEL,
            max_output_tokens=16,
            max_concurrency=64,
            progress_interval_s=3600,
        )
        llm.run_prompts(
            items[:200],
            system_prompt="Answer briefly.",
            schema=None,
            schema_name="x",
            scope=BudgetScope("warm", "u"),
            stage="bench",
        )
        cpu0 = os_resource.getrusage(os_resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        out = llm.run_prompts(
            items,
            system_prompt="Answer briefly.",
            schema=None,
            schema_name="x",
            scope=BudgetScope("bench-unlimited", "u"),
            stage="bench",
        )
        wall = time.perf_counter() - t0
        cpu1 = os_resource.getrusage(os_resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        assert out.summary is not None
        return {
            "requests": out.summary.requests,
            "requests_per_s": round(out.summary.requests / wall, 1),
            "client_cpu_ms_per_request": round(1000 * cpu / out.summary.requests, 3),
            "client_ceiling_requests_per_s": round(out.summary.requests / cpu, 1) if cpu > 0 else math.inf,
        }
    finally:
        sim.stop()


def write_docs(table: str, payload: dict, unlimited: dict, config: dict) -> None:
    section = (
        "## Rate limits (`python bench/ratelimit.py`)\n\n"
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine ({os.cpu_count()} cores, "
        "shared with the simulator and other work) against the local simulator (a test double): "
        f"TPM limit {config['tps']:,.0f} tokens/s, continuously refilled, one second of burst; "
        f"{config['items']} BANKING77 items with all 77 intents in the prompt (~{config['tokens_per_request']} tokens "
        "per request incl. max_completion_tokens); 2% injected 500s; latency 150-250 ms. Utilization = tokens the "
        "limiter admitted per second over the steady part (after a 3 s warm-up, until the last admission) / the limit; "
        "429 frac = the share of requests the simulator refused with 429, counted on its side. `_shared` rows: four "
        "processes on one state dir (the SQLite store); `chunkwise_postgres_2homes`: four processes on two homes (two "
        "per CHUNKWISE_HOME, as on two machines) sharing the limit only through PostgreSQL (`CHUNKWISE_STATE_URL`, a "
        "local durable cluster: fsync on).\n\n"
        "```\n" + table + "\n```\n\n"
        f"No limit, zero latency, 64 in flight: **{unlimited['requests_per_s']} requests/s** end to end (client and "
        f"simulator share {os.cpu_count()} cores); the client spends {unlimited['client_cpu_ms_per_request']} ms CPU per "
        f"request, i.e. its own ceiling is about {unlimited['client_ceiling_requests_per_s']} requests/s.\n\n"
        "```json\n" + json.dumps(payload) + "\n```"
    )
    replace_section(DOCS, "ratelimit", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="target duration of one run at the limit")
    parser.add_argument("--items", type=int, default=None, help="use only the first N items")
    parser.add_argument("--variants", default="chunkwise,naive_gather,fixed_throttle")
    parser.add_argument("--unlimited-requests", type=int, default=3000)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--no-postgres", action="store_true", help="skip the scenario sharing the limit through PostgreSQL"
    )
    args = parser.parse_args()

    items, labels = load_items(args.items)
    system, schema = prompt_parts(labels)
    total_tokens = sum(admitted_tokens(system, schema, it.text) for it in items)
    tps = math.ceil(total_tokens / args.seconds)
    config = {"tps": tps, "items": len(items), "tokens_per_request": round(total_tokens / len(items))}
    sim = Sim(
        {
            "seed": 7,
            "models": {
                MODEL: {
                    "provider": "openai",
                    "input": 0.10,
                    "cached_input": 0.01,
                    "cache_write": 0.125,
                    "output": 0.50,
                    "limits": {"tpm": tps, "per": "second"},
                }
            },
            "latency": {"base_ms": 150, "jitter_ms": 100},
            "faults": {"server_error": 0.02},
        }
    )
    rows = []
    try:
        for processes in (1, 4):
            for variant in args.variants.split(","):
                row = measure(sim, variant, processes, items, labels, tps)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        if not args.no_postgres:
            with PostgresServer(fast=False) as postgres:
                url = postgres.create_database("bench_ratelimit")
                row = measure(sim, "chunkwise", 4, items, labels, tps, homes=2, state_url=url)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        sim.stop()
    unlimited = measure_unlimited(args.unlimited_requests)

    header = (
        f"{'variant':<28}{'procs':>6}{'utilization':>13}{'429 frac':>10}{'lost':>7}{'wall s':>8}{'req/s':>8}"
    )
    lines = [header, "-" * len(header)]
    payload: dict[str, Any] = {}
    for r in rows:
        name = (
            r["variant"] if r["processes"] == 1 or "_postgres_" in r["variant"] else f"{r['variant']}_shared"
        )
        lines.append(
            f"{name:<28}{r['processes']:>6}{r['utilization']:>13.3f}{r['rate_limited_fraction']:>10.4f}"
            f"{r['items_lost']:>7}{r['wall_s']:>8.1f}{r['requests_per_s']:>8.1f}"
        )
        payload[name] = {
            "utilization": r["utilization"],
            "rate_limited_fraction": r["rate_limited_fraction"],
            "items_lost": r["items_lost"],
            "wall_s": r["wall_s"],
        }
    payload["unlimited_requests_per_s"] = unlimited["requests_per_s"]
    table = "\n".join(lines)
    print(table)
    print(f"config: {config}; unlimited: {unlimited}")
    if not args.no_docs:
        write_docs(table, payload, unlimited, config)
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
