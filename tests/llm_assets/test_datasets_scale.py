"""Registration streams: a file much larger than a chunk set is registered and read in bounded memory."""

import random
import tracemalloc
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_assets.datasets import DatasetSpec, read_chunk, register_dataset

ROWS = 200_000


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "tickets.csv"
    rng = random.Random(7)
    words = ["refund", "card", "late", "transfer", "pin", "blocked", "why", "please", "help", "account"]
    with path.open("w", newline="") as f:
        f.write("id,text,label\n")
        for i in range(ROWS):
            text = " ".join(rng.choice(words) for _ in range(25))
            if i % 1000 == 0:  # some quoted multi-line fields, as real exports have
                text = f'"{text}\nsecond line, with ""quotes"""'
            f.write(f"t{i},{text},l{i % 77}\n")
    return path


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_200k_row_csv_registers_and_reads_a_chunk_in_bounded_memory(big_csv: Path, tmp_path: Path) -> None:
    size = big_csv.stat().st_size
    assert size > 30_000_000
    with dg.instance_for_test() as instance:
        ds, register_peak = _peak_bytes(
            lambda: register_dataset(DatasetSpec(uri=str(big_csv)), instance, tmp_path)
        )
        assert len(instance.get_dynamic_partitions("chunks")) == 800
    assert (ds.total_rows, ds.n_chunks) == (ROWS, 800)
    # streaming: the peak is the read buffer plus per-chunk locators, not the file
    assert register_peak < size / 10, (register_peak, size)

    last, read_peak = _peak_bytes(lambda: read_chunk(ds, 799))
    assert last["id"].tolist() == [f"t{i}" for i in range(199_750, 200_000)]
    assert read_peak < size / 100, (read_peak, size)
    quoted = read_chunk(ds, 4)  # rows 1000..1249: row 1000 holds a quoted newline
    assert quoted["text"].iloc[0].endswith('\nsecond line, with "quotes"')
    assert quoted["label"].iloc[0] == "l" + str(1000 % 77)


def test_200k_row_parquet_registers_from_the_footer_and_reads_one_chunk(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    writer = None
    for start in range(0, ROWS, 50_000):
        batch = pa.table(
            {"id": [f"d{i}" for i in range(start, start + 50_000)], "text": ["lorem ipsum " * 8] * 50_000}
        )
        writer = writer or pq.ParquetWriter(path, batch.schema)
        writer.write_table(batch, row_group_size=50_000)
    writer.close()
    with dg.instance_for_test() as instance:
        ds, register_peak = _peak_bytes(
            lambda: register_dataset(DatasetSpec(uri=str(path)), instance, tmp_path)
        )
    assert (ds.total_rows, ds.n_chunks) == (ROWS, 800)
    chunk, read_peak = _peak_bytes(lambda: read_chunk(ds, 401))
    assert chunk["id"].tolist() == [f"d{i}" for i in range(100_250, 100_500)]
    assert register_peak < 4_000_000, register_peak
    assert read_peak < 16_000_000, read_peak  # at most one row group's column pages + one batch
