"""Deterministic answers: JSON that conforms to the requested schema, built from the prompt's own text.

Enum strings (labels) are chosen by lexical nearest neighbour over the few-shot examples the prompt carries
(lines `<text> => <label>`) plus the label's own name, so good examples give a realistic accuracy and no
examples a poor one. This is a test double, not a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

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
    examples = []
    for match in _EXAMPLE_LINE.finditer(text):
        example = match.group("text").strip().strip("\"'")
        label = match.group("label").strip().strip("\"'`")
        if example and label:
            examples.append((example, label))
    return examples


def strip_example_lines(text: str) -> str:
    return _EXAMPLE_LINE.sub("", text).strip()


def uniform_from_text(text: str, salt: str = "") -> float:
    """A deterministic number in [0, 1) from sha256(salt + text)."""
    digest = hashlib.sha256((salt + text).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class LabelChoice:
    label: str
    runner_up: str
    confidence: float


def choose_label(text: str, labels: list[str], examples: list[tuple[str, str]]) -> LabelChoice:
    """The label of `labels` most similar to `text` (TF-IDF cosine, nearest example or label name)."""
    if not labels:
        raise ValueError("choose_label needs at least one label")
    docs: list[tuple[str, Counter]] = [
        (label, Counter(terms(ex))) for ex, label in examples if label in labels
    ]
    name_docs = [(label, Counter(terms(re.sub(r"[_\-./]", " ", label)))) for label in labels]
    all_docs = [d for _, d in docs] + [d for _, d in name_docs]
    n_docs = len(all_docs)
    df: Counter = Counter()
    for doc in all_docs:
        df.update(doc.keys())

    def vector(counts: Counter) -> dict[str, float]:
        return {t: c * (math.log((1 + n_docs) / (1 + df[t])) + 1) for t, c in counts.items()}

    def cosine(a: dict[str, float], b: dict[str, float]) -> float:
        dot = sum(v * b.get(t, 0.0) for t, v in a.items())
        norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
        return dot / norm if norm else 0.0

    query = vector(Counter(terms(text)))
    scores = dict.fromkeys(labels, 0.0)
    shots = Counter(label for label, _ in docs)
    for label, doc in docs:
        scores[label] = max(scores[label], cosine(query, vector(doc)))
    for label, doc in name_docs:
        scores[label] = max(scores[label], 0.8 * cosine(query, vector(doc)))
    # Deterministic "uncertainty" per (text, label): large for a label known only by its name, small for one
    # backed by examples, so prompts without examples classify poorly and good examples help, as with a model.
    for label in labels:
        scores[label] += (NOISE_WITH_EXAMPLES if shots[label] else NOISE_NAME_ONLY) * uniform_from_text(
            text, label
        )
    ranked = sorted(labels, key=lambda lab: -scores[lab])
    best, second = ranked[0], ranked[1] if len(ranked) > 1 else ranked[0]
    top, runner = scores[best], scores[second]
    confidence = 0.2 + 0.8 * (top - runner) / top if top > 0 else 1.0 / len(labels)
    return LabelChoice(best, second, round(min(1.0, max(0.0, confidence)), 3))


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


class AnswerWriter:
    """Builds a schema-conforming value for one prompt. `labels_chosen` records every enum choice made."""

    def __init__(self, user_text: str, examples: list[tuple[str, str]], root_schema: dict[str, Any]):
        self.user_text = user_text
        self.examples = examples
        self.root = root_schema
        self.last_choice: LabelChoice | None = None

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            node: Any = self.root
            for part in ref[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            return self._resolve(node)
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                non_null = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
                merged = {k: v for k, v in schema.items() if k != key}
                merged.update(self._resolve(non_null[0] if non_null else options[0]))
                return merged
        return schema

    def value(self, schema: dict[str, Any], name: str = "") -> Any:
        schema = self._resolve(schema)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            options = list(schema["enum"])
            string_options = [o for o in options if isinstance(o, str)]
            if not string_options:
                return options[0]
            choice = choose_label(self.user_text, string_options, self.examples)
            self.last_choice = choice
            return choice.label
        if kind == "object" or (kind is None and "properties" in schema):
            props = schema.get("properties") or {}
            return {key: self.value(sub, key) for key, sub in props.items()}
        if kind == "array":
            items = self._resolve(schema.get("items") or {"type": "string"})
            limit = int(schema.get("maxItems", 10))
            if items.get("type") in ("string", None) and "enum" not in items:
                found = extract_entities(self.user_text, limit)
                minimum = int(schema.get("minItems", 0))
                while len(found) < minimum:
                    found.append(extract_sentence(self.user_text, 3) or "item")
                return found
            count = max(int(schema.get("minItems", 1)), 1)
            return [self.value(items, name) for _ in range(min(count, limit))]
        if kind == "number" or kind == "integer":
            return self._number(schema, name, kind == "integer")
        if kind == "boolean":
            name_terms = set(terms(name.replace("_", " "))) - {"is", "has"}
            return bool(name_terms & set(terms(self.user_text)))
        if kind == "null":
            return None
        return self._string(schema, name)

    def _number(self, schema: dict[str, Any], name: str, integer: bool) -> float | int:
        lowered = name.lower()
        low = schema.get("minimum", 0)
        high = schema.get("maximum")
        if any(word in lowered for word in _CONFIDENCE_NAMES):
            value = self.last_choice.confidence if self.last_choice else 0.5
            if high is not None:
                value = low + (high - low) * value
        elif "count" in lowered or lowered.startswith("num"):
            value = len(extract_entities(self.user_text))
        else:
            numbers = re.findall(r"\d+(?:\.\d+)?", self.user_text.replace(",", ""))
            value = float(numbers[0]) if numbers else low
            if high is not None:
                value = min(max(value, low), high) if high >= low else low
        return int(round(value)) if integer else value

    def _string(self, schema: dict[str, Any], name: str) -> str:
        lowered = name.lower()
        if lowered in ("language", "lang", "language_code"):
            text = "en"
        elif schema.get("format") == "date" or lowered.endswith("date"):
            dates = re.findall(r"\d{4}-\d{2}-\d{2}", self.user_text)
            text = dates[0] if dates else "1970-01-01"
        else:
            text = extract_sentence(self.user_text) or "No content."
        max_length = schema.get("maxLength")
        if isinstance(max_length, int):
            text = text[:max_length]
        return text


def answer_for(
    user_text: str, prompt_text: str, schema: dict[str, Any] | None
) -> tuple[Any, LabelChoice | None]:
    """The answer value (schema-shaped, or a plain-text string without schema) and the last label choice made."""
    examples = parse_examples(prompt_text)
    item_text = strip_example_lines(user_text) or user_text
    if schema is None:
        return extract_sentence(item_text) or "No content.", None
    writer = AnswerWriter(item_text, examples, schema)
    return writer.value(schema), writer.last_choice


def degrade(value: Any, schema: dict[str, Any]) -> Any:
    """A copy of `value` with every enum label replaced by a different label of the same enum."""
    return _replace_enums(value, schema, schema, lambda options, current: _other_label(options, current))


def violate_schema(value: Any, schema: dict[str, Any]) -> Any:
    """Valid JSON that breaks `schema`: a label outside its enum, else a missing required field."""
    if _has_enum(schema, schema):
        return _replace_enums(value, schema, schema, lambda options, current: "not_a_valid_label")
    if isinstance(value, dict) and value:
        broken = dict(value)
        broken.pop(next(iter(broken)))
        return broken
    return {"unexpected": value}


def _other_label(options: list[Any], current: Any) -> Any:
    others = [o for o in options if o != current]
    return others[0] if others else current


def _resolve_plain(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    return AnswerWriter("", [], root)._resolve(schema)


def _has_enum(schema: dict[str, Any], root: dict[str, Any]) -> bool:
    schema = _resolve_plain(schema, root)
    if "enum" in schema:
        return True
    if isinstance(schema.get("properties"), dict):
        return any(_has_enum(s, root) for s in schema["properties"].values())
    if isinstance(schema.get("items"), dict):
        return _has_enum(schema["items"], root)
    return False


def _replace_enums(value: Any, schema: dict[str, Any], root: dict[str, Any], replace: Any) -> Any:
    schema = _resolve_plain(schema, root)
    if "enum" in schema:
        return replace(list(schema["enum"]), value)
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        return {
            k: _replace_enums(v, schema["properties"][k], root, replace) if k in schema["properties"] else v
            for k, v in value.items()
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_replace_enums(v, schema["items"], root, replace) for v in value]
    return value


def render(value: Any) -> str:
    """The message content for an answer value: JSON for structured answers, the text itself otherwise."""
    return value if isinstance(value, str) else json.dumps(value)
