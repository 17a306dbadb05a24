"""The optional answer key: gold labels by sha256 of the item text, so each model can be given an accuracy.

With `answer_key: key.json` and `models.<name>.accuracy` in the config, an item found in the key gets its gold
label with probability `accuracy` and another label of the enum otherwise (see docs/simulator-answer-key.md).
Only the simulator reads the key; the product never sees it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_sim.answers import (
    Unsatisfiable,
    fit_number,
    is_confidence_name,
    resolve,
    scale_confidence,
    uniform_from_text,
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A keyed answer's confidence: uniform on this range when its label is right, on the other when wrong, so a low
# confidence flags the likely mistakes (docs/simulator-answer-key.md, "Confidence").
CONFIDENCE_WHEN_RIGHT = (0.25, 1.0)
CONFIDENCE_WHEN_WRONG = (0.0, 0.65)
BUILD_HINT = "build one with `python -m llm_sim answer-key FILE.csv --text-column text --label-column label -o key.json`"


class AnswerKeyError(ValueError):
    """The answer key file or the CSV it is built from is unusable; the message says which and why."""


def text_sha256(text: str) -> str:
    """The key's index: sha256 hex of the UTF-8 text, as the ledger's `user_sha256`."""
    return hashlib.sha256(text.encode()).hexdigest()


def candidate_texts(user_text: str) -> Iterator[str]:
    """The texts looked up, in order: the whole message as sent, each non-empty line stripped, then each line's
    part after its first ": " (a `Message: {text}` template)."""
    yield user_text
    lines = [line.strip() for line in user_text.splitlines()]
    yield from (line for line in lines if line)
    for line in lines:
        _prefix, colon, rest = line.partition(": ")
        if colon and rest.strip():
            yield rest.strip()


def label_field(schema: dict[str, Any], gold: str) -> tuple[str, list[str]] | None:
    """The top-level property whose enum holds `gold`, with that enum's strings; None if there is none."""
    try:
        root = resolve(schema, schema)
    except Unsatisfiable:
        return None
    properties = root.get("properties")
    if not isinstance(properties, dict):
        return None
    for name, sub in properties.items():
        try:
            node = resolve(sub, schema)
        except Unsatisfiable:
            continue
        options = node.get("enum")
        if isinstance(options, list) and gold in options:
            return name, [o for o in options if isinstance(o, str)]
    return None


def confidence_fields(schema: dict[str, Any]) -> dict[str, tuple[dict[str, Any], bool]]:
    """The top-level number properties named like a confidence (`is_confidence_name`): name -> (its resolved
    schema, whether it is an integer)."""
    try:
        properties = resolve(schema, schema).get("properties")
    except Unsatisfiable:
        return {}
    found: dict[str, tuple[dict[str, Any], bool]] = {}
    for name, sub in (properties if isinstance(properties, dict) else {}).items():
        if not is_confidence_name(name):
            continue
        try:
            node = resolve(sub, schema)
        except Unsatisfiable:
            continue
        kinds = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
        if "number" in kinds or "integer" in kinds:
            found[name] = (node, "number" not in kinds)
    return found


@dataclass(frozen=True)
class AnswerKey:
    path: Path
    gold: dict[str, str]  # sha256 hex of an item text -> its gold label

    @classmethod
    def load(cls, path: Path) -> AnswerKey:
        if not path.is_file():
            raise AnswerKeyError(
                f"answer_key: file {path} not found (a relative path is relative to the config file); {BUILD_HINT}"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnswerKeyError(f"answer_key: {path} is not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise AnswerKeyError(
                f"answer_key: {path} must be a JSON object mapping sha256 hex of an item text to its gold label"
            )
        gold: dict[str, str] = {}
        for digest, label in raw.items():
            if not _SHA256_HEX.fullmatch(digest.lower()):
                raise AnswerKeyError(
                    f"answer_key: {path} has the key {digest[:80]!r}, which is not a sha256 hex digest; "
                    f"keys are sha256 of the item text, not the text itself; {BUILD_HINT}"
                )
            if not isinstance(label, str):
                raise AnswerKeyError(
                    f"answer_key: {path}: the label of {digest} must be a string, got {label!r}"
                )
            gold[digest.lower()] = label
        return cls(path, gold)

    def lookup(self, user_text: str) -> tuple[str, str] | None:
        """(sha256 of the matching text, gold label) for the first of `candidate_texts` in the key, or None."""
        for text in candidate_texts(user_text):
            digest = text_sha256(text)
            if digest in self.gold:
                return digest, self.gold[digest]
        return None

    def label_answer(
        self, value: Any, schema: dict[str, Any], user_text: str, accuracy: float, draw: str
    ) -> Any:
        """`value` with its label field set from the key: the gold label with probability `accuracy`, else
        another label of the same enum; and each top-level confidence-like number beside it drawn from
        `CONFIDENCE_WHEN_RIGHT` or `CONFIDENCE_WHEN_WRONG`, scaled to the property's minimum..maximum. The draws
        are a function of `draw` (seed and model) and the text's hash, so the same item always gets the same
        answer from one model. Unchanged if the item is not in the key, the schema has no enum holding its gold
        label, or `value` is not an object."""
        found = self.lookup(user_text)
        if found is None or not isinstance(value, dict):
            return value
        digest, gold = found
        field = label_field(schema, gold)
        if field is None:
            return value
        name, labels = field
        wrong = [label for label in labels if label != gold]
        right = not wrong or uniform_from_text(digest, f"answer-key:{draw}:") < accuracy
        if right:
            label = gold
        else:
            label = wrong[int(uniform_from_text(digest, f"answer-key-wrong:{draw}:") * len(wrong))]
        low, high = CONFIDENCE_WHEN_RIGHT if right else CONFIDENCE_WHEN_WRONG
        share = low + (high - low) * uniform_from_text(digest, f"answer-key-confidence:{draw}:")
        confidences = {
            prop: fit_number(scale_confidence(round(share, 3), node), node, integer)
            for prop, (node, integer) in confidence_fields(schema).items()
            if prop in value and prop != name
        }
        return {**value, name: label, **confidences}


def key_from_csv(path: Path, text_column: str, label_column: str) -> dict[str, str]:
    """An answer key from a CSV file: sha256 of each row's text -> its label. The same text with two different
    labels is an error (one of them would be silently wrong)."""
    key: dict[str, str] = {}
    first_row: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (text_column, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise AnswerKeyError(f"{path} has no column {missing[0]!r}; its columns are {reader.fieldnames}")
        for row_number, row in enumerate(reader, start=1):
            digest, label = text_sha256(row[text_column]), row[label_column]
            if key.get(digest, label) != label:
                raise AnswerKeyError(
                    f"{path}: data row {row_number} labels the text of data row {first_row[digest]} "
                    f"{label!r}, not {key[digest]!r}; fix one of them"
                )
            key[digest] = label
            first_row.setdefault(digest, row_number)
    return key


def write_key(key: dict[str, str], path: Path) -> None:
    path.write_text(json.dumps(key, indent=1, sort_keys=True) + "\n", encoding="utf-8")
