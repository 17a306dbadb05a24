"""Batch state and processing shared by both providers: stored files, batches, their lines, the worker.

A batch finishes `batch.complete_after_s` seconds after creation. Its lines are processed one by one spread over
that time (so a cancel half-way keeps about half the results), each through the same engine as online requests
(answers, faults, poison rule), billed at the batch price multiplier, and never subject to rate limits.
With `batch.expire: true` only the lines due before the deadline run (about half) and the rest expire;
fault `batch_expire_rate` expires single lines at random.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from llm_sim import anthropic_wire, openai_wire
from llm_sim.engine import Engine
from llm_sim.http_common import new_id
from llm_sim.prompt import Prompt


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class BatchLine:
    custom_id: str
    prompt: Prompt | None
    problem: tuple[int, str, str] | None  # (status, error type, message) when the line cannot run
    state: str = "pending"  # pending | succeeded | errored | canceled | expired
    result: dict[str, Any] | None = None


@dataclass
class SimBatch:
    id: str
    provider: str
    lines: list[BatchLine]
    created_at: float
    started: float  # monotonic
    base_url: str
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "in_progress"
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    times: dict[str, float | None] = field(default_factory=dict)
    task: asyncio.Task | None = None

    def count(self, state: str) -> int:
        return sum(1 for line in self.lines if line.state == state)


class BatchStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, SimBatch] = {}

    def reset(self) -> None:
        for batch in self.batches.values():
            if batch.task is not None:
                batch.task.cancel()
        self.batches.clear()
        self.files.clear()

    async def shutdown(self) -> None:
        tasks = [b.task for b in self.batches.values() if b.task is not None and not b.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def start(self, batch: SimBatch) -> None:
        self.batches[batch.id] = batch
        self.engine.ledger.batches["created"] += 1
        batch.task = asyncio.get_running_loop().create_task(self._process(batch))

    async def _process(self, batch: SimBatch) -> None:
        config = self.engine.config
        delay = config.batch_complete_after_s
        expire_all = config.batch_expire
        span = delay * 2 if expire_all else delay
        total = max(1, len(batch.lines))
        for index, line in enumerate(batch.lines):
            due = batch.started + span * (index + 1) / total
            if expire_all and due > batch.started + delay:
                break
            wait = due - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(batch.cancel_requested.wait(), timeout=wait)
            if batch.cancel_requested.is_set():
                break
            self._run_line(batch, line)
        if expire_all and not batch.cancel_requested.is_set():
            # Lines not yet due when the window closed.
            remaining = batch.started + delay - time.monotonic()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(batch.cancel_requested.wait(), timeout=remaining)
        self._finish(batch)

    def _run_line(self, batch: SimBatch, line: BatchLine) -> None:
        engine = self.engine
        expire_rate = float(engine.faults.settings.get("batch_expire_rate", 0.0))
        if expire_rate and engine.faults.rng.random() < expire_rate:
            line.state = "expired"
            return
        if line.problem is not None or line.prompt is None:
            status, type_, message = line.problem or (400, "invalid_request_error", "invalid request")
            engine.ledger.record(
                provider=batch.provider,
                model=line.prompt.model if line.prompt else "",
                endpoint="batch_line",
                status=str(status),
                usage=None,
                billed_usd=0.0,
                user_sha256=line.prompt.user_sha256 if line.prompt else "",
                custom_id=line.custom_id,
                batch_id=batch.id,
            )
            line.state, line.result = "errored", self._error_result(batch, line, status, type_, message)
            return
        outcome = engine.run(
            line.prompt, endpoint="batch_line", batch=True, custom_id=line.custom_id, batch_id=batch.id
        )
        if outcome.error_kind is None:
            line.state = "succeeded"
            if batch.provider == "openai":
                body = openai_wire.completion_body(line.prompt, outcome, engine)
                line.result = self._openai_line(line, 200, body)
            else:
                message = anthropic_wire.message_body(line.prompt, outcome)
                line.result = {
                    "custom_id": line.custom_id,
                    "result": {"type": "succeeded", "message": message},
                }
            return
        line.state = "errored"
        if batch.provider == "openai":
            status, body, _ = openai_wire.fault_error(
                outcome.error_kind, line.prompt.model, line.prompt.prompt_tokens(), engine
            )
            line.result = self._openai_line(line, status, body)
        else:
            status, type_, message, _ = anthropic_wire.fault_error(outcome.error_kind)
            line.result = self._error_result(batch, line, status, type_, message)

    @staticmethod
    def _openai_line(line: BatchLine, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": new_id("batch_req_"),
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": new_id("req_", 32), "body": body},
            "error": None,
        }

    def _error_result(
        self, batch: SimBatch, line: BatchLine, status: int, type_: str, message: str
    ) -> dict[str, Any]:
        if batch.provider == "openai":
            return self._openai_line(line, status, openai_wire.error_body(message, type_))
        return {
            "custom_id": line.custom_id,
            "result": {
                "type": "errored",
                "error": anthropic_wire.error_body(type_, message, new_id("req_", 24)),
            },
        }

    def _finish(self, batch: SimBatch) -> None:
        now = time.time()
        cancelled = batch.cancel_requested.is_set()
        for line in batch.lines:
            if line.state == "pending":
                line.state = "canceled" if cancelled else "expired"
        ledger = self.engine.ledger.batches
        if batch.provider == "openai":
            self._finish_openai(batch, cancelled, now)
        else:
            batch.status = "ended"
            batch.times["ended_at"] = now
        if cancelled:
            ledger["cancelled"] += 1
        elif self.engine.config.batch_expire:
            ledger["expired"] += 1
        else:
            ledger["completed"] += 1

    def _finish_openai(self, batch: SimBatch, cancelled: bool, now: float) -> None:
        outputs, errors = [], []
        for line in batch.lines:
            if line.state == "succeeded":
                outputs.append(line.result)
            elif line.state == "errored":
                errors.append(line.result)
            elif line.state == "expired":
                message = "This request could not be executed before the completion window expired."
                errors.append(self._openai_failure(line, "batch_expired", message))
            else:
                message = "This request was not executed because the batch was cancelled."
                errors.append(self._openai_failure(line, "batch_cancelled", message))
        shuffle = random.Random(batch.id)  # providers do not keep input order; tests must not rely on it
        shuffle.shuffle(outputs)
        shuffle.shuffle(errors)
        if outputs:
            stored = self.add_file(f"{batch.id}_output.jsonl", "batch_output", jsonl(outputs))
            batch.meta["output_file_id"] = stored.id
        if errors:
            stored = self.add_file(f"{batch.id}_error.jsonl", "batch_output", jsonl(errors))
            batch.meta["error_file_id"] = stored.id
        batch.times["finalizing_at"] = now
        if cancelled:
            batch.status, batch.times["cancelled_at"] = "cancelled", now
        elif self.engine.config.batch_expire:
            batch.status, batch.times["expired_at"] = "expired", now
        else:
            batch.status, batch.times["completed_at"] = "completed", now

    @staticmethod
    def _openai_failure(line: BatchLine, code: str, message: str) -> dict[str, Any]:
        return {
            "id": new_id("batch_req_"),
            "custom_id": line.custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }

    def cancel(self, batch: SimBatch) -> None:
        batch.cancel_requested.set()
        if batch.provider == "openai":
            batch.status = "cancelling"
            batch.times["cancelling_at"] = time.time()
        else:
            batch.status = "canceling"
            batch.times["cancel_initiated_at"] = time.time()


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()
