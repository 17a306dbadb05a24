"""The simulator answers any JSON Schema: valid, deterministic per prompt, content from the prompt's own text.

Every answer below is checked with jsonschema's Draft 2020-12 validator (formats included), and the two schemas
of the built-in pipeline must answer exactly as they did before the generic generator (demo numbers depend on it).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from llm_sim import answers

DATA = Path(__file__).resolve().parents[2] / "data" / "banking77"


def _rows() -> list[dict[str, str]]:
    with open(DATA / "test.csv", newline="") as f:
        return list(csv.DictReader(f))


ROWS = _rows()
TEXTS = [row["text"] for row in ROWS[7::61][:50]] + [
    "URGENT: I was charged $1,250.00 twice on 2026-11-02 by Acme Travel, email me at jo@example.org. "
    "The app said https://bank.example.com/help. Please fix it!"
]


def strict(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An object schema as structured outputs want it: every property required, nothing else allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


SENTIMENTS = ["positive", "neutral", "negative"]
ASPECTS = ["price", "delivery", "quality", "support", "usability"]
TONES = ["formal", "friendly", "apologetic"]
REVIEW_SENTIMENT = strict(
    {
        "sentiment": {"type": "string", "enum": SENTIMENTS},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "urgent": {"type": "boolean"},
    }
)
REVIEW_ASPECTS = strict(
    {
        "aspects": {
            "type": "array",
            "maxItems": 5,
            "items": strict(
                {
                    "aspect": {"type": "string", "enum": ASPECTS},
                    "polarity": {"type": "string", "enum": SENTIMENTS},
                    "evidence": {"type": "string", "maxLength": 200},
                }
            ),
        },
        "language": {"type": "string"},
    }
)
REVIEW_REPLY = strict(
    {
        "reply": strict(
            {
                "subject": {"type": "string"},
                "body": {"type": "string"},
                "tone": {"type": "string", "enum": TONES},
            }
        ),
        "needs_human": {"type": "boolean"},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
    }
)
SCHEMAS: dict[str, dict[str, Any]] = {
    "review_sentiment": REVIEW_SENTIMENT,
    "review_aspects": REVIEW_ASPECTS,
    "review_reply": REVIEW_REPLY,
    "nested_arrays_of_objects": strict(
        {
            "orders": {
                "type": "array",
                "minItems": 2,
                "maxItems": 3,
                "items": strict(
                    {
                        "status": {"type": "string", "enum": ["open", "shipped", "cancelled"]},
                        "lines": {
                            "type": "array",
                            "minItems": 1,
                            "items": strict(
                                {
                                    "quantity": {"type": "integer", "minimum": 1},
                                    "price": {"type": "number", "exclusiveMinimum": 0},
                                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}},
                                }
                            ),
                        },
                    }
                ),
            }
        }
    ),
    "defs_and_refs": {
        "$defs": {
            "money": strict(
                {"amount": {"type": "number", "minimum": 0}, "currency": {"$ref": "#/$defs/currency"}}
            ),
            "currency": {"type": "string", "enum": ["EUR", "GBP", "USD"]},
            "node": strict(
                {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}
            ),
        },
        "definitions": {"channel": {"type": "string", "enum": ["app", "web", "phone"]}},
        **strict(
            {
                "refund": {"$ref": "#/$defs/money"},
                "channel": {"$ref": "#/definitions/channel"},
                "tree": {"$ref": "#/$defs/node"},
            }
        ),
    },
    "any_of_with_null": strict(
        {
            "refund": {"anyOf": [{"type": "null"}, strict({"amount": {"type": "number"}})]},
            "note": {"type": ["string", "null"], "maxLength": 40},
            "owner": {"anyOf": [{"type": "string", "enum": ["payments", "cards"]}, {"type": "null"}]},
            "code": {"oneOf": [{"type": "integer", "maximum": 0}, {"type": "integer", "minimum": 0}]},
            "both": {"allOf": [{"type": "integer", "minimum": 2}, {"maximum": 4, "multipleOf": 3}]},
        }
    ),
    "integer_bounds_exclusive": strict(
        {
            "rating": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 6},
            "tight": {"type": "integer", "exclusiveMinimum": 4, "exclusiveMaximum": 6},
            "negative": {"type": "integer", "maximum": -10},
            "fixed": {"type": "integer", "minimum": 3, "maximum": 3},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "confidence": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        }
    ),
    "multiple_of": strict(
        {
            "quarter": {"type": "number", "multipleOf": 0.25, "maximum": 10},
            "cents": {"type": "number", "multipleOf": 0.01, "minimum": 0.5, "maximum": 99},
            "tens": {"type": "integer", "multipleOf": 10, "minimum": 15},
            "sevens": {"type": "integer", "multipleOf": 7, "minimum": 20, "maximum": 30},
            "tenth": {"type": "number", "multipleOf": 0.1},
        }
    ),
    "string_lengths_and_patterns": strict(
        {
            "summary": {"type": "string", "minLength": 50, "maxLength": 60},
            "code": {"type": "string", "maxLength": 5},
            "essay": {"type": "string", "minLength": 300},
            "ticket": {"type": "string", "pattern": "^[A-Z]{3}-\\d{4}$"},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "examples": ["EUR"]},
            "phone": {"type": "string", "pattern": "^\\+?[0-9 ]{7,15}$", "minLength": 9},
        }
    ),
    "formats": strict(
        {
            "date": {"type": "string", "format": "date"},
            "when": {"type": "string", "format": "date-time"},
            "email": {"type": "string", "format": "email"},
            "link": {"type": "string", "format": "uri"},
            "id": {"type": "string", "format": "uuid"},
            "host": {"type": "string", "format": "hostname"},
            "ip": {"type": "string", "format": "ipv4"},
        }
    ),
    "const": strict(
        {
            "version": {"const": 2},
            "kind": {"type": "string", "const": "ticket"},
            "meta": strict(
                {"source": {"const": "sim"}, "flags": {"type": "array", "prefixItems": [{"const": 1}]}}
            ),
        }
    ),
    "empty_object": {"type": "object"},
    "empty_closed_object": {"type": "object", "properties": {}, "additionalProperties": False},
    "enum_array_unique": strict(
        {
            "topics": {
                "type": "array",
                "items": {"type": "string", "enum": ["card", "transfer", "fee", "refund", "account"]},
                "minItems": 2,
                "maxItems": 3,
                "uniqueItems": True,
            },
            "priorities": {"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True, "minItems": 3},
        }
    ),
    "tuple_and_optional": {
        "type": "object",
        "properties": {
            "point": {
                "type": "array",
                "prefixItems": [{"type": "number"}, {"type": "string", "enum": ["x", "y"]}],
                "items": False,
            },
            "optional_note": {"type": "string"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2},
        },
        "required": ["point"],
    },
}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def answer(schema: dict[str, Any], text: str, system: str = "Answer with JSON.") -> Any:
    return answers.answer_for(text, f"{system}\n{text}", schema)[0]


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_answer_is_valid_and_deterministic(name):
    schema = SCHEMAS[name]
    check = validator(schema)
    seen = set()
    for text in TEXTS:
        value = answer(schema, text)
        errors = [e.message for e in check.iter_errors(value)]
        assert not errors, f"{name}: {value} for {text!r}: {errors}"
        assert json.dumps(value) == json.dumps(answer(schema, text))
        seen.add(json.dumps(value, sort_keys=True))
    if name not in ("const", "empty_object", "empty_closed_object"):
        assert len(seen) > 1, f"{name}: every item got the same answer"


@pytest.mark.parametrize("name", [n for n in SCHEMAS if answers._has_enum(SCHEMAS[n], SCHEMAS[n])])
def test_degraded_answers_still_validate_and_differ(name):
    schema = SCHEMAS[name]
    check = validator(schema)
    for text in TEXTS:
        value = answer(schema, text)
        degraded = answers.degrade(value, schema)
        assert check.is_valid(degraded), f"{name}: degraded {degraded} is invalid"
        assert degraded != value, f"{name}: degrade changed nothing in {value}"


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_violated_answers_fail_validation(name):
    schema = SCHEMAS[name]
    check = Draft202012Validator(schema)
    for text in TEXTS[:10]:
        violated = answers.violate_schema(answer(schema, text), schema)
        assert not check.is_valid(violated), f"{name}: {violated} still validates"
        json.dumps(violated)  # still JSON


def test_violation_breaks_nested_schemas_without_enums_by_a_missing_property_or_a_wrong_type():
    schema = strict({"outer": strict({"inner": strict({"amount": {"type": "number"}})})})
    value = answer(schema, "I paid 12 euros")
    assert value == {"outer": {"inner": {"amount": 12.0}}}
    assert answers.violate_schema(value, schema) == {}  # the top-level required property is dropped
    loose = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "number"}}}}
    assert answers.violate_schema({"items": [3]}, loose) == {"items": ["not_a_number"]}


def test_enum_choices_follow_the_lexical_rule():
    schema = REVIEW_ASPECTS
    for text in TEXTS:
        value = answer(schema, text)
        item = value["aspects"][0]
        assert item["aspect"] == answers.choose_label(text, ASPECTS, []).label
        assert item["polarity"] == answers.choose_label(text, SENTIMENTS, []).label
    # A text that says the enum's words gets that value; few-shot lines `<text> => <label>` decide otherwise.
    for sentiment in SENTIMENTS:
        assert answer(REVIEW_SENTIMENT, sentiment)["sentiment"] == sentiment
    for aspect in ASPECTS:
        assert answer(REVIEW_ASPECTS, f"{aspect}!")["aspects"][0]["aspect"] == aspect
    shots = "Examples:\n- arrived broken, awful => negative\n- love it, works great => positive\n"
    assert answer(REVIEW_SENTIMENT, "it arrived broken", shots)["sentiment"] == "negative"
    assert answer(REVIEW_SENTIMENT, "works great, I love it", shots)["sentiment"] == "positive"


def test_values_come_from_the_item_text():
    text = TEXTS[-1]
    reply = answer(REVIEW_REPLY, text)
    assert reply["reply"]["body"] == answers.extract_sentence(text)
    assert reply["reply"]["subject"] == answers.extract_sentence(text, 8)
    assert answer(REVIEW_SENTIMENT, text)["urgent"] is True  # the item says "URGENT"
    sentiment = answer(REVIEW_SENTIMENT, text)
    choice = answers.choose_label(text, SENTIMENTS, [])
    assert sentiment["score"] == pytest.approx(-1 + 2 * choice.confidence)
    formats = answer(SCHEMAS["formats"], text)
    assert formats["date"] == "2026-11-02"
    assert formats["email"] == "jo@example.org"
    assert formats["link"] == "https://bank.example.com/help"
    entities = answer(strict({"entities": {"type": "array", "items": {"type": "string"}}}), text)["entities"]
    assert entities == answers.extract_entities(text)
    assert answer(SCHEMAS["string_lengths_and_patterns"], "Paid in GBP")["currency"] == "GBP"
    # Different items differ (booleans and uuids are seeded by the item text and the property path).
    ids = {answer(SCHEMAS["formats"], t)["id"] for t in TEXTS}
    assert len(ids) == len(set(TEXTS))


# -- The built-in pipeline's two schemas answer exactly as before --------------------------------------------------

TAXONOMY = json.loads((DATA / "categories.json").read_text())
CLASSIFY_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": TAXONOMY},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
ENRICH_SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "entities": {"type": "array", "items": {"type": "string"}},
        "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
    },
    "required": ["summary", "entities", "urgency"],
    "additionalProperties": False,
}
# sha256 over the 400 answers (JSON text, key order included), their degraded and their violated forms, as the
# simulator wrote them before the generic generator (llm_sim/answers.py before issue 12 part 4). If the data
# files change on purpose, recompute it with the old code, not the new.
BUILTIN_DIGEST = "7b300f4658d4c01044f4d781d89cb5ffbf5b83bb142ec157ac287b3e04da2075"


def builtin_prompts() -> tuple[str, str]:
    """The built-in stages' system prompts, written as llm_assets/prompts.py writes them."""
    with open(DATA / "few_shot.csv", newline="") as f:
        shots = [(" ".join(r["text"].split()), r["label"]) for r in csv.DictReader(f)]
    classify = [
        "You classify customer messages for a bank's support team.",
        "Answer with the single intent label from the list below that fits the message best,",
        "and your confidence between 0 and 1. Answer only with JSON matching the schema.",
        "",
        "Intent labels:",
        *(f"- {label}" for label in TAXONOMY),
        "",
        "Examples (message => label):",
        *(f"{text} => {label}" for text, label in shots),
    ]
    enrich = [
        "You enrich customer messages for a bank's support team.",
        "Write a one-sentence summary of what the customer needs, list the entities the message names",
        "(products, amounts, currencies, dates, merchants), and rate its urgency.",
        "Answer only with JSON matching the schema.",
    ]
    return "\n".join(classify), "\n".join(enrich)


def legacy_answer(text: str, prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
    """What the simulator wrote for these two schemas before the generic generator, spelled out."""
    examples = answers.parse_examples(prompt)
    item = answers.strip_example_lines(text) or text
    if "label" in schema["properties"]:
        choice = answers.choose_label(item, TAXONOMY, examples)
        return {"label": choice.label, "confidence": choice.confidence}
    return {
        "summary": answers.extract_sentence(item) or "No content.",
        "entities": answers.extract_entities(item, 10),
        "urgency": answers.choose_label(item, ["low", "medium", "high"], examples).label,
    }


def test_builtin_pipeline_schemas_answer_exactly_as_before():
    texts = [row["text"] for row in ROWS[::15][:200]]
    classify_system, enrich_system = builtin_prompts()
    recorded = []
    for system, schema in ((classify_system, CLASSIFY_SCHEMA), (enrich_system, ENRICH_SCHEMA)):
        for text in texts:
            prompt = f"{system}\n{text}"
            value, _ = answers.answer_for(text, prompt, schema)
            assert json.dumps(value) == json.dumps(legacy_answer(text, prompt, schema))
            recorded.append(
                [
                    json.dumps(value),
                    json.dumps(answers.degrade(value, schema)),
                    json.dumps(answers.violate_schema(value, schema)),
                ]
            )
    assert len(recorded) == 400
    assert hashlib.sha256(json.dumps(recorded).encode()).hexdigest() == BUILTIN_DIGEST


# -- Over HTTP, both wire formats ----------------------------------------------------------------------------------


def test_review_schemas_over_both_wire_formats(sim):
    text = "The delivery was late and support never answered. Urgent: I want a refund of $40."
    openai_headers = {"Authorization": f"Bearer {sim.api_key}"}
    anthropic_headers = {"x-api-key": sim.api_key, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=sim.base_url, timeout=30) as client:

        def openai(schema: dict[str, Any]) -> Any:
            response = client.post(
                "/v1/chat/completions",
                headers=openai_headers,
                json={
                    "model": "gpt-6-luna",
                    "messages": [
                        {"role": "system", "content": "Review the message."},
                        {"role": "user", "content": text},
                    ],
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "review", "strict": True, "schema": schema},
                    },
                },
            )
            assert response.status_code == 200, response.text
            return json.loads(response.json()["choices"][0]["message"]["content"])

        def anthropic(schema: dict[str, Any]) -> Any:
            response = client.post(
                "/v1/messages",
                headers=anthropic_headers,
                json={
                    "model": "claude-haiku-5-5",
                    "max_tokens": 1000,
                    "system": "Review the message.",
                    "messages": [{"role": "user", "content": text}],
                    "output_config": {"format": {"type": "json_schema", "schema": schema}},
                },
            )
            assert response.status_code == 200, response.text
            return json.loads(response.json()["content"][0]["text"])

        for schema in (REVIEW_SENTIMENT, REVIEW_ASPECTS, REVIEW_REPLY):
            via_openai, via_anthropic = openai(schema), anthropic(schema)
            assert validator(schema).is_valid(via_openai), via_openai
            assert via_openai == via_anthropic == answer(schema, text, "Review the message.")
        assert openai(REVIEW_SENTIMENT)["urgent"] is True

        sim.set_faults(degrade_rate=1.0)
        degraded = openai(REVIEW_ASPECTS)
        assert validator(REVIEW_ASPECTS).is_valid(degraded)
        assert degraded != answer(REVIEW_ASPECTS, text, "Review the message.")
        sim.set_faults(degrade_rate=0.0, schema_violation=1.0)
        assert not validator(REVIEW_REPLY).is_valid(anthropic(REVIEW_REPLY))
