"""Model trials (llm_assets/trials.py) against a real simulator process whose answer key makes the cheap model
75% and the strong one 92% accurate on BANKING77: the recommendation, the numbers against the simulator's bill,
the cascade, idempotent re-runs, the Dagster asset and `python -m scripts.trial`."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from llm_assets.location import build_defs
from llm_assets.pipeline_assets import register
from llm_assets.settings import PipelineSettings
from llm_assets.spec import PipelineSpec, load_pipeline
from llm_assets.trials import TrialResult, run_trial, trial_asset_key
from llm_sim.launcher import PROJECT_ROOT, SimHandle, launch_sim
from resources.llm.resource import spend_ledger_for

BANKING77_CSV = PROJECT_ROOT / "data" / "banking77" / "test.csv"
BANKING77_SPEC = PROJECT_ROOT / "pipelines" / "banking77.yaml"
CHEAP, STRONG = "gpt-6-luna", "gpt-6.2-sol"
ACCURACY = {CHEAP: 0.75, STRONG: 0.92}
SAMPLE = 200  # the default
GATE = 0.55  # the cheap model's lower bound on 200 items is ~0.69: it meets this; at 0.3 accuracy it does not
ITEMS = 1540

pytestmark = pytest.mark.slow


def _rows() -> list[dict[str, str]]:
    with open(BANKING77_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trials")


@pytest.fixture(scope="module")
def key_file(folder: Path) -> Path:
    """The answer key of the whole BANKING77 test split, written by `python -m llm_sim answer-key`."""
    key = folder / "key.json"
    command = [sys.executable, "-m", "llm_sim", "answer-key", str(BANKING77_CSV), "--text-column", "text"]
    command += ["--label-column", "category", "-o", str(key)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    return key


@pytest.fixture(scope="module")
def data_file(folder: Path) -> Path:
    """Every second row of the split (1,540 items, every intent): the dataset the trials sample from.

    The simulator's draws are deterministic, so the sample's accuracies are fixed: 182/200 and 151/200 here. Like
    any 95% interval, the Wilson interval misses the configured accuracy on some samples (every third row, seed 0:
    the strong model is right on 170/200, an interval of 0.79-0.90); this test pins one where it holds."""
    return _write_csv(folder / "banking77-half.csv", _rows()[::2])


def keyed_sim(key_file: Path, cheap_accuracy: float) -> SimHandle:
    models = {CHEAP: {"accuracy": cheap_accuracy}, STRONG: {"accuracy": ACCURACY[STRONG]}}
    return launch_sim({"answer_key": str(key_file), "models": models, "seed": 0})


@pytest.fixture(scope="module")
def sim(key_file: Path) -> Iterator[SimHandle]:
    handle = keyed_sim(key_file, ACCURACY[CHEAP])
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def env_at(sim: SimHandle) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHUNKWISE_LLM_BASE_URL", sim.openai_base_url)
        patch.setenv("CHUNKWISE_LLM_API_KEY", sim.api_key)
        yield


def gated_spec(min_accuracy: float = GATE, **stage: object) -> PipelineSpec:
    overrides = {"gates": {"sampled_quality": {"min_accuracy": min_accuracy}}, **stage}
    return load_pipeline(BANKING77_SPEC, overrides={"stages": {"classified": overrides}})


@pytest.fixture(scope="module")
def trial_home(folder: Path) -> Path:
    return folder / "home"


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def first_trial(env_at, sim, data_file, trial_home, instance) -> TrialResult:
    """The trial of the cheap (0.75) and strong (0.92) model, gate 0.55, on a fresh simulator."""
    assert sim.stats()["requests_total"] == 0
    spec = gated_spec()
    dataset = register(spec, str(data_file), instance, trial_home)
    return run_trial(spec, "classified", dataset, instance, trial_home, sample_size=SAMPLE)


def test_the_cheap_model_that_meets_the_gate_is_recommended(first_trial):
    print(Path(first_trial.markdown_path).read_text())
    assert first_trial.recommendation == CHEAP
    assert first_trial.candidate(CHEAP).wilson_low >= GATE
    assert first_trial.candidate(STRONG).meets_gate
    assert (
        "**Recommendation:** `gpt-6-luna`: the cheapest candidate"
        in Path(first_trial.markdown_path).read_text()
    )


def test_accuracies_intervals_and_costs_match_the_configuration_and_the_simulators_bill(
    first_trial, sim, instance
):
    stats = sim.stats()
    # In the spend ledger apart from the dataset's own processing, equal to the bill
    ledger = spend_ledger_for(instance.storage_directory()).rows(f"{first_trial.dataset_id}__trial")
    billed_rows = ledger[ledger["event"] == "billed"]
    assert set(billed_rows["stage"]) == {"classified__trial"}
    assert billed_rows["cost_usd"].sum() == pytest.approx(stats["billed_usd"], abs=1e-9)
    assert spend_ledger_for(instance.storage_directory()).rows(first_trial.dataset_id).empty
    assert first_trial.scored_by == "gold" and first_trial.dataset_items == ITEMS
    for model, accuracy in ACCURACY.items():
        c = first_trial.candidate(model)
        sigma = math.sqrt(accuracy * (1 - accuracy) / SAMPLE)
        assert abs(c.accuracy - accuracy) <= 4 * sigma, (model, c.accuracy)
        assert c.wilson_low <= accuracy <= c.wilson_high, (model, c.wilson_low, c.wilson_high)
        assert c.items == c.scored == SAMPLE and c.schema_valid_rate == 1.0
        assert c.refusal_rate == 0.0 and c.error_rate == 0.0
        billed = stats["by_model"][model]["billed_usd"]
        assert c.sample_cost_usd == pytest.approx(billed, abs=1e-9), model  # cost == the simulator's bill
        assert c.cost_per_1k_usd == pytest.approx(billed / SAMPLE * 1000)
        assert c.cost_per_1k_usd_batch == pytest.approx(
            c.cost_per_1k_usd * 0.5
        )  # prices.json batch_multiplier
        assert c.projected_cost_usd == pytest.approx(billed / SAMPLE * ITEMS)
        assert 0 < c.latency_p50_s <= c.latency_p95_s
    assert first_trial.spent_usd == pytest.approx(stats["billed_usd"], abs=1e-9)
    assert stats["requests_total"] == first_trial.requests_sent == 2 * SAMPLE
    assert first_trial.candidate(CHEAP).cost_per_1k_usd < first_trial.candidate(STRONG).cost_per_1k_usd
    saved = json.loads(Path(first_trial.json_path).read_text())
    assert TrialResult.model_validate(saved) == first_trial


def test_a_rerun_with_the_same_sample_and_models_spends_nothing(first_trial, sim, trial_home, instance):
    before = sim.stats()
    again = run_trial(
        gated_spec(), "classified", first_trial.dataset_id, instance, trial_home, sample_size=SAMPLE
    )
    assert sim.stats() == before  # not one request
    assert again.spent_usd == 0.0 and again.requests_sent == 0
    assert again.candidates == first_trial.candidates
    # The same answers against a gate neither model's lower bound reaches: none is recommended, still for free.
    strict = run_trial(
        gated_spec(0.97), "classified", first_trial.dataset_id, instance, trial_home, sample_size=SAMPLE
    )
    assert sim.stats() == before
    assert strict.recommendation is None
    assert (
        strict.recommendation_text.startswith("none meets the gate") and STRONG in strict.recommendation_text
    )


def test_the_cascade_is_measured_at_every_threshold_from_the_answers_already_bought(first_trial):
    cheap, strong = first_trial.candidate(CHEAP), first_trial.candidate(STRONG)
    assert (first_trial.cascade_cheap, first_trial.cascade_strong) == (CHEAP, STRONG)
    assert [p.threshold for p in first_trial.cascade] == [0.2, 0.3, 0.4, 0.5, 0.6]
    routed = [p.routed for p in first_trial.cascade]
    costs = [p.cost_per_1k_usd for p in first_trial.cascade]
    assert routed == sorted(routed) and costs == sorted(costs)
    for point in first_trial.cascade:
        # cheap on all, strong on the routed share: between cheap-only and cheap + strong on everything
        assert (
            cheap.cost_per_1k_usd <= point.cost_per_1k_usd <= cheap.cost_per_1k_usd + strong.cost_per_1k_usd
        )
        assert point.scored == SAMPLE and 0 <= point.accuracy <= 1
    text = Path(first_trial.markdown_path).read_text()
    assert "### Cascade: `gpt-6-luna` on every item, `gpt-6.2-sol` where `confidence` < threshold" in text
    assert "| 0.30 |" in text and "**Cascade:**" in text


def test_keyed_confidence_makes_the_cascade_beat_the_cheap_model_alone(first_trial):
    """Needs the simulator's keyed confidences (higher when the keyed label is right)."""
    cheap = first_trial.candidate(CHEAP)
    top = first_trial.cascade[-1]
    assert top.accuracy > cheap.accuracy, [(p.threshold, p.accuracy) for p in first_trial.cascade]
    assert first_trial.cascade_recommendation is not None
    best = next(p for p in first_trial.cascade if p.threshold == first_trial.cascade_recommendation)
    assert best.meets_gate and best.projected_cost_usd < first_trial.candidate(STRONG).projected_cost_usd


def test_the_trial_asset_records_one_point_per_candidate(first_trial, sim, trial_home, instance, env_at):
    spec = gated_spec()
    defs = build_defs([spec], home=trial_home, sensors=[])
    key = trial_asset_key(spec, spec.stage("classified"))
    assert key == dg.AssetKey(["trials", "banking77", "classified"])
    assert key not in defs.resolve_job_def("banking77__chunk_job").asset_layer.executable_asset_keys
    trial_asset = defs.get_assets_def(key)
    before = sim.stats()
    config = {
        "ops": {
            "trials__banking77__classified": {
                "config": {"dataset_id": first_trial.dataset_id, "sample_size": SAMPLE}
            }
        }
    }
    for label in (CHEAP, STRONG):
        result = dg.materialize(
            [trial_asset],
            partition_key=label,
            instance=instance,
            resources={"settings": PipelineSettings(home=str(trial_home))},
            run_config=config,
        )
        assert result.success
    assert sim.stats() == before  # the answers were bought by first_trial
    records = instance.fetch_materializations(key, limit=10).records
    by_partition = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert set(by_partition) == {CHEAP, STRONG}
    for label, metadata in by_partition.items():
        c = first_trial.candidate(label)
        assert metadata["accuracy"].value == pytest.approx(c.accuracy)
        assert metadata["cost_per_1k_usd"].value == pytest.approx(c.cost_per_1k_usd, rel=1e-5)
        for name in ("wilson_low", "wilson_high", "cost_per_1k_usd_batch", "latency_p50_s", "latency_p95_s"):
            assert isinstance(metadata[name].value, float), name
        assert metadata["recommendation"].value == CHEAP
        assert metadata["recommended"].value is (label == CHEAP)
        assert "| gpt-6.2-sol |" in metadata["trial"].value


def test_python_m_scripts_trial_prints_the_table_and_ends_with_the_json_path(
    first_trial, sim, trial_home, data_file
):
    before = sim.stats()
    env = {**os.environ, "CHUNKWISE_HOME": str(trial_home), "CHUNKWISE_LLM_BASE_URL": sim.openai_base_url}
    env["CHUNKWISE_LLM_API_KEY"] = sim.api_key
    command = [sys.executable, "-m", "scripts.trial", "--stage", "classified", "--data", str(data_file)]
    done = subprocess.run(
        [*command, "--sample", str(SAMPLE)], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == first_trial.json_path
    assert "**Recommendation:**" in done.stdout and "spent $0.0000 on 0 requests" in done.stdout
    assert sim.stats() == before
    done = subprocess.run(
        [*command, "--sample", "5000"], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "larger than dataset" in done.stderr, done.stderr
    assert sim.stats() == before


def test_a_cheap_model_degraded_past_the_gate_makes_the_strong_one_recommended(
    key_file, data_file, tmp_path, monkeypatch
):
    degraded = keyed_sim(key_file, 0.3)
    try:
        monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", degraded.openai_base_url)
        monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", degraded.api_key)
        spec = gated_spec()
        with dg.instance_for_test() as instance:
            dataset = register(spec, str(data_file), instance, tmp_path)
            result = run_trial(spec, "classified", dataset, instance, tmp_path, sample_size=SAMPLE)
        print(result.markdown())
        assert not result.candidate(CHEAP).meets_gate and result.candidate(CHEAP).wilson_high < GATE
        assert result.recommendation == STRONG
    finally:
        degraded.stop()


def test_without_gold_answers_the_judge_scores_agreement_once_and_a_rerun_spends_nothing(
    key_file, tmp_path, monkeypatch
):
    judged = keyed_sim(key_file, ACCURACY[CHEAP])
    try:
        monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", judged.openai_base_url)
        monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", judged.api_key)
        unlabelled = [{"text": row["text"], "category": ""} for row in _rows()[::10]]
        data = _write_csv(tmp_path / "unlabelled.csv", unlabelled)
        spec = gated_spec()  # the shipped gate's judge: the strong model, on "Message: {text}"
        with dg.instance_for_test() as instance:
            dataset = register(spec, str(data), instance, tmp_path)
            result = run_trial(spec, "classified", dataset, instance, tmp_path, sample_size=60)
            billed = judged.stats()
            again = run_trial(spec, "classified", dataset, instance, tmp_path, sample_size=60)
        print(result.markdown())
        assert result.scored_by == "judge" and result.candidate(CHEAP).scored == 60
        assert (
            billed["requests_total"] == result.requests_sent == 3 * 60
        )  # two candidates and the judge, once
        assert result.spent_usd == pytest.approx(billed["billed_usd"], abs=1e-9)
        assert result.judge_cost_usd > 0
        # agreement with a 0.92 judge: the strong model agrees more often than the cheap one
        assert result.candidate(STRONG).accuracy > result.candidate(CHEAP).accuracy
        assert result.judge_model == STRONG and "is the judge's own model" in result.markdown()
        assert judged.stats() == billed and again.spent_usd == 0.0
        assert again.candidates == result.candidates
    finally:
        judged.stop()
