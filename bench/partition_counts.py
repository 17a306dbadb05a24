"""How many dynamic partitions can one Dagster instance carry? Prints a markdown table (never pass/fail).

Measures, on a SQLite instance (``instance_for_test``, on disk in a temp dir), with N chunk partitions present in
the chunk partitions set of the BANKING77 pipeline spec (``banking77__chunks``, one per chunk of every dataset it
registered): add (batched, as ``register_dataset`` does), list all keys, one ``has_dynamic_partition`` lookup,
pruning one 800-chunk dataset, and the wall time of materializing one partition of a trivial asset partitioned
like the spec's stages (the fixed cost a run pays). Usage: ``python bench/partition_counts.py [N ...]`` (default
10000 50000 200000; ``1600`` is a quick check); ``python bench/partition_counts.py --status N M`` times the UI's
partition status cache with M of N materialized.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

from bench.banking77 import BANKING77_SPEC  # noqa: E402
from llm_assets.partitions import add_chunk_partitions, dataset_partition_keys, prune_dataset_partitions  # noqa: E402
from llm_assets.pipeline_assets import chunks_partitions_name  # noqa: E402
from llm_assets.spec import load_pipeline  # noqa: E402

CHUNKS_PER_DATASET = 800  # 200,000 items at the default chunk size of 250
# Loaded for its names only: nothing here calls a model, so no provider key is needed.
PARTITIONS_NAME = chunks_partitions_name(load_pipeline(BANKING77_SPEC, require_secrets=False))
chunk_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)


@dg.asset(partitions_def=chunk_partitions, io_manager_key="mem")
def probe(context) -> int:  # unannotated: `from __future__ import annotations` hides the type from dagster
    return len(context.partition_key)


def add(instance: dg.DagsterInstance, keys: list[str], max_live: int | None) -> list[str]:
    return add_chunk_partitions(instance, keys, max_live=max_live, partitions_name=PARTITIONS_NAME)


def _timed(fn, repeat: int = 1) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(total: int) -> dict[str, float]:
    n_datasets = total // CHUNKS_PER_DATASET
    datasets = [f"nightly-{d:04d}-{d:08x}" for d in range(n_datasets)]
    out: dict[str, float] = {"partitions": total}
    with dg.instance_for_test() as instance:
        start = time.perf_counter()
        for ds in datasets:
            add(instance, dataset_partition_keys(ds, CHUNKS_PER_DATASET), max_live=None)
        out["add_all_s"] = time.perf_counter() - start
        out["add_one_dataset_s"] = _timed(
            lambda: add(
                instance, dataset_partition_keys("extra-ffffffff", CHUNKS_PER_DATASET), max_live=10**9
            )
        )
        out["list_s"] = _timed(lambda: instance.get_dynamic_partitions(PARTITIONS_NAME), repeat=3)
        probe_key = dataset_partition_keys(datasets[-1], CHUNKS_PER_DATASET)[-1]
        out["has_ms"] = 1000 * _timed(lambda: instance.has_dynamic_partition(PARTITIONS_NAME, probe_key), 20)
        out["materialize_one_s"] = _timed(
            lambda: dg.materialize(
                [probe], partition_key=probe_key, instance=instance, resources={"mem": dg.InMemoryIOManager()}
            ),
            repeat=3,
        )
        out["prune_one_dataset_s"] = _timed(
            lambda: prune_dataset_partitions(instance, "extra-ffffffff", PARTITIONS_NAME)
        )
    return out


def measure_status_cache(total: int, materialized: int) -> dict[str, float]:
    """The UI's per-asset partition status (asset status cache) with ``materialized`` of ``total`` partitions
    materialized: a full build, and the incremental update after one more materialization."""
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    keys = [k for d in range(total // CHUNKS_PER_DATASET) for k in dataset_partition_keys(f"n-{d:08x}", 800)]
    asset_key = dg.AssetKey("probe")
    with dg.instance_for_test() as instance:
        add(instance, keys, max_live=None)
        start = time.perf_counter()
        for key in keys[:materialized]:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset_key, partition=key))
        events_per_s = materialized / (time.perf_counter() - start)
        start = time.perf_counter()
        value = get_and_update_asset_status_cache_value(instance, asset_key, chunk_partitions)
        build_s = time.perf_counter() - start
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset_key, partition=keys[-1]))
        update_s = _timed(
            lambda: get_and_update_asset_status_cache_value(instance, asset_key, chunk_partitions)
        )
    size = len(value.serialized_materialized_partition_subset or "") if value else 0
    return {"events_per_s": events_per_s, "build_s": build_s, "update_s": update_s, "cache_bytes": size}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--status"]:
        total, materialized = int(argv[1]), int(argv[2])
        r = measure_status_cache(total, materialized)
        print(
            f"status cache, {materialized:,} of {total:,} materialized: {r['events_per_s']:.0f} events/s stored, "
            f"build {r['build_s']:.3f} s, update after one more {r['update_s']:.3f} s, "
            f"serialized subset {r['cache_bytes']:,} bytes"
        )
        return
    sizes = [int(a) for a in argv] or [10_000, 50_000, 200_000]
    print(
        "| partitions | add all (s) | add one 800-chunk dataset (s) | list all (s) | has one (ms) "
        "| materialize one partition (s) | prune one 800-chunk dataset (s) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        r = measure(n)
        print(
            f"| {n:,} | {r['add_all_s']:.2f} | {r['add_one_dataset_s']:.3f} | {r['list_s']:.3f} | "
            f"{r['has_ms']:.2f} | {r['materialize_one_s']:.2f} | {r['prune_one_dataset_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
