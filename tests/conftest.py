"""Shared fixtures: the local LLM simulator (llm_sim) as a real subprocess on a free localhost port.

`start_sim(config)` starts one and returns a SimHandle; every simulator started in a test is stopped at its end.
`sim` is a simulator with the default config (models and prices of llm_sim.config, key `sk-sim-local`,
no latency, no faults, no rate limits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llm_sim.launcher import SimHandle, launch_sim


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
