"""The shipped llama.cpp profiles and the untested server profiles in docs/real-servers.md load into the shipped
pipelines: configuration that a reader copies is at least valid (the real server run is tests/real_server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from llm_assets.spec import PipelineSpecError, load_pipeline
from llm_assets.spec_load import read_profile

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("LLAMACPP_API_KEY", "VLLM_API_KEY", "OLLAMA_API_KEY", "LITELLM_API_KEY")


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    for key in KEYS:
        monkeypatch.setenv(key, "sk-test")


@pytest.mark.parametrize("pipeline", ["banking77", "reviews"])
def test_llamacpp_profile_moves_every_stage_to_the_local_server(pipeline):
    profile = read_profile(ROOT / "pipelines" / "profiles" / f"llamacpp-{pipeline}.yaml")
    spec = load_pipeline(ROOT / "pipelines" / f"{pipeline}.yaml", overrides=profile)
    for stage in spec.stages:
        assert (stage.provider, stage.model) == ("llamacpp", "gemma-3-270m")
        assert stage.resolved.profile.dialect == "llamacpp"
        assert stage.resolved.profile.allow_unpriced
        assert stage.gates.success_rate.severity == "WARN"
    assert spec.completion.min_success_rate == 0.0
    # The same pipeline without the profile is untouched (profiles are not specs: the code location skips them).
    plain = load_pipeline(ROOT / "pipelines" / f"{pipeline}.yaml", require_secrets=False)
    assert all(stage.provider != "llamacpp" for stage in plain.stages)


def test_each_documented_server_profile_loads_into_a_pipeline():
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "real-servers.md").read_text(), re.S)
    assert len(blocks) == 3, "vLLM, Ollama and LiteLLM"
    for block in blocks:
        providers = yaml.safe_load(block)["providers"]
        (name,) = providers
        model = (providers[name].get("prices") or [{}])[0].get("model", "local-model")
        spec = load_pipeline(
            ROOT / "pipelines" / "reviews.yaml",
            overrides={
                "providers": providers,
                "stages": {
                    s: {"provider": name, "model": model} for s in ("sentiment", "aspects", "reply_draft")
                },
            },
        )
        assert {stage.resolved.profile.dialect for stage in spec.stages} == {name}


def test_a_profile_with_an_unset_variable_names_the_file_and_line(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text("providers:\n  local:\n    base_url: ${NO_SUCH_VARIABLE_SET}\n")
    with pytest.raises(PipelineSpecError) as caught:
        read_profile(profile)
    assert "bad.yaml:3" in str(caught.value) and "NO_SUCH_VARIABLE_SET" in str(caught.value)


def test_a_profile_naming_a_stage_the_pipeline_lacks_is_refused(tmp_path):
    profile = tmp_path / "typo.yaml"
    profile.write_text("stages:\n  clasified: {model: gemma-3-270m}\n")
    with pytest.raises(PipelineSpecError, match="clasified"):
        load_pipeline(ROOT / "pipelines" / "banking77.yaml", overrides=read_profile(profile))
