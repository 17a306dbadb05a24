"""Dataset registration and chunk reads from s3:// against a real S3 API on localhost (moto's server mode)."""

import uuid
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster_aws.s3 import S3Resource
from moto.server import ThreadedMotoServer

from llm_assets.datasets import DatasetSpec, read_chunk, register_dataset

BANKING = Path(__file__).resolve().parents[2] / "data" / "banking77" / "test.csv"


@pytest.fixture(scope="module")
def s3_bucket():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Resource(
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        use_ssl=False,
    )
    bucket = f"chunkwise-data-{uuid.uuid4().hex[:8]}"
    s3.get_client().create_bucket(Bucket=bucket)
    yield s3, bucket
    server.stop()


def test_s3_csv_registers_like_the_local_file_and_reads_one_chunk_by_range(s3_bucket, tmp_path):
    s3, bucket = s3_bucket
    s3.get_client().put_object(Bucket=bucket, Key="in/banking77.csv", Body=BANKING.read_bytes())
    spec = dict(name="banking77", column_map={"category": "label"}, id_column=None)
    with dg.instance_for_test() as instance:
        remote = register_dataset(
            DatasetSpec(uri=f"s3://{bucket}/in/banking77.csv", **spec), instance, tmp_path / "a", s3=s3
        )
        local = register_dataset(DatasetSpec(uri=str(BANKING), **spec), instance, tmp_path / "b")
    assert remote.dataset_id == local.dataset_id and remote.chunks == local.chunks
    for i in (0, 7, 12):
        assert read_chunk(remote, i, s3=s3).equals(read_chunk(local, i))


def test_s3_parquet_registers_and_reads_chunks(s3_bucket, tmp_path):
    s3, bucket = s3_bucket
    path = tmp_path / "docs.parquet"
    n = 2_000
    pq.write_table(
        pa.table({"id": [f"d{i}" for i in range(n)], "text": ["x" * (i % 50) for i in range(n)]}),
        path,
        row_group_size=300,
    )
    s3.get_client().put_object(Bucket=bucket, Key="in/docs.parquet", Body=path.read_bytes())
    with dg.instance_for_test() as instance:
        ds = register_dataset(
            DatasetSpec(uri=f"s3://{bucket}/in/docs.parquet", chunk_size=250), instance, tmp_path, s3=s3
        )
    assert (ds.total_rows, ds.n_chunks) == (n, 8)
    last = read_chunk(ds, 7, s3=s3)
    assert last["id"].tolist() == [f"d{i}" for i in range(1750, 2000)]


def test_s3_jsonl_registers_and_reads(s3_bucket, tmp_path):
    s3, bucket = s3_bucket
    body = "".join(f'{{"id": {i}, "text": "t{i}"}}\n' for i in range(10)).encode()
    s3.get_client().put_object(Bucket=bucket, Key="in/e.jsonl", Body=body)
    with dg.instance_for_test() as instance:
        ds = register_dataset(
            DatasetSpec(uri=f"s3://{bucket}/in/e.jsonl", chunk_size=4), instance, tmp_path, s3=s3
        )
    assert [read_chunk(ds, i, s3=s3)["id"].tolist() for i in range(3)] == [
        ["0", "1", "2", "3"],
        ["4", "5", "6", "7"],
        ["8", "9"],
    ]
