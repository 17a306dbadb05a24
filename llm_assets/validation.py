"""The `items` stage's rules: which rows of a chunk may reach an LLM, and how long they may be.

Bad rows never stop a chunk: each becomes a dead letter of class `invalid_input` (or `input_too_long` under the
`reject` length policy) and the rest go on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

INVALID_INPUT = "invalid_input"
INPUT_TOO_LONG = "input_too_long"
KNOWN_COLUMNS = ("id", "text", "team", "label", "_row_number", "_read_error")


@dataclass(frozen=True)
class RejectedRow:
    item_id: str
    error_class: str
    error_message: str
    text: str
    row_json: str


@dataclass
class ValidatedChunk:
    valid: pd.DataFrame
    """Columns: item_id, text, team, gold_label, input_tokens, truncated, extra_json."""
    rejected: list[RejectedRow] = field(default_factory=list)
    truncated: int = 0


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row_json(row: dict) -> str:
    return json.dumps({k: (None if _is_missing(v) else v) for k, v in row.items()}, default=str)


def truncate_to_tokens(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest whitespace-bounded prefix of `text` within `max_tokens` (binary search on words)."""
    words = text.split(" ")
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def _row_problem(
    row: dict, item_id: str, row_number: int, chunk_index: int, duplicate_rows: dict[str, int], seen: set[str]
) -> tuple[str, str] | None:
    """The first rule the row breaks, as (error class, message), or None."""
    text = row.get("text")
    if not _is_missing(row.get("_read_error")) and row.get("_read_error"):
        return INVALID_INPUT, f"row {row_number} could not be read: {row['_read_error']}"
    if not item_id:
        return INVALID_INPUT, f"row {row_number} (chunk {chunk_index}) has no id"
    if str(row_number) in duplicate_rows:
        first = duplicate_rows[str(row_number)]
        return (
            INVALID_INPUT,
            f"id {item_id!r} at row {row_number} was already used at row {first}; kept the first",
        )
    if item_id in seen:
        return INVALID_INPUT, f"id {item_id!r} appears more than once in chunk {chunk_index}; kept the first"
    if not isinstance(text, str):
        return INVALID_INPUT, f"text of item {item_id!r} is {type(text).__name__}, not a string"
    if not text.strip():
        return INVALID_INPUT, f"text of item {item_id!r} is empty"
    return None


def validate_chunk(
    chunk: pd.DataFrame,
    *,
    chunk_index: int,
    max_input_tokens: int,
    length_policy: str,
    count_tokens: Callable[[str], int],
    duplicate_rows: dict[str, int] | None = None,
) -> ValidatedChunk:
    """Split a raw chunk (columns id, text, team, label, passthrough..., `_row_number`, `_read_error`, as
    `read_chunk` returns it) into valid rows and rejected rows.

    `duplicate_rows` (row number -> first row with that id, from registration) catches ids repeated across
    chunks; repeats inside the chunk are caught here too. The first occurrence is kept.
    """
    duplicate_rows = duplicate_rows or {}
    seen: set[str] = set()
    rejected: list[RejectedRow] = []
    kept: list[dict] = []
    truncated = 0
    for position, row in enumerate(chunk.to_dict(orient="records")):
        raw_id, text = row.get("id"), row.get("text")
        row_number = row.get("_row_number", position)
        item_id = "" if _is_missing(raw_id) else str(raw_id).strip()
        problem = _row_problem(row, item_id, row_number, chunk_index, duplicate_rows, seen)
        tokens = count_tokens(text) if problem is None else 0
        if problem is None and tokens > max_input_tokens and length_policy == "reject":
            problem = (
                INPUT_TOO_LONG,
                f"item {item_id!r} has ~{tokens} tokens, over max_input_tokens={max_input_tokens}",
            )
        if problem is not None:
            rejected.append(
                RejectedRow(
                    item_id=item_id or f"row{row_number}",
                    error_class=problem[0],
                    error_message=problem[1],
                    text=text if isinstance(text, str) else ("" if _is_missing(text) else str(text)),
                    row_json=_row_json(row),
                )
            )
            continue
        seen.add(item_id)
        was_truncated = tokens > max_input_tokens
        if was_truncated:
            text = truncate_to_tokens(text, max_input_tokens, count_tokens)
            tokens = count_tokens(text)
            truncated += 1
        extra = {k: v for k, v in row.items() if k not in KNOWN_COLUMNS}
        kept.append(
            {
                "item_id": item_id,
                "text": text,
                "team": None if _is_missing(row.get("team")) else str(row.get("team")),
                "gold_label": None if _is_missing(row.get("label")) else str(row.get("label")),
                "input_tokens": tokens,
                "truncated": was_truncated,
                "extra_json": _row_json(extra),
            }
        )
    columns = ["item_id", "text", "team", "gold_label", "input_tokens", "truncated", "extra_json"]
    return ValidatedChunk(valid=pd.DataFrame(kept, columns=columns), rejected=rejected, truncated=truncated)
