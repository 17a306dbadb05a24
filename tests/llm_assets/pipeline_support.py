"""Shared by the pipeline tests and their crash-test child process: a small dataset, and what a chunk recorded.

The pipeline itself is BANKING77's spec (tests/spec_pipelines.py `test_spec`, `spec_defs`, `run_chunk`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import dagster as dg

from llm_assets.layout import PipelineLayout

POISON = "[[poison]]"
WORDS = [
    "card", "arrived", "transfer", "pending", "refund", "exchange", "rate", "cash", "withdrawal", "pin",
    "blocked", "top", "up", "fee", "charged", "account", "verify", "identity", "currency", "payment",
]  # fmt: skip


def write_dataset(path: Path, n: int, poison_every: int = 0, invalid: bool = False) -> dict[str, list[str]]:
    """A CSV of n items (id,text,team); every `poison_every`-th text carries the poison marker.

    With `invalid`, two bad rows go in too: an empty text after item 10, and, after item 50 (so in a later
    chunk for chunks under 50), a row reusing item 0's id. Returns the ids by kind: `ok`, `poison`, `invalid`.
    """
    kinds: dict[str, list[str]] = {"ok": [], "poison": [], "invalid": []}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "team"])
        for i in range(n):
            words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 5))
            item_id = f"item-{i:04d}"
            if poison_every and i % poison_every == poison_every - 1:
                w.writerow([item_id, f"My {words} {POISON}", "red"])
                kinds["poison"].append(item_id)
            else:
                w.writerow([item_id, f"Why is my {words} not working, item {i}?", "red" if i % 2 else "blue"])
                kinds["ok"].append(item_id)
            if invalid and i == 10:
                w.writerow(["item-empty", "   ", "blue"])
                kinds["invalid"].append("item-empty")
            if invalid and i == 50:
                w.writerow([kinds["ok"][0], "a second row with an id already used", "blue"])
                kinds["invalid"].append(kinds["ok"][0])
    return kinds


def raw_meta(
    instance: dg.DagsterInstance, layout: PipelineLayout, asset: str, partition: str
) -> dict[str, dg.MetadataValue]:
    """The metadata entries (MetadataValue objects) of the latest materialization of the pipeline's `asset`
    (`items` or a stage name) for `partition`."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=layout.key(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{layout.key(asset).to_user_string()} {partition} was never materialized"
    return dict(records[0].asset_materialization.metadata)


def meta(instance: dg.DagsterInstance, layout: PipelineLayout, asset: str, partition: str) -> dict[str, Any]:
    """`raw_meta` as plain values."""
    return {k: v.value for k, v in raw_meta(instance, layout, asset, partition).items()}


def evaluation(
    result: dg.ExecuteInProcessResult, layout: PipelineLayout, asset: str, check: str
) -> dg.AssetCheckEvaluation:
    """The one evaluation of `check` on the pipeline's stage `asset` in a run."""
    found = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == layout.key(asset) and e.check_name == check
    ]
    assert len(found) == 1, f"expected one {asset}:{check} evaluation, got {len(found)}"
    return found[0]


def numbers(found: dg.AssetCheckEvaluation) -> dict[str, Any]:
    """A check evaluation's metadata as plain values."""
    return {k: v.value for k, v in found.metadata.items()}
