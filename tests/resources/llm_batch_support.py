"""Helpers for the batch-mode resource tests (not a test module)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llm_support import SCHEMA, SHORT_SYSTEM

from resources.llm import BatchCollection, BatchJournal, BudgetScope, ItemResult, LLMRequest, LLMResource

FAST_BATCHES = {"batch": {"complete_after_s": 0.5}}


def journal_at(tmp_path: Path, partition: str = "p0") -> BatchJournal:
    return BatchJournal(tmp_path / "checkpoints" / "ds" / partition / "classify" / "batches.json")


def submit(resource: LLMResource, items: list[LLMRequest], journal: BatchJournal, round_: int = 1, **kw: Any):
    return resource.submit_batch(
        items,
        system_prompt=kw.pop("system_prompt", SHORT_SYSTEM),
        schema=kw.pop("schema", SCHEMA),
        schema_name="intent",
        scope=kw.pop("scope", BudgetScope("run-1", "ds")),
        stage="classify",
        journal=journal,
        round=round_,
        **kw,
    )


def wait_ended(resource: LLMResource, handles: list, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    for handle in handles:
        while not resource.poll_batch(handle).ended:
            assert time.monotonic() < deadline, f"batch {handle.batch_id} did not end"
            time.sleep(0.1)


def run_to_completion(
    resource: LLMResource, items: list[LLMRequest], journal: BatchJournal, max_rounds: int = 10, **kw: Any
) -> tuple[dict[str, ItemResult], list[BatchCollection]]:
    """What the pipeline does: submit, wait, collect, resubmit the rest, until nothing is left."""
    by_key = {r.key: r for r in items}
    finished: dict[str, ItemResult] = {}
    collections: list[BatchCollection] = []
    pending = list(items)
    for round_ in range(1, max_rounds + 1):
        handles = submit(resource, pending, journal, round_, **kw)
        wait_ended(resource, handles)
        resubmit: list[str] = []
        for handle in journal.pending:
            got = resource.collect_batch(handle, schema=kw.get("schema", SCHEMA))
            collections.append(got)
            finished.update({r.key: r for r in got.results})
            resubmit += got.to_resubmit
        if not resubmit:
            return finished, collections
        pending = [by_key[k] for k in resubmit]
    raise AssertionError(f"items left after {max_rounds} rounds")
