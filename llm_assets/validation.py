"""The `items` stage's rules: which rows of a chunk may reach an LLM, and how long they may be.

Bad rows never stop a chunk: each becomes a dead letter of class `invalid_input` (or `input_too_long` under the
`reject` length policy) and the rest go on. A dead letter keeps the row's original text, never a truncated one.

Ids are used exactly as `read_chunk` gives them (never trimmed): `" a "` and `"a"` are two items. An id that is
missing, empty or only whitespace makes the row `invalid_input`.

Length policy (`max_input_tokens`, estimated with the one token counter): `truncate` keeps the longest prefix
within the limit, cut at a word boundary when one lies in its second half, else by characters, so a long text
with no spaces (a URL, base64, CJK) is cut, never emptied; `reject` dead-letters the item as `input_too_long`.
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
    """A prefix of `text` within `max_tokens`: the longest one, cut back to the last whitespace when that keeps
    at least half of it (words stay whole), else cut by characters. Never empty when `text` has a non-space
    character and `max_tokens >= 1`.

    Binary search on the cut position: the token count of a prefix never decreases as the prefix grows."""
    # Probe with the uncached counter: every probe is a new string, and caching them would evict the
    # system prompt's count (and hold up to ~17 copies of a long text per item).
    count = getattr(count_tokens, "__wrapped__", count_tokens)
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    cut = text[:lo]
    if lo < len(text) and not text[lo].isspace():  # the cut falls inside a word
        boundary = max(cut.rfind(c) for c in (" ", "\n", "\t", "\r"))
        if boundary >= lo // 2 and cut[:boundary].strip():
            cut = cut[:boundary]
    return cut.rstrip()


def _row_problem(
    row: dict, item_id: str, row_number: int, chunk_index: int, duplicate_rows: dict[str, int], seen: set[str]
) -> tuple[str, str] | None:
    """The first rule the row breaks, as (error class, message), or None."""
    text = row.get("text")
    if not _is_missing(row.get("_read_error")) and row.get("_read_error"):
        return INVALID_INPUT, f"row {row_number} could not be read: {row['_read_error']}"
    if not item_id.strip():
        blank = f"a blank id ({item_id!r})" if item_id else "no id"
        return INVALID_INPUT, f"row {row_number} (chunk {chunk_index}) has {blank}"
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
    if max_input_tokens < 1:
        raise ValueError(
            f"max_input_tokens must be 1 or more, got {max_input_tokens}; fix `PipelineSettings.max_input_tokens`"
        )
    duplicate_rows = duplicate_rows or {}
    seen: set[str] = set()
    rejected: list[RejectedRow] = []
    kept: list[dict] = []
    truncated = 0
    for position, row in enumerate(chunk.to_dict(orient="records")):
        raw_id, text = row.get("id"), row.get("text")
        row_number = row.get("_row_number", position)
        item_id = "" if _is_missing(raw_id) else str(raw_id)
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
                    item_id=item_id if item_id.strip() else f"row{row_number}",
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
