"""Shared by the pipeline tests and their crash-test child process: a small dataset and a wired pipeline."""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg

from llm_assets.builtin import build_defs, stage_assets
from llm_assets.datasets import DatasetSpec, RegisteredDataset, register_dataset
from sensors.chunk_runs import chunk_run_request

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


def register(path: Path, instance: dg.DagsterInstance, home: Path, chunk_size: int) -> RegisteredDataset:
    return register_dataset(DatasetSpec(uri=str(path), name="tiny", chunk_size=chunk_size), instance, home)


def pipeline_defs(base_url: str, api_key: str, home: Path, **kw) -> dg.Definitions:
    return build_defs(base_url=base_url, api_key=api_key, home=home, **kw)


def materialize_partition(
    defs: dg.Definitions, instance: dg.DagsterInstance, key: str, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    """One chunk through the `chunk_pipeline` job (stages and their checks), tagged as the sensors tag it."""
    tags = chunk_run_request(key, attempt=1, provider="openai", launched_by="test").tags
    return defs.resolve_job_def("chunk_pipeline").execute_in_process(
        instance=instance, partition_key=key, raise_on_error=raise_on_error, tags=tags
    )


__all__ = ["stage_assets", "write_dataset", "register", "pipeline_defs", "materialize_partition", "POISON"]
