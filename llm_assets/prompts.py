"""The two stage prompts, their output schemas, and the prompt version that goes into every idempotency key.

The shared instructions (taxonomy, few-shot examples) form the system prompt, byte-identical for every item,
so the provider's prompt cache serves it after the first request; only the item text varies.
Few-shot lines have the form `<text> => <label>`, one per line.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

CLASSIFY_SCHEMA_NAME = "classification"
ENRICH_SCHEMA_NAME = "enrichment"


@dataclass(frozen=True)
class StagePrompt:
    """A stage's fixed instructions and output schema; `version` hashes both."""

    stage: str
    system_prompt: str
    schema: dict
    schema_name: str

    @functools.cached_property
    def version(self) -> str:
        """Read per item by the stages: hashed once (the classify prompt is ~15 KB)."""
        body = json.dumps([self.system_prompt, self.schema], sort_keys=True).encode()
        return f"{self.stage}-{hashlib.sha256(body).hexdigest()[:10]}"


def load_taxonomy(path: str | Path) -> list[str]:
    labels = json.loads(Path(path).read_text())
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"taxonomy file {path} must hold a non-empty JSON list of label strings")
    if len(set(labels)) != len(labels):
        raise ValueError(f"taxonomy file {path} repeats a label; each label must appear once")
    return labels


def load_few_shot(path: str | Path, taxonomy: list[str]) -> list[tuple[str, str]]:
    """`text,label` rows; every label must be in the taxonomy (a typo would teach the model a wrong label)."""
    if not path:
        return []
    allowed = set(taxonomy)
    examples: list[tuple[str, str]] = []
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.DictReader(f), start=2):
            if row.get("label") not in allowed:
                raise ValueError(
                    f"few-shot file {path} line {line_no}: label {row.get('label')!r} is not in the taxonomy"
                )
            examples.append((" ".join(row["text"].split()), row["label"]))
    return examples


def classify_prompt(taxonomy: list[str], examples: list[tuple[str, str]]) -> StagePrompt:
    lines = [
        "You classify customer messages for a bank's support team.",
        "Answer with the single intent label from the list below that fits the message best,",
        "and your confidence between 0 and 1. Answer only with JSON matching the schema.",
        "",
        "Intent labels:",
        *(f"- {label}" for label in taxonomy),
    ]
    if examples:
        lines += ["", "Examples (message => label):", *(f"{text} => {label}" for text, label in examples)]
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(taxonomy)},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["label", "confidence"],
        "additionalProperties": False,
    }
    return StagePrompt("classified", "\n".join(lines), schema, CLASSIFY_SCHEMA_NAME)


def enrich_prompt() -> StagePrompt:
    lines = [
        "You enrich customer messages for a bank's support team.",
        "Write a one-sentence summary of what the customer needs, list the entities the message names",
        "(products, amounts, currencies, dates, merchants), and rate its urgency.",
        "Answer only with JSON matching the schema.",
    ]
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
    return StagePrompt("enriched", "\n".join(lines), schema, ENRICH_SCHEMA_NAME)
