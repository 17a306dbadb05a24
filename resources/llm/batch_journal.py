"""The durable record of a chunk stage's provider batches: one JSON file, rewritten atomically (temp file, fsync,
rename) after every step, so a crash at any point leaves either the old record or the new one.

The submission order is: record the handle ("submitting"), reserve budget, upload (OpenAI), record the file id,
create the batch, record the batch id ("submitted"). A resume reads the journal and finishes the step that was
cut off instead of starting over, which is what keeps an item from being submitted twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOURNAL_VERSION = 1

# Handle statuses, in order. "cancelled" means a cancel was sent; the handle still needs collecting.
SUBMITTING = "submitting"
SUBMITTED = "submitted"
IN_PROGRESS = "in_progress"
ENDED = "ended"
COLLECTED = "collected"
CANCELLED = "cancelled"
HANDLE_STATUSES = (SUBMITTING, SUBMITTED, IN_PROGRESS, ENDED, COLLECTED, CANCELLED)


@dataclass
class BatchHandle:
    """One provider batch. A chunk stage may need several: provider size limits split a submission into parts,
    and retryable/expired lines go into follow-up rounds.

    `submission_id` is ours and deterministic: "<dataset_id>:<partition>:<stage>:<round>:<part>".
    `keys` are the items' idempotency keys; each line's custom_id is `batch_custom_id(provider, key)` (the key
    itself where the provider accepts it). `empty_keys` are items with empty text: never sent, they come back
    from collection as item-permanent "empty_input" failures. Money in USD, times ISO-8601 UTC.
    """

    submission_id: str
    provider: str
    model: str
    keys: list[str]
    round: int = 1
    part: int = 0
    stage: str = ""
    status: str = SUBMITTING
    batch_id: str | None = None
    input_file_id: str | None = None  # OpenAI only
    submitted_at: str | None = None
    ended_at: str | None = None
    create_started_at: str | None = None  # just before the create call: bounds the search after a crash
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    budget_scopes: list[str] = field(default_factory=list)  # the submission's run/dataset/day scopes
    empty_keys: list[str] = field(default_factory=list)
    repair_keys: list[str] = field(default_factory=list)  # keys sent with their one schema repair
    collected_at: str | None = None
    cost_usd: float = 0.0  # actual, at batch prices, known once collected
    teams: dict[str, str] = field(default_factory=dict)  # key -> billed team, for the spend ledger

    @property
    def pending(self) -> bool:
        """True until the handle has been collected."""
        return self.status != COLLECTED

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BatchHandle:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass
class CarriedUsage:
    """What an item spent in earlier rounds (tokens, USD), so its final ItemResult counts every attempt."""

    attempts: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cache_savings_usd: float = 0.0
    first_attempt_at: str | None = None


class BatchJournal:
    """Durable record of a chunk stage's batch submissions: a JSON file at `path`, written atomically
    (temp + fsync + rename). Every step is recorded BEFORE the next provider call, so a crash at any point
    resumes without submitting an item twice. One writer at a time (the run that owns the partition);
    sensors may read it concurrently (they always see a whole file)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handles: list[BatchHandle] = []
        # Per key: (bad output, problem) of a schema failure whose repair goes into the next round.
        self.repairs: dict[str, list[str]] = {}
        self.carried: dict[str, CarriedUsage] = {}
        self.reload()

    # -- reading -----------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the file (a missing file is an empty journal)."""
        if not self.path.exists():
            self._handles, self.repairs, self.carried = [], {}, {}
            return
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RuntimeError(
                f"batch journal {self.path} is unreadable ({exc}); it records submitted provider batches, so "
                "do not delete it blindly: check the provider's batch list, then remove or repair the file"
            ) from exc
        self._load_json(raw)

    @property
    def exists(self) -> bool:
        return self.path.exists()

    @property
    def handles(self) -> list[BatchHandle]:
        """Every handle ever recorded, in submission order."""
        return list(self._handles)

    @property
    def pending(self) -> list[BatchHandle]:
        """Handles not yet collected (submitting, submitted, in progress, ended or cancelled)."""
        return [h for h in self._handles if h.pending]

    def round_handles(self, round_: int) -> list[BatchHandle]:
        return [h for h in self._handles if h.round == round_]

    @property
    def last_round(self) -> int:
        """The highest round recorded (0 for an empty journal)."""
        return max((h.round for h in self._handles), default=0)

    def get(self, submission_id: str) -> BatchHandle | None:
        return next((h for h in self._handles if h.submission_id == submission_id), None)

    # -- writing -----------------------------------------------------------------------------------------
    def record(self, handle: BatchHandle) -> None:
        """Insert or replace `handle` (by submission_id) and write the file durably before returning."""
        for i, existing in enumerate(self._handles):
            if existing.submission_id == handle.submission_id:
                self._handles[i] = self._bind(handle)
                break
        else:
            self._handles.append(self._bind(handle))
        self.save()

    def to_json(self) -> dict[str, Any]:
        """The journal as the file (or the shared database's row) holds it."""
        return {
            "version": JOURNAL_VERSION,
            "handles": [h.to_json() for h in self._handles],
            "repairs": self.repairs,
            "carried": {k: dataclasses.asdict(v) for k, v in self.carried.items()},
        }

    def _load_json(self, raw: dict[str, Any]) -> None:
        self._handles = [self._bind(BatchHandle.from_json(h)) for h in raw.get("handles", [])]
        self.repairs = {k: list(v) for k, v in (raw.get("repairs") or {}).items()}
        self.carried = {k: CarriedUsage(**v) for k, v in (raw.get("carried") or {}).items()}

    def save(self) -> None:
        """Write the whole journal atomically: temp file in the same folder, fsync, rename, fsync the folder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        fd, tmp = tempfile.mkstemp(prefix=".batches-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def remove(self) -> None:
        """Delete the journal file (when the chunk has materialized). Pending handles are the caller's concern."""
        self.path.unlink(missing_ok=True)
        self._handles, self.repairs, self.carried = [], {}, {}

    def _bind(self, handle: BatchHandle) -> BatchHandle:
        # Handles remember their journal so collect_batch/cancel_batch can record their new status.
        object.__setattr__(handle, "_journal", self)
        return handle

    def __repr__(self) -> str:
        return f"BatchJournal({str(self.path)!r}, handles={len(self._handles)}, pending={len(self.pending)})"


def journal_of(handle: BatchHandle) -> BatchJournal | None:
    """The journal a handle was loaded from or recorded in (None for a free-standing handle)."""
    return getattr(handle, "_journal", None)


class SharedBatchJournal(BatchJournal):
    """The same journal as a row of the shared backend's database (CHUNKWISE_STATE_URL, resources/shared_docs.py,
    kind "batch_journal", key `<dataset>/<partition>/<stage>`): every `record` replaces the row in one statement,
    so a crash leaves the old journal or the new one, and the batch sensor and a re-run on any machine read it."""

    KIND = "batch_journal"

    def __init__(self, url: str, dataset_id: str, partition_key: str, stage: str) -> None:
        from resources.shared_docs import SharedDocuments
        from resources.state_url import redact

        self.key = f"{dataset_id}/{partition_key}/{stage}"
        self._docs = SharedDocuments(url, self.KIND)
        self._exists = False
        super().__init__(f"{redact(url)}#{self.KIND}/{self.key}")

    def reload(self) -> None:
        raw = self._docs.get(self.key)
        self._exists = raw is not None
        self._handles, self.repairs, self.carried = [], {}, {}
        if raw is not None:
            self._load_json(raw)

    @property
    def exists(self) -> bool:
        return self._exists

    def save(self) -> None:
        self._docs.put(self.key, self.to_json())
        self._exists = True

    def remove(self) -> None:
        self._docs.delete(self.key)
        self._exists = False
        self._handles, self.repairs, self.carried = [], {}, {}

    @classmethod
    def keys(cls, url: str) -> list[tuple[str, str, str]]:
        """(dataset, partition, stage) of every journal in the database."""
        from resources.shared_docs import SharedDocuments

        return [tuple(key.split("/", 2)) for key in SharedDocuments(url, cls.KIND).list_keys()]  # type: ignore[misc]
