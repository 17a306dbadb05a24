"""ChunkCheckpoint: durable item results inside a chunk, checked against real processes killed with SIGKILL."""

from __future__ import annotations

import gc
import importlib.util
import json
import random
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from resources.checkpoints import (
    SNAPSHOT_NAME,
    SNAPSHOT_TMP_NAME,
    CheckpointCorrupted,
    CheckpointError,
    CheckpointInUse,
    ChunkCheckpoint,
)

CHILD_SCRIPT = Path(__file__).with_name("checkpoint_writer_child.py")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("checkpoint_writer_child", CHILD_SCRIPT)
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)


def open_child_checkpoint(root: Path, compact_every: int = 25) -> ChunkCheckpoint:
    return ChunkCheckpoint(
        root, child.DATASET_ID, child.PARTITION_KEY, child.STAGE, compact_every=compact_every
    )


def log_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("log.*.jsonl"))


class ChildRun:
    """One writer child; a thread drains its stdout so the child never blocks on a full pipe."""

    def __init__(self, root: Path, items: int, compact_every: int, *extra: str):
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD_SCRIPT), str(root), "--items", str(items)]
            + ["--compact-every", str(compact_every), *extra],
            stdout=subprocess.PIPE,
            cwd=PROJECT_ROOT,
        )
        self.loaded: int | None = None
        self.recorded: list[str] = []
        self.done = False
        self.started_at = 0.0
        self.writing_s = 0.0  # from `loaded` to `done`: how long an uninterrupted run writes
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode().rstrip("\n")
            if line.startswith("loaded "):
                self.loaded = int(line.split()[1])
                self.started_at = time.monotonic()
                self.started.set()
            elif line.startswith("recorded "):
                self.recorded.append(line.split(" ", 1)[1])
            elif line == "done":
                self.done = True
                self.writing_s = time.monotonic() - self.started_at
        self.started.set()

    def kill_after(self, delay_s: float) -> None:
        assert self.started.wait(30), "child never started"
        time.sleep(delay_s)
        self.process.kill()
        self.finish()

    def finish(self) -> int:
        returncode = self.process.wait(timeout=60)
        self._reader.join(timeout=30)
        self.process.stdout.close()
        return returncode


def assert_loaded_matches_items(loaded: dict[str, dict]) -> None:
    """Every loaded record is exactly the one the child wrote for that key: nothing garbled."""
    for key, record in loaded.items():
        index = int(key.split(":item-")[1].split(":")[0])
        assert record == child.item_record(index), f"record for {key} was garbled: {record}"


@pytest.mark.parametrize(
    ("compact_every", "items"), [(25, 1000), (3, 250)], ids=["append-mostly", "compacts-every-3"]
)
def test_kill_9_at_random_moments_keeps_every_recorded_item_and_repays_at_most_one(
    tmp_path: Path, compact_every: int, items: int
) -> None:
    rng = random.Random(20240607 + compact_every)
    calibration = ChildRun(tmp_path / "calibration", items, compact_every)
    assert calibration.finish() == 0 and calibration.done
    # Kill moments spread over the first 80% of an uninterrupted run, so almost every child dies mid-write.
    max_delay_s = 0.8 * calibration.writing_s
    kills = 0
    for trial in range(10):
        root = tmp_path / f"trial-{trial}"
        promised: list[str] = []
        durable_before: set[str] = set()
        for _ in range(2):  # kill, resume from the checkpoint, kill again
            run = ChildRun(root, items, compact_every)
            run.kill_after(rng.uniform(0.0, max_delay_s))
            kills += 0 if run.done else 1
            loaded = open_child_checkpoint(root).load()
            # The child resumed from exactly what the previous attempt made durable.
            assert run.loaded == len(durable_before)
            # Nothing durable was done again: a kill re-pays at most the item in flight.
            assert not set(run.recorded) & durable_before
            promised += run.recorded
            missing = set(promised) - set(loaded)
            assert not missing, (
                f"trial {trial}: {len(missing)} recorded items lost, e.g. {sorted(missing)[:3]}"
            )
            # Besides what this attempt printed, at most the item whose record() returned just before the kill.
            assert len(set(loaded) - durable_before - set(run.recorded)) <= 1
            assert_loaded_matches_items(loaded)
            durable_before = set(loaded)
        final = ChildRun(root, items, compact_every)
        assert final.finish() == 0 and final.done
        loaded = open_child_checkpoint(root).load()
        assert sorted(loaded) == sorted(child.item_key(index) for index in range(items))
        assert_loaded_matches_items(loaded)
    assert kills >= 10, "the children finished before being killed; the test did not exercise crashes"


COMPACTION_STEPS = ["new_log_created", "snapshot_tmp_written", "snapshot_replaced", "old_log_removed"]


@pytest.mark.parametrize("step", COMPACTION_STEPS)
def test_crash_at_each_compaction_step_leaves_old_or_new_state_never_double(
    tmp_path: Path, step: str
) -> None:
    # Items 0..9 with compact_every=5: the 2nd compaction runs inside record(item 9) and dies at `step`.
    run = ChildRun(tmp_path, 10, 5, "--crash-at", step, "--crash-on-compaction", "2")
    assert run.finish() == -9
    assert run.recorded == [child.item_key(index) for index in range(9)]
    folder = open_child_checkpoint(tmp_path).path

    checkpoint = open_child_checkpoint(tmp_path, compact_every=5)
    loaded = checkpoint.load()
    # Item 9 reached the log before compaction started, so it survives whatever step the crash hit.
    assert sorted(loaded) == [child.item_key(index) for index in range(10)]
    assert_loaded_matches_items(loaded)
    snapshot = json.loads((folder / SNAPSHOT_NAME).read_text())
    new_state = step in {"snapshot_replaced", "old_log_removed"}
    assert snapshot["record_count"] == (10 if new_state else 5)
    assert (folder / SNAPSHOT_TMP_NAME).exists() == (step == "snapshot_tmp_written")
    expected_logs = {
        "new_log_created": ["log.1.jsonl", "log.2.jsonl"],
        "snapshot_tmp_written": ["log.1.jsonl", "log.2.jsonl"],
        "snapshot_replaced": ["log.1.jsonl", "log.2.jsonl"],  # log.1 is stale: its generation < snapshot's
        "old_log_removed": ["log.2.jsonl"],
    }[step]
    assert log_files(folder) == expected_logs

    # Resuming cleans up the leftovers and keeps counting from the same state.
    for index in range(10, 13):
        checkpoint.record(child.item_key(index), child.item_record(index))
    checkpoint.close()
    assert not (folder / SNAPSHOT_TMP_NAME).exists()
    reloaded = open_child_checkpoint(tmp_path).load()
    assert sorted(reloaded) == [child.item_key(index) for index in range(13)]
    assert_loaded_matches_items(reloaded)


def test_stale_log_below_snapshot_generation_is_ignored_not_replayed(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "enriched", compact_every=2)
    checkpoint.record("a", {"v": "old"})
    checkpoint.record("b", {"v": 1})  # compaction: snapshot {a, b}, next log generation 2
    checkpoint.record("a", {"v": "new"})
    checkpoint.record("c", {"v": 2})  # compaction: snapshot {a: new, b, c}, next generation 3
    checkpoint.close()
    folder = checkpoint.path
    # Rebuild the on-disk state of a crash between the snapshot replace and the old log's removal.
    stale_line = _log_line("a", {"v": "old"})
    (folder / "log.1.jsonl").write_bytes(stale_line + _log_line("zombie", {"v": 9}))
    loaded = ChunkCheckpoint(tmp_path, "ds", "p0", "enriched").load()
    assert loaded == {"a": {"v": "new"}, "b": {"v": 1}, "c": {"v": 2}}


def _log_line(key: str, record: dict) -> bytes:
    body = json.dumps({"k": key, "r": record}, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _write_items(checkpoint: ChunkCheckpoint, count: int) -> None:
    for index in range(count):
        checkpoint.record(f"item-{index}", {"index": index, "label": "card_arrival"})


def test_torn_last_line_is_ignored_counted_and_cut_before_the_next_append(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=1000)
    _write_items(checkpoint, 10)
    checkpoint.close()
    log_path = checkpoint.path / "log.0.jsonl"
    data = log_path.read_bytes()
    last_line_start = data.rstrip(b"\n").rfind(b"\n") + 1
    log_path.write_bytes(data[: last_line_start + 17])  # the process died mid-write of item 9

    reader = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    loaded = reader.load()
    assert sorted(loaded) == sorted(f"item-{index}" for index in range(9))
    assert reader.torn_records == 1 and reader.stats.torn_records == 1

    resumed = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=1000)
    assert "item-9" not in resumed.load()
    resumed.record("item-9", {"index": 9, "label": "card_arrival"})
    resumed.close()
    assert resumed.torn_records == 1  # counted once, not again when the writer cut it
    fresh = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    assert fresh.load()["item-9"] == {"index": 9, "label": "card_arrival"}
    assert len(fresh.load()) == 10 and fresh.torn_records == 0


@pytest.mark.parametrize(
    "damage",
    ["missing_newline", "bad_checksum", "zeros_tail"],
)
def test_damaged_last_record_is_detected_not_misparsed(tmp_path: Path, damage: str) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=1000)
    _write_items(checkpoint, 5)
    checkpoint.close()
    log_path = checkpoint.path / "log.0.jsonl"
    data = log_path.read_bytes()
    if damage == "missing_newline":
        data = data[:-1]  # a complete JSON record without its newline was never acknowledged
    elif damage == "bad_checksum":
        data = data[:-3] + (b"9" if data[-3:-2] != b"9" else b"8") + data[-2:]
    else:
        data = data + b"\x00" * 300  # the file grew but the data never reached the disk
    log_path.write_bytes(data)
    reader = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    loaded = reader.load()
    expected = 5 if damage == "zeros_tail" else 4
    assert sorted(loaded) == sorted(f"item-{index}" for index in range(expected))
    assert reader.torn_records == 1


def test_garbage_in_the_middle_of_the_log_is_an_error_naming_the_file(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=1000)
    _write_items(checkpoint, 10)
    checkpoint.close()
    log_path = checkpoint.path / "log.0.jsonl"
    lines = log_path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"card_arrival", b"card_arrivaL")
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(CheckpointCorrupted, match=r"log\.0\.jsonl line 3 is garbled") as raised:
        ChunkCheckpoint(tmp_path, "ds", "p0", "classified").load()
    assert str(log_path) in str(raised.value)
    # A writer refuses to append behind the damage, too.
    with pytest.raises(CheckpointCorrupted):
        ChunkCheckpoint(tmp_path, "ds", "p0", "classified").record("item-10", {"index": 10})


def test_garbled_snapshot_is_an_error_naming_the_file(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=3)
    _write_items(checkpoint, 3)
    checkpoint.close()
    snapshot_path = checkpoint.path / SNAPSHOT_NAME
    snapshot_path.write_bytes(snapshot_path.read_bytes()[:-20])
    with pytest.raises(CheckpointCorrupted, match="snapshot") as raised:
        ChunkCheckpoint(tmp_path, "ds", "p0", "classified").load()
    assert str(snapshot_path) in str(raised.value)


def test_compaction_every_k_puts_everything_in_the_snapshot_and_restarts_the_log(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds-1", "chunk-0003", "classified", compact_every=4)
    _write_items(checkpoint, 4)
    folder = checkpoint.path
    assert folder == tmp_path / "ds-1" / "chunk-0003" / "classified"
    snapshot = json.loads((folder / SNAPSHOT_NAME).read_text())
    assert snapshot["record_count"] == 4 and snapshot["next_log_generation"] == 1
    assert log_files(folder) == ["log.1.jsonl"] and (folder / "log.1.jsonl").read_bytes() == b""
    for index in range(4, 11):
        checkpoint.record(f"item-{index}", {"index": index, "label": "card_arrival"})
    checkpoint.close()
    snapshot = json.loads((folder / SNAPSHOT_NAME).read_text())
    assert snapshot["record_count"] == 8 and sorted(snapshot["records"]) == sorted(
        f"item-{i}" for i in range(8)
    )
    assert len((folder / "log.2.jsonl").read_bytes().splitlines()) == 3
    assert checkpoint.stats.compactions == 2 and checkpoint.stats.records == 11
    assert len(ChunkCheckpoint(tmp_path, "ds-1", "chunk-0003", "classified").load()) == 11


def test_resumed_writer_counts_log_lines_toward_the_next_compaction(tmp_path: Path) -> None:
    first = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=5)
    _write_items(first, 3)
    first.close()
    second = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=5)
    second.record("item-3", {"index": 3})
    assert second.stats.compactions == 0
    second.record("item-4", {"index": 4})  # 3 old log lines + 2 new = 5: the log does not grow across crashes
    assert second.stats.compactions == 1
    second.close()


def test_recording_a_key_twice_keeps_the_last_and_loads_it_once(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=3)
    checkpoint.record("item-1", {"label": "first"})
    checkpoint.record("item-2", {"label": "x"})
    checkpoint.record("item-3", {"label": "y"})  # compaction: item-1 is in the snapshot
    checkpoint.record("item-1", {"label": "second"})  # and again in the new log
    assert checkpoint.load()["item-1"] == {"label": "second"}
    checkpoint.close()
    loaded = ChunkCheckpoint(tmp_path, "ds", "p0", "classified").load()
    assert loaded == {"item-1": {"label": "second"}, "item-2": {"label": "x"}, "item-3": {"label": "y"}}


def test_group_commit_fsyncs_far_less_than_once_per_record(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=10_000)
    _write_items(checkpoint, 500)
    checkpoint.close()
    # Open: 1 folder fsync per new folder level + 1 for the log's name; then group commits and the final one.
    assert checkpoint.stats.records == 500
    assert checkpoint.stats.fsyncs < 100
    assert len(ChunkCheckpoint(tmp_path, "ds", "p0", "classified").load()) == 500


def test_group_commit_syncs_within_the_interval_without_close(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=10_000)
    checkpoint.record("item-0", {"index": 0})
    after_open = checkpoint.stats.fsyncs
    deadline = time.monotonic() + 10
    while checkpoint.stats.fsyncs == after_open and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpoint.stats.fsyncs == after_open + 1, "the flusher never synced the unsynced record"
    checkpoint.close()


def test_second_writer_on_the_same_checkpoint_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    first.record("item-0", {"index": 0})
    second = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    with pytest.raises(CheckpointInUse, match="another process"):
        second.record("item-1", {"index": 1})
    with pytest.raises(CheckpointInUse):
        second.remove()
    first.close()
    third = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    third.record("item-1", {"index": 1})
    third.close()
    assert sorted(third.load()) == ["item-0", "item-1"]


def test_remove_deletes_the_folder_and_is_idempotent(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=2)
    _write_items(checkpoint, 5)
    checkpoint.close()
    assert checkpoint.path.is_dir()
    checkpoint.remove()
    assert not checkpoint.path.exists()
    checkpoint.remove()
    assert ChunkCheckpoint(tmp_path, "ds", "p0", "classified").load() == {}


def test_remove_without_close_stops_writing_and_deletes(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    _write_items(checkpoint, 3)
    checkpoint.remove()
    assert not checkpoint.path.exists()
    with pytest.raises(CheckpointError, match="closed"):
        checkpoint.record("item-9", {"index": 9})


def test_close_from_another_thread_while_recording_leaves_a_clean_checkpoint(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=7)
    recorded: list[str] = []
    errors: list[BaseException] = []

    def record_forever() -> None:
        try:
            for index in range(1_000_000):
                checkpoint.record(f"item-{index}", {"index": index})
                recorded.append(f"item-{index}")
        except CheckpointError as error:
            errors.append(error)

    writer = threading.Thread(target=record_forever)
    writer.start()
    while len(recorded) < 50:
        time.sleep(0.001)
    checkpoint.close()
    checkpoint.close()  # idempotent
    writer.join(timeout=30)
    assert len(errors) == 1 and "closed" in str(errors[0])
    loaded = ChunkCheckpoint(tmp_path, "ds", "p0", "classified").load()
    assert set(recorded) <= set(loaded) and len(loaded) <= len(recorded) + 1


def test_reader_in_another_process_sees_a_consistent_prefix_while_the_writer_compacts(tmp_path: Path) -> None:
    run = ChildRun(tmp_path, 4000, 1)  # compacts after every record: the worst case for a concurrent reader
    assert run.started.wait(30)
    sizes = []
    try:
        for _ in range(30):
            loaded = open_child_checkpoint(tmp_path).load()
            indexes = sorted(int(key.split(":item-")[1].split(":")[0]) for key in loaded)
            assert indexes == list(range(len(indexes))), "reader saw a gap: a compaction was half-read"
            assert_loaded_matches_items(loaded)
            sizes.append(len(indexes))
            time.sleep(0.01)
    finally:
        run.process.kill()
        run.finish()
    assert sizes == sorted(sizes)


def test_unserialisable_record_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    checkpoint.record("item-0", {"index": 0})
    with pytest.raises(TypeError, match="item-1"):
        checkpoint.record("item-1", {"when": object()})
    with pytest.raises(TypeError, match="must be a dict"):
        checkpoint.record("item-2", ["not", "a", "dict"])  # type: ignore[arg-type]
    checkpoint.record("item-3", {"index": 3})
    checkpoint.close()
    assert sorted(ChunkCheckpoint(tmp_path, "ds", "p0", "classified").load()) == ["item-0", "item-3"]


def test_ids_with_slashes_stay_inside_the_root(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path / "root", "s3://bucket/x.csv", "../../etc", "classified")
    checkpoint.record("item-0", {"index": 0})
    checkpoint.close()
    assert checkpoint.path.resolve().is_relative_to((tmp_path / "root").resolve())
    assert checkpoint.path.parent.name == "..%2F..%2Fetc"
    with pytest.raises(ValueError, match="partition_key"):
        ChunkCheckpoint(tmp_path, "ds", "..", "classified")


def test_repr_and_load_of_a_missing_checkpoint(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    assert checkpoint.load() == {}
    assert not checkpoint.path.exists()  # reading never creates folders
    assert "p0" in repr(checkpoint) and "classified" in repr(checkpoint)


def test_checkpoint_dropped_without_close_frees_its_lock_and_flusher_thread(tmp_path: Path) -> None:
    def flushers() -> int:
        return sum(thread.name.startswith("checkpoint-flusher") for thread in threading.enumerate())

    before = flushers()
    dropped = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")
    dropped.record("item-0", {"index": 0})
    assert flushers() == before + 1
    del dropped
    gc.collect()
    deadline = time.monotonic() + 10
    while flushers() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flushers() == before
    retry = ChunkCheckpoint(tmp_path, "ds", "p0", "classified")  # same process, same chunk: not locked out
    retry.record("item-1", {"index": 1})
    retry.close()
    assert sorted(retry.load()) == ["item-0", "item-1"]


def test_failed_snapshot_write_raises_a_clear_error_and_keeps_every_record_in_the_log(tmp_path: Path) -> None:
    checkpoint = ChunkCheckpoint(tmp_path, "ds", "p0", "classified", compact_every=3)
    checkpoint.record("item-0", {"index": 0})
    # A directory where the temp snapshot goes makes its open() fail, as a full or broken disk would.
    (checkpoint.path / SNAPSHOT_TMP_NAME).mkdir()
    checkpoint.record("item-1", {"index": 1})
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint snapshot .*safe in the log"):
        checkpoint.record("item-2", {"index": 2})
    assert log_files(checkpoint.path) == ["log.0.jsonl"] and not (checkpoint.path / SNAPSHOT_NAME).exists()
    (checkpoint.path / SNAPSHOT_TMP_NAME).rmdir()
    checkpoint.record("item-3", {"index": 3})  # the disk recovered: this compaction succeeds
    checkpoint.close()
    assert checkpoint.stats.compactions == 1 and log_files(checkpoint.path) == ["log.1.jsonl"]
    assert sorted(ChunkCheckpoint(tmp_path, "ds", "p0", "classified").load()) == [
        f"item-{i}" for i in range(4)
    ]
