"""An answer key gives each model a chosen accuracy on the items it holds; every other item answers as before."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from llm_sim.config import load_config
from llm_sim.launcher import PROJECT_ROOT, SimHandle

BANKING77 = PROJECT_ROOT / "data" / "banking77" / "test.csv"


def _rows() -> list[dict[str, str]]:
    with open(BANKING77, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


ROWS = _rows()
IN_KEY = ROWS[::7][:400]  # every 7th row: the file is sorted by intent, so this spans all 77
NOT_IN_KEY = ROWS[3::7][:40]
LABELS = sorted({row["category"] for row in ROWS})
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": LABELS},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
STRONG, CHEAP, UNRATED = "gpt-6.2-sol", "gpt-6-luna", "gpt-6-unrated"
ACCURACY = {STRONG: 0.92, CHEAP: 0.75}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The key of the 400 rows, written by `python -m llm_sim answer-key`."""
    folder = tmp_path_factory.mktemp("answer_key")
    source = folder / "sample.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(IN_KEY)
    key = folder / "key.json"
    command = [sys.executable, "-m", "llm_sim", "answer-key", str(source)]
    command += ["--text-column", "text", "--label-column", "category", "-o", str(key)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert "wrote 400 answer-key entries" in done.stdout
    return key


@pytest.fixture
def keyed_sim(start_sim: Callable[..., SimHandle], key_file: Path) -> SimHandle:
    """The strong model at 0.92, the cheap one at 0.75, and a model with no accuracy."""
    models = {name: {"accuracy": accuracy} for name, accuracy in ACCURACY.items()}
    models[UNRATED] = {"provider": "openai", "input": 1.0, "output": 1.0}
    return start_sim({"answer_key": str(key_file), "models": models, "seed": 3})


def ask(client: httpx.Client, model: str, user: str) -> dict:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [
                {"role": "system", "content": "Classify the customer message into one intent."},
                {"role": "user", "content": user},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "classification", "strict": True, "schema": SCHEMA},
            },
        },
    )
    assert response.status_code == 200, response.text
    return json.loads(response.json()["choices"][0]["message"]["content"])


def client_for(sim: SimHandle) -> httpx.Client:
    return httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=10)


def assert_binomial(count: int, n: int, rate: float, what: str) -> None:
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(count - n * rate) <= 4 * sigma + 1, (
        f"{what}: {count} of {n}, expected {n * rate:.0f} ± {4 * sigma:.0f}"
    )


def test_the_cli_key_maps_sha256_of_each_text_to_its_label(key_file):
    assert json.loads(key_file.read_text()) == {sha256(row["text"]): row["category"] for row in IN_KEY}


def test_each_model_is_right_at_its_configured_accuracy_independently(keyed_sim):
    with client_for(keyed_sim) as client:
        labels = {model: [ask(client, model, row["text"])["label"] for row in IN_KEY] for model in ACCURACY}
    right = {
        model: [label == row["category"] for label, row in zip(labels[model], IN_KEY, strict=True)]
        for model in ACCURACY
    }
    for model, accuracy in ACCURACY.items():
        print(f"{model}: {sum(right[model])}/{len(IN_KEY)} right, configured {accuracy}")
        assert_binomial(sum(right[model]), len(IN_KEY), accuracy, f"{model} right")
        assert set(labels[model]) <= set(LABELS)
    # Independent draws: both wrong on about 8% x 25% of the items, not on every item the strong one misses.
    both_wrong = sum(not a and not b for a, b in zip(right[STRONG], right[CHEAP], strict=True))
    assert_binomial(both_wrong, len(IN_KEY), (1 - ACCURACY[STRONG]) * (1 - ACCURACY[CHEAP]), "both wrong")


def test_keyed_confidence_is_higher_when_the_label_is_right_so_routing_low_confidence_catches_mistakes(
    keyed_sim,
):
    with client_for(keyed_sim) as client:
        answers = [ask(client, CHEAP, row["text"]) for row in IN_KEY]
    right = [a["confidence"] for a, row in zip(answers, IN_KEY, strict=True) if a["label"] == row["category"]]
    wrong = [a["confidence"] for a, row in zip(answers, IN_KEY, strict=True) if a["label"] != row["category"]]
    assert all(0 <= c <= 1 for c in right + wrong)
    # Documented model: right ~ U[0.25, 1.0] (mean 0.625), wrong ~ U[0.0, 0.65] (mean 0.325).
    mean_right, mean_wrong = sum(right) / len(right), sum(wrong) / len(wrong)
    print(
        f"mean confidence: right {mean_right:.3f} (n={len(right)}), wrong {mean_wrong:.3f} (n={len(wrong)})"
    )
    assert mean_right - mean_wrong > 0.2
    # A cascade sending confidence < 0.5 to the strong model: 10/13 of the mistakes, 1/3 of the right answers.
    assert_binomial(sum(c < 0.5 for c in wrong), len(wrong), 0.5 / 0.65, "wrong answers under 0.5")
    assert_binomial(sum(c < 0.5 for c in right), len(right), 0.25 / 0.75, "right answers under 0.5")


def test_the_same_item_gets_the_same_answer_every_time_and_inside_a_template(keyed_sim):
    items = IN_KEY[:60]
    with client_for(keyed_sim) as client:
        first = [ask(client, CHEAP, row["text"]) for row in items]
        again = [ask(client, CHEAP, row["text"]) for row in items]
        framed = [ask(client, CHEAP, f"Message: {row['text'].strip()}")["label"] for row in items]
        templated = [
            ask(client, CHEAP, f"Customer tier: gold\n\n{row['text'].strip()}\n")["label"] for row in items
        ]
    assert first == again
    assert framed == templated == [answer["label"] for answer in first]
    assert any(answer["label"] != row["category"] for answer, row in zip(first, items, strict=True))
    log = keyed_sim.requests()
    assert {r["user_sha256"] for r in log[:60]} == {sha256(row["text"]) for row in items}


def test_items_not_in_the_key_and_models_without_accuracy_keep_the_lexical_answer(keyed_sim, sim):
    with client_for(keyed_sim) as keyed, client_for(sim) as plain:
        for row in NOT_IN_KEY:
            lexical = ask(plain, CHEAP, row["text"])
            assert ask(keyed, CHEAP, row["text"]) == lexical
            assert ask(keyed, STRONG, row["text"]) == lexical
        for row in IN_KEY[:40]:
            assert ask(keyed, UNRATED, row["text"]) == ask(plain, CHEAP, row["text"])


def test_degrade_rate_still_turns_keyed_answers_wrong(start_sim, key_file):
    sim = start_sim({"answer_key": str(key_file), "models": {STRONG: {"accuracy": 1.0}}})
    items = IN_KEY[:30]
    with client_for(sim) as client:
        clean = [ask(client, STRONG, row["text"])["label"] for row in items]
        sim.set_faults(degrade_rate=1.0)
        degraded = [ask(client, STRONG, row["text"])["label"] for row in items]
    assert clean == [row["category"] for row in items]
    assert all(label != gold for label, gold in zip(degraded, clean, strict=True))


def raw_text_key(folder: Path) -> str:
    """A key that maps the texts themselves, not their sha256: a likely mistake."""
    path = folder / "raw.json"
    path.write_text(json.dumps({"How do I locate my card?": "card_arrival"}))
    return str(path)


BAD_CONFIGS = {
    "accuracy above 1": (
        lambda key, folder: {"answer_key": str(key), "models": {CHEAP: {"accuracy": 1.5}}},
        r"models\.gpt-6-luna\.accuracy must be a number between 0 and 1",
    ),
    "missing key file": (
        lambda key, folder: {"answer_key": str(folder / "missing.json")},
        r"answer_key: file .*missing\.json not found",
    ),
    "texts instead of hashes": (
        lambda key, folder: {"answer_key": raw_text_key(folder)},
        r"answer_key: .* is not a sha256 hex digest",
    ),
    "accuracy without a key": (
        lambda key, folder: {"models": {CHEAP: {"accuracy": 0.5}}},
        r"models\.gpt-6-luna\.accuracy is set but there is no answer_key",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_answer_key_config_stops_the_server_with_an_error_naming_the_field(
    start_sim, key_file, tmp_path, case
):
    make_config, message = BAD_CONFIGS[case]
    with pytest.raises(RuntimeError, match=message):
        start_sim(make_config(key_file, tmp_path))


def test_a_relative_answer_key_path_is_relative_to_the_config_file(tmp_path, key_file, monkeypatch):
    (tmp_path / "key.json").write_text(key_file.read_text())
    (tmp_path / "sim.yaml").write_text("answer_key: key.json\nmodels: {gpt-6-luna: {accuracy: 0.75}}\n")
    monkeypatch.chdir(PROJECT_ROOT)
    config = load_config(tmp_path / "sim.yaml")
    assert config.answer_key is not None and config.answer_key.path == tmp_path / "key.json"
    assert config.models[CHEAP].accuracy == 0.75 and len(config.answer_key.gold) == len(IN_KEY)
