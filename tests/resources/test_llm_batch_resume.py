"""Crash-resume of batch submission: a crash between upload and batch creation, or between creation and the
journal record, never submits an item twice (checked on the simulator's ledger)."""

from __future__ import annotations

import collections
import time

import pytest
from llm_batch_support import FAST_BATCHES, journal_at, submit, wait_ended
from llm_support import SCHEMA, make_resource, texts

from resources.llm import BatchJournal, ChunkRetryableError, LLMRequest
from resources.llm.batch import batch_custom_id


class Crash(Exception):
    pass


def _crash_at(step: str):
    def hook(at: str, handle) -> None:
        if at == step:
            raise Crash(step)

    return hook


def _items(n: int) -> list[LLMRequest]:
    return [LLMRequest(f"ds|item-{i}|classify|v1|m", t) for i, t in enumerate(texts(n))]


def _lines_per_custom_id(sim) -> collections.Counter:
    return collections.Counter(r["custom_id"] for r in sim.requests() if r["endpoint"] == "batch_line")


def _resume_and_finish(resource, items, tmp_path, sim):
    journal = BatchJournal(journal_at(tmp_path).path)  # a fresh process reads the file
    resource._batch_step_hook = None
    handles = submit(resource, items, journal)
    assert len(handles) == 1 and handles[0].status == "submitted"
    wait_ended(resource, handles)
    got = resource.collect_batch(journal.pending[0], schema=SCHEMA)
    assert len(got.results) == len(items) and all(r.ok for r in got.results)
    ours = {batch_custom_id(resource.provider, i.key) for i in items}
    counts = {c: n for c, n in _lines_per_custom_id(sim).items() if c in ours}
    assert len(counts) == len(items) and set(counts.values()) == {1}, "every item ran exactly once"
    return handles[0]


@pytest.mark.parametrize("step", ["uploaded", "before_create"])
def test_openai_crash_between_upload_and_batch_creation_creates_one_batch_on_resume(
    start_sim, tmp_path, step
):
    sim = start_sim(FAST_BATCHES)
    resource = make_resource(sim, state_dir=str(tmp_path))
    items = _items(12)
    resource._batch_step_hook = _crash_at(step)
    with pytest.raises(Crash):
        submit(resource, items, journal_at(tmp_path))
    recorded = BatchJournal(journal_at(tmp_path).path).handles[0]
    assert recorded.status == "submitting" and recorded.batch_id is None
    assert (recorded.input_file_id is not None) == (step == "before_create")
    handle = _resume_and_finish(resource, items, tmp_path, sim)
    if step == "before_create":
        assert handle.input_file_id == recorded.input_file_id, "created from the recorded file"
    assert sim.stats()["batches"]["created"] == 1


def test_openai_crash_between_creation_and_record_finds_the_batch_by_metadata(start_sim, tmp_path):
    sim = start_sim(FAST_BATCHES)
    resource = make_resource(sim, state_dir=str(tmp_path))
    items = _items(12)
    resource._batch_step_hook = _crash_at("created")
    with pytest.raises(Crash):
        submit(resource, items, journal_at(tmp_path))
    assert BatchJournal(journal_at(tmp_path).path).handles[0].batch_id is None
    assert sim.stats()["batches"]["created"] == 1
    _resume_and_finish(resource, items, tmp_path, sim)
    assert sim.stats()["batches"]["created"] == 1


def test_anthropic_crash_after_creation_waits_for_proof_then_adopts_the_batch(start_sim, tmp_path):
    sim = start_sim({"batch": {"complete_after_s": 1.5}})
    resource = make_resource(sim, "anthropic", state_dir=str(tmp_path))
    items = _items(12)
    # A same-sized batch of another chunk created in the same window must not be mistaken for ours.
    other = make_resource(sim, "anthropic", state_dir=str(tmp_path))
    resource._batch_step_hook = _crash_at("created")
    with pytest.raises(Crash):
        submit(resource, items, journal_at(tmp_path))
    other_items = [LLMRequest(f"other|{i}", t) for i, t in enumerate(texts(12, seed=3))]
    submit(other, other_items, journal_at(tmp_path, "p1"))
    assert sim.stats()["batches"]["created"] == 2
    resource._batch_step_hook = None
    with pytest.raises(ChunkRetryableError, match="may be it"):
        submit(resource, items, BatchJournal(journal_at(tmp_path).path))
    time.sleep(2.0)  # both batches end: their results prove which one is ours
    _resume_and_finish(resource, items, tmp_path, sim)
    assert sim.stats()["batches"]["created"] == 2


def test_anthropic_crash_before_creation_creates_the_batch_on_resume(start_sim, tmp_path):
    sim = start_sim(FAST_BATCHES)
    resource = make_resource(sim, "anthropic", state_dir=str(tmp_path))
    items = _items(8)
    resource._batch_step_hook = _crash_at("before_create")
    with pytest.raises(Crash):
        submit(resource, items, journal_at(tmp_path))
    assert sim.stats()["batches"]["created"] == 0
    _resume_and_finish(resource, items, tmp_path, sim)
    assert sim.stats()["batches"]["created"] == 1


def test_submitting_the_same_round_again_sends_nothing_new(start_sim, tmp_path):
    sim = start_sim(FAST_BATCHES)
    resource = make_resource(sim, state_dir=str(tmp_path))
    items = _items(6)
    first = submit(resource, items, journal_at(tmp_path))
    again = submit(resource, items, BatchJournal(journal_at(tmp_path).path))
    assert [h.batch_id for h in again] == [h.batch_id for h in first]
    assert sim.stats()["batches"]["created"] == 1
