"""The items stage's row rules: bad rows become dead letters, good rows go on, the length policy applies."""

import pandas as pd

from llm_assets.validation import INPUT_TOO_LONG, INVALID_INPUT, validate_chunk
from resources.llm.tokens import count_tokens


def _chunk(rows: list[dict]) -> pd.DataFrame:
    for n, row in enumerate(rows):
        row.setdefault("_row_number", 100 + n)
        row.setdefault("_read_error", None)
    return pd.DataFrame(rows)


def _run(rows: list[dict], **kw):
    args = {
        "chunk_index": 0,
        "max_input_tokens": 20,
        "length_policy": "truncate",
        "count_tokens": count_tokens,
    }
    return validate_chunk(_chunk(rows), **{**args, **kw})


def test_bad_rows_become_invalid_input_and_good_rows_go_on():
    checked = _run(
        [
            {"id": "a", "text": "my card is lost"},
            {"id": None, "text": "no id here"},
            {"id": "a", "text": "same id again"},
            {"id": "b", "text": "   "},
            {"id": "c", "text": 42},
            {"id": "d", "text": "a row the reader could not parse", "_read_error": "3 fields, expected 2"},
            {"id": "e", "text": "fine too"},
        ]
    )
    assert checked.valid["item_id"].tolist() == ["a", "e"]
    assert [(r.item_id, r.error_class) for r in checked.rejected] == [
        ("row101", INVALID_INPUT),
        ("a", INVALID_INPUT),
        ("b", INVALID_INPUT),
        ("c", INVALID_INPUT),
        ("d", INVALID_INPUT),
    ]
    assert "3 fields" in checked.rejected[-1].error_message


def test_an_id_first_seen_in_an_earlier_chunk_is_rejected_with_where_it_was():
    checked = _run([{"id": "x", "text": "hello", "_row_number": 900}], duplicate_rows={"900": 12})
    assert checked.valid.empty
    assert "row 12" in checked.rejected[0].error_message


def test_length_policy_truncates_or_rejects_before_any_call():
    long_text = " ".join(f"word{i}" for i in range(60))
    truncated = _run([{"id": "t", "text": long_text}])
    assert truncated.truncated == 1 and bool(truncated.valid["truncated"].iloc[0])
    assert count_tokens(truncated.valid["text"].iloc[0]) <= 20 < count_tokens(long_text)
    rejected = _run([{"id": "t", "text": long_text}], length_policy="reject")
    assert rejected.valid.empty and rejected.rejected[0].error_class == INPUT_TOO_LONG


def test_passthrough_columns_are_kept_as_json():
    checked = _run([{"id": "a", "text": "hi", "label": "card_arrival", "team": "cards", "channel": "email"}])
    row = checked.valid.iloc[0]
    assert row["gold_label"] == "card_arrival" and row["team"] == "cards"
    assert '"channel": "email"' in row["extra_json"] and "_row_number" not in row["extra_json"]
