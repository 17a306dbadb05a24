"""Answers are deterministic, conform to the schema, and are better with few-shot examples than without."""

from __future__ import annotations

import json

import httpx
import pytest

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "cash_withdrawal_charge"]
EXAMPLES = """Examples:
- When will my new card be delivered? => card_arrival
- It has been two weeks and the card still has not come in the post => card_arrival
- How long does delivery of a card take? => card_arrival
- Someone stole my wallet with my card inside => lost_or_stolen_card
- I think I lost my card somewhere in town, please freeze it => lost_or_stolen_card
- My card is missing, block it now => lost_or_stolen_card
- What rate do you use to convert pounds to euros? => exchange_rate
- The conversion from dollars gave me less than I expected => exchange_rate
- Why did my top up not go through? => top_up_failed
- Adding money to my account keeps failing => top_up_failed
- The transfer to load funds was declined => top_up_failed
- I was charged a fee for taking money out of the ATM => cash_withdrawal_charge
- Why is there a charge on my ATM withdrawal? => cash_withdrawal_charge
"""
# Made-up held-out items (BANKING77-like), never among the examples.
ITEMS = [
    ("My card still has not been delivered, when does it come?", "card_arrival"),
    ("How many days until the new card is in the post?", "card_arrival"),
    ("Delivery of my card is taking too long", "card_arrival"),
    ("The card was sent weeks ago and I still have not received it", "card_arrival"),
    ("Someone stole my bag and the card was in it", "lost_or_stolen_card"),
    ("I lost my card yesterday, can you freeze it?", "lost_or_stolen_card"),
    ("Please block my missing card", "lost_or_stolen_card"),
    ("My wallet was stolen on the train", "lost_or_stolen_card"),
    ("What is the rate to convert euros to dollars?", "exchange_rate"),
    ("The conversion from pounds seems wrong", "exchange_rate"),
    ("Which rate do you apply when I pay abroad in yen?", "exchange_rate"),
    ("I expected more euros after the conversion", "exchange_rate"),
    ("My top up did not go through again", "top_up_failed"),
    ("Adding money by bank transfer failed", "top_up_failed"),
    ("Why was my attempt to load funds declined?", "top_up_failed"),
    ("The top up keeps failing on my account", "top_up_failed"),
    ("I was charged for an ATM withdrawal", "cash_withdrawal_charge"),
    ("There is a fee on the money I took out of the cash machine", "cash_withdrawal_charge"),
    ("Why is there a charge for taking money out?", "cash_withdrawal_charge"),
    ("The ATM withdrawal shows an extra fee", "cash_withdrawal_charge"),
]
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": LABELS},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "summary": {"type": "string", "maxLength": 80},
        "entities": {"type": "array", "items": {"type": "string"}},
        "urgent": {"type": "boolean"},
        "details": {
            "type": "object",
            "properties": {"amount": {"type": "number"}, "currency": {"type": ["string", "null"]}},
        },
    },
    "required": ["label", "confidence", "summary", "entities", "urgent", "details"],
}


def classify(client: httpx.Client, system: str, text: str) -> dict:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-6-luna",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "ticket", "strict": True, "schema": SCHEMA},
            },
        },
    )
    assert response.status_code == 200, response.text
    return json.loads(response.json()["choices"][0]["message"]["content"])


@pytest.fixture
def client(sim):
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.api_key}"}) as c:
        yield c


def test_few_shot_examples_give_clearly_better_accuracy_than_none(client):
    with_examples = sum(
        classify(client, "Classify the ticket.\n" + EXAMPLES, text)["label"] == gold for text, gold in ITEMS
    )
    without = sum(classify(client, "Classify the ticket.", text)["label"] == gold for text, gold in ITEMS)
    print(f"few-shot accuracy {with_examples}/{len(ITEMS)}, label names only {without}/{len(ITEMS)}")
    assert with_examples >= 0.75 * len(ITEMS)
    assert with_examples - without >= 0.25 * len(ITEMS)


def test_answers_conform_to_the_schema_and_are_deterministic(client):
    text = "Urgent: I was charged $4.50 on 2026-11-02 at the Barclays ATM. Please refund it."
    first = classify(client, "Classify.\n" + EXAMPLES, text)
    assert first == classify(client, "Classify.\n" + EXAMPLES, text)
    assert first["label"] in LABELS
    assert 0 <= first["confidence"] <= 1
    assert first["summary"] == "Urgent: I was charged $4.50 on 2026-11-02 at the Barclays ATM."[:80]
    assert {"$4.50", "2026-11-02"} <= set(first["entities"])
    assert any("Barclays" in entity for entity in first["entities"])
    assert "Urgent" not in first["entities"]  # a capital that only starts a sentence is no name
    assert first["urgent"] is True
    assert isinstance(first["details"]["amount"], float)


def test_schema_in_a_fenced_system_block_is_honoured(client):
    system = (
        "Reply with JSON matching:\n```json\n"
        + json.dumps({"type": "object", "properties": {"label": {"type": "string", "enum": LABELS}}})
        + "\n```\n"
        + EXAMPLES
    )
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-6-luna",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "I lost my card"},
            ],
        },
    )
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"label": "lost_or_stolen_card"}


def test_llama_cpp_style_json_object_schema_is_honoured(client):
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-6-luna",
            "messages": [{"role": "user", "content": "My top up failed"}],
            "response_format": {
                "type": "json_object",
                "schema": {"type": "object", "properties": {"label": {"type": "string", "enum": LABELS}}},
            },
        },
    )
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"label": "top_up_failed"}


def test_output_never_exceeds_max_completion_tokens(client):
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-6-luna",
            "max_completion_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": "I was charged twice for the same coffee at the station this morning.",
                }
            ],
        },
    ).json()
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] <= 5
    assert response["choices"][0]["message"]["content"] == "I was charged"
