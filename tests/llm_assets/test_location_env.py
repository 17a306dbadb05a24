"""The code location's environment settings `make demo` hands its choices through: one spec file, a profile of
overrides for it, and one interval for every sensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_assets.location import defs_from_env, sensor_interval_from_env, specs_from_env
from llm_assets.spec import PipelineSpecError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def keys(monkeypatch, tmp_path):
    for name in ("CHUNKWISE_LLM_API_KEY", "CHUNKWISE_ANTHROPIC_API_KEY"):
        monkeypatch.setenv(name, "sk-test")
    monkeypatch.setenv("CHUNKWISE_HOME", str(tmp_path / "home"))
    for name in ("CHUNKWISE_PIPELINES", "CHUNKWISE_PROFILE", "CHUNKWISE_SENSOR_INTERVAL_S", "CHUNKWISE_MODE"):
        monkeypatch.delenv(name, raising=False)


def test_one_spec_file_with_a_profile_is_the_whole_location(monkeypatch, tmp_path):
    profile = tmp_path / "overrides.json"
    profile.write_text(json.dumps({"input": {"chunk_size": 120}, "stages": {"enriched": {"mode": "batch"}}}))
    monkeypatch.setenv("CHUNKWISE_PIPELINES", str(ROOT / "pipelines" / "banking77.yaml"))
    monkeypatch.setenv("CHUNKWISE_PROFILE", str(profile))
    [spec] = specs_from_env()
    assert spec.name == "banking77" and spec.input.chunk_size == 120
    assert {stage.name: stage.mode for stage in spec.stages}["enriched"] == "batch"


def test_a_profile_with_a_folder_of_specs_is_refused_naming_both_settings(monkeypatch, tmp_path):
    profile = tmp_path / "overrides.json"
    profile.write_text("{}")
    monkeypatch.setenv("CHUNKWISE_PROFILE", str(profile))
    with pytest.raises(PipelineSpecError, match="CHUNKWISE_PROFILE=.*CHUNKWISE_PIPELINES is the folder"):
        specs_from_env()


def test_the_sensor_interval_applies_to_every_sensor(monkeypatch):
    monkeypatch.setenv("CHUNKWISE_SENSOR_INTERVAL_S", "1")
    intervals = {
        s.name: s.minimum_interval_seconds for s in defs_from_env().sensors if "refresh_stale" not in s.name
    }
    assert len(intervals) >= 6 and set(intervals.values()) == {1}, intervals


@pytest.mark.parametrize("raw", ["0", "-5", "1.5", "soon"])
def test_a_bad_sensor_interval_says_what_it_must_be(monkeypatch, raw):
    monkeypatch.setenv("CHUNKWISE_SENSOR_INTERVAL_S", raw)
    with pytest.raises(ValueError, match="whole number of seconds, 1 or more"):
        sensor_interval_from_env()
