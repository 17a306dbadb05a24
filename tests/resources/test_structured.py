"""Replies judged by full JSON Schema (jsonschema, draft 2020-12): one valid and one invalid instance per keyword
with the exact message and path; bounded messages for huge values; output schemas judged by `check_schema`."""

from __future__ import annotations

import pytest

from llm_assets.pipeline_assets import stage_prompt
from llm_assets.spec import load_pipeline
from resources.llm import structured
from resources.llm.structured import (
    MAX_ERRORS,
    MAX_MESSAGE_CHARS,
    InvalidOutputSchema,
    check_schema,
    parse_json_object,
    validate,
)
from tests.spec_pipelines import BANKING77_SPEC, REVIEWS_SPEC


def _one(prop: dict) -> dict:
    """An object schema with a single property `v`."""
    return {"type": "object", "properties": {"v": prop}}


ENTITY_SCHEMA = {
    "type": "object",
    "$defs": {
        "entity": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "kind": {"enum": ["product", "amount", "merchant"]}},
            "required": ["name"],
        }
    },
    "properties": {"entities": {"type": "array", "items": {"$ref": "#/$defs/entity"}}},
}

KEYWORD_CASES = [
    pytest.param(
        {
            "type": "object",
            "properties": {
                "order": {
                    "type": "object",
                    "properties": {
                        "lines": {
                            "type": "array",
                            "items": {"type": "object", "properties": {"qty": {"type": "integer"}}},
                        }
                    },
                }
            },
        },
        {"order": {"lines": [{"qty": 1}, {"qty": 2}]}},
        {"order": {"lines": [{"qty": 1}, {"qty": "2"}]}},
        "$.order.lines[1].qty: expected integer, got string",
        id="nested-objects-and-arrays",
    ),
    pytest.param(
        _one({"type": "string", "enum": ["low", "medium", "high"]}),
        {"v": "high"},
        {"v": "urgent"},
        "$.v: 'urgent' is not one of the allowed values",
        id="enum",
    ),
    pytest.param(
        _one({"type": "number"}), {"v": 0.5}, {"v": True}, "$.v: expected number, got boolean", id="number"
    ),
    pytest.param(
        {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]},
        {"label": "card_arrival"},
        {"lable": "card_arrival"},
        "$: missing required property 'label'",
        id="required",
    ),
    pytest.param(
        {"type": "object", "properties": {"label": {"type": "string"}}, "additionalProperties": False},
        {"label": "card_arrival"},
        {"label": "card_arrival", "reason": "x"},
        "$: unexpected property 'reason'",
        id="additionalProperties-false",
    ),
    pytest.param(
        ENTITY_SCHEMA,
        {"entities": [{"name": "Tesco", "kind": "merchant"}]},
        {"entities": [{"name": "Tesco"}, {"kind": "amount"}]},
        "$.entities[1]: missing required property 'name'",
        id="ref-and-defs",
    ),
    pytest.param(
        _one({"anyOf": [{"type": "string"}, {"type": "null"}]}),
        {"v": None},
        {"v": 3},
        "$.v: expected string or null, got integer",
        id="anyOf-types",
    ),
    pytest.param(
        _one({"anyOf": [{"type": "null"}, {"type": "object", "properties": {"amount": {"type": "number"}}}]}),
        {"v": {"amount": 12.5}},
        {"v": {"amount": "12.50"}},
        "$.v.amount: expected number, got string",
        id="anyOf-closest-branch",
    ),
    pytest.param(
        _one({"const": "v1"}), {"v": "v1"}, {"v": "v2"}, "$.v: must equal 'v1', got 'v2'", id="const"
    ),
    pytest.param(_one({"minimum": 0}), {"v": 0}, {"v": -0.5}, "$.v: below minimum 0", id="minimum"),
    pytest.param(
        _one({"exclusiveMaximum": 1}),
        {"v": 0.99},
        {"v": 1},
        "$.v: not below exclusive maximum 1",
        id="exclusiveMaximum",
    ),
    pytest.param(
        _one({"multipleOf": 0.25}), {"v": 0.75}, {"v": 0.3}, "$.v: not a multiple of 0.25", id="multipleOf"
    ),
    pytest.param(
        _one({"type": "string", "maxLength": 5}),
        {"v": "abcde"},
        {"v": "abcdef"},
        "$.v: longer than 5 characters (got 6)",
        id="maxLength",
    ),
    pytest.param(
        _one({"type": "string", "format": "date"}),
        {"v": "2024-02-29"},
        {"v": "2023-02-29"},
        "$.v: '2023-02-29' is not a valid date",
        id="format-date",
    ),
    pytest.param(
        {"type": "object", "properties": {"first name": {"type": "string"}}},
        {"first name": "Ada"},
        {"first name": 1},
        "$['first name']: expected string, got integer",
        id="path-with-a-space",
    ),
]


@pytest.mark.parametrize(("schema", "valid", "invalid", "message"), KEYWORD_CASES)
def test_each_keyword_accepts_the_valid_instance_and_names_the_path_of_the_invalid_one(
    schema, valid, invalid, message
):
    assert validate(valid, schema) == []
    assert validate(invalid, schema) == [message]


def test_errors_come_shallowest_and_wrong_type_first_then_in_schema_order():
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "entities": {"type": "array", "items": {"type": "string"}},
            "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
        },
        "required": ["summary", "entities", "urgency"],
        "additionalProperties": False,
    }
    errors = validate({"urgency": 3, "entities": ["a", 1, 2], "summary": None, "tone": "calm"}, schema)
    assert errors == [
        "$: unexpected property 'tone'",
        "$.summary: expected string, got null",
        "$.urgency: expected string, got integer",
        "$.urgency: 3 is not one of the allowed values",
        "$.entities[1]: expected string, got integer",
        "$.entities[2]: expected string, got integer",
    ]
    assert validate({}, schema) == ["$: missing required properties 'summary', 'entities', 'urgency'"]
    # a value of the right type that breaks a constraint ranks after a value of the wrong type
    assert validate({"summary": "x", "entities": "a", "urgency": "urgent"}, schema) == [
        "$.entities: expected array, got string",
        "$.urgency: 'urgent' is not one of the allowed values",
    ]
    # the top-level error is found even behind a long array of wrong items
    many = validate({"entities": list(range(1000)), "summary": "x"}, schema)
    assert many[0] == "$: missing required property 'urgency'" and len(many) == MAX_ERRORS


def test_a_huge_invalid_value_gives_bounded_messages():
    # Reply-sized (a reply is capped by max_tokens): jsonschema itself reprs each offending value once.
    huge = "x" * 1_000_000
    schema = {
        "type": "object",
        "properties": {
            "label": {"enum": ["a", "b"]},
            "summary": {"type": "string", "maxLength": 200, "pattern": "^[a-w]+$"},
            "count": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "integer"}, "contains": {"const": 0}},
        },
        "additionalProperties": {"type": "integer"},
    }
    reply = {
        "label": huge,
        "summary": huge,
        "count": ["y" * 1000] * 1000,
        "tags": ["z"] * 100_000,
        huge: huge,
    }
    errors = validate(reply, schema)
    assert errors[0].startswith("$.label: 'xxx") and errors[0].endswith("' is not one of the allowed values")
    assert "$.summary: longer than 200 characters (got 1000000)" in errors
    assert "$.count: expected integer, got array" in errors
    assert len(errors) <= MAX_ERRORS
    assert all(len(e) <= MAX_MESSAGE_CHARS for e in errors)


def test_a_schema_is_compiled_once_however_its_keys_are_ordered(monkeypatch):
    builds = []
    real_build = structured._build
    monkeypatch.setattr(structured, "_build", lambda schema: builds.append(schema) or real_build(schema))
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 7}}, "required": ["n"]}
    same = {"required": ["n"], "properties": {"n": {"minimum": 7, "type": "integer"}}, "type": "object"}
    assert validate({"n": 7}, schema) == [] and validate({"n": 8}, same) == []
    assert validate({"n": 6}, schema) == ["$.n: below minimum 7"]
    schema["properties"]["n"]["minimum"] = 9  # an edited schema is a new schema, never a stale validator
    assert validate({"n": 8}, schema) == ["$.n: below minimum 9"]
    assert len(builds) <= 2


def test_the_draft_named_in_dollar_schema_is_honoured():
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"p": {"type": "number", "maximum": 1, "exclusiveMaximum": True}},
    }
    assert check_schema(draft4) == []
    assert validate({"p": 0.5}, draft4) == []
    assert len(validate({"p": 1}, draft4)) == 1
    # the same boolean exclusiveMaximum is not valid 2020-12
    del draft4["$schema"]
    assert check_schema(draft4) == ["$.properties.p.exclusiveMaximum: expected number, got boolean"]


def test_a_broken_schema_raises_a_message_naming_its_path_instead_of_judging_replies():
    with pytest.raises(
        InvalidOutputSchema, match=r"\$\.properties\.a\.\$ref: '#/\$defs/missing' does not resolve"
    ):
        validate({"a": 1}, {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    with pytest.raises(InvalidOutputSchema, match=r"\$\.type: 'objekt' is not one of"):
        validate({}, {"type": "objekt"})


def test_check_schema_rejects_an_unknown_type_with_the_allowed_ones():
    assert check_schema({"type": "objekt"}) == [
        "$.type: 'objekt' is not one of ['array', 'boolean', 'integer', 'null', 'number', 'object', 'string']",
        '$.type: an output schema\'s top level must be "type": "object" (got \'objekt\')',
    ]


def test_check_schema_rejects_a_negative_min_length_at_its_path():
    schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": -1}}}
    assert check_schema(schema) == ["$.properties.a.minLength: below minimum 0"]


def test_check_schema_rejects_a_top_level_that_is_not_an_object():
    assert check_schema({"type": "array", "items": {"type": "string"}}) == [
        '$.type: an output schema\'s top level must be "type": "object" (got \'array\')'
    ]
    assert check_schema({"properties": {"a": {}}}) == [
        '$.type: an output schema\'s top level must be "type": "object" (it has no type)'
    ]
    assert check_schema(True) == [
        '$: an output schema must be a JSON object with "type": "object", not boolean'
    ]


def test_check_schema_rejects_bad_regexes_remote_refs_and_unknown_dialects():
    bad_regex = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}
    assert check_schema(bad_regex) == ["$.properties.a.pattern: '(unclosed' is not a valid regex"]
    remote = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    assert check_schema(remote) == [
        "$.properties.a.$ref: 'https://example.com/a.json' does not resolve within the schema"
    ]
    dialect = {"$schema": "https://example.com/my-dialect", "type": "object"}
    assert check_schema(dialect)[0].startswith("$.$schema: unknown JSON Schema dialect 'https://example.com/")


@pytest.mark.parametrize("path", [BANKING77_SPEC, REVIEWS_SPEC], ids=lambda p: p.stem)
def test_check_schema_accepts_every_shipped_stage_schema(path):
    spec = load_pipeline(path, require_secrets=False)
    schemas = {stage.name: stage_prompt(stage).schema for stage in spec.stages}
    assert {name: check_schema(schema) for name, schema in schemas.items()} == {name: [] for name in schemas}
    if path == BANKING77_SPEC:  # the taxonomy filled in: the label enum is BANKING77's 77 intents
        assert len(schemas["classified"]["properties"]["label"]["enum"]) == 77
    assert check_schema(ENTITY_SCHEMA) == []


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ('{"label": "a", "confidence": NaN}', "the reply is not valid JSON (NaN is not a JSON number)"),
        ('{"confidence": -Infinity}', "the reply is not valid JSON (-Infinity is not a JSON number)"),
        ("[" * 100_000, "the reply is not valid JSON (nested too deeply)"),
        (
            '{"n": ' + "9" * 5000 + "}",
            "the reply is not valid JSON (Exceeds the limit (4300 digits) for integer string conversion)",
        ),
    ],
)
def test_replies_python_would_misread_are_invalid_json_not_crashes(reply, problem):
    assert parse_json_object(reply) == (None, problem)
