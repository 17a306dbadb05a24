"""The chunk partition key scheme and the partition bookkeeping of registered datasets."""

import dagster as dg
import pytest

from llm_assets.partitions import (
    CHUNK_PARTITIONS_NAME,
    MAX_CHUNKS_PER_DATASET,
    add_chunk_partitions,
    chunk_key,
    chunk_partitions,
    dataset_partition_keys,
    parse_chunk_key,
    prune_dataset_partitions,
)


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
        assert add_chunk_partitions(instance, a[:10]) == a[:10]
        assert add_chunk_partitions(instance, a) == a[10:]
        assert add_chunk_partitions(instance, a) == []
        add_chunk_partitions(instance, b)
        assert chunk_partitions.get_partition_keys(dynamic_partitions_store=instance) == a + b

        assert prune_dataset_partitions(instance, "b-00000002") == 3
        assert list(instance.get_dynamic_partitions(CHUNK_PARTITIONS_NAME)) == a
        assert prune_dataset_partitions(instance, "b-00000002") == 0
        # a prefix of another dataset id does not match it
        assert prune_dataset_partitions(instance, "a-0000000") == 0
        assert len(instance.get_dynamic_partitions(CHUNK_PARTITIONS_NAME)) == 1_500


def test_adding_past_the_live_partition_limit_is_refused_and_adds_nothing() -> None:
    from llm_assets.partitions import PartitionLimitExceeded

    with dg.instance_for_test() as instance:
        add_chunk_partitions(instance, dataset_partition_keys("a-00000001", 8), max_live=10)
        with pytest.raises(PartitionLimitExceeded, match=r"to 13, over the limit of 10; prune datasets"):
            add_chunk_partitions(instance, dataset_partition_keys("b-00000002", 5), max_live=10)
        assert len(instance.get_dynamic_partitions(CHUNK_PARTITIONS_NAME)) == 8
        # re-adding what exists never trips the limit
        assert add_chunk_partitions(instance, dataset_partition_keys("a-00000001", 8), max_live=8) == []


def test_pruning_keeps_materialization_history_and_readding_restores_the_keys() -> None:
    keys = dataset_partition_keys("a-00000001", 3)
    with dg.instance_for_test() as instance:
        add_chunk_partitions(instance, keys)
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="enriched", partition=keys[1]))
        prune_dataset_partitions(instance, "a-00000001")
        assert not instance.has_dynamic_partition(CHUNK_PARTITIONS_NAME, keys[1])
        assert add_chunk_partitions(instance, keys) == keys
        assert instance.get_materialized_partitions(dg.AssetKey("enriched")) == {keys[1]}
