"""Batch mode behind LLMResource.submit_batch / poll_batch / collect_batch / cancel_batch: half-price provider
batches (OpenAI Batch API, Anthropic Message Batches) with the same request bodies, error classifier, price
table and budget store as online mode. Wire details live in providers/*_batches.py; this file is the mode logic,
written once for both providers."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from resources.llm.batch_journal import (
    CANCELLED,
    COLLECTED,
    ENDED,
    SUBMITTED,
    SUBMITTING,
    BatchHandle,
    BatchJournal,
    CarriedUsage,
    journal_of,
)
from resources.llm.budget import caps_by_scope, exhausted_message, scope_keys
from resources.llm.errors import (
    ChunkRetryableError,
    Classified,
    FailureLevel,
    JobFatalError,
    classify_provider_error,
    classify_transport_error,
    redact,
)
from resources.llm.providers import adapter_for
from resources.llm.providers.anthropic_batches import AnthropicBatches, created_s
from resources.llm.providers.openai_batches import OpenAIBatches
from resources.llm.spend_ledger import INVALID, OK, AttemptContext, Billed, SpendLedger
from resources.llm.state_store import BudgetNeed, Permit, Settlement
from resources.llm.structured import parse_json_object, validate
from resources.llm.tokens import conservative_input_tokens, estimate_prompt_tokens
from resources.llm.types import (
    BatchLineResult,
    BudgetScope,
    ItemResult,
    ItemUsage,
    LLMRequest,
    TokenUsage,
    UsageSummary,
    clip_reply,
)


@dataclass
class BatchStatus:
    """A provider batch's state, read without side effects.

    `state` is provider-neutral: "submitting" (not created yet: resume with submit_batch), "in_progress",
    "cancelling", or "ended" (results can be collected; includes completed, expired, cancelled and failed).
    `provider_status` is the provider's own word. Counts are lines (items)."""

    batch_id: str | None
    provider: str
    state: str
    provider_status: str
    total: int = 0
    succeeded: int = 0
    errored: int = 0
    processing: int = 0
    expired: int = 0
    canceled: int = 0

    @property
    def ended(self) -> bool:
        return self.state == "ended"


@dataclass
class BatchCollection:
    """What collect_batch produced for one handle.

    `results`: items that finished for good (ok, or item-permanent failures: dead letters), each also passed to
    on_result. `to_resubmit`: keys to send again in the next round (retryable line errors, expired or canceled
    lines, schema failures awaiting their repair). `summary`: usage and cost of this batch's lines at batch
    prices (USD); `summary.items_unfinished` == len(to_resubmit)."""

    results: list[ItemResult] = field(default_factory=list)
    to_resubmit: list[str] = field(default_factory=list)
    summary: UsageSummary | None = None


# ---------------------------------------------------------------------------------------------------------------
# Implementation. LLMResource's batch methods call these; `resource` is the LLMResource (typed Any: no import cycle).

# Room for the request envelope and JSON framing under the providers' byte limits.
_BYTES_MARGIN = 1024 * 1024
# Anthropic: a created batch's created_at is within this many seconds of our clock around the create call.
_CLOCK_SKEW_S = 5.0
_BUDGET_WAIT_S = 60.0


class StepHook(Protocol):
    def __call__(self, step: str, handle: BatchHandle) -> None: ...


def batch_wire_for(provider: str) -> OpenAIBatches | AnthropicBatches:
    """The batch wire module of a provider."""
    if provider == "openai":
        return OpenAIBatches()
    if provider == "anthropic":
        return AnthropicBatches()
    raise ValueError(f"unknown provider '{provider}'; use 'openai' or 'anthropic'")


def batch_custom_id(provider: str, key: str) -> str:
    """The custom_id a line for idempotency key `key` carries at `provider` (the simulator ledger shows it)."""
    return batch_wire_for(provider).custom_id(key)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _iso_s(text: str | None) -> float | None:
    return dt.datetime.fromisoformat(text).timestamp() if text else None


class _Transport:
    """Synchronous httpx calls with the shared classifier: job-fatal answers raise JobFatalError, retryable ones
    and transport failures ChunkRetryableError (the pipeline retries the chunk; the journal makes that safe)."""

    def __init__(self, resource: Any) -> None:
        self.adapter = adapter_for(resource.provider)
        self.api_key: str = resource.api_key
        self.headers = {
            k: v for k, v in self.adapter.headers(self.api_key).items() if k.lower() != "content-type"
        }
        self.client = httpx.Client(timeout=httpx.Timeout(resource.timeout_s), headers=self.headers)

    def __enter__(self) -> _Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if "content" in kwargs or "json" in kwargs:
            kwargs.setdefault("headers", {})["content-type"] = "application/json"
        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            classified = classify_transport_error(exc)
            raise ChunkRetryableError(
                f"batch API {method} failed: {classified.message}; retry later"
            ) from None
        if response.status_code < 300:
            return response
        classified = classify_provider_error(self.adapter.parse_error(response))
        message = redact(classified.message, self.api_key)
        path = httpx.URL(url).path
        if classified.level is FailureLevel.RETRYABLE:
            raise ChunkRetryableError(f"batch API {method} {path}: {message}; retry the chunk later")
        reason = classified.error_class if classified.level is FailureLevel.FATAL else "config"
        raise JobFatalError(
            reason, f"batch API {method} {path} refused: {message}; fix the configuration, then re-run"
        )


@dataclass
class _Line:
    key: str
    custom_id: str
    data: bytes
    worst_usd: float
    worst_tokens: int
    repaired: bool


def _build_lines(
    resource: Any,
    requests: Sequence[LLMRequest],
    *,
    system_prompt: str,
    schema: dict | None,
    schema_name: str,
    journal: BatchJournal,
) -> list[_Line]:
    adapter = adapter_for(resource.provider, resource.dialect)
    wire = batch_wire_for(resource.provider)
    price = resource._price_or_fatal()
    lines: list[_Line] = []
    seen: dict[str, str] = {}
    for request in requests:
        repair = journal.repairs.get(request.key)
        built = adapter.build(
            model=resource.model,
            system_prompt=system_prompt,
            user_text=request.text,
            schema=schema,
            schema_name=schema_name,
            max_output_tokens=resource.max_output_tokens,
            structured_output=resource.effective_structured_output(),
            repair=(repair[0], repair[1]) if repair else None,
        )
        custom_id = wire.custom_id(request.key)
        if seen.setdefault(custom_id, request.key) != request.key:
            raise ValueError(
                f"two items map to custom_id {custom_id!r}: {seen[custom_id]!r} and {request.key!r}"
            )
        worst_in = conservative_input_tokens(estimate_prompt_tokens(built.message_texts, built.schema_param))
        lines.append(
            _Line(
                request.key,
                custom_id,
                wire.line(custom_id, built.body),
                price.worst_case_usd(worst_in, resource.max_output_tokens, batch=True),
                worst_in + resource.max_output_tokens,
                repair is not None,
            )
        )
    return lines


def _split(lines: list[_Line], max_lines: int, max_bytes: int) -> list[list[_Line]]:
    parts: list[list[_Line]] = []
    current: list[_Line] = []
    size = 0
    for line in lines:
        if current and (len(current) >= max_lines or size + len(line.data) > max_bytes - _BYTES_MARGIN):
            parts.append(current)
            current, size = [], 0
        current.append(line)
        size += len(line.data)
    if current:
        parts.append(current)
    return parts


def _reserve(resource: Any, scopes: tuple[str, ...], usd: float, tokens: int) -> None:
    """Reserve the worst case in the shared budget store and charge it as spent at once: the reservation outlives
    this process (collection runs elsewhere, hours later), and the store reclaims reservations of dead processes.
    collect() refunds the difference to the actual cost. Raises JobFatalError reason="budget"."""
    store = resource._shared_store()
    caps = caps_by_scope(resource.budget_caps(), scopes)  # type: ignore[arg-type]
    permit = Permit({}, BudgetNeed(scopes, usd, tokens))
    deadline = time.monotonic() + _BUDGET_WAIT_S
    while True:
        result = store.transact(None, [], [permit], caps)
        if result.grants:
            grant = result.grants[0]
            store.transact(None, [Settlement(grant.reservation_id, usd=usd, tokens=tokens)], [], {})
            return
        if result.exhausted is not None:
            raise JobFatalError(
                "budget", exhausted_message(result.exhausted) + " (batch submission: nothing was uploaded)"
            )
        if time.monotonic() > deadline:
            raise JobFatalError(
                "budget",
                f"budget reservations of running work leave no room for this batch (worst case ${usd:.4f}) after "
                f"{_BUDGET_WAIT_S:.0f}s; raise the budget or re-run when other runs finished",
            )
        time.sleep(min(result.wait_s or 0.05, 1.0))


def _adjust_spend(resource: Any, scopes: list[str], usd: float, tokens: int) -> None:
    """Add `usd`/`tokens` (negative refunds) to the spend of `scopes`, through a zero reservation settled at once."""
    store = resource._shared_store()
    result = store.transact(None, [], [Permit({}, BudgetNeed(tuple(scopes), 0.0, 0))], {})
    grant = result.grants[0]
    store.transact(None, [Settlement(grant.reservation_id, usd=usd, tokens=tokens)], [], {})


def submit(
    resource: Any,
    requests: Sequence[LLMRequest],
    *,
    system_prompt: str,
    schema: dict | None,
    schema_name: str,
    scope: BudgetScope,
    stage: str,
    journal: BatchJournal,
    round_: int,
    partition: str | None,
    log: logging.Logger | Any | None,
) -> list[BatchHandle]:
    """See LLMResource.submit_batch."""
    resource._validate()
    log = log or logging.getLogger("chunkwise.llm")
    wire = batch_wire_for(resource.provider)
    partition = partition if partition is not None else journal.path.parent.parent.name
    by_key: dict[str, LLMRequest] = {}
    for request in requests:
        if by_key.setdefault(request.key, request) is not request:
            raise ValueError(f"item key {request.key!r} appears twice in one batch submission")
    round_handles = journal.round_handles(round_)
    recorded = {k for h in round_handles for k in (*h.keys, *h.empty_keys)}
    fresh = [r for r in requests if r.key not in recorded]
    empty = [r.key for r in fresh if not r.text.strip()]
    to_send = [r for r in fresh if r.text.strip()]

    new_handles: list[BatchHandle] = []
    if fresh:
        lines = _build_lines(
            resource,
            to_send,
            system_prompt=system_prompt,
            schema=schema,
            schema_name=schema_name,
            journal=journal,
        )
        parts = _split(lines, wire.max_lines, wire.max_bytes) or [[]]
        first_part = max((h.part for h in round_handles), default=-1) + 1
        caps = resource.budget_caps()
        scopes = scope_keys(scope)
        reserved = [(sum(x.worst_usd for x in p), sum(x.worst_tokens for x in p)) for p in parts]
        if caps.any and lines:
            # One reservation for every part: either the whole submission fits, or nothing is uploaded.
            _reserve(resource, scopes, sum(u for u, _ in reserved), sum(t for _, t in reserved))
        for i, part in enumerate(parts):
            number = first_part + i
            handle = BatchHandle(
                submission_id=f"{scope.dataset_id}:{partition}:{stage}:{round_}:{number}",
                provider=resource.provider,
                model=resource.model,
                keys=[x.key for x in part],
                round=round_,
                part=number,
                stage=stage,
                reserved_usd=reserved[i][0] if caps.any else 0.0,
                reserved_tokens=reserved[i][1] if caps.any else 0,
                budget_scopes=list(scopes) if caps.any else [],
                empty_keys=empty if i == 0 else [],
                repair_keys=[x.key for x in part if x.repaired],
                teams={x.key: by_key[x.key].team for x in part if by_key[x.key].team},
            )
            if not part:  # only empty items: nothing to send, collectable at once
                handle.status, handle.ended_at = ENDED, _now_iso()
            new_handles.append(handle)
        for handle in new_handles:
            journal.record(handle)  # before any provider call

    hook: StepHook | None = getattr(resource, "_batch_step_hook", None)
    to_finish = [h for h in journal.round_handles(round_) if h.status == SUBMITTING]
    if to_finish:
        missing = [k for h in to_finish for k in h.keys if k not in by_key]
        if missing:
            raise ValueError(
                f"resuming round {round_} of {journal.path} needs the same items it was started with; "
                f"{len(missing)} are missing (e.g. {missing[0]!r})"
            )
        with _Transport(resource) as transport:
            for handle in to_finish:
                part_lines = _build_lines(
                    resource,
                    [by_key[k] for k in handle.keys],
                    system_prompt=system_prompt,
                    schema=schema,
                    schema_name=schema_name,
                    journal=journal,
                )
                _create(resource, transport, journal, handle, part_lines, hook, log)
    return journal.round_handles(round_)


def _create(
    resource: Any,
    transport: _Transport,
    journal: BatchJournal,
    handle: BatchHandle,
    lines: list[_Line],
    hook: StepHook | None,
    log: logging.Logger | Any,
) -> None:
    """Take one "submitting" handle to "submitted", resuming whichever step a crash cut off."""
    wire = batch_wire_for(handle.provider)
    base_url = resource.base_url
    batch_id: str | None = None
    if isinstance(wire, OpenAIBatches):
        if handle.create_started_at is not None:
            batch_id = wire.find(
                transport, base_url, handle.submission_id, _iso_s(handle.create_started_at) or 0
            )
        if batch_id is None and handle.input_file_id is None:
            data = b"".join(x.data for x in lines)
            file_id = wire.upload(
                transport, base_url, data, f"{handle.submission_id.replace(':', '_')}.jsonl"
            )
            if hook is not None:
                hook("uploaded", handle)
            handle.input_file_id = file_id
            journal.record(handle)
        if batch_id is None:
            handle.create_started_at = _now_iso()
            journal.record(handle)
            if hook is not None:
                hook("before_create", handle)
            assert handle.input_file_id is not None
            batch_id = str(wire.create(transport, base_url, handle.input_file_id, handle.submission_id)["id"])
        else:
            log.warning("llm batch %s: found batch %s created before a crash", handle.submission_id, batch_id)
    else:
        if handle.create_started_at is not None:
            batch_id = _find_anthropic(resource, transport, journal, handle, lines, log)
        if batch_id is None:
            handle.create_started_at = _now_iso()
            journal.record(handle)
            if hook is not None:
                hook("before_create", handle)
            batch_id = str(wire.create(transport, base_url, [x.data for x in lines])["id"])
    if hook is not None:
        hook("created", handle)
    handle.batch_id = batch_id
    handle.status = SUBMITTED
    handle.submitted_at = _now_iso()
    journal.record(handle)
    log.info(
        "llm batch %s: submitted %d items as %s batch %s (worst case $%.4f)",
        handle.submission_id,
        len(handle.keys),
        handle.provider,
        batch_id,
        handle.reserved_usd,
    )


def _find_anthropic(
    resource: Any,
    transport: _Transport,
    journal: BatchJournal,
    handle: BatchHandle,
    lines: list[_Line],
    log: logging.Logger | Any,
) -> str | None:
    """After a crash around the create call, find the batch it may have created. Anthropic batches carry no
    metadata, so the rule is: candidates are batches created within [create_started_at - 5 s,
    create_started_at + timeout + 5 s] with exactly our number of requests and not recorded in this journal;
    an ended candidate is ours if and only if its results' custom_ids are exactly ours (proof); an in-progress
    candidate cannot be proven either way, so we raise ChunkRetryableError and decide once it has ended.
    No candidate: the create never happened, create it."""
    wire = AnthropicBatches()
    started = _iso_s(handle.create_started_at) or 0.0
    known = {h.batch_id for h in journal.handles if h.batch_id}
    ours = {x.custom_id for x in lines}
    undecided: list[str] = []
    for row in wire.list_since(transport, resource.base_url, started - _CLOCK_SKEW_S):
        created = created_s(row)
        if row["id"] in known or created > started + resource.timeout_s + _CLOCK_SKEW_S:
            continue
        if wire.status_fields(row)["total"] != len(lines):
            continue
        if row.get("processing_status") != "ended":
            undecided.append(str(row["id"]))
            continue
        if {r.custom_id for r in wire.results(transport, resource.base_url, row)} == ours:
            log.warning(
                "llm batch %s: found batch %s created before a crash", handle.submission_id, row["id"]
            )
            return str(row["id"])
    if undecided:
        raise ChunkRetryableError(
            f"batch submission {handle.submission_id} was interrupted around its create call and Anthropic "
            f"batch(es) {', '.join(undecided)} may be it; they can be told apart only by their results, so "
            "retry once they have ended (nothing is submitted twice meanwhile)"
        )
    return None


def _status(provider: str, batch_id: str | None, fields: dict[str, Any]) -> BatchStatus:
    return BatchStatus(batch_id=batch_id, provider=provider, **fields)


def poll(resource: Any, handle: BatchHandle) -> BatchStatus:
    """See LLMResource.poll_batch."""
    if handle.batch_id is None:
        state = "ended" if handle.status == ENDED else "submitting"
        return BatchStatus(None, handle.provider, state, handle.status, total=len(handle.empty_keys))
    wire = batch_wire_for(handle.provider)
    with _Transport(resource) as transport:
        batch = wire.get(transport, resource.base_url, handle.batch_id)
    return _status(handle.provider, handle.batch_id, wire.status_fields(batch))


def cancel(resource: Any, handle: BatchHandle) -> BatchStatus:
    """See LLMResource.cancel_batch."""
    if handle.batch_id is None:
        raise ValueError(
            f"batch submission {handle.submission_id} has no provider batch yet (status {handle.status}); "
            "resume it with submit_batch first, or remove the journal if it was never created"
        )
    wire = batch_wire_for(handle.provider)
    with _Transport(resource) as transport:
        batch = wire.get(transport, resource.base_url, handle.batch_id)
        fields = wire.status_fields(batch)
        if fields["state"] == "in_progress":
            batch = wire.cancel(transport, resource.base_url, handle.batch_id)
            fields = wire.status_fields(batch)
    journal = journal_of(handle)
    if handle.status != COLLECTED:
        handle.status = CANCELLED
        if journal is not None:
            journal.record(handle)
    return _status(handle.provider, handle.batch_id, fields)


@dataclass
class _Judged:
    """One key's outcome in a collection, before anything is handed out or persisted."""

    key: str
    result: ItemResult | None = None  # finished for good
    resubmit: bool = False
    repair: tuple[str, str] | None = None
    fatal: Classified | None = None


@dataclass
class _ItemContext:
    """One key's attempt count, times and usage while its line is judged."""

    key: str
    attempts: int
    first_at: dt.datetime
    last_at: dt.datetime
    usage: ItemUsage
    api_key: str
    max_attempts: int

    def finish(
        self,
        ok: bool,
        output: dict | None = None,
        error_class: str | None = None,
        message: str | None = None,
        finish_reason: str | None = None,
        last_reply: str | None = None,
    ) -> ItemResult:
        return ItemResult(
            key=self.key,
            ok=ok,
            output=output,
            error_class=error_class,
            error_message=redact(message, self.api_key) if message else None,
            attempts=self.attempts,
            first_attempt_at=self.first_at,
            last_attempt_at=self.last_at,
            usage=self.usage,
            finish_reason=finish_reason,
            last_reply=None if ok else clip_reply(last_reply),
        )

    def retry_or_fail(self, why: str, message: str) -> _Judged:
        """Resubmit in the next round, or fail with `why` once the item has used its attempts."""
        if self.attempts >= self.max_attempts:
            return _Judged(self.key, self.finish(False, error_class=why, message=message))
        return _Judged(self.key, resubmit=True)


def _record_bills(
    resource: Any,
    handle: BatchHandle,
    bills: list[tuple[str, BatchLineResult, TokenUsage, float, float, str]],
) -> None:
    """Every billed line into the spend ledger before any result is used; a line collected twice (a crash
    during collection) is recorded once (its dedupe key is the batch id and custom id)."""
    ledger = resource.spend_ledger()
    dataset_id, partition = (handle.submission_id.split(":") + ["", ""])[:2]
    for key, line, usage, cost, savings, verdict in bills:
        ctx = AttemptContext(
            idempotency_key=key,
            dataset_id=dataset_id,
            partition_key=partition,
            stage=handle.stage,
            team=handle.teams.get(key, ""),
            provider=handle.provider,
            model=handle.model,
            mode="batch",
        )
        usage_billed = Billed(
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.cache_write_tokens,
            usage.output_tokens,
            cost,
            savings,
        )
        ledger.billed(
            SpendLedger.new_attempt_id(),
            ctx,
            handle.round,
            usage_billed,
            verdict,
            provider_request_id=line.custom_id,
            dedupe_key=f"batch:{handle.batch_id}:{line.custom_id}",
        )


def collect(
    resource: Any,
    handle: BatchHandle,
    *,
    schema: dict | None,
    on_result: Callable[[ItemResult], None] | None,
    log: logging.Logger | Any | None,
) -> BatchCollection:
    """See LLMResource.collect_batch."""
    log = log or logging.getLogger("chunkwise.llm")
    if handle.status == COLLECTED:
        raise ValueError(f"batch {handle.batch_id} ({handle.submission_id}) was already collected")
    journal = journal_of(handle)
    carried = journal.carried if journal is not None else {}
    wire = batch_wire_for(handle.provider)
    adapter = adapter_for(handle.provider)
    price = resource._price_or_fatal()
    lines: list[BatchLineResult] = []
    if handle.batch_id is not None:
        with _Transport(resource) as transport:
            batch = wire.get(transport, resource.base_url, handle.batch_id)
            fields = wire.status_fields(batch)
            if fields["state"] != "ended":
                raise ValueError(
                    f"batch {handle.batch_id} has not ended (status {fields['provider_status']}); poll_batch "
                    "until its state is 'ended', then collect it"
                )
            failure = wire.failure_reason(batch)
            if failure is not None:
                raise JobFatalError(
                    "config",
                    f"{handle.provider} rejected batch {handle.batch_id} ({handle.submission_id}) as a whole: "
                    f"{failure}. Fix the cause, then remove {journal.path if journal else 'the journal'} and re-run",
                )
            lines = wire.results(transport, resource.base_url, batch)
    elif handle.status != ENDED:
        raise ValueError(
            f"batch submission {handle.submission_id} was never created; resume it with submit_batch"
        )

    key_of = {wire.custom_id(k): k for k in handle.keys}
    by_key: dict[str, BatchLineResult] = {}
    for line in lines:
        key = key_of.get(line.custom_id)
        if key is None:
            log.warning(
                "llm batch %s: result line for unknown custom_id %r ignored", handle.batch_id, line.custom_id
            )
            continue
        by_key[key] = line

    now = dt.datetime.now(dt.UTC)
    submitted = dt.datetime.fromisoformat(handle.submitted_at) if handle.submitted_at else now
    totals = UsageSummary(provider=handle.provider, model=handle.model)
    bills: list[tuple[str, BatchLineResult, TokenUsage, float, float, str]] = []
    judged: list[_Judged] = []
    usages: dict[str, ItemUsage] = {}
    repair_keys = set(handle.repair_keys)
    for key in handle.keys:
        before = carried.get(key, CarriedUsage())
        attempts = before.attempts + 1
        usage = ItemUsage(
            key,
            handle.provider,
            handle.model,
            handle.stage,
            input_tokens=before.input_tokens,
            cached_input_tokens=before.cached_input_tokens,
            cache_write_tokens=before.cache_write_tokens,
            output_tokens=before.output_tokens,
            cost_usd=before.cost_usd,
            cache_savings_usd=before.cache_savings_usd,
            attempts=attempts,
            mode="batch",
        )
        usages[key] = usage
        first_at = (
            dt.datetime.fromisoformat(before.first_attempt_at) if before.first_attempt_at else submitted
        )

        item = _ItemContext(
            key, attempts, first_at, submitted, usage, resource.api_key, resource.max_attempts
        )
        finish, retry_or_fail = item.finish, item.retry_or_fail

        line = by_key.get(key)
        if line is None:
            judged.append(retry_or_fail("retries_exhausted", "no result line for this item in the batch"))
            continue
        if line.kind == "expired":
            judged.append(retry_or_fail("expired", f"expired in {resource.max_attempts} batches in a row"))
            continue
        if line.kind == "canceled":
            judged.append(retry_or_fail("canceled", "the batch was cancelled before this item ran"))
            continue
        if line.kind == "errored":
            assert line.error is not None
            classified = classify_provider_error(line.error)
            if classified.level is FailureLevel.FATAL:
                judged.append(_Judged(key, fatal=classified))
            elif classified.level is FailureLevel.ITEM:
                judged.append(
                    _Judged(
                        key, finish(False, error_class=classified.error_class, message=classified.message)
                    )
                )
            else:
                judged.append(
                    retry_or_fail(
                        "retries_exhausted",
                        f"{classified.message}; used all {resource.max_attempts} attempts",
                    )
                )
            continue
        # Succeeded: bill it, then judge the content exactly as online mode does.
        reply = adapter.parse_reply(line.payload or {})
        cost = price.cost_usd(reply.usage, batch=True)
        savings = price.cache_savings_usd(reply.usage, batch=True)
        usage.input_tokens += reply.usage.input_tokens
        usage.cached_input_tokens += reply.usage.cached_input_tokens
        usage.cache_write_tokens += reply.usage.cache_write_tokens
        usage.output_tokens += reply.usage.output_tokens
        usage.cost_usd += cost
        usage.cache_savings_usd += savings
        totals.cost_usd += cost
        totals.cache_savings_usd += savings
        totals.input_tokens += reply.usage.input_tokens
        totals.cached_input_tokens += reply.usage.cached_input_tokens
        totals.cache_write_tokens += reply.usage.cache_write_tokens
        totals.output_tokens += reply.usage.output_tokens
        bill = (key, line, reply.usage, cost, savings)
        if reply.refusal is not None or reply.finish_reason in ("refusal", "content_filter"):
            error_class = "content_filter" if reply.finish_reason == "content_filter" else "refusal"
            bills.append((*bill, error_class))
            why = reply.refusal if isinstance(reply.refusal, str) else reply.finish_reason
            judged.append(
                _Judged(
                    key,
                    finish(
                        False,
                        error_class=error_class,
                        message=f"the model declined: {why}",
                        last_reply=reply.refusal if isinstance(reply.refusal, str) else reply.content,
                    ),
                )
            )
            continue
        if schema is None:
            bills.append((*bill, OK))
            judged.append(
                _Judged(
                    key, finish(True, output={"text": reply.content or ""}, finish_reason=reply.finish_reason)
                )
            )
            continue
        value, problem = parse_json_object(reply.content)
        if value is not None:
            errors = validate(value, schema)
            problem = "; ".join(errors[:5]) if errors else None
        bills.append((*bill, OK if problem is None else INVALID))
        if problem is None:
            judged.append(_Judged(key, finish(True, output=value, finish_reason=reply.finish_reason)))
        elif key in repair_keys or attempts >= resource.max_attempts:
            after = (
                "after one repair"
                if key in repair_keys
                else f"and the item used all {resource.max_attempts} attempts"
            )
            # A reply cut off at the output cap before its JSON ended is `truncated`, as online.
            cut = value is None and reply.finish_reason == "length"
            judged.append(
                _Judged(
                    key,
                    finish(
                        False,
                        error_class="truncated" if cut else "schema_invalid",
                        message=(
                            f"the reply hit the output cap of {resource.max_output_tokens} tokens before its "
                            f"JSON ended {after}: {problem}"
                            if cut
                            else f"output failed its schema {after}: {problem}"
                        ),
                        last_reply=reply.content,
                    ),
                )
            )
        else:
            judged.append(_Judged(key, resubmit=True, repair=(reply.content or "", problem)))

    _record_bills(resource, handle, bills)
    fatal = [j for j in judged if j.fatal is not None]
    if fatal:
        # Nothing is handed out or recorded: once the cause is fixed the same batch can be collected again.
        first = fatal[0].fatal
        assert first is not None
        raise JobFatalError(
            first.error_class,
            f"{len(fatal):,} of {len(handle.keys):,} lines of batch {handle.batch_id} failed with a job-fatal "
            f"error: {redact(first.message, resource.api_key)}; fix the configuration, then collect again",
        )

    for key in handle.empty_keys:
        empty_usage = ItemUsage(key, handle.provider, handle.model, handle.stage, mode="batch")
        judged.append(
            _Judged(
                key,
                ItemResult(
                    key, False, None, "empty_input", "the item's text is empty", 0, None, None, empty_usage
                ),
            )
        )
    results = [j.result for j in judged if j.result is not None]
    to_resubmit = [j.key for j in judged if j.resubmit]
    if on_result is not None:
        for result in results:
            on_result(result)

    # Persist: usage carried to the next round, pending repairs, the handle collected.
    for j in judged:
        if j.key in handle.empty_keys:
            continue
        if j.resubmit:
            u = usages[j.key]
            first_at = carried[j.key].first_attempt_at if j.key in carried else handle.submitted_at
            carried[j.key] = CarriedUsage(
                u.attempts,
                u.input_tokens,
                u.cached_input_tokens,
                u.cache_write_tokens,
                u.output_tokens,
                u.cost_usd,
                u.cache_savings_usd,
                first_at,
            )
        else:
            carried.pop(j.key, None)
        if journal is not None:
            if j.repair is not None:
                journal.repairs[j.key] = list(j.repair)
            elif j.key in repair_keys or j.result is not None:
                journal.repairs.pop(j.key, None)
    handle.status = COLLECTED
    handle.collected_at = _now_iso()
    handle.ended_at = handle.ended_at or handle.collected_at
    handle.cost_usd = totals.cost_usd
    if journal is not None:
        journal.record(handle)
    if handle.budget_scopes and (handle.reserved_usd or handle.reserved_tokens):
        # After the journal says "collected", so a crash here can only over-count spend, never refund twice.
        actual_tokens = totals.input_tokens + totals.output_tokens
        _adjust_spend(
            resource,
            handle.budget_scopes,
            totals.cost_usd - handle.reserved_usd,
            actual_tokens - handle.reserved_tokens,
        )

    billed_lines = sum(1 for k in handle.keys if by_key.get(k) is not None and by_key[k].kind == "succeeded")
    totals.requests = len(handle.keys)
    totals.retries = sum(1 for k in handle.keys if usages[k].attempts > 1)
    totals.items_succeeded = sum(1 for r in results if r.ok)
    totals.items_failed = sum(1 for r in results if not r.ok)
    totals.items_unfinished = len(to_resubmit)
    ended = _iso_s(handle.ended_at) or time.time()
    totals.duration_s = max(0.0, ended - (_iso_s(handle.submitted_at) or ended))
    log.info(
        "llm batch %s collected: %d items, %d ok, %d failed for good, %d to resubmit, %d lines billed, $%.4f",
        handle.batch_id,
        len(handle.keys) + len(handle.empty_keys),
        totals.items_succeeded,
        totals.items_failed,
        len(to_resubmit),
        billed_lines,
        totals.cost_usd,
    )
    return BatchCollection(results=results, to_resubmit=to_resubmit, summary=totals)
