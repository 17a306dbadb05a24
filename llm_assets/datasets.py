"""Dataset registration and chunk reading.

An input dataset is a CSV, JSONL or Parquet file, a local path or ``s3://bucket/key``. Registering it:
- streams the file once (never loads it whole), computing the SHA-256 of its bytes, the number of data rows and
  one locator per chunk (byte range for CSV/JSONL; row group + offset for Parquet), so ``read_chunk`` reads one
  chunk without scanning the file;
- gives it a stable id: ``<name slug>-<first 8 hex of the content SHA-256>``, e.g. ``banking77-3f2a9c1d``;
- writes ``<home>/datasets/<dataset_id>/manifest.json`` atomically and adds only the missing chunk partitions
  (``add_partitions=False``: only checks they would fit, for a caller that adds them itself: the new-dataset
  sensor's registration run, whose sensor returns them to Dagster as a ``dynamic_partitions_requests``).
Registering the same bytes again changes nothing (same id, same manifest, no new partitions).
Registration reads every byte of the file (hash, chunk boundaries, duplicate ids): run it in a run or a script,
never inside a sensor tick (a multi-GB file would pass the tick's timeout; sensors/registration.py).

Columns (after ``column_map`` renames source columns): ``text`` is required; ``id`` is required unless
``id_column=None``, in which case ids are derived as ``f"r{row_number:07d}"`` where ``row_number`` is the
0-based index of the data row in the file (header and blank lines not counted) - stable for the same bytes.
``team`` and ``label`` are optional; without a ``team`` column, ``team_from_label`` (label prefix -> team,
longest prefix wins, ``""`` is the fallback) derives the team from the gold label (BANKING77 demo:
``data/banking77/teams.json``). Other columns pass through.

``read_chunk`` keeps raw values and never drops a row: validation is the ``items`` asset's job. Rows that could
not be parsed as a record (JSONL line that is not a JSON object, CSV row with the wrong number of fields) are
kept with ``_read_error`` set. ``_row_number`` is the row's 0-based position in the file.

Text encoding: UTF-8 (a leading BOM is ignored). CSV: RFC 4180 quoting (quoted fields may hold newlines),
rows end in ``\\n`` or ``\\r\\n``.

Ids are used exactly as given: a CSV id is the field's text, never trimmed or parsed (``"007"``, ``" a "``,
``"1e3"`` and ``"NaN"`` stay those strings). The one conversion: an id that is not text in the file (a JSON
number, a Parquet integer or float column) becomes ``str(value)`` (``7`` -> ``"7"``, JSON ``1e3`` ->
``"1000.0"``), counted in ``RegisteredDataset.ids_not_text``; keep ids as strings in the file to avoid it. A
missing id (empty field, JSON ``null``/``NaN``, Parquet null/NaN) or one that is only whitespace is not
repaired: the ``items`` asset dead-letters the row as ``invalid_input``.

Bad input: registration raises ``DatasetError`` before any partition is added, for a missing or unreadable file,
an empty file, a header with no data rows, a missing ``text``/``id`` column, bytes that are not UTF-8, a file that
is not the format its extension says, a bad ``chunk_size`` (a whole number of rows, ``MIN_CHUNK_SIZE`` or more).
The message is one line: the file as given, where (``line N`` of the file, and for CSV ``data row N``,
1-based, and the column when known), what is wrong, and what to do. A JSONL line after the first that is not
a JSON object is not a registration error: it stays a row with ``_read_error`` (dead-lettered, the chunk goes on).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from io_managers.atomic_files import write_bytes_atomic
from io_managers.object_reader import open_binary, read_range, size_bytes
from io_managers.parquet_files import is_s3_uri, parse_s3_uri
from llm_assets.partitions import (
    CHUNK_PARTITIONS_NAME,
    MAX_CHUNKS_PER_DATASET,
    add_chunk_partitions,
    check_partition_room,
    dataset_partition_keys,
)
from resources.shared_docs import SharedDocuments
from resources.state_url import STATE_URL_ENV, state_url

TEXT, ID, TEAM, LABEL = "text", "id", "team", "label"
ROW_NUMBER, READ_ERROR = "_row_number", "_read_error"
CORE_COLUMNS = [ID, TEXT, TEAM, LABEL]
_HASH_BLOCK_BYTES = 1024 * 1024
# pyarrow reads a footer and column chunks with seek+read: 1 MiB per ranged GET keeps small reads cheap.
_PARQUET_READ_BUFFER_BYTES = 1024 * 1024
# Long texts are the length policy's business (items asset), not a reason to fail parsing.
_CSV_FIELD_LIMIT = 64 * 1024 * 1024
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_EXPECTED = {
    "csv": "a header row naming the columns (id,text,...) and then one row per item",
    "jsonl": 'one JSON object per line, e.g. {"id": "1", "text": "..."}',
    "parquet": "a Parquet file with `id` and `text` columns",
}
_IDS_NOT_TEXT = "ids_not_text"  # frame.attrs key set by _to_frame


MIN_CHUNK_SIZE = 1  # rows; the upper bound is the file's: at most MAX_CHUNKS_PER_DATASET chunks


class DatasetError(ValueError):
    """A dataset cannot be registered or read as configured.

    The message is one line that names the file as given (and the line, data row and column where one is at
    fault) and says what to change: tools print it as it is, without a traceback."""


class _NotUtf8(Exception):
    """Line ``line`` (1-based), starting at byte ``start``, is not UTF-8; the scanner turns it into a DatasetError."""

    def __init__(self, line: int, start: int, raw: bytes, exc: UnicodeDecodeError) -> None:
        super().__init__(exc.reason)
        self.line, self.start, self.raw, self.exc = line, start, raw, exc

    def describe(self) -> str:
        bad = self.raw[self.exc.start : self.exc.start + 1].hex()
        return f"is not UTF-8 (byte 0x{bad} at byte offset {self.start + self.exc.start}: {self.exc.reason})"


@dataclass(frozen=True)
class DatasetSpec:
    """What to register. ``chunk_size`` is in rows; ``column_map`` maps source column -> our column."""

    uri: str
    name: str | None = None  # default: the file stem
    chunk_size: int = 250
    column_map: dict[str, str] = field(default_factory=dict)
    id_column: str | None = "id"  # None => ids derived as f"r{row_number:07d}" (0-based data row number)
    team_from_label: dict[str, str] | None = None  # label prefix -> team; longest prefix wins; "" = fallback
    text_columns: tuple[str, ...] = ()  # several source columns joined (with text_separator) into `text`
    text_separator: str = "\n\n"
    pipeline: str = ""  # the pipeline spec it was registered for (pipeline_assets.register sets it)


@dataclass(frozen=True)
class ChunkLocator:
    """Where chunk ``index`` lives: rows [first_row, first_row + n_rows) of the file.

    CSV/JSONL: bytes [start_byte, end_byte). Parquet: starts at ``row_offset`` inside row group ``row_group``.
    """

    index: int
    first_row: int
    n_rows: int
    start_byte: int | None = None
    end_byte: int | None = None
    row_group: int | None = None
    row_offset: int | None = None


@dataclass(frozen=True)
class RegisteredDataset:
    dataset_id: str  # "<name slug>-<8 hex of the content sha256>"
    name: str
    uri: str  # absolute for local files
    content_sha256: str
    total_rows: int
    chunk_size: int
    n_chunks: int
    partition_keys: list[str]
    registered_at: str  # ISO 8601, UTC
    spec: DatasetSpec
    format: str = "csv"  # csv | jsonl | parquet
    size_bytes: int = 0
    source_columns: list[str] = field(default_factory=list)
    chunks: list[ChunkLocator] = field(default_factory=list)
    team_source: str = "none"  # "column" | "label_rule" | "none": where read_chunk's `team` comes from
    duplicate_rows: dict[str, int] = field(default_factory=dict)
    """Row number (as text) -> the row that first used the same id; those rows become `invalid_input`."""
    ids_not_text: int = 0
    """Ids that were numbers (or other non-text values) in the file, turned into text by ``str()``."""


# ---------------------------------------------------------------- registration


def register_dataset(
    spec: DatasetSpec,
    instance: dg.DagsterInstance,
    home: Path,
    s3: Any = None,
    partitions_name: str = CHUNK_PARTITIONS_NAME,
    add_partitions: bool = True,
) -> RegisteredDataset:
    """Register ``spec.uri`` (idempotent): manifest under ``home/datasets/<id>/``, one partition per chunk.

    Bad input raises ``DatasetError`` (one line: file, line/row/column, what to do) before any partition is added.
    ``add_partitions=False``: the partitions are not added, only checked to fit under the live-partition limit
    (``PartitionLimitExceeded``); the caller adds ``partition_keys`` (a sensor, through Dagster).
    """
    chunk_size = spec.chunk_size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < MIN_CHUNK_SIZE:
        raise DatasetError(
            f"cannot register {spec.uri}: chunk_size must be a whole number of rows, {MIN_CHUNK_SIZE} or more "
            f"(got {chunk_size!r}); fix `input.chunk_size` in the pipeline spec, or `make demo CHUNK=` (100-500 suits "
            "most runs)"
        )
    fmt = _format_of(spec.uri)
    # Local paths are stored absolute: chunks are read later by runs whose working directory may differ.
    uri = spec.uri if is_s3_uri(spec.uri) else os.path.abspath(spec.uri)
    hasher = hashlib.sha256()
    try:
        if size_bytes(uri, s3) == 0:
            raise DatasetError(
                f"{spec.uri} is empty (0 bytes): expected {_EXPECTED[fmt]}; fix the file and run again"
            )
        with open_binary(uri, s3) as f:
            if fmt == "csv":
                scan = _scan_csv(f, hasher, spec)
            elif fmt == "jsonl":
                scan = _scan_jsonl(f, hasher, spec)
            else:
                scan = _scan_parquet(f, hasher, spec)
    except Exception as exc:
        if not _is_storage_error(exc):
            raise
        raise DatasetError(f"cannot read {spec.uri}: {_storage_reason(exc, spec.uri, uri)}") from None
    if scan.total_rows == 0:
        what = {"csv": f"a header ({','.join(scan.columns)}) but no data rows", "jsonl": "only blank lines"}
        raise DatasetError(
            f"{spec.uri} has {what.get(fmt, 'no data rows')}; nothing to register: add rows or pick another file"
        )
    n_chunks = len(scan.chunks)
    if n_chunks > MAX_CHUNKS_PER_DATASET:
        raise DatasetError(
            f"{spec.uri} has {scan.total_rows} rows = {n_chunks} chunks of {spec.chunk_size}, over the "
            f"{MAX_CHUNKS_PER_DATASET} chunk limit per dataset; raise `input.chunk_size` in the pipeline spec (or `make demo CHUNK=`) to at least "
            f"{-(-scan.total_rows // MAX_CHUNKS_PER_DATASET)}"
        )
    sha = hasher.hexdigest()
    name = spec.name or _file_stem(spec.uri)
    dataset_id = f"{_slug(name)}-{sha[:8]}"
    keys = dataset_partition_keys(dataset_id, n_chunks)
    if _manifest_exists(home, dataset_id):
        existing = load_dataset(dataset_id, home)
        _check_same_registration(existing, spec, sha)
        if add_partitions:
            add_chunk_partitions(instance, existing.partition_keys, partitions_name=partitions_name)
        else:
            check_partition_room(instance, existing.partition_keys, partitions_name)
        return existing

    labels_present = LABEL in _mapped(scan.columns, spec)
    if TEAM in _mapped(scan.columns, spec):
        team_source = "column"
    elif spec.team_from_label and labels_present:
        team_source = "label_rule"
    else:
        team_source = "none"
    ds = RegisteredDataset(
        dataset_id=dataset_id,
        name=name,
        uri=uri,
        content_sha256=sha,
        total_rows=scan.total_rows,
        chunk_size=spec.chunk_size,
        n_chunks=n_chunks,
        partition_keys=keys,
        registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
        spec=spec,
        format=fmt,
        size_bytes=scan.size_bytes,
        source_columns=scan.columns,
        chunks=scan.chunks,
        team_source=team_source,
    )
    if spec.id_column is not None:
        duplicates, not_text = _audit_ids(ds, s3)
        ds = replace(ds, duplicate_rows=duplicates, ids_not_text=not_text)
    if not add_partitions:
        check_partition_room(instance, keys, partitions_name)
    ds = _save_manifest(home, ds)
    if add_partitions:
        add_chunk_partitions(instance, keys, partitions_name=partitions_name)
    return ds


def _audit_ids(ds: RegisteredDataset, s3: Any) -> tuple[dict[str, int], int]:
    """Rows whose id an earlier row of the file already used, across chunks; and how many ids were not text.

    Ids are compared exactly as given (no trimming): ``" a "`` and ``"a"`` are two ids.

    One more streamed pass, chunk by chunk, with the ids in a temporary SQLite table on disk: memory stays flat
    however large the file (a Python set of 10M ids would take ~1 GB).
    """
    duplicates: dict[str, int] = {}
    not_text = 0
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "ids.sqlite"))
        try:
            db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, first_row INTEGER) WITHOUT ROWID")
            for index in range(ds.n_chunks):
                frame = read_chunk(ds, index, s3)
                not_text += frame.attrs.get(_IDS_NOT_TEXT, 0)
                for key, row in zip(frame[ID], frame[ROW_NUMBER], strict=True):
                    if key is None or not key.strip():
                        continue  # no id: the items asset dead-letters the row
                    inserted = db.execute("INSERT OR IGNORE INTO ids VALUES (?, ?)", (key, int(row))).rowcount
                    if not inserted:
                        first = db.execute("SELECT first_row FROM ids WHERE id = ?", (key,)).fetchone()[0]
                        duplicates[str(int(row))] = int(first)
        finally:
            db.close()
    return duplicates, not_text


def manifest_path_for(home: Path, dataset_id: str) -> Path:
    return Path(home) / "datasets" / dataset_id / "manifest.json"


# Manifests live in one of two places (resources/state_url.py): files under the home (the embedded backend), or,
# with CHUNKWISE_STATE_URL set, rows of the shared database every machine reads (resources/shared_docs.py).
MANIFEST_KIND = "manifest"


def _shared_manifests() -> SharedDocuments | None:
    url = state_url()
    return SharedDocuments(url, MANIFEST_KIND) if url else None


def _manifest_exists(home: Path, dataset_id: str) -> bool:
    shared = _shared_manifests()
    return shared.get(dataset_id) is not None if shared else manifest_path_for(home, dataset_id).exists()


def _save_manifest(home: Path, ds: RegisteredDataset) -> RegisteredDataset:
    """Write `ds`'s manifest; with the shared backend, the manifest already there wins (a concurrent registration
    of the same file on another machine), and is what is returned."""
    shared = _shared_manifests()
    if shared is None:
        write_bytes_atomic(manifest_path_for(home, ds.dataset_id), json.dumps(asdict(ds), indent=1).encode())
        return ds
    return _from_manifest(shared.put_new(ds.dataset_id, json.loads(json.dumps(asdict(ds)))))


def load_dataset(dataset_id: str, home: Path) -> RegisteredDataset:
    """The registered dataset from its manifest; DatasetError if it was never registered (under ``home``, or in
    the shared database)."""
    shared = _shared_manifests()
    if shared is not None:
        raw = shared.get(dataset_id)
        if raw is None:
            raise DatasetError(
                f"dataset {dataset_id} is not registered in the shared database ({STATE_URL_ENV}); register it "
                "first (register_dataset / the new-dataset sensor), and check that every machine sets the same "
                f"{STATE_URL_ENV}"
            )
        return _from_manifest(raw)
    path = manifest_path_for(home, dataset_id)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(
            f"dataset {dataset_id} is not registered under {home} (no {path}); register it first "
            "(register_dataset / the new-dataset sensor), and check CHUNKWISE_HOME"
        ) from None
    return _from_manifest(raw)


def _from_manifest(raw: dict) -> RegisteredDataset:
    raw = dict(raw)
    raw["spec"] = DatasetSpec(**{**raw["spec"], "text_columns": tuple(raw["spec"].get("text_columns", ()))})
    raw["chunks"] = [ChunkLocator(**c) for c in raw["chunks"]]
    return RegisteredDataset(**raw)


def list_datasets(home: Path) -> list[str]:
    """Ids of every dataset registered (under ``home``, or in the shared database), sorted."""
    shared = _shared_manifests()
    if shared is not None:
        return shared.list_keys()
    root = Path(home) / "datasets"
    return sorted(p.parent.name for p in root.glob("*/manifest.json"))


# ---------------------------------------------------------------- reading


def read_chunk(ds: RegisteredDataset, chunk_index: int, s3: Any = None) -> pd.DataFrame:
    """Only chunk ``chunk_index``'s rows, raw (no row dropped).

    Columns: id (str|None), text, team (str|None), label (str|None), the passthrough columns, ``_row_number``
    (int, 0-based data row in the file) and ``_read_error`` (str|None).
    """
    if not 0 <= chunk_index < ds.n_chunks:
        raise DatasetError(f"dataset {ds.dataset_id} has chunks 0..{ds.n_chunks - 1}, not {chunk_index}")
    loc = ds.chunks[chunk_index]
    current_size = size_bytes(ds.uri, s3)
    if current_size != ds.size_bytes:
        raise DatasetError(
            f"{ds.uri} changed since dataset {ds.dataset_id} was registered ({ds.size_bytes} bytes then, "
            f"{current_size} now); register the new file (it gets a new dataset id) instead of editing it in place"
        )
    if ds.format == "parquet":
        with open_binary(ds.uri, s3, buffer_size=_PARQUET_READ_BUFFER_BYTES) as f:
            records = _read_parquet_chunk(f, loc)
    else:
        data = read_range(ds.uri, loc.start_byte or 0, loc.end_byte or 0, s3)
        if ds.format == "csv":
            records = _read_csv_chunk(data, loc, ds.source_columns)
        else:
            records = _read_jsonl_chunk(data)
    if len(records) != loc.n_rows:
        raise DatasetError(
            f"chunk {chunk_index} of {ds.dataset_id} read {len(records)} rows, manifest says {loc.n_rows}; "
            f"{ds.uri} was modified after registration: register it again"
        )
    return _to_frame(records, ds, loc.first_row)


def load_team_rules(path: Path) -> dict[str, str]:
    """The ``label prefix -> team`` rule from a teams.json file (``prefix_to_team`` + ``default_team``)."""
    raw = json.loads(Path(path).read_text())
    rules = dict(raw["prefix_to_team"])
    if raw.get("default_team"):
        rules[""] = raw["default_team"]
    return rules


def team_for_label(label: Any, rules: dict[str, str]) -> str | None:
    """Longest matching label prefix wins (case-insensitive); None when nothing matches or no label."""
    if not isinstance(label, str):
        return None
    lowered = label.lower()
    best: str | None = None
    for prefix in rules:
        if lowered.startswith(prefix.lower()) and (best is None or len(prefix) > len(best)):
            best = prefix
    return None if best is None else rules[best]


# ---------------------------------------------------------------- scanning (one streamed pass)


@dataclass
class _Scan:
    columns: list[str]
    total_rows: int
    chunks: list[ChunkLocator]
    size_bytes: int


class _Counter:
    """Byte position and line count of the line iterator, so records map to byte offsets and file lines."""

    def __init__(self, start: int = 0) -> None:
        self.pos = start
        self.line = 0  # lines consumed so far (the current line's 1-based number while it is processed)


def _hashed_lines(f: BinaryIO, hasher: Any, counter: _Counter) -> Iterator[bytes]:
    for raw in f:
        hasher.update(raw)
        counter.pos += len(raw)
        counter.line += 1
        yield raw


def _decode_line(raw: bytes, counter: _Counter, first: bool) -> str:
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        raise _NotUtf8(counter.line, counter.pos - len(raw), raw, exc) from None


def _decoded(lines: Iterator[bytes], counter: _Counter, first: bool) -> Iterator[str]:
    for raw in lines:
        yield _decode_line(raw, counter, first)
        first = False


def _csv_reader(lines: Iterator[str]) -> Iterator[list[str]]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    return csv.reader(lines)


def _chunk_locators_from_starts(
    starts: list[int], end: int, total: int, chunk_size: int
) -> list[ChunkLocator]:
    out = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else end
        first = i * chunk_size
        out.append(ChunkLocator(i, first, min(chunk_size, total - first), start_byte=start, end_byte=stop))
    return out


_RE_ENCODE = "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) and run again"


def _scan_csv(f: BinaryIO, hasher: Any, spec: DatasetSpec) -> _Scan:
    counter = _Counter()
    reader = _csv_reader(_decoded(_hashed_lines(f, hasher, counter), counter, first=True))
    header: list[str] | None = None
    starts: list[int] = []
    n = 0
    record_start = 0  # csv pulls exactly the lines of one record, so this is the next record's start
    try:
        header = next(reader, None)
        if header is None:  # only reached for a file of blank lines: 0 bytes is caught before
            raise DatasetError(f"{spec.uri} has no header row naming the columns; fix the file and run again")
        _check_columns(spec, header)  # before the (possibly long) scan: a wrong file fails at once
        record_start = counter.pos
        for record in reader:
            if record:  # blank lines are not rows
                if n % spec.chunk_size == 0:
                    starts.append(record_start)
                n += 1
            record_start = counter.pos
    except _NotUtf8 as bad:
        where = "the header" if header is None else f"data row {n + 1}"
        column = _csv_column_of(bad, header) if bad.start == record_start else None
        raise DatasetError(
            f"{spec.uri}: line {bad.line} ({where}{f', column {column!r}' if column else ''}) "
            f"{bad.describe()}; {_RE_ENCODE}"
        ) from None
    except csv.Error as exc:
        raise DatasetError(
            f"{spec.uri}: line {counter.line} (data row {n + 1}) cannot be parsed as CSV ({exc}); "
            "fix the file's quoting and run again"
        ) from None
    return _Scan(header, n, _chunk_locators_from_starts(starts, counter.pos, n, spec.chunk_size), counter.pos)


def _csv_column_of(bad: _NotUtf8, header: list[str] | None) -> str | None:
    """The column holding the bad byte, when the line is a whole record (quoted newlines make it a guess)."""
    if not header:
        return None
    fields = next(csv.reader([bad.raw.decode("utf-8", "surrogateescape")]), [])
    for name, value in zip(header, fields, strict=False):
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            return name
    return None


def _scan_jsonl(f: BinaryIO, hasher: Any, spec: DatasetSpec) -> _Scan:
    counter = _Counter()
    starts: list[int] = []
    columns: list[str] | None = None
    n = 0
    try:
        for raw in _hashed_lines(f, hasher, counter):
            # Decoded here only to find bytes that are not UTF-8 (one bad line means a wrong encoding).
            _decode_line(raw, counter, first=counter.line == 1)
            if not raw.strip():
                continue
            if n % spec.chunk_size == 0:
                starts.append(counter.pos - len(raw))
            if columns is None:
                columns = _jsonl_columns(raw, counter.line, spec)
                _check_columns(spec, columns)
            n += 1
    except _NotUtf8 as bad:
        raise DatasetError(f"{spec.uri}: line {bad.line} {bad.describe()}; {_RE_ENCODE}") from None
    return _Scan(
        columns or [], n, _chunk_locators_from_starts(starts, counter.pos, n, spec.chunk_size), counter.pos
    )


def _jsonl_columns(raw: bytes, line: int, spec: DatasetSpec) -> list[str]:
    # The first record names the columns; later records may differ (read_chunk keeps whatever they hold).
    try:
        first = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{spec.uri}: line {line} (the first record) is not valid JSON ({exc}); each line must be one "
            "JSON object (JSON Lines): fix the file and run again"
        ) from None
    if not isinstance(first, dict):
        raise DatasetError(
            f"{spec.uri}: line {line} (the first record) is a JSON {type(first).__name__}, expected one JSON "
            "object per line; fix the file and run again"
        )
    return list(first)


def _scan_parquet(f: BinaryIO, hasher: Any, spec: DatasetSpec) -> _Scan:
    size = 0
    while block := f.read(_HASH_BLOCK_BYTES):
        hasher.update(block)
        size += len(block)
    f.seek(0)
    try:
        meta = pq.ParquetFile(f).metadata  # footer only: row counts per row group, no data pages
        names = list(meta.schema.to_arrow_schema().names)
    except pa.ArrowException as exc:
        raise DatasetError(
            f"{spec.uri} is not a Parquet file pyarrow can read ({exc}); check the file, or give it the "
            "extension of its real format (.csv, .jsonl)"
        ) from None
    _check_columns(spec, names)
    group_starts = []
    total = 0
    for g in range(meta.num_row_groups):
        group_starts.append(total)
        total += meta.row_group(g).num_rows
    chunk_size = spec.chunk_size
    chunks = []
    group = 0
    for i, first in enumerate(range(0, total, chunk_size)):
        while group + 1 < len(group_starts) and group_starts[group + 1] <= first:
            group += 1
        chunks.append(
            ChunkLocator(
                i,
                first,
                min(chunk_size, total - first),
                row_group=group,
                row_offset=first - group_starts[group],
            )
        )
    return _Scan(names, total, chunks, size)


def _is_storage_error(exc: BaseException) -> bool:
    """A file system error, or an S3 error (botocore's, matched by module so botocore is imported only for S3)."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("botocore.", "boto3."))


def _storage_reason(exc: BaseException, given: str, resolved: str) -> str:
    """Why the file cannot be read, in a few words and with what to do; never the S3 request or credentials."""
    looked = "" if given == resolved else f" (looked for {resolved})"
    if isinstance(exc, FileNotFoundError):
        return f"no such file{looked}; check the path and run again"
    if isinstance(exc, IsADirectoryError):
        return "it is a folder, not a file; give the path of a .csv, .jsonl or .parquet file"
    if isinstance(exc, PermissionError):
        return f"permission denied{looked}; make the file readable and run again"
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}{looked}; check the file and run again"
    code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")) or type(exc).__name__
    if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
        return "no such object in S3; check the bucket and key and run again"
    if code in ("403", "AccessDenied"):
        return "S3 denied access; check the credentials' permissions on the bucket and run again"
    return f"S3 error {code}; check the URI, the endpoint and the credentials and run again"


# ---------------------------------------------------------------- chunk readers


def _read_csv_chunk(data: bytes, loc: ChunkLocator, header: list[str]) -> list[dict[str, Any]]:
    counter = _Counter(loc.start_byte or 0)
    lines = _decoded(iter(io.BytesIO(data)), counter, first=False)
    records: list[dict[str, Any]] = []
    try:
        for fields in _csv_reader(lines):
            if not fields:
                continue
            row: dict[str, Any] = dict(zip(header, fields, strict=False))
            if len(fields) != len(header):
                row[READ_ERROR] = f"row has {len(fields)} fields, the header has {len(header)}"
            records.append(row)
    except csv.Error as exc:
        raise DatasetError(f"CSV parse error in chunk {loc.index}: {exc}") from None
    except _NotUtf8 as bad:  # registration read every byte as UTF-8: the file was edited in place since
        raise DatasetError(
            f"chunk {loc.index}: line {bad.line} of the chunk {bad.describe()}; the file changed after "
            "registration: register it again"
        ) from None
    return records


def _read_jsonl_chunk(data: bytes) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for raw in io.BytesIO(data):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            records.append(
                {READ_ERROR: f"not valid JSON: {exc}", "_raw_line": raw.decode("utf-8", "replace")}
            )
            continue
        if not isinstance(value, dict):
            records.append(
                {READ_ERROR: f"expected a JSON object, got {type(value).__name__}", "_raw_line": raw.decode()}
            )
            continue
        records.append(value)
    return records


def _read_parquet_chunk(f: BinaryIO, loc: ChunkLocator) -> list[dict[str, Any]]:
    pf = pq.ParquetFile(f)
    group = loc.row_group or 0
    to_skip = loc.row_offset or 0
    records: list[dict[str, Any]] = []
    # Batches bound memory even when a row group is much larger than a chunk.
    groups = list(range(group, pf.metadata.num_row_groups))
    for batch in pf.iter_batches(batch_size=max(loc.n_rows, 1024), row_groups=groups):
        if to_skip >= batch.num_rows:
            to_skip -= batch.num_rows
            continue
        batch = batch.slice(to_skip, loc.n_rows - len(records))
        to_skip = 0
        records.extend(batch.to_pylist())
        if len(records) >= loc.n_rows:
            break
    return records


# ---------------------------------------------------------------- shaping


def _mapped(columns: list[str], spec: DatasetSpec) -> list[str]:
    mapped = [spec.column_map.get(c, c) for c in columns]
    if spec.id_column and spec.id_column != ID and spec.id_column in mapped:
        mapped = [ID if c == spec.id_column else c for c in mapped]
    return mapped


def _check_columns(spec: DatasetSpec, columns: list[str]) -> None:
    mapped = _mapped(columns, spec)
    found = ", ".join(repr(c) for c in columns) or "none"
    missing_text = [c for c in spec.text_columns if c not in columns]
    if missing_text:
        raise DatasetError(
            f"{spec.uri} has no column {missing_text[0]!r} of the text columns {list(spec.text_columns)} (columns "
            f"found: {found}); fix `input.columns.text` in the pipeline spec or the file's header"
        )
    if TEXT not in mapped and not spec.text_columns:
        source = next((k for k, v in spec.column_map.items() if v == TEXT), TEXT)
        raise DatasetError(
            f"{spec.uri} has no text column {source!r} (columns found: {found}); set `input.columns.text` in the "
            "pipeline spec to the column(s) holding the text, or rename the file's column"
        )
    if spec.id_column is not None and ID not in mapped:
        raise DatasetError(
            f"{spec.uri} has no id column {spec.id_column!r} (columns found: {found}); add a column of stable "
            f"item ids named {spec.id_column!r}, set `input.columns.id` in the pipeline spec to the column holding "
            "them, or `input.columns.id: null` to derive ids from the row number"
        )


def _check_same_registration(existing: RegisteredDataset, spec: DatasetSpec, sha: str) -> None:
    if existing.content_sha256 != sha:
        raise DatasetError(
            f"dataset id {existing.dataset_id} is taken by other content ({existing.content_sha256[:16]}..., "
            f"this file {sha[:16]}...): an 8-hex prefix collision; rename the file (the dataset id is the pipeline "
            "and file name plus the content hash)"
        )
    old = existing.spec
    differs = [
        k
        for k in ("chunk_size", "column_map", "id_column", "team_from_label", "text_columns")
        if getattr(old, k) != getattr(spec, k)
    ]
    if differs:
        raise DatasetError(
            f"{spec.uri} is already registered as {existing.dataset_id} with different "
            f"{', '.join(differs)} ({', '.join(f'{k}={getattr(old, k)!r}' for k in differs)}); chunks and ids "
            "must not change under a dataset id: keep the original settings, or rename the file to register it as "
            "a new dataset"
        )


def _to_frame(records: list[dict[str, Any]], ds: RegisteredDataset, first_row: int) -> pd.DataFrame:
    spec = ds.spec
    rename = dict(spec.column_map)
    if spec.id_column and spec.id_column != ID:
        rename[spec.id_column] = ID
    rows = []
    for offset, record in enumerate(records):
        row = {rename.get(k, k): v for k, v in record.items()}
        if spec.text_columns:
            parts = [record.get(c) for c in spec.text_columns]
            row[TEXT] = spec.text_separator.join(str(p) for p in parts if p is not None and str(p) != "")
        row_number = first_row + offset
        if spec.id_column is None:
            row[ID] = f"r{row_number:07d}"
        row[ROW_NUMBER] = row_number
        rows.append(row)
    passthrough: list[str] = []
    for row in rows:
        for key in row:
            if key not in CORE_COLUMNS and key not in (ROW_NUMBER, READ_ERROR) and key not in passthrough:
                passthrough.append(key)
    columns = CORE_COLUMNS + passthrough + [ROW_NUMBER, READ_ERROR]
    values = {c: [row.get(c) for row in rows] for c in columns}
    values[ID] = [_id_text(v) for v in values[ID]]
    values[LABEL] = [None if v is None else str(v) for v in values[LABEL]]
    if ds.team_source == "label_rule":
        # Once per distinct label, not per row: per row it was a third of a 1M-row file's id audit (bench/scale.py).
        rules = spec.team_from_label or {}
        team_of = {label: team_for_label(label, rules) for label in set(values[LABEL])}
        values[TEAM] = [team_of[v] for v in values[LABEL]]
    else:
        values[TEAM] = [None if v is None else str(v) for v in values[TEAM]]
    # object dtype keeps None as None (pandas 3 would turn it into NaN in a "str" column)
    frame = pd.DataFrame({c: pd.Series(values[c], dtype=object) for c in columns})
    frame[ROW_NUMBER] = frame[ROW_NUMBER].astype("int64")
    if spec.id_column is not None:
        raw_ids = [row.get(ID) for row in rows]
        frame.attrs[_IDS_NOT_TEXT] = sum(not isinstance(v, str) and _id_text(v) is not None for v in raw_ids)
    return frame


def _id_text(value: Any) -> str | None:
    """The id as text, exactly as given; None when missing (a float NaN is missing, not the id "nan")."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _format_of(uri: str) -> str:
    suffix = PurePosixPath(parse_s3_uri(uri).key if is_s3_uri(uri) else uri).suffix.lower()
    if suffix not in _FORMATS:
        raise DatasetError(
            f"cannot tell the format of {uri!r} from its extension {suffix or '(none)'}; "
            f"use one of {', '.join(sorted(_FORMATS))}"
        )
    return _FORMATS[suffix]


def _file_stem(uri: str) -> str:
    return PurePosixPath(parse_s3_uri(uri).key if is_s3_uri(uri) else uri).stem


def _slug(name: str) -> str:
    # [a-z0-9-] only: legal in partition keys and file names, and never contains the key separator "__".
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dataset"
