"""HTTP client CPU per request: the online engine's client (aiohttp, resources/llm/transport.py) against httpx's
AsyncClient as the engine used it before (8 keep-alive pools of 8 connections), side by side (not a test).

Each variant sends the same `--requests` chat-completion POSTs (a BANKING77-sized prompt: the intent list in the
system prompt) to the local simulator, 64 in flight, and reads every reply's JSON. Measured: this process's CPU
per request (time.process_time: the client's own cost, which a chunk run pays on every item attempt) and the
requests per second. The variants alternate over `--rounds` rounds; the medians are reported, with the ratio.

Prints a table and a JSON line; writes the `http-client` section of docs/benchmarks.md (unless `--no-write`).
Usage: python bench/http_client.py [--requests 4000] [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.banking77 import simulator_env  # noqa: E402
from bench.docs import replace_section  # noqa: E402
from bench.overhead import sim_config  # noqa: E402
from resources.llm.runner import tls_context  # noqa: E402
from resources.llm.transport import OnlineClient  # noqa: E402
from scripts.demo import start_simulator  # noqa: E402

IN_FLIGHT = 64
LABELS = ", ".join(f"intent_{i}" for i in range(77))


def _bodies(n: int) -> list[bytes]:
    system = f"Classify the bank customer's message into exactly one of these intents: {LABELS}."
    return [
        json.dumps(
            {
                "model": "gpt-6-luna",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"I am still waiting for my new card, ticket {i}"},
                ],
                "max_tokens": 64,
            }
        ).encode()
        for i in range(n)
    ]


async def _send_aiohttp(url: str, headers: dict[str, str], bodies: list[bytes]) -> None:
    queue = list(bodies)
    async with OnlineClient(
        headers=headers, connections=IN_FLIGHT, timeout_s=60, tls=tls_context()
    ) as client:

        async def worker() -> None:
            while queue:
                reply = await client.post(url, queue.pop())
                assert reply.status_code == 200, reply.text
                reply.json()

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


async def _send_httpx(url: str, headers: dict[str, str], bodies: list[bytes]) -> None:
    queue = list(bodies)
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    clients = [
        httpx.AsyncClient(limits=limits, headers=headers, timeout=60, verify=tls_context()) for _ in range(8)
    ]

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            reply = await client.post(url, content=queue.pop())
            assert reply.status_code == 200, reply.text
            reply.json()

    await asyncio.gather(*(worker(clients[i % 8]) for i in range(IN_FLIGHT)))
    for client in clients:
        await client.aclose()


VARIANTS = {"aiohttp (transport.py)": _send_aiohttp, "httpx AsyncClient, 8 pools of 8": _send_httpx}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    bodies = _bodies(args.requests)
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    rate: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="chunkwise-http-") as folder:
        sim, root = start_simulator(config=sim_config(Path(folder)))
        try:
            key = simulator_env(root)["CHUNKWISE_LLM_API_KEY"]
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            url = f"{root}/v1/chat/completions"
            asyncio.run(_send_aiohttp(url, headers, bodies[:200]))  # the simulator's first replies are slower
            for _ in range(args.rounds):
                for name, send in VARIANTS.items():
                    c0, t0 = time.process_time(), time.monotonic()
                    asyncio.run(send(url, headers, bodies))
                    cpu[name].append(1000 * (time.process_time() - c0) / len(bodies))
                    rate[name].append(len(bodies) / (time.monotonic() - t0))
        finally:
            sim.terminate()
            sim.wait(timeout=30)
    rows = {name: (statistics.median(cpu[name]), statistics.median(rate[name])) for name in VARIANTS}
    (fast, (fast_cpu, _)), (slow, (slow_cpu, _)) = rows.items()
    lines = [
        "| client | client CPU ms/request (median) | requests/s (median) |",
        "|---|---:|---:|",
        *(f"| {name} | {c:.3f} | {r:,.0f} |" for name, (c, r) in rows.items()),
    ]
    ratio = f"{slow} / {fast}: {slow_cpu / fast_cpu:.1f}x the CPU per request."
    print("\n".join(lines))
    print(ratio)
    if not args.no_write:
        replace_section(
            ROOT / "docs" / "benchmarks.md",
            "http-client",
            "## HTTP client CPU per request (`python bench/http_client.py`)\n\n"
            f"{args.requests:,} chat-completion POSTs per variant (BANKING77-sized prompt), {IN_FLIGHT} in flight, "
            "to the local simulator on the same machine; each reply's JSON read. The client's own CPU "
            "(time.process_time of this process) per request, median of "
            f"{args.rounds} alternating rounds. A chunk run pays it on every item attempt (about 690 per "
            "500-item BANKING77 chunk).\n\n" + "\n".join(lines) + f"\n\n{ratio}\n",
        )
    print(json.dumps({name: {"cpu_ms": round(c, 4), "rps": round(r, 1)} for name, (c, r) in rows.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
