"""Admission control for one process: every request asks here before it is sent.

Rate limits are token buckets (requests, tokens; Anthropic input and output tokens apart) kept in the shared
store, so all processes calling the same provider+model split one limit. A request reserves its estimated units
before it is sent and is reconciled with the provider's reported usage after; the provider's rate-limit headers
refresh the bucket size and correct our level on every response; a 429 shrinks the allowed rate (AIMD) and its
retry-after blocks every process sharing the limit. The budget reservation rides in the same transaction.

One coroutine per process talks to the store (in one worker thread), first-come first-served, and batches
everything that queued up meanwhile into a single transaction: the event loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from concurrent.futures import ThreadPoolExecutor

from resources.llm.errors import BudgetExhaustedError
from resources.llm.state_store import BudgetCap, Grant, LimitSpec, LimitStateStore, Permit, Settlement

MAX_PERMITS_PER_TRANSACTION = 64
MAX_WAIT_SLICE_S = 0.25  # re-check at least this often while waiting (others' refunds may free room)

_NO_LIMITS = Grant(None, {})


def limit_spec(
    limit_key: str,
    *,
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
    input_tokens_per_minute: float | None,
    output_tokens_per_minute: float | None,
    burst_s: float,
    server_slots: int | None = None,
    slots_key: str = "",
) -> LimitSpec | None:
    """The configured limits as per-second refill rates and the server's slots; None when nothing is configured."""
    per_minute = {
        "requests": requests_per_minute,
        "tokens": tokens_per_minute,
        "input_tokens": input_tokens_per_minute,
        "output_tokens": output_tokens_per_minute,
    }
    rates = {kind: v / 60.0 for kind, v in per_minute.items() if v is not None and v > 0}
    if not rates and server_slots is None:
        return None
    return LimitSpec(limit_key, rates, burst_s, server_slots, slots_key or limit_key)


class AdmissionController:
    """acquire() a permit before each request; settle() what happened after. Use within one event loop."""

    def __init__(
        self, store: LimitStateStore | None, spec: LimitSpec | None, caps: dict[str, BudgetCap]
    ) -> None:
        self._store = store
        self._spec = spec
        self._caps = caps
        self.enabled = store is not None and (spec is not None or bool(caps))
        self._pending: collections.deque[tuple[Permit, asyncio.Future[Grant]]] = collections.deque()
        self._settlements: list[Settlement] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self.failure: Exception | None = None

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-admission")
            self._task = asyncio.get_running_loop().create_task(self._serve())

    async def acquire(self, permit: Permit) -> Grant:
        """Wait until the permit fits every bucket and budget cap; raises BudgetExhaustedError if it never will."""
        if not self.enabled:
            return _NO_LIMITS
        if self.failure is not None:
            raise self.failure
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._pending.append((permit, future))
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(permit, future.result())
            raise

    def settle(self, settlement: Settlement) -> None:
        if self.enabled:
            self._settlements.append(settlement)
            self._wake.set()

    def release(self, permit: Permit, grant: Grant) -> None:
        """Give back a permit that was granted but never used (the run stopped before sending)."""
        self.settle(
            Settlement(
                reservation_id=grant.reservation_id,
                bucket_delta={k: -v for k, v in permit.amounts.items()},
                slot_id=grant.slot_id,
            )
        )

    async def close(self) -> None:
        """Flush outstanding settlements, then stop the store coroutine."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await self._task
        finally:
            assert self._executor is not None
            self._executor.shutdown(wait=True)
            self._task = None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        timeout: float | None = None
        while True:
            if timeout is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            settlements, self._settlements = self._settlements, []
            entries: list[tuple[Permit, asyncio.Future[Grant]]] = []
            while self._pending and len(entries) < MAX_PERMITS_PER_TRANSACTION:
                permit, future = self._pending.popleft()
                if not future.done():  # skip waiters cancelled while queued
                    entries.append((permit, future))
            if not settlements and not entries:
                if self._closing:
                    return
                timeout = None
                continue
            assert self._store is not None
            try:
                result = await loop.run_in_executor(
                    self._executor,
                    self._store.transact,
                    self._spec,
                    settlements,
                    [p for p, _ in entries],
                    self._caps,
                )
            except Exception as exc:  # the store is unreachable: every waiter learns it, nothing is sent
                self.failure = exc
                for _, future in entries + list(self._pending):
                    if not future.done():
                        future.set_exception(exc)
                self._pending.clear()
                return
            for (permit, future), grant in zip(entries, result.grants, strict=False):
                if future.done():  # cancelled while we were in the store: give its grant back
                    self.release(permit, grant)
                else:
                    future.set_result(grant)
            rest = entries[len(result.grants) :]
            if result.exhausted is not None and rest:
                _, future = rest.pop(0)
                if not future.done():
                    future.set_exception(BudgetExhaustedError(result.exhausted))
                self._pending.extendleft(reversed(rest))
                timeout = 0.0
            elif result.wait_s is not None and rest:
                self._pending.extendleft(reversed(rest))
                timeout = min(result.wait_s, MAX_WAIT_SLICE_S)
            else:
                self._pending.extendleft(reversed(rest))
                # `close()` may have set the wake-up this iteration cleared: look again instead of sleeping.
                timeout = 0.0 if (self._pending or self._settlements or self._closing) else None
