"""Bad input gets one clear line, never a traceback: the demo names the file (and the line/row) and exits 2
before any partition is added or any request is sent. Plus the length policy on texts without spaces and ids
used exactly as given."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_assets.datasets import DatasetError, DatasetSpec, read_chunk, register_dataset
from llm_assets.validation import INPUT_TOO_LONG, INVALID_INPUT, truncate_to_tokens, validate_chunk
from resources.llm.tokens import count_tokens

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Nothing listens on port 9 (discard): no simulator is started and no request could succeed.
UNUSED_LLM_URL = "http://127.0.0.1:9/v1"


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _latin1_csv(path: Path, bad_row: int) -> None:
    rows = ["id,label,text"] + [f"{i},x,hello {i}" for i in range(1, 21)]
    rows[bad_row] = f"{bad_row},x,caf\u00e9 cr\u00e8me"  # rows[n] is data row n (1-based), file line n + 1
    path.write_bytes(("\n".join(rows) + "\n").encode("latin-1"))


# (case id, file name, how to write it or None for a missing file, extra args, what the one line must say)
BAD_FILES = [
    ("missing_file", "missing.csv", None, [], r"cannot read .*missing\.csv: no such file"),
    ("empty_file", "empty.csv", lambda p: p.write_bytes(b""), [], r"empty\.csv is empty \(0 bytes\)"),
    (
        "header_only",
        "header.csv",
        lambda p: p.write_text("id,text\n"),
        [],
        r"header\.csv has a header .* no data rows",
    ),
    (
        "no_text_column",
        "notext.csv",
        lambda p: p.write_text("id,body\n1,hi\n"),
        [],
        r"notext\.csv has no text column 'text' \(columns found: 'id', 'body'\); set `input\.columns\.text`",
    ),
    (
        "no_id_column",
        "noid.csv",
        lambda p: p.write_text("title,body\nhi,there\n"),
        ["--pipeline", "pipelines/reviews.yaml"],  # BANKING77's spec derives ids; this one names `review_id`
        r"noid\.csv has no id column 'review_id' \(columns found: 'title', 'body'\); .*`input\.columns\.id`",
    ),
    (
        "not_utf8",
        "latin.csv",
        lambda p: _latin1_csv(p, bad_row=17),
        [],
        r"latin\.csv: line 18 \(data row 17, column 'text'\) is not UTF-8 .*re-encode the file as UTF-8",
    ),
    (
        "jsonl_first_line_broken",
        "events.jsonl",
        lambda p: p.write_text('{"id": "1", "text": \n{"id": "2", "text": "b"}\n'),
        [],
        r"events\.jsonl: line 1 \(the first record\) is not valid JSON",
    ),
    (
        "not_parquet",
        "docs.parquet",
        lambda p: p.write_text("id,text\n1,hi\n"),
        [],
        r"docs\.parquet is not a Parquet file pyarrow can read",
    ),
]
BAD_CHUNK_SIZES = ["0", "-5", "abc"]


def _run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUNKWISE_", "DAGSTER_"))}
    env.update(
        CHUNKWISE_HOME=str(tmp_path / "home"),
        CHUNKWISE_LLM_BASE_URL=UNUSED_LLM_URL,
        CHUNKWISE_LLM_API_KEY="sk-unused",
        CHUNKWISE_ANTHROPIC_BASE_URL=UNUSED_LLM_URL,
        CHUNKWISE_ANTHROPIC_API_KEY="sk-unused",
    )
    return subprocess.run(
        [sys.executable, "-m", "scripts.demo", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], pattern: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chunkwise: ")
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("name", "write", "args", "pattern"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_gives_one_line_naming_it_and_exit_2_before_any_partition(
    tmp_path, name, write, args, pattern
):
    path = tmp_path / name
    if write is not None:
        write(path)
    result = _run_demo(tmp_path, "--data", str(path), *args)
    line = _assert_one_line(result, pattern)
    assert str(path) in line
    home = tmp_path / "home"
    assert not (home / "datasets").exists()  # no manifest
    with dg.DagsterInstance.from_config(str(home / "dagster")) as inst:
        for pipeline in ("banking77", "reviews"):
            assert inst.get_dynamic_partitions(f"{pipeline}__chunks") == []
        assert inst.get_runs() == []


@pytest.mark.parametrize("size", BAD_CHUNK_SIZES)
def test_bad_chunk_size_gives_one_line_with_the_allowed_range(tmp_path, size):
    result = _run_demo(tmp_path, "--chunk-size", size)
    _assert_one_line(result, rf"--chunk-size: must be a whole number of rows, 1 or more .*got '{size}'")


# ---------------------------------------------------------------- registration messages (in process)


def test_non_utf8_inside_a_multiline_record_names_the_line_and_the_row(instance, tmp_path):
    path = tmp_path / "multi.csv"
    path.write_bytes(b'id,text\n1,ok\n2,"first line\nsecond caf\xe9"\n')
    with pytest.raises(DatasetError, match=r"multi\.csv: line 4 \(data row 2\) is not UTF-8 \(byte 0xe9"):
        register_dataset(DatasetSpec(uri=str(path)), instance, tmp_path)


def test_non_utf8_jsonl_line_is_a_registration_error_naming_the_line(instance, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id": "1", "text": "a"}\n\n{"id": "2", "text": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"events\.jsonl: line 3 is not UTF-8"):
        register_dataset(DatasetSpec(uri=str(path)), instance, tmp_path)
    assert instance.get_dynamic_partitions("chunks") == []


def test_missing_relative_path_says_where_it_looked(instance, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DatasetError, match=r"cannot read data/x\.csv: no such file \(looked for .*data/x\.csv\)"
    ):
        register_dataset(DatasetSpec(uri="data/x.csv"), instance, tmp_path)


@pytest.mark.parametrize("size", [0, -5, 2.5, "250", True])
def test_register_refuses_a_chunk_size_that_is_not_a_whole_number_of_one_or_more(instance, tmp_path, size):
    path = tmp_path / "d.csv"
    path.write_text("id,text\n1,a\n")
    with pytest.raises(DatasetError, match=r"d\.csv: chunk_size must be a whole number of rows, 1 or more"):
        register_dataset(DatasetSpec(uri=str(path), chunk_size=size), instance, tmp_path)


def test_missing_s3_object_is_one_line_without_the_request(instance, tmp_path):
    from dagster_aws.s3 import S3Resource
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Resource(
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        bucket = f"chunkwise-{uuid.uuid4().hex[:8]}"
        s3.get_client().create_bucket(Bucket=bucket)
        with pytest.raises(DatasetError) as caught:
            register_dataset(DatasetSpec(uri=f"s3://{bucket}/in/nope.csv"), instance, tmp_path, s3=s3)
    finally:
        server.stop()
    assert str(caught.value) == (
        f"cannot read s3://{bucket}/in/nope.csv: no such object in S3; check the bucket and key and run again"
    )


# ---------------------------------------------------------------- length policy


def _validate(rows: list[dict], **kw):
    for n, row in enumerate(rows):
        row.setdefault("_row_number", n)
        row.setdefault("_read_error", None)
    args = {
        "chunk_index": 0,
        "max_input_tokens": 20,
        "length_policy": "truncate",
        "count_tokens": count_tokens,
    }
    return validate_chunk(pd.DataFrame(rows), **{**args, **kw})


@pytest.mark.parametrize(
    "text",
    [
        "x" * 100_000,  # a long text with no spaces (a URL, base64)
        "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0" * 20_000,  # CJK: no spaces either
        "see " + "y" * 100_000,  # one short word, then a blob: not cut back to "see"
        "\n".join(["z" * 50] * 2_000),  # newlines, no spaces
    ],
    ids=["ascii_no_spaces", "cjk", "word_then_blob", "newlines"],
)
def test_long_text_without_spaces_is_truncated_by_characters_never_to_empty(text):
    checked = _validate([{"id": "t", "text": text}], max_input_tokens=512)
    kept = checked.valid["text"].iloc[0]
    assert checked.truncated == 1 and bool(checked.valid["truncated"].iloc[0])
    assert kept and text.startswith(kept)
    assert count_tokens(kept) == checked.valid["input_tokens"].iloc[0] <= 512
    assert count_tokens(kept) >= 500  # cut by characters: nearly the whole budget is used, not "" or "see"


def test_truncation_keeps_words_whole_when_it_can():
    text = " ".join(f"word{i}" for i in range(200))
    kept = truncate_to_tokens(text, 20, count_tokens)
    assert text.startswith(kept) and count_tokens(kept) <= 20
    assert text[len(kept)] == " "  # cut at a word boundary


def test_truncation_is_never_empty_with_a_budget_of_one_token():
    assert truncate_to_tokens("   " + "x" * 1000, 1, count_tokens).strip() == "xxxx"


def test_reject_policy_dead_letter_keeps_the_original_text():
    text = "q" * 100_000
    checked = _validate([{"id": "long", "text": text}], max_input_tokens=512, length_policy="reject")
    assert checked.valid.empty
    (row,) = checked.rejected
    assert (row.item_id, row.error_class, row.text) == ("long", INPUT_TOO_LONG, text)
    assert json.loads(row.row_json)["text"] == text


def test_a_max_input_tokens_below_one_is_refused():
    with pytest.raises(ValueError, match="max_input_tokens must be 1 or more, got 0"):
        _validate([{"id": "a", "text": "hi"}], max_input_tokens=0)


# ---------------------------------------------------------------- ids exactly as given


def test_csv_ids_are_used_exactly_as_given(instance, tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text('id,text\n007,a\n" a ",b\na,c\n1e3,d\nNaN,e\n00123,f\n,g\n"  ",h\n007,i\n')
    ds = register_dataset(DatasetSpec(uri=str(path)), instance, tmp_path)
    raw = read_chunk(ds, 0)
    assert raw["id"].tolist() == ["007", " a ", "a", "1e3", "NaN", "00123", "", "  ", "007"]
    assert ds.duplicate_rows == {"8": 0} and ds.ids_not_text == 0  # " a " and "a" are two ids
    checked = validate_chunk(
        raw,
        chunk_index=0,
        max_input_tokens=100,
        length_policy="truncate",
        count_tokens=count_tokens,
        duplicate_rows=ds.duplicate_rows,
    )
    assert checked.valid["item_id"].tolist() == ["007", " a ", "a", "1e3", "NaN", "00123"]
    assert [(r.item_id, r.error_class) for r in checked.rejected] == [
        ("row6", INVALID_INPUT),
        ("row7", INVALID_INPUT),
        ("007", INVALID_INPUT),
    ]
    assert "has no id" in checked.rejected[0].error_message
    assert "has a blank id ('  ')" in checked.rejected[1].error_message


def test_jsonl_and_parquet_number_ids_become_text_by_the_stated_rule_and_are_counted(instance, tmp_path):
    jsonl = tmp_path / "ids.jsonl"
    jsonl.write_text(
        "\n".join(
            [
                '{"id": 7, "text": "a"}',
                '{"id": 1e3, "text": "b"}',
                '{"id": NaN, "text": "c"}',
                '{"id": "007", "text": "d"}',
            ]
        )
        + "\n"
    )
    ds = register_dataset(DatasetSpec(uri=str(jsonl)), instance, tmp_path)
    assert read_chunk(ds, 0)["id"].tolist() == ["7", "1000.0", None, "007"]
    assert ds.ids_not_text == 2  # NaN is a missing id (dead-lettered), not the id "nan"
    parquet = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": ["007", " a ", "1e3"], "text": ["x", "y", "z"]}), parquet)
    ds = register_dataset(DatasetSpec(uri=str(parquet)), instance, tmp_path)
    assert read_chunk(ds, 0)["id"].tolist() == ["007", " a ", "1e3"] and ds.ids_not_text == 0
