"""The online engine behind LLMResource.run_prompts: bounded concurrency over one keep-alive httpx client,
admission (rate limits + budget) before every request, reconciliation after, retries with full-jitter backoff,
one repair attempt for output that fails its schema, the failure taxonomy, and progress logging."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import math
import random
import statistics
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
from resources.llm.prices import ModelPrice
from resources.llm.providers.base import ProviderAdapter
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
from resources.llm.tokens import conservative_input_tokens, estimate_prompt_tokens
from resources.llm.types import (
    BudgetScope,
    CallOutcome,
    ItemResult,
    ItemUsage,
    LLMRequest,
    TokenUsage,
    UsageSummary,
)

CONNECTIONS_PER_CLIENT = 8


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
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass
class _ItemState:
    request: LLMRequest
    usage: ItemUsage
    attempts: int = 0
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None


@dataclass
class _Counters:
    requests: int = 0
    items_sent: int = 0  # items sent at least once; requests beyond these are retries
    rate_limited: int = 0
    succeeded: int = 0
    failed: int = 0
    exhausted: int = 0
    consecutive_retryable: int = 0
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


def _percentile(values: list[float], q: float) -> float:
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
    ) -> None:
        self.s = settings
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
        self._cached_prefix_tokens = 0  # Anthropic: recent cache-read size, so ITPM reservations skip it
        self._started = time.monotonic()
        self._total = 0
        self._unfinished = 0
        self._rng = random.Random()

    # -- entry point -------------------------------------------------------------------------------------
    async def run(self, requests: Sequence[LLMRequest]) -> CallOutcome:
        self._total = len(requests)
        queue = collections.deque(requests)
        workers_n = min(self.s.max_concurrency, max(1, len(requests)))
        # Several small keep-alive pools instead of one big one: httpcore 1.0 scans every connection of a pool
        # on each request event, so one 64-connection pool tops out near 120 requests/s on this kind of machine
        # while 8 pools of 8 reach about 1,000 (bench/ratelimit.py). In-flight requests stay bounded by workers_n.
        n_clients = max(1, math.ceil(workers_n / CONNECTIONS_PER_CLIENT))
        per_client = math.ceil(workers_n / n_clients)
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        self.admission.start()
        progress = asyncio.get_running_loop().create_task(self._progress())
        try:
            async with contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(
                        httpx.AsyncClient(
                            timeout=httpx.Timeout(self.s.timeout_s),
                            limits=limits,
                            headers=self.s.adapter.headers(self.s.api_key),
                        )
                    )
                    for _ in range(n_clients)
                ]
                workers = [
                    asyncio.create_task(self._worker(clients[i % n_clients], queue)) for i in range(workers_n)
                ]
                await asyncio.gather(*workers)
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
        if self._breaker is not None or self._unfinished:
            why = self._breaker or (
                f"{self.c.exhausted:,} items used all {self.s.max_attempts} attempts on retryable errors "
                f"({dict(self.c.retry_reasons)})"
            )
            raise ChunkRetryableError(
                f"stage {self.stage}: {why}. {counts}; retry the partition later.", outcome
            )

    # -- workers -----------------------------------------------------------------------------------------
    async def _worker(self, client: httpx.AsyncClient, queue: collections.deque[LLMRequest]) -> None:
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

    async def _process(self, client: httpx.AsyncClient, request: LLMRequest) -> ItemResult | None:
        """Run one item to its end; None means it did not finish (the run stopped or attempts ran out)."""
        st = _ItemState(
            request,
            ItemUsage(request.key, self.s.adapter.name, self.s.model, self.stage, mode=self.mode),
        )
        if not request.text.strip():
            return self._finish(st, ok=False, error_class="empty_input", message="the item's text is empty")
        repair: tuple[str, str] | None = None
        repaired = False
        while True:
            if self._stop.is_set():
                return None
            if st.attempts >= self.s.max_attempts:
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
            try:
                grant = await self.admission.acquire(permit)
            except BudgetExhaustedError as exc:
                self._stop_fatal("budget", exhausted_message(str(exc)))
                return None
            except Exception as exc:
                self._stop_fatal(
                    "state_store", f"the shared limit/budget store failed ({type(exc).__name__}: {exc})"
                )
                return None
            if self._stop.is_set() or self._check_halt():
                self.admission.release(permit, grant)
                return None

            st.attempts += 1
            ctx = self._attempt_context(st)
            attempt_id = SpendLedger.new_attempt_id()
            if self.ledger is not None:
                worst_usd = (
                    budget.usd
                    if budget is not None
                    else self.s.price.worst_case_usd(
                        conservative_input_tokens(prompt_tokens),
                        self.s.max_output_tokens,
                        batch=self.mode == "batch",
                    )
                )
                self.ledger.sent(attempt_id, ctx, st.attempts, worst_usd)
            st.first_at = st.first_at or _utcnow()
            st.last_at = _utcnow()
            self.c.requests += 1
            if st.attempts == 1:
                self.c.items_sent += 1
            t0 = time.monotonic()
            settlement = Settlement(
                reservation_id=grant.reservation_id, level_after=grant.level_after, request_amounts=amounts
            )
            try:
                response = await client.post(
                    self.s.adapter.url(self.s.base_url), content=json.dumps(wire.body)
                )
                payload = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                latency = time.monotonic() - t0
                st.usage.latency_s += latency
                # Outcome unknown: the provider may have billed it, so the budget counts the worst case.
                if budget is not None:
                    settlement.usd, settlement.tokens = budget.usd, budget.tokens
                self.admission.settle(settlement)
                classified = (
                    classify_transport_error(exc)
                    if isinstance(exc, httpx.HTTPError)
                    else Classified(
                        FailureLevel.RETRYABLE, "bad_response", "a 200 reply whose body is not JSON"
                    )
                )
                if self.ledger is not None:
                    self.ledger.lost(attempt_id, ctx, st.attempts, classified.error_class)
                if not await self._retryable(st, classified):
                    return None
                continue
            latency = time.monotonic() - t0
            st.usage.latency_s += latency
            settlement.headers = self.s.adapter.rate_headers(response.headers)

            if response.status_code != 200:
                err = self.s.adapter.parse_error(response)
                classified = classify_provider_error(err)
                settlement.rate_limited = classified.is_rate_limit
                settlement.retry_after_s = classified.retry_after_s
                self.admission.settle(settlement)  # failed requests are not billed
                if self.ledger is not None:
                    self.ledger.not_billed(attempt_id, ctx, st.attempts, classified.error_class)
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
            cost = self._account(st, reply.usage)
            actual = self.s.adapter.bucket_actuals(reply.usage, self.s.max_output_tokens)
            if reply.usage.input_tokens > 0:
                settlement.bucket_delta = {k: actual[k] - v for k, v in amounts.items() if k in actual}
            settlement.usd = cost
            settlement.tokens = reply.usage.input_tokens + reply.usage.output_tokens
            self.admission.settle(settlement)
            self.c.latencies.append(latency)
            self.c.consecutive_retryable = 0
            self._cached_prefix_tokens = reply.usage.cached_input_tokens

            # Judge the content, then record the bill with its verdict, before the result is used.
            problem: str | None = None
            value: dict[str, Any] | None = None
            if reply.refusal is not None or reply.finish_reason in ("refusal", "content_filter"):
                verdict = "content_filter" if reply.finish_reason == "content_filter" else "refusal"
            elif self.schema is None:
                verdict, value = OK, {"text": reply.content or ""}
            else:
                value, problem = parse_json_object(reply.content)
                if value is not None:
                    errors = validate(value, self.schema)
                    problem = "; ".join(errors[:5]) if errors else None
                verdict = OK if problem is None else INVALID
            if self.ledger is not None:
                self.ledger.billed(
                    attempt_id,
                    ctx,
                    st.attempts,
                    Billed(
                        reply.usage.input_tokens,
                        reply.usage.cached_input_tokens,
                        reply.usage.cache_write_tokens,
                        reply.usage.output_tokens,
                        cost,
                        self.s.price.cache_savings_usd(reply.usage, batch=self.mode == "batch"),
                    ),
                    verdict,
                    provider_request_id=_reply_id(payload),
                )

            if verdict in ("refusal", "content_filter"):
                why = reply.refusal if isinstance(reply.refusal, str) else reply.finish_reason
                return self._finish(st, ok=False, error_class=verdict, message=f"the model declined: {why}")
            if verdict == OK:
                # finish_reason "length" is fine when the content is complete and valid.
                return self._finish(st, ok=True, output=value, finish=reply.finish_reason)
            if repaired:
                return self._finish(
                    st,
                    ok=False,
                    error_class="schema_invalid",
                    message=f"output failed its schema after one repair: {problem}",
                )
            repaired = True
            repair = (reply.content or "", problem or "invalid")

    async def _retryable(self, st: _ItemState, classified: Classified) -> bool:
        """Count a retryable failure and back off; False when the run must stop (circuit breaker)."""
        self.c.retry_reasons[classified.error_class] += 1
        if classified.is_rate_limit:
            self.c.rate_limited += 1
        self.c.consecutive_retryable += 1
        if self.c.consecutive_retryable >= self.s.breaker_consecutive_failures and self._breaker is None:
            self._breaker = (
                f"circuit breaker: {self.c.consecutive_retryable} consecutive retryable failures without a success "
                f"(last: {redact(classified.message, self.s.api_key)}); the provider looks down or overloaded"
            )
            self.log.warning("llm %s: %s", self.stage, self._breaker)
            self._stop.set()
            return False
        if st.attempts < self.s.max_attempts:
            await self._sleep(self._backoff_s(st.attempts, classified))
        return True

    def _fatal_description(self, classified: Classified) -> str:
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
            latency_p50_s=_percentile(c.latencies, 50),
            latency_p95_s=_percentile(c.latencies, 95),
            cache_savings_usd=c.cache_savings_usd,
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
