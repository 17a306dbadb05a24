"""Item-level checkpoints inside a chunk: the fine-grained half of checkpoint-resume.

The partition is the coarse checkpoint (a materialized chunk is never redone). Inside a chunk, every completed
item result is made durable as it completes, so a crash (kill -9, OOM, a lost node) re-pays only the requests
that were in flight. A checkpoint belongs to one (dataset, partition, stage) and lives in its own folder:

    <root>/<dataset_id>/<partition_key>/<stage>/
        snapshot.json        atomic snapshot: every record from logs with generation < next_log_generation
        log.<G>.jsonl        append-only log of records made after that snapshot (G >= next_log_generation)
        lock                 flock held by the one process writing this checkpoint (released on death)
        snapshot.lock        flock: exclusive while a compaction swaps snapshot and logs, shared while reading

Each log line is ``<crc32 of the JSON, 8 hex digits> <JSON>\\n`` with JSON ``{"k": key, "r": record}``, so a
torn last line (the process or machine died mid-write) is detected by its checksum or missing newline and
ignored, never mis-parsed. A bad line anywhere but at the end of the newest log is corruption and raises
``CheckpointCorrupted`` naming the file.

Durability: ``record()`` returns after the line is written to the OS (``write(2)``), which survives the death of
the process. A flusher thread fsyncs the log in groups (every ``FSYNC_INTERVAL_S`` seconds while there are
unsynced lines), so a machine crash loses at most that window and we never fsync per item.

Compaction every ``compact_every`` records: (1) create the empty log G+1, (2) write ``snapshot.json.tmp`` with
all records and ``next_log_generation = G+1`` and fsync it, (3) ``os.replace`` it over ``snapshot.json`` and
fsync the folder, (4) delete logs older than G+1. A crash before (3) leaves the old snapshot plus logs G and
G+1 (the old state); a crash after (3) leaves the new snapshot, and the stale log G is ignored because its
generation is below ``next_log_generation`` (the new state). Records are keyed, so the same key recorded twice
loads once, with its last value.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

SNAPSHOT_NAME = "snapshot.json"
SNAPSHOT_TMP_NAME = "snapshot.json.tmp"
LOCK_NAME = "lock"
SNAPSHOT_LOCK_NAME = "snapshot.lock"
SNAPSHOT_FORMAT = "chunkwise.checkpoint/1"
_LOG_NAME = re.compile(r"^log\.(\d+)\.jsonl$")


def _log_name(generation: int) -> str:
    return f"log.{generation}.jsonl"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written; the message says which folder and what to do."""


class CheckpointCorrupted(CheckpointError):
    """A checkpoint file holds data that is neither valid nor a torn last record."""


class CheckpointInUse(CheckpointError):
    """Another process is writing the same (dataset, partition, stage) checkpoint right now."""


@dataclass
class CheckpointStats:
    """Counters of one ChunkCheckpoint object (this process only).

    records: record() calls; fsyncs: every fsync issued (log group commits, snapshots, folders);
    compactions: snapshots written; torn_records: torn last log lines found (and ignored) when reading;
    opening the writer cuts the torn tail off the log, so it is counted once."""

    records: int = 0
    fsyncs: int = 0
    compactions: int = 0
    torn_records: int = 0


@dataclass
class _DiskState:
    records: dict[str, dict]
    next_log_generation: int
    live_logs: list[tuple[int, Path]]  # generation >= next_log_generation, oldest first
    stale_logs: list[Path]  # generation < next_log_generation: already inside the snapshot
    live_log_lines: int  # valid lines in the live logs (records since the last compaction)
    newest_log_valid_bytes: int  # where the newest live log's valid lines end (a torn tail starts here)
    torn_records: int


def _path_component(value: str, what: str) -> str:
    """Folder name for an id: safe characters kept, others percent-encoded, so ids never escape the root."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"checkpoint {what} must be a non-empty string, got {value!r}")
    encoded = quote(value, safe="-_.=+@,")
    if encoded in {".", ".."}:
        raise ValueError(f"checkpoint {what} {value!r} is not a usable folder name; choose another id")
    return encoded


class ChunkCheckpoint:
    """Durable per-item results of one (dataset, partition, stage): an append-only JSONL log plus an atomic
    snapshot, compacted every `compact_every` completions.

    Typical use inside a stage asset::

        checkpoint = ChunkCheckpoint(root, dataset_id, partition_key, "classified")
        done = checkpoint.load()                       # item key -> record, from earlier attempts
        try:
            for item in items not in done:
                checkpoint.record(item.key, result.as_dict())
        finally:
            checkpoint.close()
        ...write the partition...; checkpoint.remove()  # only after the partition materialized

    One process writes a checkpoint at a time (a second writer gets CheckpointInUse); record() is meant to be
    called from one thread, close() and remove() may be called from any thread.
    """

    #: Group commit window in seconds: unsynced log lines are fsynced at most this long after they are written.
    FSYNC_INTERVAL_S: float = 0.05

    def __init__(self, root: Path, dataset_id: str, partition_key: str, stage: str, compact_every: int = 25):
        if compact_every < 1:
            raise ValueError(f"compact_every must be at least 1, got {compact_every}")
        self.dataset_id = dataset_id
        self.partition_key = partition_key
        self.stage = stage
        self.compact_every = compact_every
        self._folder = (
            Path(root)
            / _path_component(dataset_id, "dataset_id")
            / _path_component(partition_key, "partition_key")
            / _path_component(stage, "stage")
        )
        self.stats = CheckpointStats()
        # Test seam: called with the name of each compaction step after it is done (the crash tests kill here).
        self._on_compaction_step: Callable[[str], None] | None = None

        self._lock = threading.RLock()
        # item key -> its snapshot entry '"key":{record}': compaction joins these instead of serialising again.
        self._snapshot_entries: dict[str, str] = {}
        self._writer_open = False
        self._closed = False
        self._lock_fd: int | None = None
        self._snapshot_lock_fd: int | None = None
        self._log_fd: int | None = None
        self._log_generation = 0
        self._log_size = 0  # bytes in the current log, to cut a partial line after a failed write
        self._since_compaction = 0
        self._unsynced = False
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()
        self._flusher_error: BaseException | None = None

    def __repr__(self) -> str:
        return (
            f"ChunkCheckpoint(dataset_id={self.dataset_id!r}, partition_key={self.partition_key!r}, "
            f"stage={self.stage!r}, path={str(self._folder)!r})"
        )

    def __enter__(self) -> ChunkCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The checkpoint's folder (for metadata and debugging)."""
        return self._folder

    @property
    def torn_records(self) -> int:
        """Torn last log lines that load() found and ignored."""
        return self.stats.torn_records

    # ---- reading -------------------------------------------------------------------------------------

    def load(self) -> dict[str, dict]:
        """Item key -> record from the snapshot and the logs; {} when there is no checkpoint yet.

        A torn last log line is ignored and counted in `torn_records`; anything else unreadable raises
        CheckpointCorrupted naming the file."""
        with self._lock:
            if self._writer_open:
                return json.loads("{" + ",".join(self._snapshot_entries.values()) + "}")
            state = self._read_disk()
            self.stats.torn_records = max(self.stats.torn_records, state.torn_records)
            return state.records

    def _read_disk(self) -> _DiskState:
        """Read snapshot + logs consistently while a writer in another process may be compacting: under a
        shared lock on snapshot.lock, and retried if the snapshot still changed (a first compaction can start
        before that lock file exists)."""
        for _ in range(20):
            with self._shared_snapshot_lock():
                before = self._snapshot_identity()
                try:
                    state = self._read_disk_once()
                except FileNotFoundError:
                    continue  # a log was deleted by a compaction between listing and reading it
                if self._snapshot_identity() == before:
                    return state
        raise CheckpointError(
            f"checkpoint {self._folder} kept changing while being read (a writer is compacting it); try again"
        )

    @contextmanager
    def _shared_snapshot_lock(self) -> Iterator[None]:
        if self._snapshot_lock_fd is not None:  # this object is the writer: no compaction can run meanwhile
            yield
            return
        try:
            fd = os.open(self._folder / SNAPSHOT_LOCK_NAME, os.O_RDONLY)
        except FileNotFoundError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _snapshot_identity(self) -> tuple[int, int] | None:
        try:
            status = os.stat(self._folder / SNAPSHOT_NAME)
        except FileNotFoundError:
            return None
        return status.st_ino, status.st_mtime_ns

    def _read_disk_once(self) -> _DiskState:
        records: dict[str, dict] = {}
        next_generation = 0
        snapshot_path = self._folder / SNAPSHOT_NAME
        if snapshot_path.exists():
            records, next_generation = self._read_snapshot(snapshot_path)
        logs: list[tuple[int, Path]] = []
        if self._folder.is_dir():
            for entry in self._folder.iterdir():
                match = _LOG_NAME.match(entry.name)
                if match:
                    logs.append((int(match.group(1)), entry))
        logs.sort()
        live = [(generation, path) for generation, path in logs if generation >= next_generation]
        stale = [path for generation, path in logs if generation < next_generation]
        lines = 0
        valid_bytes = 0
        torn = 0
        for index, (_, log_path) in enumerate(live):
            is_newest = index == len(live) - 1
            file_lines, valid_bytes, file_torn = self._read_log(
                log_path, records, torn_tail_allowed=is_newest
            )
            lines += file_lines
            torn += file_torn
        return _DiskState(records, next_generation, live, stale, lines, valid_bytes, torn)

    def _read_snapshot(self, snapshot_path: Path) -> tuple[dict[str, dict], int]:
        advice = f"delete {self._folder} to redo this chunk's items, or restore the file from a backup"
        try:
            document = json.loads(snapshot_path.read_bytes())
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointCorrupted(
                f"checkpoint snapshot {snapshot_path} is not valid JSON ({error}); {advice}"
            ) from error
        if not isinstance(document, dict) or document.get("format") != SNAPSHOT_FORMAT:
            raise CheckpointCorrupted(
                f"checkpoint snapshot {snapshot_path} is not a {SNAPSHOT_FORMAT} snapshot; {advice}"
            )
        records = document.get("records")
        generation = document.get("next_log_generation")
        if (
            not isinstance(records, dict)
            or not isinstance(generation, int)
            or document.get("record_count") != len(records)
        ):
            raise CheckpointCorrupted(
                f"checkpoint snapshot {snapshot_path} is incomplete or inconsistent; {advice}"
            )
        return records, generation

    @staticmethod
    def _read_log(log_path: Path, records: dict[str, dict], torn_tail_allowed: bool) -> tuple[int, int, int]:
        """Apply a log's records; returns (valid lines, byte offset where they end, torn lines ignored)."""
        data = log_path.read_bytes()
        offset = 0
        lines = 0
        while offset < len(data):
            end = data.find(b"\n", offset)
            line_end = len(data) if end == -1 else end + 1
            parsed = _parse_log_line(data[offset:line_end])
            if parsed is None:
                if line_end == len(data) and torn_tail_allowed:
                    return lines, offset, 1
                line_number = data.count(b"\n", 0, offset) + 1
                raise CheckpointCorrupted(
                    f"checkpoint log {log_path} line {line_number} is garbled and is not the last record "
                    f"(so it is not a torn write): the file was damaged. Delete {log_path.parent} to redo this "
                    "chunk's items, or restore the file from a backup"
                )
            key, record = parsed
            records[key] = record
            lines += 1
            offset = line_end
        return lines, offset, 0

    # ---- writing -------------------------------------------------------------------------------------

    def record(self, key: str, record: dict) -> None:
        """Make one item's result durable: survives kill -9 once this returns (fsync follows within
        FSYNC_INTERVAL_S seconds). Recording a key again replaces its record."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"checkpoint key must be a non-empty string, got {key!r}")
        if not isinstance(record, dict):
            raise TypeError(f"checkpoint record for item {key!r} must be a dict, got {type(record).__name__}")
        try:
            record_json = _dumps(record)
            key_json = _dumps(key)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"checkpoint record for item {key!r} is not JSON-serialisable ({error}); store plain "
                "str/int/float/bool/None/list/dict values"
            ) from error
        encoded = f'{{"k":{key_json},"r":{record_json}}}'.encode("ascii")
        line = b"%08x %s\n" % (zlib.crc32(encoded), encoded)
        with self._lock:
            self._raise_if_unusable()
            if not self._writer_open:
                self._open_writer()
            assert self._log_fd is not None
            try:
                _write_all(self._log_fd, line)
            except OSError as error:
                # Cut a partial line so later records do not land behind garbage; then the chunk fails.
                os.ftruncate(self._log_fd, self._log_size)
                raise CheckpointError(
                    f"cannot write checkpoint log in {self._folder} ({error}); item {key!r} was not recorded. "
                    "Check the disk (full? read-only?), then re-run the chunk"
                ) from error
            self._log_size += len(line)
            self._unsynced = True
            self._snapshot_entries[key] = f"{key_json}:{record_json}"
            self.stats.records += 1
            self._since_compaction += 1
            if self._since_compaction >= self.compact_every:
                self._compact()

    def close(self) -> None:
        """Stop the flusher and fsync what is unsynced. Idempotent; record() afterwards raises."""
        self._stop_flusher()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._log_fd is not None:
                    if self._unsynced:
                        self._fsync(self._log_fd)
                        self._unsynced = False
                    os.close(self._log_fd)
                    self._log_fd = None
            finally:
                self._release_lock()
            if self._flusher_error is not None:
                raise CheckpointError(
                    f"checkpoint {self._folder}: a background fsync failed ({self._flusher_error}); the last "
                    "records may not be durable against a machine crash. Check the disk, then re-run the chunk"
                ) from self._flusher_error

    def remove(self) -> None:
        """Delete the checkpoint folder (call after the partition materialized). Idempotent."""
        self._stop_flusher()
        with self._lock:
            self._closed = True
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
            if self._lock_fd is None and self._folder.is_dir():
                self._acquire_lock()  # never delete a checkpoint another process is writing
            try:
                shutil.rmtree(self._folder, ignore_errors=False)
            except FileNotFoundError:
                pass
            finally:
                self._release_lock()
            self._snapshot_entries = {}

    def _raise_if_unusable(self) -> None:
        if self._closed:
            raise CheckpointError(
                f"checkpoint {self._folder} is closed; create a new ChunkCheckpoint to write"
            )
        if self._flusher_error is not None:
            raise CheckpointError(
                f"checkpoint {self._folder}: a background fsync failed ({self._flusher_error}); records are not "
                "durable. Check the disk (full? read-only?), then re-run the chunk"
            ) from self._flusher_error

    def _open_writer(self) -> None:
        """Take the folder's lock, repair a torn tail, drop stale files, and open the newest log for append."""
        created = [folder for folder in (self._folder, *self._folder.parents[:3]) if not folder.exists()]
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            for folder in created:  # a new folder's name is durable once its parent is fsynced
                self._fsync_dir(folder.parent)
        except OSError as error:
            raise CheckpointError(
                f"cannot create checkpoint folder {self._folder} ({error}); check the checkpoint root exists "
                "and is writable"
            ) from error
        self._acquire_lock()
        try:
            self._snapshot_lock_fd = os.open(self._folder / SNAPSHOT_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            state = self._read_disk()
            self.stats.torn_records = max(self.stats.torn_records, state.torn_records)
            for stale in state.stale_logs:
                stale.unlink(missing_ok=True)
            (self._folder / SNAPSHOT_TMP_NAME).unlink(missing_ok=True)
            if state.live_logs:
                self._log_generation, log_path = state.live_logs[-1]
            else:
                self._log_generation = state.next_log_generation
                log_path = self._folder / _log_name(self._log_generation)
            self._log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._log_size = os.fstat(self._log_fd).st_size
            if state.live_logs and self._log_size > state.newest_log_valid_bytes:
                # Cut the torn tail so the next line starts on a line boundary (else it would be garbage mid-file).
                os.ftruncate(self._log_fd, state.newest_log_valid_bytes)
                self._log_size = state.newest_log_valid_bytes
                self._fsync(self._log_fd)
            self._fsync_folder()
        except BaseException:
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
            self._release_lock()
            raise
        self._snapshot_entries = {
            key: f"{_dumps(key)}:{_dumps(record)}" for key, record in state.records.items()
        }
        self._since_compaction = state.live_log_lines
        self._writer_open = True
        self._flusher_stop.clear()
        self._flusher = threading.Thread(
            target=_flush_loop,
            args=(weakref.ref(self), self._flusher_stop, self.FSYNC_INTERVAL_S),
            name=f"checkpoint-flusher-{self.stage}",
            daemon=True,
        )
        self._flusher.start()

    def _compact(self) -> None:
        """Snapshot every record atomically, then start a new log (see the module docstring for the steps)."""
        new_generation = self._log_generation + 1
        new_log_path = self._folder / _log_name(new_generation)
        snapshot_path = self._folder / SNAPSHOT_NAME
        new_log_fd = os.open(new_log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._compaction_step("new_log_created")
            tmp_path = self._write_snapshot_tmp(new_generation)
            self._compaction_step("snapshot_tmp_written")
            # Readers in other processes wait from the swap until the old log is gone (see _read_disk).
            fcntl.flock(self._snapshot_lock_fd, fcntl.LOCK_EX)
            os.replace(tmp_path, snapshot_path)
        except OSError as error:
            # Nothing changed: the record that triggered this is in the current log; keep appending there.
            fcntl.flock(self._snapshot_lock_fd, fcntl.LOCK_UN)
            os.close(new_log_fd)
            new_log_path.unlink(missing_ok=True)
            raise CheckpointError(
                f"cannot write checkpoint snapshot {snapshot_path} ({error}); the records so far are safe in the "
                "log. Check the disk (full? read-only?), then re-run the chunk"
            ) from error
        try:
            self._finish_compaction(new_log_fd, new_generation)
        finally:
            fcntl.flock(self._snapshot_lock_fd, fcntl.LOCK_UN)

    def _finish_compaction(self, new_log_fd: int, new_generation: int) -> None:
        # The snapshot now names generation G+1: later records must go to log G+1, even if what follows fails.
        old_fd, old_generation = self._log_fd, self._log_generation
        self._log_fd, self._log_generation, self._log_size = new_log_fd, new_generation, 0
        self._unsynced = False  # everything in the old log is inside the fsynced snapshot
        self._since_compaction = 0
        self.stats.compactions += 1
        if old_fd is not None:
            os.close(old_fd)
        try:
            self._fsync_folder()  # makes the rename and the new log's name durable together
        except OSError as error:
            raise CheckpointError(
                f"cannot fsync checkpoint folder {self._folder} ({error}); the snapshot may not survive a machine "
                "crash. Check the disk, then re-run the chunk"
            ) from error
        self._compaction_step("snapshot_replaced")
        # Only after the rename is durable: before it, a machine crash could bring back the old snapshot.
        (self._folder / _log_name(old_generation)).unlink(missing_ok=True)
        self._compaction_step("old_log_removed")

    def _write_snapshot_tmp(self, new_generation: int) -> Path:
        """Write and fsync snapshot.json.tmp holding every record; returns its path."""
        header = _dumps(
            {
                "format": SNAPSHOT_FORMAT,
                "dataset_id": self.dataset_id,
                "partition_key": self.partition_key,
                "stage": self.stage,
                "next_log_generation": new_generation,
                "record_count": len(self._snapshot_entries),
                "written_at_unix_s": time.time(),
            }
        )
        records = ",".join(self._snapshot_entries.values())
        tmp_path = self._folder / SNAPSHOT_TMP_NAME
        tmp_fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(tmp_fd, f'{header[:-1]},"records":{{{records}}}}}'.encode("ascii"))
            self._fsync(tmp_fd)
        finally:
            os.close(tmp_fd)
        return tmp_path

    def _compaction_step(self, step: str) -> None:
        if self._on_compaction_step is not None:
            self._on_compaction_step(step)

    # ---- group commit ---------------------------------------------------------------------------------

    def _flush_once(self) -> bool:
        """fsync the log if it has unsynced lines; False once an fsync failed (the flusher then stops)."""
        with self._lock:
            if not self._unsynced or self._log_fd is None:
                return True
            # fsync a duplicate so compaction/close may close the original while we wait on the disk.
            fd = os.dup(self._log_fd)
            self._unsynced = False
        try:
            os.fsync(fd)
        except OSError as error:
            self._flusher_error = error  # raised by the next record()/close(): never swallowed
            return False
        finally:
            os.close(fd)
        with self._lock:
            self.stats.fsyncs += 1
        return True

    def _stop_flusher(self) -> None:
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            self._flusher_stop.set()
            flusher.join()
            self._flusher = None

    def __del__(self) -> None:
        # A checkpoint dropped without close(): its lines are already in the OS; free the descriptors so the
        # flock does not block a retry of this chunk in the same process.
        for name in ("_log_fd", "_snapshot_lock_fd", "_lock_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
        stop = getattr(self, "_flusher_stop", None)
        if stop is not None:
            stop.set()

    # ---- small OS helpers -----------------------------------------------------------------------------

    def _fsync(self, fd: int) -> None:
        os.fsync(fd)
        self.stats.fsyncs += 1

    def _fsync_folder(self) -> None:
        self._fsync_dir(self._folder)

    def _fsync_dir(self, folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _acquire_lock(self) -> None:
        fd = os.open(self._folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointInUse(
                    f"checkpoint {self._folder} is being written by another process (another run of partition "
                    f"{self.partition_key!r}, stage {self.stage!r}?); wait for it to finish or cancel it"
                ) from error
            raise
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._snapshot_lock_fd is not None:
            os.close(self._snapshot_lock_fd)
            self._snapshot_lock_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def _parse_log_line(line: bytes) -> tuple[str, dict] | None:
    """(key, record) from one complete log line, or None if it is torn or garbled."""
    if len(line) < 11 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        entry: Any = json.loads(body)
    except ValueError:
        return None
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("k"), str)
        or not isinstance(entry.get("r"), dict)
    ):
        return None
    return entry["k"], entry["r"]


def _flush_loop(
    checkpoint_ref: weakref.ref[ChunkCheckpoint], stop: threading.Event, interval_s: float
) -> None:
    """Group commit: every `interval_s` seconds, fsync what was written since the last sync. Holds only a weak
    reference, so a checkpoint that is dropped without close() does not keep a thread alive."""
    while not stop.wait(interval_s):
        checkpoint = checkpoint_ref()
        if checkpoint is None or not checkpoint._flush_once():
            return
        del checkpoint


def _dumps(value: Any) -> str:
    """Compact ASCII JSON: no raw newlines or multi-byte characters can reach a log line."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
