from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from io_managers.chunk_parquet import ChunkParquetIOManager, resolve_base_uri
from io_managers.parquet_files import read_parquet

chunks = dg.DynamicPartitionsDefinition(name="chunks")
KEYS = ["ds-0123abcd__c00000", "ds-0123abcd__c00001"]


@dg.asset(partitions_def=chunks)
def upstream(context: dg.AssetExecutionContext) -> pd.DataFrame:
    n = 3 if context.partition_key.endswith("0") else 5
    return pd.DataFrame({"id": [f"{context.partition_key}-{i}" for i in range(n)], "value": list(range(n))})


@dg.asset(partitions_def=chunks)
def downstream(upstream: pd.DataFrame) -> pd.DataFrame:
    return upstream.assign(value=upstream["value"] * 10)


@dg.asset(partitions_def=chunks)
def not_a_frame() -> dict:
    return {"a": 1}


def _materialize(io_manager: ChunkParquetIOManager, instance, key: str, assets=None, selection=None):
    return dg.materialize(
        assets or [upstream, downstream],
        partition_key=key,
        instance=instance,
        resources={"io_manager": io_manager},
        selection=selection,
        raise_on_error=False,
    )


def _metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:
    [mat] = result.asset_materializations_for_node(node)
    return mat.metadata


def test_local_round_trip_one_file_per_partition_with_uri_and_row_count(tmp_path: Path) -> None:
    io_manager = ChunkParquetIOManager(base_uri=str(tmp_path))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("chunks", KEYS)
        for key in KEYS:
            assert _materialize(io_manager, instance, key).success
        result = _materialize(io_manager, instance, KEYS[1])  # again: overwrites, never duplicates
        assert result.success

    assert sorted(p.name for p in (tmp_path / "downstream").iterdir()) == [f"{k}.parquet" for k in KEYS]
    out = read_parquet(str(tmp_path / "downstream" / f"{KEYS[1]}.parquet"))
    assert out["id"].tolist() == [f"{KEYS[1]}-{i}" for i in range(5)]
    assert out["value"].tolist() == [0, 10, 20, 30, 40]

    meta = _metadata(result, "downstream")
    assert meta["uri"].value == str(tmp_path / "downstream" / f"{KEYS[1]}.parquet")
    assert meta["dagster/row_count"].value == len(read_parquet(meta["uri"].value)) == 5
    assert "row_count" not in meta  # one series: Dagster's own


def test_load_input_of_unmaterialized_upstream_partition_says_what_to_do(tmp_path: Path) -> None:
    io_manager = ChunkParquetIOManager(base_uri=str(tmp_path))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("chunks", KEYS)
        result = _materialize(io_manager, instance, KEYS[0], selection=[downstream])
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "has no stored output" in message and "materialize that partition first" in message


def test_non_dataframe_output_is_refused_with_the_asset_name(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("chunks", KEYS)
        result = _materialize(ChunkParquetIOManager(base_uri=str(tmp_path)), instance, KEYS[0], [not_a_frame])
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "not_a_frame returned dict" in str(failure.step_failure_data.error)
    assert not (tmp_path / "not_a_frame").exists()


def test_s3_round_trip_through_materialize_against_local_s3_api(s3_bucket) -> None:
    s3, bucket = s3_bucket
    io_manager = ChunkParquetIOManager(base_uri=f"s3://{bucket}/outputs", s3=s3)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("chunks", KEYS)
        result = _materialize(io_manager, instance, KEYS[0])
    assert result.success
    uri = f"s3://{bucket}/outputs/downstream/{KEYS[0]}.parquet"
    assert _metadata(result, "downstream")["uri"].value == uri
    assert read_parquet(uri, s3=s3)["value"].tolist() == [0, 10, 20]
    keys = [o["Key"] for o in s3.get_client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == [f"outputs/downstream/{KEYS[0]}.parquet", f"outputs/upstream/{KEYS[0]}.parquet"]


def test_s3_base_uri_without_s3_resource_fails_with_config_hint(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("chunks", KEYS)
        result = _materialize(ChunkParquetIOManager(base_uri="s3://bucket/x"), instance, KEYS[0], [upstream])
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "configure the `s3` resource" in str(failure.step_failure_data.error)


def test_default_base_uri_lives_under_chunkwise_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CHUNKWISE_HOME", str(tmp_path / "home"))
    assert resolve_base_uri(ChunkParquetIOManager().base_uri) == str(tmp_path / "home" / "outputs")
    monkeypatch.delenv("CHUNKWISE_HOME")
    assert resolve_base_uri("$CHUNKWISE_HOME/outputs").endswith(".chunkwise/outputs")


def test_repr_does_not_show_s3_credentials() -> None:
    from dagster_aws.s3 import S3Resource

    io_manager = ChunkParquetIOManager(
        base_uri="s3://b/p", s3=S3Resource(aws_access_key_id="AKIDSECRET", aws_secret_access_key="hunter2")
    )
    assert "hunter2" not in repr(io_manager) and "AKIDSECRET" not in repr(io_manager)


@pytest.mark.parametrize("key", ["2024-01-01|x", "a/b", "weird key"])
def test_any_partition_key_maps_to_one_safe_file_name(tmp_path: Path, key: str) -> None:
    uri = ChunkParquetIOManager(base_uri=str(tmp_path)).uri_for(dg.AssetKey(["a", "b"]), key)
    assert Path(uri).parent == tmp_path / "a" / "b"
    assert "/" not in Path(uri).name and " " not in Path(uri).name
