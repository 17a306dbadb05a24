"""Shared fixtures: the local LLM simulator (llm_sim) as a real subprocess on a free localhost port.

`start_sim(config)` starts one and returns a SimHandle; every simulator started in a test is stopped at its end.
`sim` is a simulator with the default config (models and prices of llm_sim.config, key `sk-sim-local`,
no latency, no faults, no rate limits).
`s3_env` is a real S3 API on localhost (moto's server mode) with the environment a deployment sets to use it.
`postgres_server` is a real PostgreSQL server (scripts/postgres_server.py: Debian's package, a throwaway cluster
per test worker, started on first use); `postgres_dsn` is a fresh empty database on it for one test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from io_managers.s3_config import S3_ENDPOINT_ENV
from llm_sim.launcher import SimHandle, launch_sim
from scripts.postgres_server import PostgresServer


@pytest.fixture
def start_sim() -> Iterator[Callable[..., SimHandle]]:
    """Factory: `start_sim(config_dict)` -> SimHandle; all are stopped when the test ends."""
    started: list[SimHandle] = []

    def start(config: dict[str, Any] | None = None) -> SimHandle:
        handle = launch_sim(config)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture
def sim(start_sim: Callable[..., SimHandle]) -> SimHandle:
    """A simulator with the default config, fresh for this test."""
    return start_sim({})


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local S3 server; the environment points Chunkwise at it (no credentials in config). Yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv(S3_ENDPOINT_ENV, f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for this test worker, stopped (and its folder removed) when the session ends."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A new empty database for this test (named after it), as a libpq URL."""
    import hashlib

    name = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    return postgres_server.create_database(name)
