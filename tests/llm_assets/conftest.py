import sys
from pathlib import Path

# The pipeline tests and their crash-test child share pipeline_support.py (pytest runs in importlib mode).
sys.path.insert(0, str(Path(__file__).resolve().parent))


import pytest  # noqa: E402


@pytest.fixture
def spec_sim(start_sim, monkeypatch):
    """A simulator both provider profiles of the shipped specs point at, through the env vars they name."""
    sim = start_sim({"seed": 9})
    monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", sim.openai_base_url)
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", sim.api_key)
    monkeypatch.setenv("CHUNKWISE_ANTHROPIC_BASE_URL", sim.base_url)
    monkeypatch.setenv("CHUNKWISE_ANTHROPIC_API_KEY", sim.api_key)
    return sim
