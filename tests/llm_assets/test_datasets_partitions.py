"""The chunk partition key scheme and the partition bookkeeping of registered datasets."""

import dagster as dg
import pytest

from llm_assets.partitions import (
    MAX_CHUNKS_PER_DATASET,
    MAX_LIVE_CHUNK_PARTITIONS,
    PartitionLimitExceeded,
    add_chunk_partitions,
    chunk_key,
    dataset_partition_keys,
    parse_chunk_key,
    prune_dataset_partitions,
)

CHUNKS = "banking77__chunks"
"""BANKING77's chunk partitions (llm_assets/pipeline_assets.py `chunks_partitions_name`): one set per pipeline."""
chunk_partitions = dg.DynamicPartitionsDefinition(name=CHUNKS)


def test_keys_are_readable_and_parse_back() -> None:
    assert chunk_key("banking77-3f2a9c1d", 12) == "banking77-3f2a9c1d__c00012"
    assert parse_chunk_key("banking77-3f2a9c1d__c00012") == ("banking77-3f2a9c1d", 12)
    for i in (0, 1, 99, 12_345, MAX_CHUNKS_PER_DATASET - 1):
        assert parse_chunk_key(chunk_key("my-data-00aa11bb", i)) == ("my-data-00aa11bb", i)


def test_lexicographic_order_is_chunk_order() -> None:
    keys = dataset_partition_keys("ds-0123abcd", 1_200)
    assert sorted(keys) == keys
    assert sorted(reversed(keys)) == keys


@pytest.mark.parametrize(
    "bad", ["ds__c1", "ds-1__c000001", "DS__c00001", "ds__x00001", "ds-1", "", "ds_1__c00001"]
)
def test_parse_rejects_keys_that_are_not_chunk_keys(bad: str) -> None:
    with pytest.raises(ValueError, match="not a chunk partition key"):
        parse_chunk_key(bad)


def test_out_of_range_index_and_separator_in_id_are_refused() -> None:
    with pytest.raises(ValueError, match="larger chunk_size"):
        chunk_key("ds-1", MAX_CHUNKS_PER_DATASET)
    with pytest.raises(ValueError, match="must not contain"):
        chunk_key("ds__c-1", 0)


def test_add_only_missing_partitions_and_prune_one_dataset() -> None:
    a = dataset_partition_keys("a-00000001", 1_500)  # more than one add batch
    b = dataset_partition_keys("b-00000002", 3)
    with dg.instance_for_test() as instance:
        assert add_chunk_partitions(instance, a[:10], partitions_name=CHUNKS) == a[:10]
        assert add_chunk_partitions(instance, a, partitions_name=CHUNKS) == a[10:]
        assert add_chunk_partitions(instance, a, partitions_name=CHUNKS) == []
        add_chunk_partitions(instance, b, partitions_name=CHUNKS)
        assert chunk_partitions.get_partition_keys(dynamic_partitions_store=instance) == a + b

        assert prune_dataset_partitions(instance, "b-00000002", partitions_name=CHUNKS) == 3
        assert list(instance.get_dynamic_partitions(CHUNKS)) == a
        assert prune_dataset_partitions(instance, "b-00000002", partitions_name=CHUNKS) == 0
        # a prefix of another dataset id does not match it
        assert prune_dataset_partitions(instance, "a-0000000", partitions_name=CHUNKS) == 0
        assert len(instance.get_dynamic_partitions(CHUNKS)) == 1_500


def test_adding_past_the_live_partition_limit_is_refused_and_adds_nothing() -> None:
    with dg.instance_for_test() as instance:
        add_chunk_partitions(
            instance, dataset_partition_keys("a-00000001", 8), max_live=10, partitions_name=CHUNKS
        )
        with pytest.raises(PartitionLimitExceeded, match=r"to 13, over the limit of 10; prune datasets"):
            add_chunk_partitions(
                instance, dataset_partition_keys("b-00000002", 5), max_live=10, partitions_name=CHUNKS
            )
        assert len(instance.get_dynamic_partitions(CHUNKS)) == 8
        # re-adding what exists never trips the limit
        again = add_chunk_partitions(
            instance, dataset_partition_keys("a-00000001", 8), max_live=8, partitions_name=CHUNKS
        )
        assert again == []


def test_pruning_keeps_materialization_history_and_readding_restores_the_keys() -> None:
    keys = dataset_partition_keys("a-00000001", 3)
    with dg.instance_for_test() as instance:
        add_chunk_partitions(instance, keys, partitions_name=CHUNKS)
        enriched = dg.AssetKey(["banking77", "enriched"])
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=enriched, partition=keys[1]))
        prune_dataset_partitions(instance, "a-00000001", partitions_name=CHUNKS)
        assert not instance.has_dynamic_partition(CHUNKS, keys[1])
        assert add_chunk_partitions(instance, keys, partitions_name=CHUNKS) == keys
        assert instance.get_materialized_partitions(enriched) == {keys[1]}


def test_each_pipeline_adds_and_prunes_its_chunks_in_its_own_partitions_set() -> None:
    reviews = "reviews__chunks"
    a = dataset_partition_keys("a-00000001", 4)
    b = dataset_partition_keys("b-00000002", 3)
    with dg.instance_for_test() as instance:
        assert add_chunk_partitions(instance, a, partitions_name=CHUNKS) == a
        assert add_chunk_partitions(instance, b, partitions_name=reviews) == b
        assert add_chunk_partitions(instance, a, partitions_name=CHUNKS) == []
        assert list(instance.get_dynamic_partitions(CHUNKS)) == a
        assert list(instance.get_dynamic_partitions(reviews)) == b
        # The live-partition limit counts the pipeline's own set.
        with pytest.raises(PartitionLimitExceeded, match="over the limit of 5"):
            add_chunk_partitions(
                instance, dataset_partition_keys("c-00000003", 2), max_live=5, partitions_name=CHUNKS
            )
        assert len(instance.get_dynamic_partitions(CHUNKS)) == 4
        # Pruning a dataset from one pipeline's set leaves the other's alone, even under the same dataset id.
        add_chunk_partitions(instance, dataset_partition_keys("a-00000001", 2), partitions_name=reviews)
        assert prune_dataset_partitions(instance, "a-00000001", partitions_name=CHUNKS) == 4
        assert list(instance.get_dynamic_partitions(CHUNKS)) == []
        assert list(instance.get_dynamic_partitions(reviews)) == b + dataset_partition_keys("a-00000001", 2)


def test_registering_without_adding_writes_the_manifest_and_checks_the_limit_first(tmp_path) -> None:
    """The new-dataset sensor's registration run (sensors/registration.py) adds no partition: its sensor returns
    them to Dagster. It still refuses, before writing a manifest, a dataset that would pass the live limit."""
    from llm_assets.datasets import DatasetSpec, list_datasets, manifest_path_for, register_dataset

    data = tmp_path / "tickets.csv"
    data.write_text("id,text\n" + "".join(f"{i},message {i}\n" for i in range(5)))
    spec = DatasetSpec(uri=str(data), chunk_size=2)
    with dg.instance_for_test() as instance:
        ds = register_dataset(spec, instance, tmp_path / "home", partitions_name=CHUNKS, add_partitions=False)
        assert manifest_path_for(tmp_path / "home", ds.dataset_id).exists() and ds.n_chunks == 3
        assert list(instance.get_dynamic_partitions(CHUNKS)) == []
        again = register_dataset(
            spec, instance, tmp_path / "home", partitions_name=CHUNKS, add_partitions=False
        )
        assert again == ds and list(instance.get_dynamic_partitions(CHUNKS)) == []

        instance.add_dynamic_partitions(
            CHUNKS, dataset_partition_keys("full-00000001", MAX_LIVE_CHUNK_PARTITIONS - 2)
        )
        with pytest.raises(
            PartitionLimitExceeded, match=f"to {MAX_LIVE_CHUNK_PARTITIONS + 1}, over the limit"
        ):
            register_dataset(spec, instance, tmp_path / "other", partitions_name=CHUNKS, add_partitions=False)
        assert list_datasets(tmp_path / "other") == []
        assert len(instance.get_dynamic_partitions(CHUNKS)) == MAX_LIVE_CHUNK_PARTITIONS - 2
