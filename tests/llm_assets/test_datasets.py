import hashlib
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_assets.datasets import (
    DatasetError,
    DatasetSpec,
    list_datasets,
    load_dataset,
    load_team_rules,
    manifest_path_for,
    read_chunk,
    register_dataset,
    team_for_label,
)
from llm_assets.partitions import chunk_key

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BANKING = PROJECT_ROOT / "data" / "banking77" / "test.csv"


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _all_rows(ds) -> pd.DataFrame:
    return pd.concat([read_chunk(ds, i) for i in range(ds.n_chunks)], ignore_index=True)


def _banking_spec(**overrides) -> DatasetSpec:
    kwargs = dict(
        uri=str(BANKING),
        name="banking77",
        column_map={"category": "label"},
        id_column=None,
        team_from_label=load_team_rules(BANKING.parent / "teams.json"),
    )
    kwargs.update(overrides)
    return DatasetSpec(**kwargs)


def test_shipped_banking77_registers_3080_items_in_13_chunks_with_derived_ids_and_teams(instance, tmp_path):
    ds = register_dataset(_banking_spec(), instance, tmp_path)

    sha = hashlib.sha256(BANKING.read_bytes()).hexdigest()
    assert ds.dataset_id == f"banking77-{sha[:8]}" and ds.content_sha256 == sha
    assert (ds.total_rows, ds.n_chunks, ds.chunk_size) == (3080, 13, 250)
    assert ds.partition_keys == [chunk_key(ds.dataset_id, i) for i in range(13)]
    assert list(instance.get_dynamic_partitions("chunks")) == ds.partition_keys
    assert ds.team_source == "label_rule"

    rows = _all_rows(ds)
    expected = pd.read_csv(BANKING, dtype=str, keep_default_na=False)
    assert rows["text"].tolist() == expected["text"].tolist()
    assert rows["label"].tolist() == expected["category"].tolist()
    assert rows["id"].tolist() == [f"r{i:07d}" for i in range(3080)]
    assert rows["_row_number"].tolist() == list(range(3080))
    assert rows["team"].notna().all() and set(rows["team"]) <= {"cards", "payments", "cash", "fx", "accounts"}
    assert len(read_chunk(ds, 12)) == 80
    assert rows["_read_error"].isna().all()


def test_every_banking77_category_maps_to_a_named_team() -> None:
    rules = load_team_rules(BANKING.parent / "teams.json")
    categories = json.loads((BANKING.parent / "categories.json").read_text())
    assert len(categories) == 77
    assert {c: team_for_label(c, rules) for c in categories if team_for_label(c, rules) == "general"} == {}
    assert team_for_label("card_arrival", rules) == "cards"
    assert team_for_label("cash_withdrawal_charge", rules) == "cash"  # longest prefix beats nothing else
    assert team_for_label("never_seen_label", rules) == "general"
    assert team_for_label(None, rules) is None


def test_registering_the_same_file_again_changes_nothing(instance, tmp_path):
    first = register_dataset(_banking_spec(), instance, tmp_path)
    manifest = manifest_path_for(tmp_path, first.dataset_id)
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns)

    again = register_dataset(_banking_spec(), instance, tmp_path)

    assert again == first
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == before
    assert list(instance.get_dynamic_partitions("chunks")) == first.partition_keys
    assert load_dataset(first.dataset_id, tmp_path) == first
    assert list_datasets(tmp_path) == [first.dataset_id]


def test_reregistering_with_another_chunk_size_is_refused(instance, tmp_path):
    register_dataset(_banking_spec(), instance, tmp_path)
    with pytest.raises(DatasetError, match=r"different chunk_size \(chunk_size=250\).*rename the file"):
        register_dataset(_banking_spec(chunk_size=100), instance, tmp_path)


def test_pruned_partitions_come_back_on_reregistration(instance, tmp_path):
    from llm_assets.partitions import prune_dataset_partitions

    ds = register_dataset(_banking_spec(), instance, tmp_path)
    assert prune_dataset_partitions(instance, ds.dataset_id) == 13
    assert list(instance.get_dynamic_partitions("chunks")) == []
    register_dataset(_banking_spec(), instance, tmp_path)
    assert list(instance.get_dynamic_partitions("chunks")) == ds.partition_keys


CSV_WITH_QUOTES = (
    "\ufeffid,text,team,extra\r\n"
    '1,"line one\r\nline two, with comma",ops,a\r\n'
    '2,"she said ""hi""",ops,b\r\n'
    "\r\n"  # blank line: not a row
    '3,"three\nlines\nhere",billing,c\r\n'
    "4,plain,,d\r\n"
    "5,too,many,fields,here\r\n"
    '6,"last, no newline at end",ops,f'
)


def test_csv_quoted_newlines_quotes_blank_lines_and_ragged_rows(instance, tmp_path):
    path = tmp_path / "tickets.csv"
    path.write_bytes(CSV_WITH_QUOTES.encode())
    ds = register_dataset(DatasetSpec(uri=str(path), chunk_size=2), instance, tmp_path)

    assert (ds.name, ds.total_rows, ds.n_chunks, ds.team_source) == ("tickets", 6, 3, "column")
    assert [len(read_chunk(ds, i)) for i in range(3)] == [2, 2, 2]
    rows = _all_rows(ds)
    assert rows["id"].tolist() == ["1", "2", "3", "4", "5", "6"]
    assert rows["text"].tolist() == [
        "line one\r\nline two, with comma",
        'she said "hi"',
        "three\nlines\nhere",
        "plain",
        "too",
        "last, no newline at end",
    ]
    assert rows["team"].tolist() == ["ops", "ops", "billing", "", "many", "ops"]  # raw: "" is kept as ""
    assert rows["extra"].tolist() == ["a", "b", "c", "d", "fields", "f"]
    assert rows["_read_error"].tolist()[4] == "row has 5 fields, the header has 4"
    assert rows["_read_error"].isna().sum() == 5
    assert rows["label"].isna().all()


def test_missing_text_column_names_columns_found_and_the_config_key(instance, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,body\n1,hello\n")
    with pytest.raises(
        DatasetError, match=r"no text column 'text' \(columns found: 'id', 'body'\).*`input.columns.text`"
    ):
        register_dataset(DatasetSpec(uri=str(path)), instance, tmp_path)
    ds = register_dataset(DatasetSpec(uri=str(path), column_map={"body": "text"}), instance, tmp_path)
    assert read_chunk(ds, 0)["text"].tolist() == ["hello"]


def test_missing_id_column_names_columns_found_and_the_config_key(instance, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(
        DatasetError, match=r"no id column 'id' \(columns found: 'text'\).*`input.columns.id`"
    ):
        register_dataset(DatasetSpec(uri=str(path)), instance, tmp_path)
    assert instance.get_dynamic_partitions("chunks") == []


def test_relative_local_path_is_stored_absolute(instance, tmp_path, monkeypatch):
    (tmp_path / "d.csv").write_text("id,text\n1,a\n")
    monkeypatch.chdir(tmp_path)
    ds = register_dataset(DatasetSpec(uri="d.csv"), instance, tmp_path / "home")
    assert ds.uri == str(tmp_path / "d.csv")
    monkeypatch.chdir(PROJECT_ROOT)
    assert read_chunk(load_dataset(ds.dataset_id, tmp_path / "home"), 0)["text"].tolist() == ["a"]


def test_custom_id_column_becomes_id(instance, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("ticket_id,text\nT-9,hello\n")
    ds = register_dataset(DatasetSpec(uri=str(path), id_column="ticket_id"), instance, tmp_path)
    assert read_chunk(ds, 0)[["id", "text"]].values.tolist() == [["T-9", "hello"]]


def test_jsonl_keeps_bad_lines_as_rows_with_a_read_error(instance, tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"id": 1, "text": "a", "label": "x", "meta": {"k": 1}}),
        "",
        json.dumps({"id": "2", "text": "b"}),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"id": 5, "text": None}),
    ]
    path.write_text("\n".join(lines) + "\n")
    ds = register_dataset(DatasetSpec(uri=str(path), chunk_size=4), instance, tmp_path)
    assert (ds.total_rows, ds.n_chunks, ds.format) == (5, 2, "jsonl")
    rows = _all_rows(ds)
    assert rows["id"].tolist() == ["1", "2", None, None, "5"]
    assert rows["text"].tolist() == ["a", "b", None, None, None]
    assert rows["meta"].tolist()[0] == {"k": 1}
    errors = rows["_read_error"].tolist()
    assert errors[0] is None and errors[1] is None and errors[4] is None
    assert errors[2].startswith("not valid JSON") and errors[3] == "expected a JSON object, got list"


def test_parquet_chunks_span_row_groups(instance, tmp_path):
    n = 1000
    table = pa.table(
        {"id": list(range(n)), "text": [f"t{i}" for i in range(n)], "score": [i / 2 for i in range(n)]}
    )
    path = tmp_path / "docs.parquet"
    pq.write_table(table, path, row_group_size=128)  # chunks of 300 straddle row groups
    ds = register_dataset(DatasetSpec(uri=str(path), chunk_size=300), instance, tmp_path)
    assert (ds.total_rows, ds.n_chunks, ds.format) == (1000, 4, "parquet")
    assert [(c.row_group, c.row_offset) for c in ds.chunks] == [(0, 0), (2, 44), (4, 88), (7, 4)]
    rows = _all_rows(ds)
    assert rows["id"].tolist() == [str(i) for i in range(n)]  # ids are strings
    assert rows["text"].tolist() == [f"t{i}" for i in range(n)]
    assert rows["score"].tolist() == [i / 2 for i in range(n)]
    assert ds.content_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_changed_after_registration_is_refused(instance, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,text\n1,a\n2,b\n")
    ds = register_dataset(DatasetSpec(uri=str(path)), instance, tmp_path)
    path.write_text("id,text\n1,a\n2,b\n3,c\n")
    with pytest.raises(DatasetError, match="changed since dataset .* was registered"):
        read_chunk(ds, 0)


def test_unknown_extension_and_out_of_range_chunk_are_clear_errors(instance, tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("id,text\n1,a\n")
    with pytest.raises(DatasetError, match=r"cannot tell the format.*\.csv"):
        register_dataset(DatasetSpec(uri=str(path)), instance, tmp_path)
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("id,text\n1,a\n")
    ds = register_dataset(DatasetSpec(uri=str(csv_path)), instance, tmp_path)
    with pytest.raises(DatasetError, match="has chunks 0..0, not 3"):
        read_chunk(ds, 3)


def test_load_unregistered_dataset_says_how_to_fix(tmp_path):
    with pytest.raises(DatasetError, match="not registered under .*register it first"):
        load_dataset("nope-00000000", tmp_path)


def test_dataset_id_is_a_slug_of_the_name_plus_content_hash(instance, tmp_path):
    path = tmp_path / "My Tickets (2024).csv"
    path.write_text("id,text\n1,a\n")
    ds = register_dataset(DatasetSpec(uri=str(path)), instance, tmp_path)
    assert ds.dataset_id == "my-tickets-2024-" + hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def test_non_utf8_csv_and_header_only_csv_are_clear_errors(instance, tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,text\n1,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8.*re-encode the file as UTF-8"):
        register_dataset(DatasetSpec(uri=str(latin)), instance, tmp_path)
    header_only = tmp_path / "empty.csv"
    header_only.write_text("id,text\n")
    with pytest.raises(DatasetError, match=r"empty\.csv has a header \(id,text\) but no data rows"):
        register_dataset(DatasetSpec(uri=str(header_only)), instance, tmp_path)
    assert instance.get_dynamic_partitions("chunks") == []
