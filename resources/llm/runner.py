"""The online engine behind LLMResource.run_prompts: bounded concurrency over one keep-alive HTTP pool (transport.py),
admission (rate limits + budget + server slots) before every request, reconciliation after, retries with
full-jitter backoff, one repair attempt for output that fails its schema, the failure taxonomy, and progress logging.
A 429 shrinks the run's send window (SendWindow) instead of counting as a failure; only 429s without a reply for
`breaker_rate_limited_s` open the circuit breaker.

Against servers nobody here wrote (llama.cpp, vLLM, Ollama, LiteLLM; see providers/dialects.py):
- every reply's output tokens are checked against the cap: a server that ignored it stops the job on its first
  reply with one message naming the `dialect` to set; the reply is charged in full (above its reservation too);
- each request has a deadline learnt from this run's completed replies (the slowest reply plus the time the cap
  takes at the measured output speed, times a safety factor, between `min_timeout_s` and `timeout_s`); a request
  past it is cancelled and counted, and an item that times out `max_timeouts_per_item` times while the server
  answers others is dead-lettered `timeout`;
- `finish_reason: length` with content that is not JSON is `truncated` (one repair asking for a shorter reply
  when it fits the context; a context error on that repair keeps the cause `truncated`);
- `normalize` rules change numbers before validation and every change is recorded in the item's result;
- SIGTERM / SIGINT (main thread only): no new requests, the ones in flight finish and reach on_result, then
  JobFatalError("stopped") (not retried by Dagster); a second signal cancels the requests in flight."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import json
import logging
import random
import re
import signal
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from resources.llm.budget import exhausted_message
from resources.llm.errors import (
    BudgetExhaustedError,
    ChunkRetryableError,
    Classified,
    FailureLevel,
    JobFatalError,
    classify_provider_error,
    classify_transport_error,
    redact,
)
from resources.llm.normalize import apply_rules
from resources.llm.prices import ModelPrice
from resources.llm.providers.base import ParsedReply, ProviderAdapter
from resources.llm.providers.dialects import Dialect, cap_advice
from resources.llm.ratelimit import AdmissionController
from resources.llm.spend_ledger import (
    INVALID,
    OK,
    AttemptContext,
    Billed,
    SpendLedger,
    endpoint_scope,
    model_scope,
)
from resources.llm.state_store import BudgetNeed, Permit, Settlement
from resources.llm.structured import parse_json_object, validate
from resources.llm.tokens import conservative_input_tokens, count_tokens, estimate_prompt_tokens
from resources.llm.transport import OnlineClient, TransportError
from resources.llm.types import (
    BudgetScope,
    CallOutcome,
    ItemResult,
    ItemUsage,
    LLMRequest,
    TokenUsage,
    UsageSummary,
    clip_reply,
)

# Per-request deadline = slowest recent reply + TIMEOUT_SAFETY x (output cap / measured output tokens per second).
TIMEOUT_SAFETY = 2.0
SPEED_SAMPLES = 50


MAX_SEND_SPACING_S = 5.0
FREE_RATE_LIMITED_ATTEMPTS = 50


class SendWindow:
    """How many of a run's requests may be out at once. It starts at `max_concurrency`; a 429 halves it (once per
    wave: only a request sent since the last halving halves it again) and each reply adds one back, up to the
    start. When 429s keep coming with the window at one request, it also spaces the sends: by the retry-afters
    (how long one request takes to fit the provider's bucket again), 10% less after each reply, one request at a
    time until the spacing is gone. With no limit configured in the profile, this is what keeps a run from
    hammering a provider that refuses: the admission controller (resources/llm/ratelimit.py) paces only the limits
    it knows. Within one event loop. Measured: a provider refilling about 10 requests a second, 32 requests at
    once: 100 items done, fewer refused than answered (tests/resources/test_llm_errors.py); before, the circuit
    breaker opened within a tenth of a second."""

    def __init__(self, size: int) -> None:
        self.limit = max(1, size)
        self.size = self.limit
        self.in_flight = 0
        self._freed = asyncio.Event()
        self._epoch = 0  # halvings so far: a request carries the epoch it was sent in
        self._refusals = 0  # 429s since the last reply
        self._paused_until = 0.0
        self._spacing_s = 0.0  # between two sends, learnt from a storm's retry-after
        self._next_send_at = 0.0

    async def acquire(self) -> int:
        """Wait for a place in the window; returns the epoch to give `shrink` if the request gets a 429."""
        while True:
            pause = max(self._paused_until, self._next_send_at) - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            elif self.in_flight >= self.size:
                self._freed.clear()
                await self._freed.wait()
            else:
                break
        self.in_flight += 1
        if self._spacing_s:
            self._next_send_at = time.monotonic() + self._spacing_s
        return self._epoch

    def release(self) -> None:
        self.in_flight -= 1
        self._freed.set()

    def shrink(self, retry_after_s: float | None, epoch: int) -> None:
        """A 429: the window halves. A second one with no reply between (a lone 429 may be the provider's noise;
        two in a row say its bucket is empty): nothing more is sent until its retry-after has passed, and once the
        window is down to one request the sends are spaced too."""
        now = time.monotonic()
        storm = self._refusals > 0
        if epoch == self._epoch:
            self.size = max(1, self.size // 2)
            self._epoch += 1
        self._refusals += 1
        if storm and retry_after_s:
            self._paused_until = max(self._paused_until, now + retry_after_s)
        if (storm or self._spacing_s) and retry_after_s and self.size == 1:
            # Sent `spacing` after the one before and still `retry_after` early: the spacing needed is the sum.
            self._spacing_s = min(self._spacing_s + retry_after_s, MAX_SEND_SPACING_S)

    def grow(self) -> None:
        """A reply: one more request may be out, unless the sends are being spaced (then the spacing eases)."""
        self._refusals = 0
        if self._spacing_s > 0.001:
            self._spacing_s *= 0.9
            return
        self._spacing_s = 0.0
        if self.size < self.limit:
            self.size += 1
            self._freed.set()


# "maximum context length is 2048 tokens", "exceed context window of 2048", "context size (2048)"
_CONTEXT_SIZE = re.compile(r"context (?:length|window|size)\D{0,30}?(\d{3,7})", re.IGNORECASE)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class EngineSettings:
    """Everything the engine needs that does not change per call. Seconds for times, tokens for sizes."""

    adapter: ProviderAdapter
    base_url: str
    api_key: str
    model: str
    price: ModelPrice
    max_output_tokens: int
    timeout_s: float
    max_concurrency: int
    max_attempts: int
    structured_output: str
    progress_interval_s: float
    breaker_consecutive_failures: int = 25
    # 429s with no reply between, for this long, stop the run. A 429 is the provider saying "later", not failing:
    # it counts toward neither `breaker_consecutive_failures` nor an item's `max_attempts`.
    breaker_rate_limited_s: float = 300.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    dialect: Dialect | None = None
    min_timeout_s: float = 10.0
    max_timeouts_per_item: int = 2
    context_tokens: int | None = None  # the server's context window when known (else learnt from its errors)
    handle_signals: bool = True


@dataclass
class _ItemState:
    request: LLMRequest
    usage: ItemUsage
    attempts: int = 0
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None
    timeouts: int = 0
    rate_limited: int = 0  # its requests the provider refused with 429 (they do not use up max_attempts)
    last_reply: str | None = None


@dataclass
class _Counters:
    requests: int = 0
    items_sent: int = 0  # items sent at least once; requests beyond these are retries
    rate_limited: int = 0
    succeeded: int = 0
    failed: int = 0
    exhausted: int = 0
    consecutive_retryable: int = 0
    replies: int = 0  # HTTP 200 replies: the server is alive
    timeouts: int = 0
    latencies: list[float] = field(default_factory=list)
    cost_usd: float = 0.0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    cache_savings_usd: float = 0.0
    retry_reasons: collections.Counter[str] = field(default_factory=collections.Counter)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _reply_id(payload: Any) -> str | None:
    """The provider's id of a reply (`chatcmpl-...`, `msg_...`): what its own logs call the request."""
    value = payload.get("id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (1..99, inclusive method) of `values`; 0.0 for none."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class PromptRun:
    """One run_prompts call. Create, then `await run()`; raises JobFatalError / ChunkRetryableError."""

    def __init__(
        self,
        settings: EngineSettings,
        admission: AdmissionController,
        *,
        budget_scopes: tuple[str, ...] | None,
        system_prompt: str,
        schema: dict | None,
        schema_name: str,
        stage: str,
        on_result: Callable[[ItemResult], None] | None,
        log: logging.Logger | logging.LoggerAdapter | None,
        mode: str,
        ledger: SpendLedger | None = None,
        scope: BudgetScope | None = None,
        normalize: dict[str, tuple[list[str | None], str, dict]] | None = None,
    ) -> None:
        self.s = settings
        self.normalize = normalize or {}
        self.ledger = ledger
        self.scope = scope
        # A job-fatal answer halts these for every process sharing the ledger (resources/llm/spend_ledger.py).
        self._halt_scopes = (
            endpoint_scope(settings.adapter.name, settings.base_url, settings.api_key),
            model_scope(settings.adapter.name, settings.base_url, settings.model),
        )
        self.admission = admission
        self.budget_scopes = budget_scopes
        self.system_prompt = system_prompt
        self.schema = schema
        self.schema_name = schema_name
        self.stage = stage
        self.on_result = on_result
        self.log = log or logging.getLogger("chunkwise.llm")
        self.mode = mode
        self.c = _Counters()
        self.results: list[ItemResult] = []
        self._stop = asyncio.Event()
        self._fatal: tuple[str, str] | None = None  # (reason, description)
        self._breaker: str | None = None
        self._callback_error: BaseException | None = None
        self._store_error: str | None = None  # the limit/budget store failed mid-run: retryable
        self._cached_prefix_tokens = 0  # Anthropic: recent cache-read size, so ITPM reservations skip it
        self._started = time.monotonic()
        self._total = 0
        self._unfinished = 0
        self._rng = random.Random()
        self._speed: collections.deque[tuple[float, int]] = collections.deque(maxlen=SPEED_SAMPLES)
        self._context_tokens = settings.context_tokens
        self._signal: str | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._usage_estimated_logged = False
        self._window = SendWindow(settings.max_concurrency)
        self._rate_limited_since: float | None = None  # the first 429 since the last reply

    # -- entry point -------------------------------------------------------------------------------------
    async def run(self, requests: Sequence[LLMRequest]) -> CallOutcome:
        self._total = len(requests)
        queue = collections.deque(requests)
        workers_n = min(self.s.max_concurrency, max(1, len(requests)))
        self.admission.start()
        progress = asyncio.get_running_loop().create_task(self._progress())
        try:
            async with contextlib.AsyncExitStack() as stack:
                client = await stack.enter_async_context(
                    OnlineClient(
                        headers=self.s.adapter.headers(self.s.api_key),
                        connections=workers_n,
                        timeout_s=self.s.timeout_s,
                        tls=tls_context(),
                    )
                )
                self._workers = [asyncio.create_task(self._worker(client, queue)) for _ in range(workers_n)]
                with self._signals_handled():
                    done = await asyncio.gather(*self._workers, return_exceptions=True)
                for outcome_or_error in done:
                    if isinstance(outcome_or_error, asyncio.CancelledError):
                        self._unfinished += 1  # a second signal cancelled the item this worker had in flight
                    elif isinstance(outcome_or_error, BaseException):
                        raise outcome_or_error
        finally:
            progress.cancel()
            await self.admission.close()
        self._unfinished += len(queue)
        self._log_progress(final=True)
        outcome = CallOutcome(results=self.results, summary=self._summary())
        self._raise_if_stopped(outcome)
        return outcome

    def _raise_if_stopped(self, outcome: CallOutcome) -> None:
        counts = (
            f"{self.c.succeeded:,} of {self._total:,} items succeeded, {self.c.failed:,} failed for good, "
            f"{self._unfinished:,} not finished"
        )
        if self._fatal is not None:
            reason, description = self._fatal
            raise JobFatalError(reason, f"{description}. {counts}; completed work is kept.", outcome)
        if self._callback_error is not None:
            raise self._callback_error
        if self._store_error is not None:
            raise ChunkRetryableError(
                f"stage {self.stage}: the shared limit/budget store failed ({self._store_error}): no request was "
                f"sent after it. {counts}; retry the partition once the store is back (finished items are not "
                "sent again).",
                outcome,
            )
        if self._signal is not None:
            raise JobFatalError(
                "stopped",
                f"stage {self.stage} stopped by a signal ({self._signal}): no request was sent after it and the "
                f"requests in flight finished and were handed to on_result (checkpointed). {counts}; re-run the "
                "partition to continue (finished items are not sent again).",
                outcome,
            )
        if self._breaker is not None or self._unfinished:
            why = self._breaker or (
                f"{self.c.exhausted:,} items used all {self.s.max_attempts} attempts on retryable errors "
                f"({dict(self.c.retry_reasons)})"
            )
            raise ChunkRetryableError(
                f"stage {self.stage}: {why}. {counts}; retry the partition later.", outcome
            )

    # -- signals -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals_handled(self):
        """SIGTERM / SIGINT while the workers run: stop cleanly (see the module docstring). Only where asyncio can
        own the signals (the main thread); elsewhere the caller's handlers stay as they are."""
        loop = asyncio.get_running_loop()
        installed: list[tuple[signal.Signals, Any]] = []
        if self.s.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                previous = signal.getsignal(sig)
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                except (ValueError, RuntimeError, NotImplementedError):
                    continue
                installed.append((sig, previous))
        try:
            yield
        finally:
            for sig, previous in installed:
                loop.remove_signal_handler(sig)
                if previous is not None:
                    signal.signal(sig, previous)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._signal is None:
            self._signal = sig.name
            self.log.warning(
                "llm %s: %s received: sending nothing more; waiting for the requests in flight (send it again to "
                "cancel them)",
                self.stage,
                sig.name,
            )
            self._stop.set()
            return
        self.log.warning("llm %s: second %s: cancelling the requests in flight", self.stage, sig.name)
        for task in self._workers:
            task.cancel()

    # -- workers -----------------------------------------------------------------------------------------
    async def _worker(self, client: OnlineClient, queue: collections.deque[LLMRequest]) -> None:
        while queue and not self._stop.is_set():
            request = queue.popleft()
            result = await self._process(client, request)
            if result is None:
                self._unfinished += 1
                continue
            if result.ok:
                self.c.succeeded += 1
            else:
                self.c.failed += 1
            self.results.append(result)
            if self.on_result is not None:
                try:
                    self.on_result(result)
                except (
                    BaseException
                ) as exc:  # the caller's checkpoint failed: stop, and re-raise it at the end
                    self._callback_error = exc
                    self._stop.set()

    def _stop_fatal(self, reason: str, description: str, halt_scope: str | None = None) -> None:
        if self._fatal is None:
            self._fatal = (reason, redact(description, self.s.api_key))
            self.log.error("llm %s: stopping, %s", self.stage, self._fatal[1])
        if halt_scope is not None and self.ledger is not None:
            run_id = self.scope.run_id if self.scope else ""
            self.ledger.halt(halt_scope, reason, redact(description, self.s.api_key), run_id)
        self._stop.set()

    def _attempt_context(self, st: _ItemState) -> AttemptContext:
        scope = self.scope
        return AttemptContext(
            idempotency_key=st.request.key,
            dataset_id=scope.dataset_id if scope else "",
            partition_key=scope.partition_key if scope else "",
            stage=self.stage,
            team=st.request.team,
            provider=self.s.adapter.name,
            model=self.s.model,
            mode=self.mode,
            run_id=scope.run_id if scope else "",
        )

    def _check_halt(self) -> bool:
        """True (and the run stops) when a job-fatal answer halted this endpoint, key or model, here or in
        another process: after the first such answer only requests already in flight are sent."""
        if self.ledger is None:
            return False
        halt = self.ledger.halted(self._halt_scopes)
        if halt is None:
            return False
        self._stop_fatal(
            halt.reason,
            f"{halt.message} (halted since {dt.datetime.fromtimestamp(halt.since, dt.UTC):%Y-%m-%d %H:%M:%S} UTC; "
            "after fixing it, clear with `python -m sensors.backfill clear "
            f"{self.s.adapter.name}` or run `make demo` again)",
        )
        return True

    async def _sleep(self, seconds: float) -> None:
        """Back off, but wake at once when the run stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    def _backoff_s(self, attempt: int, classified: Classified) -> float:
        if classified.retry_after_s is not None:
            return classified.retry_after_s + self._rng.uniform(0, 0.1 * max(classified.retry_after_s, 0.1))
        # Full jitter: uniform over [0, min(cap, base * 2^(attempt-1))].
        return self._rng.uniform(0, min(self.s.backoff_max_s, self.s.backoff_base_s * 2 ** (attempt - 1)))

    async def _process(self, client: OnlineClient, request: LLMRequest) -> ItemResult | None:
        """Run one item to its end; None means it did not finish (the run stopped or attempts ran out)."""
        st = _ItemState(
            request,
            ItemUsage(request.key, self.s.adapter.name, self.s.model, self.stage, mode=self.mode),
        )
        if not request.text.strip():
            return self._finish(st, ok=False, error_class="empty_input", message="the item's text is empty")
        repair: tuple[str, str] | None = None
        # Why the item is being repaired: ("schema_invalid" | "truncated", the first reply's problem).
        repairing: tuple[str, str] | None = None
        while True:
            if self._stop.is_set():
                return None
            if self._attempts_used(st) >= self.s.max_attempts:
                self.c.exhausted += 1
                return None
            wire = self.s.adapter.build(
                model=self.s.model,
                system_prompt=self.system_prompt,
                user_text=request.text,
                schema=self.schema,
                schema_name=self.schema_name,
                max_output_tokens=self.s.max_output_tokens,
                structured_output=self.s.structured_output,
                repair=repair,
            )
            prompt_tokens = estimate_prompt_tokens(wire.message_texts, wire.schema_param)
            amounts = self.s.adapter.bucket_amounts(
                prompt_tokens, self.s.max_output_tokens, self._cached_prefix_tokens
            )
            budget = None
            if self.budget_scopes is not None:
                worst_in = conservative_input_tokens(prompt_tokens)
                budget = BudgetNeed(
                    self.budget_scopes,
                    self.s.price.worst_case_usd(
                        worst_in, self.s.max_output_tokens, batch=self.mode == "batch"
                    ),
                    worst_in + self.s.max_output_tokens,
                )
            permit = Permit(amounts, budget)
            epoch = await self._window.acquire()
            try:
                grant = await self.admission.acquire(permit)
            except BudgetExhaustedError as exc:
                self._window.release()
                self._stop_fatal("budget", exhausted_message(str(exc)))
                return None
            except Exception as exc:  # an outage of the store (a lost database): stop, retry the chunk later
                self._window.release()
                if self._store_error is None:
                    self._store_error = redact(f"{type(exc).__name__}: {exc}", self.s.api_key)
                    self.log.error(
                        "llm %s: stopping, the shared limit/budget store failed (%s)",
                        self.stage,
                        self._store_error,
                    )
                self._stop.set()
                return None
            if self._stop.is_set() or self._check_halt():
                self._window.release()
                self.admission.release(permit, grant)
                return None

            st.attempts += 1
            ctx = self._attempt_context(st)
            attempt_id = SpendLedger.new_attempt_id()
            worst_usd = (
                budget.usd
                if budget is not None
                else self.s.price.worst_case_usd(
                    conservative_input_tokens(prompt_tokens),
                    self.s.max_output_tokens,
                    batch=self.mode == "batch",
                )
            )
            if self.ledger is not None:
                self.ledger.sent(attempt_id, ctx, st.attempts, worst_usd)
            st.first_at = st.first_at or _utcnow()
            st.last_at = _utcnow()
            self.c.requests += 1
            if st.attempts == 1:
                self.c.items_sent += 1
            t0 = time.monotonic()
            settlement = Settlement(
                reservation_id=grant.reservation_id,
                level_after=grant.level_after,
                request_amounts=amounts,
                slot_id=grant.slot_id,
            )
            deadline_s = self._request_timeout_s()
            try:
                async with asyncio.timeout(deadline_s):
                    response = await client.post(
                        self.s.adapter.url(self.s.base_url), json.dumps(wire.body).encode()
                    )
                payload = response.json() if response.status_code == 200 else None
            except (TransportError, json.JSONDecodeError, UnicodeDecodeError, TimeoutError) as exc:
                self._window.release()
                latency = time.monotonic() - t0
                st.usage.latency_s += latency
                # Outcome unknown: the provider may have billed it, so the budget counts the worst case.
                if budget is not None:
                    settlement.usd, settlement.tokens = budget.usd, budget.tokens
                self.admission.settle(settlement)
                timed_out = isinstance(exc, TimeoutError) or (
                    isinstance(exc, TransportError) and exc.timed_out
                )
                if isinstance(exc, TimeoutError):
                    classified = Classified(
                        FailureLevel.RETRYABLE,
                        "timeout",
                        f"no reply within the {deadline_s:.1f}s request deadline; the request was cancelled",
                    )
                elif isinstance(exc, TransportError):
                    classified = classify_transport_error(exc)
                else:
                    classified = Classified(
                        FailureLevel.RETRYABLE, "bad_response", "a 200 reply whose body is not JSON"
                    )
                if self.ledger is not None:
                    self.ledger.lost(attempt_id, ctx, st.attempts, classified.error_class)
                if timed_out:
                    st.timeouts += 1
                    self.c.timeouts += 1
                    # Bounded per item, once the server has shown it answers: the item itself is the cause.
                    if st.timeouts >= self.s.max_timeouts_per_item and self.c.replies > 0:
                        return self._finish(
                            st,
                            ok=False,
                            error_class="timeout",
                            message=(
                                f"timed out {st.timeouts} times (last deadline {deadline_s:.1f}s: "
                                f"{self._deadline_basis()}), while the server answered other requests; "
                                "raise max_timeouts_per_item or timeout_s, or lower max_output_tokens"
                            ),
                        )
                if not await self._retryable(st, classified):
                    return None
                continue
            except BaseException:
                self._window.release()
                # Cancelled mid-request (a second signal): the provider may bill it; give the permit back as spent.
                if budget is not None:
                    settlement.usd, settlement.tokens = budget.usd, budget.tokens
                self.admission.settle(settlement)
                if self.ledger is not None:
                    self.ledger.lost(attempt_id, ctx, st.attempts, "cancelled")
                raise
            self._window.release()
            latency = time.monotonic() - t0
            st.usage.latency_s += latency
            settlement.headers = self.s.adapter.rate_headers(response.headers)

            if response.status_code != 200:
                err = self.s.adapter.parse_error(response)
                classified = classify_provider_error(err)
                settlement.rate_limited = classified.is_rate_limit
                settlement.retry_after_s = classified.retry_after_s
                if classified.is_rate_limit:
                    st.rate_limited += 1
                    self._window.shrink(classified.retry_after_s, epoch)
                self.admission.settle(settlement)  # failed requests are not billed
                if self.ledger is not None:
                    self.ledger.not_billed(attempt_id, ctx, st.attempts, classified.error_class)
                if classified.error_class == "input_too_long":
                    self._learn_context_size(err.message)
                    if repairing is not None:
                        # The repair (the first reply fed back) did not fit the context: keep the real cause.
                        cause, problem = repairing
                        return self._finish(
                            st,
                            ok=False,
                            error_class=cause,
                            message=f"{self._cause_message(cause, problem)}; the repair attempt did not fit "
                            f"the model's context ({classified.message})",
                        )
                if classified.level is FailureLevel.FATAL:
                    halt_scope = (
                        self._halt_scopes[1] if classified.error_class == "config" else self._halt_scopes[0]
                    )
                    self._stop_fatal(classified.error_class, self._fatal_description(classified), halt_scope)
                    return None
                if classified.level is FailureLevel.ITEM:
                    return self._finish(
                        st, ok=False, error_class=classified.error_class, message=classified.message
                    )
                if not await self._retryable(st, classified):
                    return None
                continue

            # 200: bill it, reconcile the buckets, then judge the content.
            reply = self.s.adapter.parse_reply(payload if isinstance(payload, dict) else {})
            usage = self._reported_or_estimated_usage(reply, prompt_tokens)
            cost = self._account(st, usage)
            actual = self.s.adapter.bucket_actuals(usage, max(self.s.max_output_tokens, usage.output_tokens))
            if usage.input_tokens > 0:
                settlement.bucket_delta = {k: actual[k] - v for k, v in amounts.items() if k in actual}
            settlement.usd = cost  # the actual cost, in full, even above the worst case reserved
            settlement.tokens = usage.input_tokens + usage.output_tokens
            self.admission.settle(settlement)
            self.c.latencies.append(latency)
            self.c.consecutive_retryable = 0
            self._rate_limited_since = None
            self._window.grow()
            self.c.replies += 1
            self._speed.append((latency, usage.output_tokens))
            self._cached_prefix_tokens = usage.cached_input_tokens
            st.last_reply = reply.content if reply.content is not None else reply.refusal
            if usage.output_tokens > self.s.max_output_tokens:
                self._cap_ignored(usage.output_tokens, cost, worst_usd)

            # Judge the content, then record the bill with its verdict, before the result is used.
            problem: str | None = None
            value: dict[str, Any] | None = None
            notes: list[str] = []
            truncated = False
            if reply.refusal is not None or reply.finish_reason in ("refusal", "content_filter"):
                verdict = "content_filter" if reply.finish_reason == "content_filter" else "refusal"
            elif self.schema is None:
                verdict, value = OK, {"text": reply.content or ""}
            else:
                value, problem = parse_json_object(reply.content)
                truncated = value is None and reply.finish_reason == "length"
                if value is not None:
                    notes = apply_rules(value, self.normalize) if self.normalize else []
                    errors = validate(value, self.schema)
                    problem = "; ".join(errors[:5]) if errors else None
                verdict = OK if problem is None else INVALID
            if self.ledger is not None:
                self.ledger.billed(
                    attempt_id,
                    ctx,
                    st.attempts,
                    Billed(
                        usage.input_tokens,
                        usage.cached_input_tokens,
                        usage.cache_write_tokens,
                        usage.output_tokens,
                        cost,
                        self.s.price.cache_savings_usd(usage, batch=self.mode == "batch"),
                    ),
                    verdict,
                    provider_request_id=_reply_id(payload),
                )

            if verdict in ("refusal", "content_filter"):
                why = reply.refusal if isinstance(reply.refusal, str) else reply.finish_reason
                return self._finish(st, ok=False, error_class=verdict, message=f"the model declined: {why}")
            if verdict == OK:
                # finish_reason "length" is fine when the content is complete and valid.
                return self._finish(st, ok=True, output=value, finish=reply.finish_reason, normalized=notes)
            cause = "truncated" if truncated else "schema_invalid"
            problem = problem or "invalid"
            if repairing is not None:
                first_cause, first_problem = repairing
                if truncated:
                    return self._finish(
                        st,
                        ok=False,
                        error_class="truncated",
                        message=f"{self._cause_message('truncated', problem)}; the one repair was cut off too",
                    )
                first = " (the first reply hit the output cap)" if first_cause == "truncated" else ""
                return self._finish(
                    st,
                    ok=False,
                    error_class="schema_invalid",
                    message=f"output failed its schema after one repair: {problem}{first}",
                )
            if truncated and not self._repair_fits(wire.message_texts, wire.schema_param, reply, usage):
                return self._finish(
                    st,
                    ok=False,
                    error_class="truncated",
                    message=f"{self._cause_message('truncated', problem)}; no repair: it would not fit the "
                    f"model's context of {self._context_tokens:,} tokens",
                )
            repairing = (cause, problem)
            repair_problem = (
                f"the reply stopped at the output limit of {self.s.max_output_tokens} tokens before its JSON "
                f"ended ({problem}); reply with a shorter JSON object"
                if truncated
                else problem
            )
            repair = (reply.content or "", repair_problem)

    # -- what replies teach about the server ---------------------------------------------------------------
    def _request_timeout_s(self) -> float:
        """The deadline of the next request: `timeout_s` until replies arrived, then the slowest recent reply
        plus the time the output cap takes at the measured speed (times TIMEOUT_SAFETY), within
        [min_timeout_s, timeout_s]."""
        upper = self.s.timeout_s
        total_latency = sum(latency for latency, _ in self._speed)
        total_tokens = sum(tokens for _, tokens in self._speed)
        if total_tokens <= 0 or total_latency <= 0:
            return upper
        tokens_per_s = total_tokens / total_latency  # includes prompt time: slower than generation, so safe
        slowest = max(latency for latency, _ in self._speed)
        estimate = slowest + TIMEOUT_SAFETY * self.s.max_output_tokens / tokens_per_s
        return min(upper, max(self.s.min_timeout_s, estimate))

    def _deadline_basis(self) -> str:
        total_latency = sum(latency for latency, _ in self._speed)
        total_tokens = sum(tokens for _, tokens in self._speed)
        if total_tokens <= 0 or total_latency <= 0:
            return "timeout_s, no reply measured yet"
        return (
            f"output cap {self.s.max_output_tokens} tokens at the measured {total_tokens / total_latency:.1f} "
            f"output tokens/s over {len(self._speed)} replies, within min_timeout_s={self.s.min_timeout_s:g} "
            f"and timeout_s={self.s.timeout_s:g}"
        )

    def _reported_or_estimated_usage(self, reply: ParsedReply, prompt_tokens: int) -> TokenUsage:
        if reply.usage_reported:
            return reply.usage
        if not self._usage_estimated_logged:
            self._usage_estimated_logged = True
            self.log.warning(
                "llm %s: the server at %s reports no token usage; tokens (and cost) are estimated",
                self.stage,
                self.s.base_url,
            )
        return TokenUsage(
            input_tokens=prompt_tokens,
            output_tokens=count_tokens(reply.content or reply.refusal or ""),
        )

    def _cap_ignored(self, output_tokens: int, cost: float, reserved_usd: float) -> None:
        """A reply longer than the cap: the server ignored the parameter it was sent. Charged in full; stop."""
        dialect = self.s.dialect
        advice = cap_advice(dialect) if dialect is not None else "check the server's output-cap parameter"
        message = (
            f"the server at {self.s.base_url} ignored the output cap: {output_tokens} output tokens > max "
            f"{self.s.max_output_tokens}; {advice}"
        )
        if cost > reserved_usd:
            message += (
                f" (this reply cost ${cost:.6f}, above the ${reserved_usd:.6f} reserved; charged in full)"
            )
        self._stop_fatal("config", message, self._halt_scopes[1])

    def _learn_context_size(self, message: str) -> None:
        match = _CONTEXT_SIZE.search(message)
        if match and self._context_tokens is None:
            self._context_tokens = int(match.group(1))
            self.log.info(
                "llm %s: the server's context window is %d tokens", self.stage, self._context_tokens
            )

    def _repair_fits(
        self, message_texts: list[str], schema_param: dict | None, reply: ParsedReply, usage: TokenUsage
    ) -> bool:
        """Whether the repair request (this prompt + the cut reply + the instruction) plus the output cap fits the
        server's context window, when it is known."""
        if self._context_tokens is None:
            return True
        repair_tokens = (
            estimate_prompt_tokens(message_texts, schema_param)
            + max(usage.output_tokens, count_tokens(reply.content or ""))
            + 80  # the repair instruction and two messages' framing
        )
        return repair_tokens + self.s.max_output_tokens <= self._context_tokens

    def _cause_message(self, cause: str, problem: str) -> str:
        if cause == "truncated":
            return (
                f"the reply hit the output cap of {self.s.max_output_tokens} tokens (finish_reason length) before "
                f"its JSON ended: {problem}; raise max_output_tokens or ask for a shorter output"
            )
        return f"output failed its schema: {problem}"

    async def _retryable(self, st: _ItemState, classified: Classified) -> bool:
        """Count a retryable failure and back off; False when the run must stop (circuit breaker)."""
        self.c.retry_reasons[classified.error_class] += 1
        why: str | None = None
        if classified.is_rate_limit:
            # The provider is up and says when to come back: the send window shrank; only a long spell without
            # any reply stops the run.
            self.c.rate_limited += 1
            now = time.monotonic()
            self._rate_limited_since = self._rate_limited_since or now
            if now - self._rate_limited_since >= self.s.breaker_rate_limited_s:
                why = f"rate limited (429) for {now - self._rate_limited_since:.0f}s without a reply"
        else:
            self.c.consecutive_retryable += 1
            if self.c.consecutive_retryable >= self.s.breaker_consecutive_failures:
                why = f"{self.c.consecutive_retryable} consecutive retryable failures without a success"
        if why is not None and self._breaker is None:
            self._breaker = (
                f"circuit breaker: {why} (last: {redact(classified.message, self.s.api_key)}); the provider looks "
                "down or overloaded"
            )
            self.log.warning("llm %s: %s", self.stage, self._breaker)
            self._stop.set()
            return False
        if self._attempts_used(st) < self.s.max_attempts:
            await self._sleep(self._backoff_s(st.attempts, classified))
        return True

    @staticmethod
    def _attempts_used(st: _ItemState) -> int:
        """The item's attempts that count toward max_attempts: a 429 does not, up to FREE_RATE_LIMITED_ATTEMPTS
        of them (a provider refusing one item for ever while it answers the others must not keep the run alive)."""
        return st.attempts - min(st.rate_limited, FREE_RATE_LIMITED_ATTEMPTS)

    def _fatal_description(self, classified: Classified) -> str:
        if classified.setting is not None:
            return f"configuration error: {classified.message} (LLM resource setting `{classified.setting}`)"
        what_to_do = {
            "auth": "check the API key in CHUNKWISE_LLM_API_KEY and its permissions for this model",
            "quota": "add credit or raise the spend limit with the provider, then re-run",
            "config": "check the model name and base_url in the LLM resource config",
        }.get(classified.error_class, "fix the cause, then re-run")
        return f"provider refused the job: {classified.message}; {what_to_do}"

    def _account(self, st: _ItemState, usage: TokenUsage) -> float:
        batch = self.mode == "batch"
        cost = self.s.price.cost_usd(usage, batch=batch)
        savings = self.s.price.cache_savings_usd(usage, batch=batch)
        u = st.usage
        u.input_tokens += usage.input_tokens
        u.cached_input_tokens += usage.cached_input_tokens
        u.cache_write_tokens += usage.cache_write_tokens
        u.output_tokens += usage.output_tokens
        u.cost_usd += cost
        u.cache_savings_usd += savings
        c = self.c
        c.cost_usd += cost
        c.cache_savings_usd += savings
        c.input_tokens += usage.input_tokens
        c.cached_input_tokens += usage.cached_input_tokens
        c.cache_write_tokens += usage.cache_write_tokens
        c.output_tokens += usage.output_tokens
        return cost

    def _finish(
        self,
        st: _ItemState,
        *,
        ok: bool,
        output: dict[str, Any] | None = None,
        error_class: str | None = None,
        message: str | None = None,
        finish: str | None = None,
        normalized: list[str] | None = None,
    ) -> ItemResult:
        st.usage.attempts = st.attempts
        return ItemResult(
            key=st.request.key,
            ok=ok,
            output=output,
            error_class=error_class,
            error_message=redact(message, self.s.api_key) if message else None,
            attempts=st.attempts,
            first_attempt_at=st.first_at,
            last_attempt_at=st.last_at,
            usage=st.usage,
            finish_reason=finish,
            last_reply=None if ok else clip_reply(st.last_reply),
            normalized=list(normalized or []),
        )

    # -- reporting ---------------------------------------------------------------------------------------
    def _summary(self) -> UsageSummary:
        c = self.c
        return UsageSummary(
            provider=self.s.adapter.name,
            model=self.s.model,
            cost_usd=c.cost_usd,
            input_tokens=c.input_tokens,
            cached_input_tokens=c.cached_input_tokens,
            cache_write_tokens=c.cache_write_tokens,
            output_tokens=c.output_tokens,
            requests=c.requests,
            retries=c.requests - c.items_sent,
            rate_limited=c.rate_limited,
            items_succeeded=c.succeeded,
            items_failed=c.failed,
            items_unfinished=self._unfinished,
            duration_s=time.monotonic() - self._started,
            latency_p50_s=percentile(c.latencies, 50),
            latency_p95_s=percentile(c.latencies, 95),
            cache_savings_usd=c.cache_savings_usd,
            timeouts=c.timeouts,
        )

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.s.progress_interval_s)
            self._log_progress(final=False)

    def _log_progress(self, *, final: bool) -> None:
        c = self.c
        done = c.succeeded + c.failed
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = self._total - done
        eta = f"{left / rate:,.0f}s" if rate > 0 and not final else "-"
        self.log.info(
            "llm %s %s: %d/%d items done (%d ok, %d failed), %d requests, %d retried, %d rate-limited, "
            "%s input tokens (%s cached), %s output tokens, $%.4f, %.1f items/s, ETA %s",
            self.stage,
            "finished" if final else "progress",
            done,
            self._total,
            c.succeeded,
            c.failed,
            c.requests,
            sum(c.retry_reasons.values()),
            c.rate_limited,
            f"{c.input_tokens:,}",
            f"{c.cached_input_tokens:,}",
            f"{c.output_tokens:,}",
            c.cost_usd,
            rate,
            eta,
        )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context (httpx's default: certifi's CAs) for every client of the process. Building one reads the CA
    bundle, about 30 ms; a chunk run opens several clients per stage, and a run worker runs many chunks."""
    return httpx.create_ssl_context()
