"""Structured output: pull the JSON object out of a reply, and check it against the stage's output schema with
`jsonschema` (full draft 2020-12, or the draft a schema names in `$schema`).

Messages read `$.path.to[2].field: what is wrong`, most relevant first, each at most 200 characters, so a huge
bad value never bloats a repair prompt or a dead letter. `check_schema` judges an output schema itself."""

from __future__ import annotations

import copy
import json
import re
import reprlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any

import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match, relevance
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from jsonschema_specifications import REGISTRY as METASCHEMAS

if TYPE_CHECKING:
    from referencing._core import Resolver  # not re-exported by referencing

_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)

MAX_MESSAGE_CHARS = 200
MAX_ERRORS = 20
# Errors looked at before ranking: a reply is at most a few thousand tokens, so this is all of them in practice,
# yet a 100,000-item array of wrong items stops here.
_MAX_RAW_ERRORS = 2000
_MAX_PATH_CHARS = 80
_MAX_VALUE_CHARS = 60

# Formats jsonschema checks with the standard library alone. date-time, time, hostname, uri, ... need optional
# packages that only some installs happen to have; they stay annotations, so a verdict never depends on the install.
_STDLIB_FORMATS = ("date", "email", "idn-email", "ipv4", "ipv6", "regex", "uuid")
_FORMAT_CHECKER = FormatChecker(formats=_STDLIB_FORMATS)
# Only the drafts' own metaschemas resolve; a remote `$ref` is an error, never a network fetch per reply.
_NO_REMOTE_REFS: referencing.Registry = referencing.Registry()

_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$-]*")
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (type(None), "null"),
    (dict, "object"),
    (list, "array"),
)


class InvalidOutputSchema(ValueError):
    """The output schema itself is broken (not valid JSON Schema, or a `$ref` that does not resolve)."""


def parse_json_object(content: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) or (None, what is wrong). Accepts a reply wrapped in a ```json fence."""
    if content is None or not content.strip():
        return None, "the reply is empty"
    text = content.strip()
    fenced = _FENCE.search(text)
    if fenced and not text.startswith("{"):
        text = fenced.group(1).strip()
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return None, f"the reply is not valid JSON ({exc.msg} at char {exc.pos})"
    except RecursionError:
        return None, "the reply is not valid JSON (nested too deeply)"
    except ValueError as exc:  # NaN/Infinity, or an integer longer than Python converts (4,300 digits)
        return None, f"the reply is not valid JSON ({str(exc).split(':')[0]})"
    if not isinstance(value, dict):
        return None, f"the reply is JSON but not an object (got {type(value).__name__})"
    return value, None


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN/Infinity; JSON has no such numbers, and NaN passes every minimum/maximum.
    raise ValueError(f"{name} is not a JSON number")


def validate(value: Any, schema: dict[str, Any]) -> list[str]:
    """What is wrong with `value` under `schema`, most relevant first (at most 20 messages); empty when valid.

    Raises `InvalidOutputSchema` when the schema itself is broken (see `check_schema`)."""
    validator = _compiled(schema)
    errors = list(islice(validator.iter_errors(value), _MAX_RAW_ERRORS))
    return _messages(errors) if errors else []


def check_schema(schema: Any) -> list[str]:
    """What is wrong with an output schema itself, most relevant first; empty when it is usable.

    Checks it against its draft's metaschema (2020-12 unless `$schema` names another), that every `$ref`
    resolves locally, and Chunkwise's rule that the top level is `"type": "object"` (structured outputs are
    JSON objects)."""
    if not isinstance(schema, dict):
        return [f'$: an output schema must be a JSON object with "type": "object", not {_json_type(schema)}']
    problems = _schema_problems(schema)
    if schema.get("type") != "object":
        got = f"got {_short(schema['type'])}" if "type" in schema else "it has no type"
        problems.append(_clip(f'$.type: an output schema\'s top level must be "type": "object" ({got})'))
    return list(dict.fromkeys(problems))


# ------------------------------------------------------------------------------------------- compiled validators


_CACHE_SIZE = 128
_validators: OrderedDict[str, Validator] = OrderedDict()  # canonical schema -> validator, least recent first
_validators_lock = threading.Lock()


def _compiled(schema: dict[str, Any]) -> Validator:
    """One validator per distinct schema (building one costs ~35x a validation), keyed by its canonical JSON.

    A stage validates every reply against the same schema object: that object is recognised first (the same
    object, still equal to a copy taken when it was compiled, so a schema changed in place is compiled again),
    without serialising it per reply (1% of a run worker's CPU)."""
    last = _last
    if last is not None and last[0] is schema and last[1] == schema:
        return last[2]
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    with _validators_lock:
        validator = _validators.get(key)
        if validator is not None:
            _validators.move_to_end(key)
    if validator is None:
        # A private copy in the author's key order: errors come out in the order the schema lists its properties.
        validator = _build(json.loads(json.dumps(schema)))
        with _validators_lock:
            _validators[key] = validator
            if len(_validators) > _CACHE_SIZE:
                _validators.popitem(last=False)
    _remember(schema, validator)
    return validator


_last: tuple[dict[str, Any], dict[str, Any], Validator] | None = None
"""The schema object `_compiled` saw last, a deep copy of it then, and its validator."""


def _remember(schema: dict[str, Any], validator: Validator) -> None:
    global _last
    _last = (schema, copy.deepcopy(schema), validator)


def _build(schema: dict[str, Any]) -> Validator:
    problems = _schema_problems(schema)
    if problems:
        raise InvalidOutputSchema(
            f"the output schema is not valid JSON Schema: {'; '.join(problems[:3])}; fix the schema"
        )
    cls = _validator_class(schema) or Draft202012Validator
    return cls(schema, format_checker=_FORMAT_CHECKER, registry=_NO_REMOTE_REFS)


def _validator_class(schema: dict[str, Any]) -> type[Validator] | None:
    """The draft `$schema` names (2020-12 without one); None for an unknown dialect."""
    if not isinstance(schema.get("$schema", ""), str):
        return Draft202012Validator  # the metaschema reports the bad $schema
    return validator_for(schema, default=None) if "$schema" in schema else Draft202012Validator


def _schema_problems(schema: dict[str, Any]) -> list[str]:
    """Metaschema errors, an unknown `$schema`, and `$ref`s that do not resolve (not the top-level object rule)."""
    problems: list[str] = []
    cls = _validator_class(schema)
    if cls is None:
        problems.append(
            _clip(
                f"$.$schema: unknown JSON Schema dialect {_short(schema['$schema'])}; "
                "use https://json-schema.org/draft/2020-12/schema or leave $schema out"
            )
        )
        cls = Draft202012Validator
    meta = cls(cls.META_SCHEMA, format_checker=_FORMAT_CHECKER)
    errors = list(islice(meta.iter_errors(schema), _MAX_RAW_ERRORS))
    problems += _messages(errors, list_allowed=True)
    if not errors:
        problems += _unresolved_refs(schema, cls)
    return problems


# Keywords whose values are data (a "$ref" inside them is not a reference), and maps from names to subschemas.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_NAMED_SUBSCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def _unresolved_refs(schema: dict[str, Any], cls: type[Validator]) -> list[str]:
    specification = referencing.jsonschema.specification_with(
        cls.ID_OF(cls.META_SCHEMA), default=referencing.jsonschema.DRAFT202012
    )
    root = specification.create_resource(schema)
    registry = METASCHEMAS.with_resource(root.id() or "", root)
    problems: list[str] = []

    def walk(node: Any, resolver: Resolver, path: list[str | int]) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, resolver, [*path, i])
            return
        if not isinstance(node, dict):
            return
        if path and specification.id_of(node):  # `$id` (`id` before draft 6) starts a new base URI
            resolver = resolver.in_subresource(specification.create_resource(node))
        if isinstance(node.get("$ref"), str):
            try:
                resolver.lookup(node["$ref"])
            except referencing.exceptions.Unresolvable:
                where = _path([*path, "$ref"])
                problems.append(_clip(f"{where}: {_short(node['$ref'])} does not resolve within the schema"))
        for key, child in node.items():
            if key in _NAMED_SUBSCHEMAS and isinstance(child, dict):
                for name, subschema in child.items():
                    walk(subschema, resolver, [*path, key, name])
            elif key not in _DATA_KEYWORDS:
                walk(child, resolver, [*path, key])

    walk(schema, registry.resolver(base_uri=root.id() or ""), [])
    return problems


# ------------------------------------------------------------------------------------------------------ messages


def _messages(errors: Iterable[ValidationError], list_allowed: bool = False) -> list[str]:
    """Most relevant first (jsonschema's ranking: shallower, the value not even of the expected type, ...),
    ties in the order the schema lists them, duplicates dropped, at most MAX_ERRORS. `list_allowed` names an
    enum's values: for schema authors; a reply's enum can be a 77-label taxonomy the model already has."""
    ranked = sorted(errors, key=_rank, reverse=True)
    messages: dict[str, None] = {}
    for error in ranked:
        messages.setdefault(_message(error, list_allowed))
        if len(messages) >= MAX_ERRORS:
            break
    return list(messages)


def _rank(error: ValidationError) -> tuple[Any, ...]:
    # `relevance` without its second element (the path itself), which would put $.a[9] before $.a[1].
    depth, _path_itself, *rest = relevance(error)
    return (depth, *rest)


def _message(error: ValidationError, list_allowed: bool) -> str:
    if error.validator in ("anyOf", "oneOf") and error.context:
        error, detail = _closest_alternative(error, list_allowed)
    else:
        detail = _detail(error, list_allowed)
    path = _clip(_path(error.absolute_path), _MAX_PATH_CHARS)
    return _clip(f"{path}: {detail}")


def _closest_alternative(error: ValidationError, list_allowed: bool) -> tuple[ValidationError, str]:
    """For a failed anyOf/oneOf: "expected a or b" when every branch wanted another type, else the branch that
    came closest (it matched the type and failed deeper or on another keyword), with its own path."""
    closer = [e for e in error.context if e.relative_path or e.validator != "type"]
    if not closer:
        types = [t for e in error.context for t in _as_list(e.validator_value)]
        return error, f"expected {' or '.join(dict.fromkeys(types))}, got {_json_type(error.instance)}"
    best = best_match(closer)
    if best.validator in ("anyOf", "oneOf") and best.context:
        return _closest_alternative(best, list_allowed)
    return best, _detail(best, list_allowed)


# The hand-written validator's wording, kept for the keywords it had: dead letters and tests read the same.
_SIZE_WORDS = {
    "minLength": ("shorter than", "characters"),
    "maxLength": ("longer than", "characters"),
    "minItems": ("fewer than", "items"),
    "maxItems": ("more than", "items"),
    "minProperties": ("fewer than", "properties"),
    "maxProperties": ("more than", "properties"),
}
_BOUND_WORDS = {
    "minimum": "below minimum",
    "maximum": "above maximum",
    "exclusiveMinimum": "not above exclusive minimum",
    "exclusiveMaximum": "not below exclusive maximum",
    "multipleOf": "not a multiple of",
}


def _detail(error: ValidationError, list_allowed: bool) -> str:
    keyword, expected, value = error.validator, error.validator_value, error.instance
    if error.schema is False:
        return "no value is allowed here"
    if keyword == "type":
        return f"expected {' or '.join(_as_list(expected))}, got {_json_type(value)}"
    if keyword == "required" and isinstance(expected, list):  # (draft 3's `required: true` falls through)
        missing = [name for name in expected if isinstance(value, dict) and name not in value]
        plural = "properties" if len(missing) > 1 else "property"
        return f"missing required {plural} {', '.join(_quoted(name) for name in missing)}"
    if keyword == "additionalProperties" and expected is False and isinstance(value, dict):
        extra = _extra_properties(value, error.schema)
        plural = "properties" if len(extra) > 1 else "property"
        return f"unexpected {plural} {', '.join(_quoted(name) for name in extra)}"
    if keyword == "enum":
        allowed = f" {_short(expected, 120)}" if list_allowed else " the allowed values"
        return f"{_short(value)} is not one of{allowed}"
    if keyword == "const":
        return f"must equal {_short(expected)}, got {_short(value)}"
    if keyword in _BOUND_WORDS:
        return f"{_BOUND_WORDS[keyword]} {_short(expected)}"
    if keyword in _SIZE_WORDS:
        bound, unit = _SIZE_WORDS[keyword]
        return f"{bound} {expected} {unit} (got {len(value)})"
    if keyword == "pattern":
        return f"{_short(value)} does not match the pattern {_short(expected)}"
    if keyword == "format":
        return f"{_short(value)} is not a valid {expected}"
    if keyword == "uniqueItems":
        return "items are not unique"
    if keyword == "not":
        return f"must not match {_short(expected)}"
    if keyword == "oneOf":  # no context: more than one alternative matched
        return "matches more than one oneOf alternative; it must match exactly one"
    return _shortened_library_message(error)


def _shortened_library_message(error: ValidationError) -> str:
    # jsonschema's messages mostly start with the instance's repr, which can be a megabyte; keep the rest.
    message, head = error.message, repr(error.instance)
    if message.startswith(head):
        message = _short(error.instance) + message[len(head) :]
    return message


def _extra_properties(value: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [name for name in value if name not in known and not any(re.search(p, name) for p in patterns)]


def _path(parts: Iterable[str | int]) -> str:
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{_clip(part, 40)}"
        else:
            text += f"[{_short(part, 40)}]"
    return text


def _quoted(name: str) -> str:
    return _short(name, 40)


def _short(value: Any, limit: int = _MAX_VALUE_CHARS) -> str:
    """repr(value), built bounded (a 1 MB string is never copied whole) and cut to `limit` characters."""
    return _clip(_REPR.repr(value), limit)


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _json_type(value: Any) -> str:
    for python_type, name in _JSON_TYPES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _bounded_repr() -> reprlib.Repr:
    bounded = reprlib.Repr()
    bounded.maxstring = bounded.maxother = bounded.maxlong = _MAX_VALUE_CHARS
    bounded.maxlist = bounded.maxtuple = bounded.maxset = 10
    bounded.maxdict = 6
    bounded.maxlevel = 3
    return bounded


_REPR = _bounded_repr()
