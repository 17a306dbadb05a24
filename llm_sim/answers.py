"""Deterministic answers: JSON that conforms to the requested schema, built from the prompt's own text.

Enum strings (labels) are chosen by lexical nearest neighbour over the few-shot examples the prompt carries
(lines `<text> => <label>`) plus the label's own name, so good examples give a realistic accuracy and no
examples a poor one. This is a test double, not a model.

`AnswerWriter` returns a valid instance of any JSON Schema in the subset providers' structured outputs accept
(types and type lists, enum, const, properties/required/additionalProperties, items/prefixItems, bounds,
multipleOf, lengths, patterns (best effort), formats, local $ref, anyOf/oneOf/allOf): see docs/simulator.md,
"Answers for any schema". `degrade` and `violate_schema` give wrong-but-valid and invalid answers for any schema.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import functools
import hashlib
import json
import math
import re
import string
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass
from re import _constants as _sre_c  # the stdlib's own regex parser: turns `pattern` into example strings
from re import _parser as _sre_parse
from typing import Any

from jsonschema import Draft202012Validator

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "from",
        "by",
        "with",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "i",
        "me",
        "my",
        "we",
        "our",
        "you",
        "your",
        "he",
        "she",
        "they",
        "them",
        "their",
        "his",
        "her",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "not",
        "no",
        "so",
        "can",
        "could",
        "would",
        "should",
        "will",
        "just",
        "than",
        "then",
        "there",
        "here",
        "what",
        "which",
        "who",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "some",
    ]
)
_EXAMPLE_LINE = re.compile(r"^\s*(?:[-*]\s+)?(?P<text>.+?)\s*=>\s*(?P<label>[^\n=]+?)\s*$", re.MULTILINE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_AMOUNT = r"[$€£]\s?\d[\d,]*(?:\.\d+)?|\d[\d,]*(?:\.\d+)?\s?(?:USD|EUR|GBP|dollars|euros|pounds)\b"
_DATE = (
    r"\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{2,4}|"
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?(?:,?\s+\d{4})?"
)
_ENTITY = re.compile(
    rf"(?P<amount>{_AMOUNT})|(?P<date>{_DATE})|(?P<name>[A-Z][a-zA-Z]+(?:\s+[A-Z][a-zA-Z]+)*)|(?P<num>\d+(?:\.\d+)?)"
)
_CONFIDENCE_NAMES = ("confidence", "score", "probability", "certainty")
NOISE_NAME_ONLY = 0.6
NOISE_WITH_EXAMPLES = 0.1
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def terms(text: str) -> list[str]:
    """Lowercased, stop-word-free, lightly stemmed words of `text`."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def parse_examples(text: str) -> list[tuple[str, str]]:
    """Few-shot example lines `<example text> => <label>` (optional leading '- '), in order."""
    return list(_parse_examples(text))


@functools.lru_cache(maxsize=256)
def _parse_examples(text: str) -> tuple[tuple[str, str], ...]:
    """Memoized: a pipeline sends the same prompt, and so the same examples, with every request."""
    examples = []
    for match in _EXAMPLE_LINE.finditer(text):
        example = match.group("text").strip().strip("\"'")
        label = match.group("label").strip().strip("\"'`")
        if example and label:
            examples.append((example, label))
    return tuple(examples)


def strip_example_lines(text: str) -> str:
    return _EXAMPLE_LINE.sub("", text).strip()


def is_confidence_name(name: str) -> bool:
    """A property named like a confidence: "confidence", "score", "probability" or "certainty" in its name."""
    lowered = name.lower()
    return any(word in lowered for word in _CONFIDENCE_NAMES)


def scale_confidence(share: float, node: dict[str, Any]) -> float:
    """A confidence `share` in [0, 1] mapped onto the number node's minimum..maximum (0..1 when unbounded above;
    not yet fitted to exclusive bounds or multipleOf: `fit_number` does that)."""
    low, high = number_bounds(node)
    return share if high is None else round(low + (high - low) * share, 6)


def number_bounds(node: dict[str, Any]) -> tuple[float, float | None]:
    """A number node's (low, high): its minimum or exclusiveMinimum, else 0 (or high - 1 when high is negative);
    its maximum or exclusiveMaximum, else None."""
    low = _number(node.get("minimum"))
    if low is None:
        low = _number(node.get("exclusiveMinimum"))
    high = _number(node.get("maximum"))
    if high is None:
        high = _number(node.get("exclusiveMaximum"))
    if low is None:
        low = 0 if high is None or high >= 0 else high - 1
    return low, high


def uniform_from_text(text: str, salt: str = "") -> float:
    """A deterministic number in [0, 1) from sha256(salt + text)."""
    digest = hashlib.sha256((salt + text).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class LabelChoice:
    label: str
    runner_up: str
    confidence: float


def rank_labels(text: str, labels: list[str], examples: list[tuple[str, str]]) -> list[tuple[str, float]]:
    """Every label of `labels` with its score for `text`, best first (see `choose_label`)."""
    if not labels:
        raise ValueError("choose_label needs at least one label")
    index = _LabelIndex.of(tuple(labels), tuple(examples))
    query = index.vector(Counter(terms(text)))
    query_norm = math.sqrt(sum(v * v for v in query.values()))
    scores = dict.fromkeys(labels, 0.0)
    # Only documents sharing a term with the query score above 0 (the others leave their label's score at 0).
    for i in sorted({i for t in query for i in index.postings.get(t, ())}):
        label, doc, norm, weight = index.docs[i]
        scores[label] = max(scores[label], weight * _cosine(query, query_norm, doc, norm))
    # Deterministic "uncertainty" per (text, label): large for a label known only by its name, small for one
    # backed by examples, so prompts without examples classify poorly and good examples help, as with a model.
    for label in labels:
        scores[label] += (NOISE_WITH_EXAMPLES if index.shots[label] else NOISE_NAME_ONLY) * uniform_from_text(
            text, label
        )
    ranked = sorted(scores, key=lambda lab: -scores[lab])
    return [(label, scores[label]) for label in ranked]


def _cosine(a: dict[str, float], a_norm: float, b: dict[str, float], b_norm: float) -> float:
    dot = sum(v * b.get(t, 0.0) for t, v in a.items())
    norm = a_norm * b_norm
    return dot / norm if norm else 0.0


@dataclass(frozen=True)
class _LabelIndex:
    """The TF-IDF vectors of a prompt's examples and label names, with their norms: the same for every request
    that carries the same labels and examples, so built once per prompt (`of` is memoized)."""

    idf: dict[str, float]
    default_idf: float
    docs: list[tuple[str, dict[str, float], float, float]]
    """(label, vector, norm, weight): the examples (weight 1), then the label names (weight 0.8)."""
    postings: dict[str, list[int]]
    """term -> the documents that contain it"""
    shots: Counter

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(labels: tuple[str, ...], examples: tuple[tuple[str, str], ...]) -> _LabelIndex:
        docs = [(label, Counter(terms(ex))) for ex, label in examples if label in labels]
        name_docs = [(label, Counter(terms(re.sub(r"[_\-./]", " ", label)))) for label in labels]
        all_docs = [d for _, d in docs] + [d for _, d in name_docs]
        n_docs = len(all_docs)
        df: Counter = Counter()
        for doc in all_docs:
            df.update(doc.keys())
        idf = {t: math.log((1 + n_docs) / (1 + count)) + 1 for t, count in df.items()}
        index = _LabelIndex(idf, math.log(1 + n_docs) + 1, [], {}, Counter(label for label, _ in docs))
        for weight, source in ((1.0, docs), (0.8, name_docs)):
            for label, counts in source:
                vector = index.vector(counts)
                for t in vector:
                    index.postings.setdefault(t, []).append(len(index.docs))
                index.docs.append((label, vector, math.sqrt(sum(v * v for v in vector.values())), weight))
        return index

    def vector(self, counts: Counter) -> dict[str, float]:
        return {t: c * self.idf.get(t, self.default_idf) for t, c in counts.items()}


def _choice_at(ranked: list[tuple[str, float]], position: int) -> LabelChoice:
    """The label ranked at `position`, its runner-up and the confidence from the margin between them."""
    (best, top), (second, runner) = ranked[position], ranked[min(position + 1, len(ranked) - 1)]
    confidence = 0.2 + 0.8 * (top - runner) / top if top > 0 else 1.0 / len(ranked)
    return LabelChoice(best, second, round(min(1.0, max(0.0, confidence)), 3))


def choose_label(text: str, labels: list[str], examples: list[tuple[str, str]]) -> LabelChoice:
    """The label of `labels` most similar to `text` (TF-IDF cosine, nearest example or label name)."""
    return _choice_at(rank_labels(text, labels, examples), 0)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]


def extract_sentence(text: str, max_words: int = 30) -> str:
    """An extractive summary: the first sentence of `text`, at most `max_words` words."""
    sentences = _sentences(text)
    words = (sentences[0] if sentences else "").split()
    return " ".join(words[:max_words])


def extract_entities(text: str, limit: int = 10) -> list[str]:
    """Amounts, dates, capitalised names and numbers found in `text`, in order, without duplicates."""
    found: list[str] = []
    for match in _ENTITY.finditer(text):
        value = match.group().strip()
        if match.lastgroup == "name":
            sentence_start = not text[: match.start()].strip() or text[: match.start()].rstrip()[-1] in ".!?:"
            if value.lower() in _STOPWORDS or (sentence_start and " " not in value):
                continue
        if value not in found:
            found.append(value)
        if len(found) >= limit:
            break
    return found


# ---------------------------------------------------------------------------------------------------------------
# JSON Schema plumbing: references, allOf merging, keyword helpers. Shared by the writer, degrade and violate.


class Unsatisfiable(ValueError):
    """No instance of this (sub)schema can be produced (a `false` schema, an empty enum, empty bounds, ...)."""


_VARIANTS = 5  # values tried per anyOf/oneOf/type-list option before giving up on validity
_MAX_DEPTH = 8  # below this many levels, optional properties are left out and arrays get only minItems items
_TYPE_ALIASES = {
    "float": "number",
    "double": "number",
    "int": "integer",
    "bool": "boolean",
    "str": "string",
    "text": "string",
    "list": "array",
    "dict": "object",
}
_KNOWN_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_OBJECT_KEYS = ("properties", "required", "additionalProperties", "patternProperties", "minProperties")
_ARRAY_KEYS = ("items", "prefixItems", "minItems", "maxItems", "uniqueItems")
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


def _lookup(ref: str, root: Any) -> Any:
    """The target of a local reference (`#`, `#/$defs/x`, `#/definitions/x`, any JSON pointer into the root)."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return {}  # remote references and anchors are not followed: the node accepts anything
    node: Any = root
    for raw in ref[2:].split("/"):
        part = urllib.parse.unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part, {})
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Both schemas at once (allOf): properties and required united, bounds tightened, types and enums intersected."""
    out = dict(a)
    for key, theirs in b.items():
        if key not in out:
            out[key] = theirs
            continue
        mine = out[key]
        if key == "properties" and isinstance(mine, dict) and isinstance(theirs, dict):
            merged = dict(mine)
            for name, sub in theirs.items():
                merged[name] = {"allOf": [merged[name], sub]} if name in merged else sub
            out[key] = merged
        elif key == "required" and isinstance(mine, list) and isinstance(theirs, list):
            out[key] = list(dict.fromkeys([*mine, *theirs]))
        elif key == "type":
            left, right = _as_list(mine), _as_list(theirs)
            common = [t for t in left if t in right]
            if not common and "integer" in left + right and "number" in left + right:
                common = ["integer"]
            if common:
                out[key] = common[0] if len(common) == 1 else common
        elif key == "enum" and isinstance(mine, list) and isinstance(theirs, list):
            out[key] = [o for o in mine if o in theirs] or mine
        elif key in _LOWER_BOUNDS and _number(mine) is not None and _number(theirs) is not None:
            out[key] = max(mine, theirs)
        elif key in _UPPER_BOUNDS and _number(mine) is not None and _number(theirs) is not None:
            out[key] = min(mine, theirs)
        elif key in ("items", "additionalProperties"):
            out[key] = False if mine is False or theirs is False else {"allOf": [mine, theirs]}
        elif key == "uniqueItems":
            out[key] = bool(mine) or bool(theirs)
        elif key == "allOf" and isinstance(mine, list) and isinstance(theirs, list):
            out[key] = [*mine, *theirs]
        # Anything else (a second anyOf, a second pattern, ...): the first one wins.
    return out


def resolve(schema: Any, root: Any, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """`schema` with its `$ref` followed (siblings merged) and its `allOf` merged; anyOf/oneOf are left in place."""
    if schema is True or schema is None or not isinstance(schema, (dict, bool)):
        return {}
    if schema is False:
        raise Unsatisfiable("the schema is `false`")
    node = schema
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = {} if ref in seen else resolve(_lookup(ref, root), root, (*seen, ref))
        rest = {k: v for k, v in node.items() if k != "$ref"}
        node = _merge(target, rest) if rest else target
    all_of = node.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged = {k: v for k, v in node.items() if k != "allOf"}
        for sub in all_of:
            merged = _merge(merged, resolve(sub, root, seen))
        node = merged
    return node


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any, default: int | None = None) -> int | None:
    number = _number(value)
    return int(number) if number is not None and float(number).is_integer() else default


def _types(node: dict[str, Any]) -> list[str]:
    """The types to try, in order: those listed (non-null first, null last), else inferred from the keywords."""
    kinds = [_TYPE_ALIASES.get(k, k) for k in _as_list(node.get("type")) if isinstance(k, str)]
    kinds = [k if k in _KNOWN_TYPES else "string" for k in kinds]
    if not kinds:
        if any(k in node for k in _OBJECT_KEYS):
            kinds = ["object"]
        elif any(k in node for k in _ARRAY_KEYS):
            kinds = ["array"]
        elif any(k in node for k in _NUMBER_KEYS):
            kinds = ["number"]
        else:
            kinds = ["string"]
    kinds = list(dict.fromkeys(kinds))
    return [k for k in kinds if k != "null"] + [k for k in kinds if k == "null"]


def _is_null_schema(node: dict[str, Any]) -> bool:
    return (
        node.get("type") == "null"
        or ("const" in node and node["const"] is None)
        or node.get("enum") == [None]
    )


def _property_schema(node: dict[str, Any], name: str) -> Any:
    """The schema a property `name` of an object of `node` must satisfy (properties, patternProperties, extra)."""
    props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    parts = [props[name]] if name in props else []
    pattern_props = node.get("patternProperties")
    if isinstance(pattern_props, dict):
        parts += [sub for pattern, sub in pattern_props.items() if _search(pattern, name)]
    if not parts:
        extra = node.get("additionalProperties", True)
        parts = [extra if isinstance(extra, dict) else {}]
    return parts[0] if len(parts) == 1 else {"allOf": parts}


def _item_schema(node: dict[str, Any], index: int) -> Any:
    """The schema of array item `index` (prefixItems, then items; the older list form of items too)."""
    prefix, items = node.get("prefixItems"), node.get("items", True)
    if isinstance(items, list):
        prefix, items = items, node.get("additionalItems", True)
    if isinstance(prefix, list) and index < len(prefix):
        return prefix[index]
    return items


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except (re.error, TypeError):
        return True  # a pattern Python cannot compile is not checked (the validator cannot check it either)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def is_valid(value: Any, schema: Any, root: Any = None) -> bool | None:
    """Draft 2020-12 validity of `value` against `schema` (a node of `root`); None if the schema cannot be used."""
    try:
        validator = Draft202012Validator(root if root is not None else schema)
        if root is not None and schema is not root:
            validator = validator.evolve(schema=schema)
        return validator.is_valid(value)
    except Exception:  # an unknown type, an unresolvable $ref, a pattern the validator cannot compile, ...
        return None


# ---------------------------------------------------------------------------------------------------------------
# Numbers


def _bounds(node: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low_exclusive, high, high_exclusive) from minimum/maximum/exclusive* (draft-4 booleans too)."""
    low, low_ex = _number(node.get("minimum")), False
    high, high_ex = _number(node.get("maximum")), False
    if node.get("exclusiveMinimum") is True:
        low_ex = low is not None
    elif (ex := _number(node.get("exclusiveMinimum"))) is not None and (low is None or ex >= low):
        low, low_ex = ex, True
    if node.get("exclusiveMaximum") is True:
        high_ex = high is not None
    elif (ex := _number(node.get("exclusiveMaximum"))) is not None and (high is None or ex <= high):
        high, high_ex = ex, True
    return low, low_ex, high, high_ex


def _multiple_ok(value: float, step: float) -> bool:
    """jsonschema's own multipleOf test (a float quotient must be integral)."""
    if isinstance(step, float):
        quotient = value / step
        try:
            return int(quotient) == quotient
        except OverflowError:
            return False
    return not value % step


def _times(k: int, step: int | float) -> int | float:
    if isinstance(step, int):
        return k * step
    return float(decimal.Decimal(repr(step)) * k)


def fit_number(value: float, node: dict[str, Any], integer: bool) -> int | float:
    """`value` if it satisfies the node's bounds and multipleOf, else the nearest number that does."""
    low, low_ex, high, high_ex = _bounds(node)
    step = _number(node.get("multipleOf"))
    step = step if step and step > 0 else None

    def ok(v: float) -> bool:
        if integer and not float(v).is_integer():
            return False
        if low is not None and (v < low or (low_ex and v <= low)):
            return False
        if high is not None and (v > high or (high_ex and v >= high)):
            return False
        return step is None or _multiple_ok(v, step)

    if ok(value):
        return value
    target = float(value)
    if low is not None and high is not None and (high < low or (high == low and (low_ex or high_ex))):
        raise Unsatisfiable(f"no number in the range {low}..{high}")
    if low is not None:
        target = max(target, low)
    if high is not None:
        target = min(target, high)
    grid = step if step is not None else (1 if integer else None)
    if grid is None:  # a plain number: step inside an exclusive bound
        inside = min(1.0, (high - low) / 2) if low is not None and high is not None else 1.0
        if low is not None and low_ex and target <= low:
            target = low + inside
        if high is not None and high_ex and target >= high:
            target = high - inside
        if ok(target):
            return target
        raise Unsatisfiable(f"no number fits {node}")
    base = math.floor(target / grid)
    for distance in range(2000):
        for k in (base + distance, base - distance) if distance else (base,):
            candidate = _times(k, grid)
            if ok(candidate):
                return int(candidate) if integer else candidate
    raise Unsatisfiable(f"no multiple of {grid} fits {node}")


# ---------------------------------------------------------------------------------------------------------------
# Strings: formats and patterns

_ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_ISO_DATETIME = re.compile(r"\b\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
_EMAIL = re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_URL = re.compile(r"https?://[^\s<>\"'()]+")
_LANGUAGE_NAMES = ("language", "lang", "language_code", "locale")
_SHORT_TEXT_NAMES = ("subject", "title", "headline")
_STRING_FORMATS = (
    "date",
    "date-time",
    "time",
    "email",
    "idn-email",
    "uri",
    "iri",
    "uri-reference",
    "iri-reference",
    "url",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uuid",
    "duration",
)
_CHAR_POOL = (
    string.ascii_lowercase + string.digits + string.ascii_uppercase + " -_.,:/@+#" + string.punctuation
)
_CATEGORIES = {
    _sre_c.CATEGORY_DIGIT: re.compile(r"\d"),
    _sre_c.CATEGORY_NOT_DIGIT: re.compile(r"\D"),
    _sre_c.CATEGORY_SPACE: re.compile(r"\s"),
    _sre_c.CATEGORY_NOT_SPACE: re.compile(r"\S"),
    _sre_c.CATEGORY_WORD: re.compile(r"\w"),
    _sre_c.CATEGORY_NOT_WORD: re.compile(r"\W"),
}


def _first_valid_date(text: str) -> str | None:
    for candidate in _ISO_DATE.findall(text):
        try:
            datetime.date.fromisoformat(candidate)
        except ValueError:
            continue
        return candidate
    return None


def _class_accepts(char: str, items: list[tuple[Any, Any]]) -> bool:
    negate, hit = False, False
    for op, arg in items:
        if op is _sre_c.NEGATE:
            negate = True
        elif op is _sre_c.LITERAL:
            hit = hit or ord(char) == arg
        elif op is _sre_c.RANGE:
            hit = hit or arg[0] <= ord(char) <= arg[1]
        elif op is _sre_c.CATEGORY:
            category = _CATEGORIES.get(arg)
            hit = hit or bool(category and category.fullmatch(char))
    return hit != negate


def _pick_char(accepts: Any) -> str:
    for char in _CHAR_POOL:
        if accepts(char):
            return char
    raise Unsatisfiable("no printable ASCII character fits the pattern")


def _emit(parsed: Any, extra: int, groups: dict[int, str]) -> str:
    """One string matching the parsed regex; each repetition runs `extra` times more than its minimum."""
    out: list[str] = []
    for op, arg in parsed:
        if op is _sre_c.LITERAL:
            out.append(chr(arg))
        elif op is _sre_c.NOT_LITERAL:
            out.append(_pick_char(lambda c, arg=arg: ord(c) != arg))
        elif op is _sre_c.ANY:
            out.append("a")
        elif op is _sre_c.IN:
            out.append(_pick_char(lambda c, arg=arg: _class_accepts(c, arg)))
        elif op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT, _sre_c.POSSESSIVE_REPEAT):
            low, high, sub = arg
            count = low + extra if high is _sre_c.MAXREPEAT else min(high, low + extra)
            out.append("".join(_emit(sub, extra, groups) for _ in range(count)))
        elif op is _sre_c.SUBPATTERN:
            group, _add, _del, sub = arg
            text = _emit(sub, extra, groups)
            if group:
                groups[group] = text
            out.append(text)
        elif op is _sre_c.ATOMIC_GROUP:
            out.append(_emit(arg, extra, groups))
        elif op is _sre_c.BRANCH:
            out.append(_emit(arg[1][0], extra, groups))
        elif op is _sre_c.GROUPREF:
            out.append(groups.get(arg, ""))
        elif op is _sre_c.GROUPREF_EXISTS:
            group, yes, no = arg
            branch = yes if group in groups else no
            out.append(_emit(branch, extra, groups) if branch is not None else "")
        elif op in (_sre_c.AT, _sre_c.ASSERT, _sre_c.ASSERT_NOT):
            continue  # anchors and lookarounds produce nothing (lookarounds are not honoured)
        else:
            raise Unsatisfiable(f"regex construct {op} is not supported")
    return "".join(out)


def pattern_examples(pattern: str) -> list[str]:
    """Strings built from `pattern` (shortest first); empty if the pattern is beyond this small generator."""
    try:
        parsed = _sre_parse.parse(pattern)
    except (re.error, TypeError, ValueError, OverflowError):
        return []
    examples: list[str] = []
    for extra in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100, 200):
        try:
            text = _emit(parsed, extra, {})
        except (Unsatisfiable, RecursionError):
            return examples
        if text not in examples:
            examples.append(text)
    return examples


# ---------------------------------------------------------------------------------------------------------------
# The writer


class AnswerWriter:
    """Builds a schema-conforming value for one prompt. `last_choice` is the last enum choice made.

    Every value is a function of the item text, the few-shot examples and the property path, so the same prompt
    always gets the same answer and different items get different ones.
    """

    def __init__(self, user_text: str, examples: list[tuple[str, str]], root_schema: dict[str, Any]):
        self.user_text = user_text
        self.examples = examples
        self.root = root_schema
        self.last_choice: LabelChoice | None = None
        self._index = 0  # position of the array item being written: picks the nth-ranked label, nth sentence
        self._variant = 0  # > 0 while retrying a oneOf/anyOf/type-list node whose first value was rejected
        # The $refs being expanded: a recursive one is not entered again unless required.
        self._active_refs: list[str] = []
        self._rankings: dict[tuple[str, ...], list[tuple[str, float]]] = {}

    def value(self, schema: Any, name: str = "") -> Any:
        return self._gen(schema, (name,) if name else (), 0)

    # -- dispatch ---------------------------------------------------------------------------------------------

    def _gen(self, schema: Any, path: tuple[str | int, ...], depth: int) -> Any:
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str):
            return self._gen_resolved(schema, path, depth)
        self._active_refs.append(ref)
        try:
            return self._gen_resolved(schema, path, depth)
        finally:
            self._active_refs.pop()

    def _recursive(self, schema: Any) -> bool:
        """Whether `schema` is a $ref already being expanded above (a tree node's children, ...)."""
        return isinstance(schema, dict) and schema.get("$ref") in self._active_refs

    def _gen_resolved(self, schema: Any, path: tuple[str | int, ...], depth: int) -> Any:
        node = resolve(schema, self.root)
        if "const" in node:
            return copy.deepcopy(node["const"])
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list) and node[key]:
                return self._branches(node, key, path, depth)
        if isinstance(node.get("enum"), list):
            return self._enum(node)
        kinds = _types(node)
        if len(kinds) == 1:
            return self._typed(node, kinds[0], path, depth)
        return self._first_valid(node, [(node, kind) for kind in kinds], path, depth)

    def _branches(self, node: dict[str, Any], key: str, path: tuple[str | int, ...], depth: int) -> Any:
        """anyOf / oneOf: the first branch (non-null ones first) whose value the whole node accepts."""
        base = {k: v for k, v in node.items() if k != key}
        options: list[tuple[dict[str, Any], str | None]] = []
        for branch in node[key]:
            try:
                options.append((_merge(base, resolve(branch, self.root)), None))
            except Unsatisfiable:
                continue
        options.sort(key=lambda option: _is_null_schema(option[0]))
        return self._first_valid(node, options, path, depth)

    def _first_valid(
        self,
        node: dict[str, Any],
        options: list[tuple[dict[str, Any], str | None]],
        path: tuple[str | int, ...],
        depth: int,
    ) -> Any:
        """The first option whose value `node` accepts. If none is accepted (oneOf branches that overlap), the
        options are tried again as variants: numbers moved off their first pick, next-ranked labels, ..."""
        first: tuple[Any, LabelChoice | None] | None = None
        outer = self._variant
        try:
            for variant in range(_VARIANTS):
                self._variant = outer + variant
                for sub, kind in options:
                    before = self.last_choice
                    try:
                        value = self._typed(sub, kind, path, depth) if kind else self._gen(sub, path, depth)
                    except Unsatisfiable:
                        self.last_choice = before
                        continue
                    if is_valid(value, node, self.root) is not False:
                        return value
                    if first is None:
                        first = (value, self.last_choice)
                    self.last_choice = before
                if first is None:
                    break
        finally:
            self._variant = outer
        if first is None:
            raise Unsatisfiable("no branch of the schema can be produced")
        self.last_choice = first[1]
        return first[0]  # best effort: nothing validated

    def _typed(self, node: dict[str, Any], kind: str, path: tuple[str | int, ...], depth: int) -> Any:
        name = next((p for p in reversed(path) if isinstance(p, str)), "")
        if kind == "object":
            return self._object(node, path, depth)
        if kind == "array":
            return self._array(node, path, depth)
        if kind in ("number", "integer"):
            return self._number(node, name, path, kind == "integer")
        if kind == "boolean":
            return self._boolean(name, path)
        if kind == "null":
            return None
        return self._string(node, name, path)

    # -- enums --------------------------------------------------------------------------------------------------

    def _enum_keys(self, node: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """Label names for an enum's options: its strings when it has any (as today), else every option's JSON."""
        options = list(node["enum"])
        if "type" in node:
            allowed = _types(node)
            options = [
                o
                for o in options
                if _json_type_of(o) in allowed or (_json_type_of(o) == "integer" and "number" in allowed)
            ] or options
        if not options:
            raise Unsatisfiable("empty enum")
        strings = [o for o in options if isinstance(o, str)]
        keyed = {o: o for o in strings} if strings else {json.dumps(o): o for o in options}
        return list(keyed), keyed

    def _enum(self, node: dict[str, Any], position: int | None = None) -> Any:
        keys, back = self._enum_keys(node)
        ranked = self._rankings.get(tuple(keys))
        if ranked is None:
            ranked = self._rankings[tuple(keys)] = rank_labels(self.user_text, keys, self.examples)
        position = (self._index if position is None else position) + self._variant
        choice = _choice_at(ranked, position % len(ranked))
        self.last_choice = choice
        return copy.deepcopy(back[choice.label])

    # -- objects and arrays -------------------------------------------------------------------------------------

    def _is_enum_node(self, schema: Any) -> bool:
        try:
            node = resolve(schema, self.root)
        except Unsatisfiable:
            return False
        return "enum" in node and "const" not in node

    def _object(self, node: dict[str, Any], path: tuple[str | int, ...], depth: int) -> dict[str, Any]:
        props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
        required = (
            [r for r in node.get("required", []) if isinstance(r, str)]
            if isinstance(node.get("required"), list)
            else []
        )
        names = list(props) + [r for r in required if r not in props]
        names = [
            n for n in names if n in required or (depth < _MAX_DEPTH and not self._recursive(props.get(n)))
        ]
        max_props = _int(node.get("maxProperties"))
        if max_props is not None and len(names) > max_props:
            optional = [n for n in names if n not in required]
            surplus = set(optional[max(0, len(optional) - (len(names) - max_props)) :])
            names = [n for n in names if n not in surplus]
        schemas = {n: _property_schema(node, n) for n in names}
        # Enum properties first, so a confidence-like number can use the margin of its sibling label.
        order = sorted(names, key=lambda n: 0 if self._is_enum_node(schemas[n]) else 1)
        values: dict[str, Any] = {}
        for n in order:
            try:
                values[n] = self._gen(schemas[n], (*path, n), depth + 1)
            except Unsatisfiable:
                if n in required:
                    raise
        out = {n: values[n] for n in names if n in values}
        min_props = _int(node.get("minProperties"), 0) or 0
        counter = 1
        while len(out) < min_props and node.get("additionalProperties", True) is not False and counter < 1000:
            key = f"extra_{counter}"
            if key not in out:
                out[key] = self._gen(_property_schema(node, key), (*path, key), depth + 1)
            counter += 1
        return out

    def _item(self, schema: Any, path: tuple[str | int, ...], index: int, depth: int) -> Any:
        outer, self._index = self._index, index
        try:
            return self._gen(schema, (*path, index), depth + 1)
        finally:
            self._index = outer

    def _array(self, node: dict[str, Any], path: tuple[str | int, ...], depth: int) -> list[Any]:
        min_items = _int(node.get("minItems"), 0) or 0
        max_items = _int(node.get("maxItems"))
        unique = bool(node.get("uniqueItems"))
        prefix = node.get("prefixItems") if isinstance(node.get("prefixItems"), list) else []
        if isinstance(node.get("items"), list):
            prefix = node["items"]
        if not prefix:
            items = node.get("items", {})
            if items is False:
                return []
            item = resolve(items, self.root)
            if self._is_entity_item(item):
                return self._entity_array(item, min_items, max_items, unique)
            if isinstance(item.get("enum"), list) and "const" not in item and not _has_branches(item):
                return self._enum_array(item, min_items, max_items, unique)
        out: list[Any] = []
        for i in range(len(prefix) if max_items is None else min(len(prefix), max_items)):
            out.append(self._item(prefix[i], path, i, depth))
        rest = _item_schema(node, len(prefix))
        if rest is False:
            return out
        wanted = max(min_items, 0 if prefix or depth >= _MAX_DEPTH or self._recursive(rest) else 1)
        if max_items is not None:
            wanted = min(wanted, max_items)
        index = len(out)
        while len(out) < wanted:
            value = self._item(rest, path, index, depth)
            if unique:
                seen = {_canonical(v) for v in out}
                outer = self._variant
                try:  # a duplicate: the same item as a variant (next label, number moved, another sentence)
                    for shift in range(1, 20):
                        if _canonical(value) not in seen:
                            break
                        self._variant = outer + shift
                        value = self._item(rest, path, index + shift * max(wanted, 1), depth)
                finally:
                    self._variant = outer
            out.append(value)
            index += 1
        return out

    @staticmethod
    def _is_entity_item(item: dict[str, Any]) -> bool:
        """Plain string items (as today: type string or none, no enum), with no format/pattern/const/branches."""
        if (
            item.get("type") not in ("string", None)
            or "enum" in item
            or "const" in item
            or _has_branches(item)
        ):
            return False
        return _types(item) == ["string"] and "format" not in item and "pattern" not in item

    def _entity_array(
        self, item: dict[str, Any], min_items: int, max_items: int | None, unique: bool
    ) -> list[str]:
        """Entities extracted from the item (amounts, dates, names, numbers), padded to minItems."""
        limit = max_items if max_items is not None else 10
        found: list[str] = []
        for entity in extract_entities(self.user_text, limit):
            fitted = self._fit_string(entity, item)
            if fitted not in found:
                found.append(fitted)
        pad = extract_sentence(self.user_text, 3) or "item"
        counter = 1
        while len(found) < min_items and counter < 1000:
            candidate = self._fit_string(pad if counter == 1 else f"{pad} {counter}", item)
            if candidate not in found or not unique:
                found.append(candidate)
            counter += 1
        return found

    def _enum_array(
        self, item: dict[str, Any], min_items: int, max_items: int | None, unique: bool
    ) -> list[Any]:
        """The best-ranked labels, distinct, as many as minItems asks (at least one)."""
        keys, _ = self._enum_keys(item)
        count = max(min_items, 1)
        if max_items is not None:
            count = min(count, max_items)
        if unique:
            count = min(count, len(keys))
        return [self._enum(item, position) for position in range(count)]

    # -- scalars ------------------------------------------------------------------------------------------------

    def _number(self, node: dict[str, Any], name: str, path: tuple[str | int, ...], integer: bool) -> Any:
        lowered = name.lower()
        low, high = number_bounds(node)
        if is_confidence_name(name):
            value = scale_confidence(self.last_choice.confidence if self.last_choice else 0.5, node)
        elif "count" in lowered or lowered.startswith("num"):
            value = len(extract_entities(self.user_text))
        else:
            numbers = re.findall(r"\d+(?:\.\d+)?", self.user_text.replace(",", ""))
            if numbers:
                value = float(numbers[0])
            elif high is not None:  # nothing in the text: a value in range from the item and the path
                share = uniform_from_text(self.user_text, "number:" + _path_key(path))
                if integer:
                    bottom, top = math.ceil(low), math.floor(high)
                    value = bottom + int(share * (top - bottom + 1)) if top >= bottom else low
                else:
                    value = round(low + (high - low) * share, 4)
            else:
                value = low
            if high is not None:
                value = min(max(value, low), high) if high >= low else low
        if self._variant:  # +1, -1, +2, -2, ...: off the first pick, e.g. off a bound oneOf branches share
            shift = (self._variant + 1) // 2
            value += shift if self._variant % 2 else -shift
        value = int(round(value)) if integer else value
        return fit_number(value, node, integer)

    def _boolean(self, name: str, path: tuple[str | int, ...]) -> bool:
        """True when the item mentions the property's name (`urgent`), else a coin flip seeded by item and path."""
        spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " ")
        name_terms = set(terms(spaced)) - {"is", "has"}
        if name_terms & set(terms(self.user_text)):
            value = True
        else:
            value = uniform_from_text(self.user_text, "boolean:" + _path_key(path)) < 0.5
        return value != bool(self._variant % 2)

    def _sentence(self, max_words: int) -> str:
        if self._index == 0:
            return extract_sentence(self.user_text, max_words)
        sentences = _sentences(self.user_text)
        if not sentences:
            return ""
        return " ".join(sentences[self._index % len(sentences)].split()[:max_words])

    def _format_example(self, fmt: str, path: tuple[str | int, ...]) -> str:
        text = self.user_text
        if fmt == "date":
            return _first_valid_date(text) or "1970-01-01"
        if fmt == "date-time":
            for candidate in _ISO_DATETIME.findall(text):
                try:
                    datetime.datetime.fromisoformat(candidate.upper().replace("Z", "+00:00"))
                except ValueError:
                    continue
                return candidate
            return f"{_first_valid_date(text) or '1970-01-01'}T00:00:00Z"
        if fmt == "time":
            return "00:00:00Z"
        if fmt in ("email", "idn-email"):
            found = _EMAIL.search(text)
            return found.group() if found else "customer@example.com"
        if fmt in ("uri", "iri", "uri-reference", "iri-reference", "url"):
            found = _URL.search(text)
            return found.group().rstrip(".,;:!?") if found else "https://example.com/"
        if fmt in ("hostname", "idn-hostname"):
            return "example.com"
        if fmt == "ipv4":
            return "192.0.2.1"
        if fmt == "ipv6":
            return "2001:db8::1"
        if fmt == "uuid":
            digest = hashlib.sha256(("uuid:" + _path_key(path) + "\n" + text).encode()).digest()
            return str(uuid.UUID(bytes=digest[:16], version=4))
        return "P1D"  # duration

    def _string(self, node: dict[str, Any], name: str, path: tuple[str | int, ...]) -> str:
        lowered = name.lower()
        fmt = node.get("format")
        if fmt in _STRING_FORMATS:
            text = self._format_example(fmt, path)
        elif lowered in _LANGUAGE_NAMES:
            text = "en"
        elif lowered.endswith("date"):
            text = _first_valid_date(self.user_text) or "1970-01-01"
        elif lowered in ("email", "email_address") or lowered.endswith("_email"):
            text = self._format_example("email", path)
        elif lowered in ("url", "uri", "link") or lowered.endswith(("_url", "_uri")):
            text = self._format_example("uri", path)
        else:
            short = any(word in lowered for word in _SHORT_TEXT_NAMES)
            text = self._sentence(8 if short else 30) or "No content."
            if self._variant:  # free text only: a suffixed date or address would break its format
                text = f"{text} ({self._variant})"
        return self._fit_string(text, node)

    def _fit_string(self, text: str, node: dict[str, Any]) -> str:
        """`text` cut to maxLength, padded to minLength with more of the item; if a pattern rejects it, a word
        of the item that matches, then a matching `examples`/`default` value, then a string built from the
        pattern; failing all that, `text` itself (best effort)."""
        min_len = _int(node.get("minLength"), 0) or 0
        max_len = _int(node.get("maxLength"))
        pattern = node.get("pattern") if isinstance(node.get("pattern"), str) else None

        def fits(candidate: str) -> bool:
            long_enough = len(candidate) >= min_len and (max_len is None or len(candidate) <= max_len)
            return long_enough and (pattern is None or _search(pattern, candidate))

        if max_len is not None and len(text) > max_len:
            text = text[:max_len]
            text = text.rstrip() if len(text.rstrip()) >= min_len else text
        if len(text) < min_len:
            text = self._pad(text, min_len)
        if pattern is None or fits(text):
            return text
        words = [w.strip(".,;:!?()\"'") for w in self.user_text.split()] + extract_entities(self.user_text)
        samples = [
            s for s in _as_list(node.get("examples")) + _as_list(node.get("default")) if isinstance(s, str)
        ]
        fitting: list[str] = []
        for candidate in [*words, *samples, *pattern_examples(pattern)]:
            if candidate and fits(candidate) and candidate not in fitting:
                fitting.append(candidate)
                if len(fitting) > self._variant:
                    return candidate  # a variant takes a later one, so uniqueItems arrays can differ
        return fitting[0] if fitting else text

    def _pad(self, text: str, min_len: int) -> str:
        source = " ".join(self.user_text.split()) or "No content."
        padded = text
        while len(padded) < min_len:
            padded = f"{padded} {source}" if padded else source
        padded = padded[:min_len]
        return padded[:-1] + "." if padded[-1:].isspace() else padded


def _json_type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _has_branches(node: dict[str, Any]) -> bool:
    return any(isinstance(node.get(k), list) and node[k] for k in ("anyOf", "oneOf"))


def _path_key(path: tuple[str | int, ...]) -> str:
    return "/".join(str(p) for p in path)


def answer_for(
    user_text: str, prompt_text: str, schema: dict[str, Any] | None
) -> tuple[Any, LabelChoice | None]:
    """The answer value (schema-shaped, or a plain-text string without schema) and the last label choice made."""
    examples = parse_examples(prompt_text)
    item_text = strip_example_lines(user_text) or user_text
    if schema is None:
        return extract_sentence(item_text) or "No content.", None
    writer = AnswerWriter(item_text, examples, schema)
    try:
        return writer.value(schema), writer.last_choice
    except (Unsatisfiable, RecursionError):
        return {}, writer.last_choice  # nothing satisfies the schema: any JSON is as wrong as any other


# ---------------------------------------------------------------------------------------------------------------
# Wrong answers on purpose


def degrade(value: Any, schema: dict[str, Any]) -> Any:
    """A copy of `value` with every enum label replaced by a different label of the same enum (top-level or
    nested, distinct within uniqueItems arrays); `value` itself if that copy would not validate."""
    changed = _replace_enums(value, schema, schema, _other_label)
    if changed == value or is_valid(changed, schema) is not False:
        return changed
    return value


def violate_schema(value: Any, schema: dict[str, Any]) -> Any:
    """Valid JSON that breaks `schema`: a label outside its enum, else a required property dropped (at any
    depth), else a leaf of the wrong type, else the wrong type at the top."""
    candidates: list[Any] = []
    if _has_enum(schema, schema):
        candidates.append(_replace_enums(value, schema, schema, lambda options, current: "not_a_valid_label"))
    candidates += [
        _drop_required(value, schema, schema, 0),
        _swap_leaf(value),
        {"unexpected": value},
        [value],
        "not a valid answer",
    ]
    for candidate in candidates:
        if candidate is not None and is_valid(candidate, schema) is False:
            return candidate
    return candidates[0] if candidates[0] is not None else {"unexpected": value}


def _other_label(options: list[Any], current: Any) -> Any:
    others = [o for o in options if o != current]
    return others[0] if others else current


def _has_enum(schema: Any, root: dict[str, Any], depth: int = 0) -> bool:
    try:
        node = resolve(schema, root)
    except Unsatisfiable:
        return False
    if "enum" in node:
        return True
    if depth > _MAX_DEPTH:
        return False
    subs: list[Any] = []
    if isinstance(node.get("properties"), dict):
        subs += list(node["properties"].values())
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            subs.append(node[key])
    for key in ("prefixItems", "anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            subs += node[key]
    return any(_has_enum(s, root, depth + 1) for s in subs)


def _matching_branch(value: Any, node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any] | None:
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key]:
            base = {k: v for k, v in node.items() if k != key}
            for branch in node[key]:
                try:
                    merged = _merge(base, resolve(branch, root))
                except Unsatisfiable:
                    continue
                if is_valid(value, merged, root) is not False:
                    return merged
            return None
    return node


def _replace_enums(value: Any, schema: Any, root: dict[str, Any], replace: Any) -> Any:
    try:
        node = resolve(schema, root)
    except Unsatisfiable:
        return value
    if "enum" in node and "const" not in node:
        return replace(list(node["enum"]), value)
    branch = _matching_branch(value, node, root)
    if branch is None:
        return value
    if branch is not node:
        return _replace_enums(value, branch, root, replace)
    if isinstance(value, dict):
        return {k: _replace_enums(v, _property_schema(node, k), root, replace) for k, v in value.items()}
    if isinstance(value, list):
        out: list[Any] = []
        for i, item in enumerate(value):
            sub = _item_schema(node, i)
            try:
                item_node = resolve(sub, root)
            except Unsatisfiable:
                out.append(item)
                continue
            if node.get("uniqueItems") and isinstance(item_node.get("enum"), list):
                unused = [o for o in item_node["enum"] if o not in out]
                out.append(replace(unused, item) if unused else item)
            else:
                out.append(_replace_enums(item, sub, root, replace))
        return out
    return value


def _drop_required(value: Any, schema: Any, root: dict[str, Any], depth: int) -> Any:
    """`value` without one required property (the first present at the shallowest object); None if none."""
    if depth > _MAX_DEPTH + 2:
        return None
    try:
        node = resolve(schema, root)
    except Unsatisfiable:
        return None
    branch = _matching_branch(value, node, root)
    if branch is None:
        return None
    node = branch
    if isinstance(value, dict):
        required = node.get("required") if isinstance(node.get("required"), list) else []
        for key in required:
            if key in value:
                return {k: v for k, v in value.items() if k != key}
        for key, sub_value in value.items():
            dropped = _drop_required(sub_value, _property_schema(node, key), root, depth + 1)
            if dropped is not None:
                return {**value, key: dropped}
    if isinstance(value, list):
        for i, item in enumerate(value):
            dropped = _drop_required(item, _item_schema(node, i), root, depth + 1)
            if dropped is not None:
                return [*value[:i], dropped, *value[i + 1 :]]
    return None


def _swap_leaf(value: Any) -> Any:
    """`value` with its first scalar replaced by one of another type (a string for a number, ...); None if none."""
    if isinstance(value, dict):
        for key, sub in value.items():
            swapped = _swap_leaf(sub)
            if swapped is not None:
                return {**value, key: swapped}
        return None
    if isinstance(value, list):
        for i, sub in enumerate(value):
            swapped = _swap_leaf(sub)
            if swapped is not None:
                return [*value[:i], swapped, *value[i + 1 :]]
        return None
    if isinstance(value, str):
        return 12345
    if value is None:
        return "not_null"
    return "not_a_number" if not isinstance(value, bool) else "not_a_boolean"


def render(value: Any) -> str:
    """The message content for an answer value: JSON for structured answers, the text itself otherwise."""
    return value if isinstance(value, str) else json.dumps(value)
