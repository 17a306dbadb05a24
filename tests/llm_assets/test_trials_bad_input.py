"""Bad input to a model trial: one clear message each, and not one request at the simulator."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from llm_assets.pipeline_assets import register
from llm_assets.spec import PipelineSpecError, load_pipeline
from llm_assets.trials import TrialError, run_trial
from llm_sim.launcher import PROJECT_ROOT, SimHandle

BANKING77_CSV = PROJECT_ROOT / "data" / "banking77" / "test.csv"
BANKING77_SPEC = PROJECT_ROOT / "pipelines" / "banking77.yaml"


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    with open(BANKING77_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[::30]  # 103 items
    return _write(tmp_path / "small.csv", rows)


@pytest.fixture
def trial_sim(start_sim: Callable[..., SimHandle], monkeypatch: pytest.MonkeyPatch) -> SimHandle:
    sim = start_sim({})
    monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", sim.openai_base_url)
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", sim.api_key)
    return sim


def _trial_error(data: Path, home: Path, overrides: dict | None = None, **kwargs) -> str:
    spec = load_pipeline(BANKING77_SPEC, overrides=overrides)
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(data), instance, home)
        with pytest.raises(TrialError) as caught:
            run_trial(spec, "classified", dataset, instance, home, **kwargs)
    return str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"sample_size": 0}, "the sample is empty (sample size 0); ask for 1 item or more"),
        ({"sample_size": 104}, "a sample of 104 items is larger than dataset banking77-small-"),
        (
            {"sample_size": 50, "budget_usd": 0.01},
            "but the budget is $0.0100; raise the budget or ask for a smaller sample",
        ),
    ],
    ids=["empty-sample", "sample-larger-than-dataset", "budget-smaller-than-the-trial"],
)
def test_a_bad_trial_request_gets_one_line_and_spends_nothing(
    trial_sim, small_data, tmp_path, kwargs, expected
):
    message = _trial_error(small_data, tmp_path, **kwargs)
    assert expected in message and "\n" not in message, message
    assert trial_sim.stats()["requests_total"] == 0


@pytest.mark.slow
def test_a_file_without_gold_answers_and_no_judge_is_refused_before_any_request(trial_sim, tmp_path):
    with open(BANKING77_CSV, newline="", encoding="utf-8") as f:
        rows = [{"text": r["text"], "category": ""} for r in list(csv.DictReader(f))[:60]]
    no_judge = {"stages": {"classified": {"gates": {"sampled_quality": {"judge": None}}}}}
    message = _trial_error(_write(tmp_path / "unlabelled.csv", rows), tmp_path, no_judge, sample_size=20)
    assert message.startswith(
        "nothing to score stage 'classified' by: no sampled item of banking77-unlabelled-"
    )
    assert "has no judge" in message and "\n" not in message
    assert trial_sim.stats()["requests_total"] == 0


def test_a_stage_with_no_gold_column_and_no_judge_is_refused_at_load():
    quality = {"gold_column": None, "judge": None}
    with pytest.raises(PipelineSpecError) as caught:
        load_pipeline(
            BANKING77_SPEC,
            overrides={"stages": {"classified": {"gates": {"sampled_quality": quality}}}},
            require_secrets=False,
        )
    assert len(caught.value.problems) == 1, caught.value.problems
    assert "stages[0].gates.sampled_quality: scores nothing: set gold_column" in caught.value.problems[0]


@pytest.mark.slow
def test_a_candidate_without_a_price_row_is_refused_at_load_and_by_make_trial(
    trial_sim, small_data, tmp_path
):
    candidates = [{"model": "gpt-6-luna"}, {"model": "gpt-6-lunar-unpriced"}]
    with pytest.raises(PipelineSpecError) as caught:
        load_pipeline(
            BANKING77_SPEC,
            overrides={"stages": {"classified": {"candidates": candidates}}},
            require_secrets=False,
        )
    assert len(caught.value.problems) == 1, caught.value.problems
    assert (
        "stages[0].candidates[1].model: no price for model 'gpt-6-lunar-unpriced'" in caught.value.problems[0]
    )
    # the same spec through `python -m scripts.trial`: one line, exit 2, nothing sent
    spec_file = tmp_path / "unpriced.yaml"
    text = BANKING77_SPEC.read_text().replace("- {model: gpt-6.2-sol}", "- {model: gpt-6-lunar-unpriced}")
    text = text.replace("../data/", f"{BANKING77_SPEC.parent.parent}/data/")
    spec_file.write_text(text)
    env = {"CHUNKWISE_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.trial", "--pipeline", str(spec_file), "--stage", "classified", "--data", str(small_data)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, env={**__import__("os").environ, **env},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "no price for model 'gpt-6-lunar-unpriced'" in done.stderr
    assert trial_sim.stats()["requests_total"] == 0


@pytest.mark.slow
def test_a_stage_without_candidates_is_refused(trial_sim, small_data, tmp_path):
    spec = load_pipeline(BANKING77_SPEC)
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(small_data), instance, tmp_path)
        with pytest.raises(
            TrialError, match=r"stage 'enriched' of pipeline 'banking77' lists no candidates; add"
        ):
            run_trial(spec, "enriched", dataset, instance, tmp_path)
    assert trial_sim.stats()["requests_total"] == 0


@pytest.mark.slow
def test_a_stage_without_a_sampled_quality_gate_loads_and_its_trial_is_refused(
    trial_sim, small_data, tmp_path
):
    spec = load_pipeline(
        BANKING77_SPEC, overrides={"stages": {"enriched": {"candidates": [{"model": "gpt-6-luna"}]}}}
    )  # the pipeline still loads: only its trial needs the gate
    with dg.instance_for_test() as instance:
        dataset = register(spec, str(small_data), instance, tmp_path)
        with pytest.raises(
            TrialError, match=r"stage 'enriched' of pipeline 'banking77' has no gates.sampled_quality"
        ):
            run_trial(spec, "enriched", dataset, instance, tmp_path)
    assert trial_sim.stats()["requests_total"] == 0


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (
            {"classified": {"candidates": [{"model": "gpt-6-luna", "provider": "defualt"}]}},
            "stages[0].candidates[0].provider: no provider profile 'defualt' (did you mean 'default'?",
        ),
        (
            {"classified": {"trial": {"confidence_field": "label"}}},
            "stages[0].trial.confidence_field: 'label' is not a number field of stage 'classified'",
        ),
        (
            {"classified": {"candidates": [{"model": "gpt-6-luna"}, {"model": "gpt-6-luna"}]}},
            "stages[0].candidates[1]: model 'gpt-6-luna' on profile 'default' is already candidates[0]",
        ),
    ],
    ids=["unknown-profile", "confidence-not-a-number", "listed-twice"],
)
def test_candidates_and_trial_settings_are_checked_when_the_spec_loads(stages, expected):
    with pytest.raises(PipelineSpecError) as caught:
        load_pipeline(BANKING77_SPEC, overrides={"stages": stages}, require_secrets=False)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert expected in caught.value.problems[0], caught.value.problems[0]
