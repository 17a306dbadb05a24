"""LLMResource: the Dagster resource asset code uses to run many prompts and get per-item results + usage."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.llm.batch import BatchCollection, BatchStatus
from resources.llm.batch_journal import BatchHandle, BatchJournal
from resources.llm.budget import BudgetCaps, caps_by_scope, scope_keys
from resources.llm.errors import JobFatalError, UnknownModelPriceError
from resources.llm.normalize import check_rules
from resources.llm.prices import ModelPrice, PriceTable
from resources.llm.providers import adapter_for, dialect_for
from resources.llm.providers.dialects import Dialect
from resources.llm.ratelimit import AdmissionController, limit_spec
from resources.llm.runner import EngineSettings, PromptRun
from resources.llm.spend_ledger import SPEND_LEDGER_FILE, SpendLedger
from resources.llm.spend_ledger_pg import open_spend_ledger
from resources.llm.state_store import LimitStateStore, StateStoreUnavailableError, open_state_store
from resources.llm.types import BudgetScope, CallOutcome, ItemResult, LLMRequest

STATE_FILE = "llm_state.sqlite"
_STRUCTURED_MODES = ("json_schema", "json_object", "prompt")


def default_state_dir(instance_storage_dir: str | None = None) -> Path:
    """<instance storage>/chunkwise under Dagster, else $CHUNKWISE_HOME/state (default ~/.chunkwise/state)."""
    if instance_storage_dir:
        return Path(instance_storage_dir) / "chunkwise"
    home = os.environ.get("CHUNKWISE_HOME") or str(Path.home() / ".chunkwise")
    return Path(home) / "state"


def spend_ledger_for(instance_storage_dir: str | None, state_dir: str | None = None) -> SpendLedger:
    """The spend ledger LLM resources with this `state_dir` (default: beside the instance's storage) write; the
    shared one when CHUNKWISE_STATE_URL names it (spend_ledger_pg.open_spend_ledger)."""
    base = Path(state_dir) if state_dir else default_state_dir(instance_storage_dir)
    return open_spend_ledger(base / SPEND_LEDGER_FILE)


class LLMResource(dg.ConfigurableResource):
    """Runs prompts against an OpenAI-compatible Chat Completions server or Anthropic Messages with shared rate
    limits, hard budgets, exact cost and a clear failure taxonomy. Rates are per minute, money in USD, times in
    seconds. `dialect` adapts the OpenAI wire format to the server (resources/llm/providers/dialects.py)."""

    provider: str = Field(
        default="openai", description="'openai' (any OpenAI-compatible server) or 'anthropic'"
    )
    dialect: str | None = Field(
        default=None,
        description="OpenAI-compatible server kind: 'openai' (the official API; the default), 'llamacpp', "
        "'vllm', 'ollama', 'litellm' or 'openai_compatible' (any other: sends both max_tokens and "
        "max_completion_tokens). Decides the output-cap parameter, the default structured_output and "
        "max_concurrency. Unset for provider 'anthropic'.",
    )
    base_url: str = Field(
        default="http://127.0.0.1:8765/v1",
        description="OpenAI: the URL ending in /v1. Anthropic: the server root (/v1/messages is appended).",
    )
    api_key: str = Field(repr=False, description="Secret; give it as dg.EnvVar('CHUNKWISE_LLM_API_KEY').")
    model: str
    max_output_tokens: int = Field(
        default=256,
        description="Output cap per reply; a server that ignores it stops the job on its first reply.",
    )
    timeout_s: float = Field(
        default=60.0,
        description="Upper bound of a request's deadline (and of connecting). The deadline itself is learnt from "
        "this run's replies: the slowest reply plus twice the time the output cap takes at the measured speed.",
    )
    min_timeout_s: float = Field(default=10.0, description="Lower bound of the learnt per-request deadline.")
    max_timeouts_per_item: int = Field(
        default=2,
        description="An item whose requests time out this many times, while the server answers others, is "
        "dead-lettered `timeout` (never retried without end).",
    )
    max_concurrency: int | None = Field(
        default=None,
        description="Requests in flight at once, per process. Unset: the dialect's default (32 for cloud APIs, "
        "vLLM and LiteLLM; 8 for openai_compatible; 1 for llamacpp and ollama). For a local server use its "
        "number of slots (llama.cpp --parallel, OLLAMA_NUM_PARALLEL).",
    )
    server_slots: int | None = Field(
        default=None,
        description="Requests in flight at once at this base_url over EVERY process sharing state_dir (the "
        "server's slots); paces servers that send no rate-limit headers. Unset: no shared limit.",
    )
    context_tokens: int | None = Field(
        default=None,
        description="The server's context window in tokens, when known (llama.cpp --ctx-size): a reply cut off "
        "at the output cap gets no repair that would overflow it. Learnt from the server's context errors.",
    )
    max_attempts: int = Field(default=6, description="Per item, on retryable errors only.")
    structured_output: str | None = Field(
        default=None,
        description="'json_schema' | 'json_object' | 'prompt'. Unset: the dialect's mode (json_object for "
        "llamacpp, json_schema for the others).",
    )
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    input_tokens_per_minute: float | None = Field(default=None, description="Anthropic ITPM")
    output_tokens_per_minute: float | None = Field(default=None, description="Anthropic OTPM")
    rate_limit_burst_s: float = Field(
        default=1.0,
        description="Bucket size, in seconds of the configured rate, until the provider's headers state its limit.",
    )
    budget_run_usd: float | None = None
    budget_dataset_usd: float | None = None
    budget_day_usd: float | None = None
    budget_run_tokens: int | None = None
    budget_dataset_tokens: int | None = None
    budget_day_tokens: int | None = None
    price_table_path: str | None = Field(
        default=None, description="JSON rows merged over the shipped prices."
    )
    allow_unpriced_model: bool = Field(default=False, description="Price a model without a row at zero.")
    state_dir: str | None = Field(
        default=None, description="Where the shared limit/budget SQLite file lives."
    )
    progress_interval_s: float = 10.0
    circuit_breaker_failures: int = Field(
        default=25, description="Consecutive retryable failures (no success between) that fail the chunk."
    )
    circuit_breaker_rate_limited_s: float = Field(
        default=300.0,
        description="Seconds of 429s without a reply that fail the chunk (a 429 counts toward neither "
        "`circuit_breaker_failures` nor `max_attempts`).",
    )

    _price: ModelPrice | None = PrivateAttr(default=None)
    _store: LimitStateStore | None = PrivateAttr(default=None)
    _ledger: SpendLedger | None = PrivateAttr(default=None)
    _instance_storage: str | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _setup_error: JobFatalError | None = PrivateAttr(default=None)
    # Test seam for crash-resume tests: called as hook(step, handle) at "uploaded", "before_create", "created".
    _batch_step_hook: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Check the settings and the model's price at start-up. A problem is logged here and raised as a
        job-fatal JobFatalError("config") by the first call, before any request: raised here it would be a
        resource-init failure, which Dagster records without a step failure (so it would not read as job-fatal)."""
        instance = context.instance
        if instance is not None and self.state_dir is None:
            self._instance_storage = instance.storage_directory()
        try:
            self._validate()
            self._price_or_fatal()
        except JobFatalError as exc:
            self._setup_error = exc
        except ValueError as exc:
            self._setup_error = JobFatalError("config", f"configuration error in the LLM resource: {exc}")
        if self._setup_error is not None and context.log is not None:
            context.log.error(self._setup_error.description or str(self._setup_error))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    # -- public ------------------------------------------------------------------------------------------
    def price(self) -> ModelPrice:
        """The price row for `model` (raises UnknownModelPriceError with what to do)."""
        if self._price is None:
            table = PriceTable(self.price_table_path)
            self._price = table.lookup(
                self.model, provider=self.provider, allow_unpriced=self.allow_unpriced_model
            )
        return self._price

    def server_dialect(self) -> Dialect:
        """The server dialect in force (the provider's own API when `dialect` is unset)."""
        return dialect_for(self.provider, self.dialect)

    def effective_structured_output(self) -> str:
        """`structured_output` when set, else the dialect's mode."""
        return self.structured_output or self.server_dialect().structured_output

    def effective_max_concurrency(self) -> int:
        """`max_concurrency` when set, else the dialect's default."""
        return self.max_concurrency or self.server_dialect().max_concurrency

    def limit_key(self) -> str:
        """The shared limit store's key for this provider, endpoint and model."""
        return f"{self.provider}|{self.base_url.rstrip('/')}|{self.model}"

    def stated_limits(self) -> dict[str, float]:
        """Per-minute limits by kind the provider stated in its rate-limit headers, as the shared limit store
        recorded them (resources/llm/state_store.py); {} when the store has none."""
        return self._read_store(lambda store: store.stated_limits(self.limit_key()))

    def bucket_levels(self) -> dict[str, tuple[float, float, float]]:
        """kind -> (rate per second, capacity, level now) of this resource's buckets in the shared limit store
        (`SharedStateStore.bucket_levels`); {} when the store has none."""
        return self._read_store(lambda store: store.bucket_levels(self.limit_key()))

    def _read_store(self, read: Callable[[LimitStateStore], dict]) -> dict:
        """`read` on a store opened for it and closed after; {} when there is no store yet (nothing is created)."""
        store = open_state_store(self.state_path(), must_exist=True)
        if store is None:
            return {}
        try:
            return read(store)
        finally:
            store.close()

    def state_path(self) -> Path:
        base = Path(self.state_dir) if self.state_dir else default_state_dir(self._instance_storage)
        return base / STATE_FILE

    def spend_ledger_path(self) -> Path:
        """The spend ledger (every attempt and what it was billed) beside the limit store."""
        return self.state_path().parent / SPEND_LEDGER_FILE

    def spend_ledger(self) -> SpendLedger:
        """The append-only spend ledger and the job halts this resource writes and honours."""
        with self._lock:
            if self._ledger is None:
                try:
                    self._ledger = open_spend_ledger(self.spend_ledger_path())
                except StateStoreUnavailableError as exc:  # the shared ledger's database: the job stops
                    raise JobFatalError("state_store", str(exc)) from None
            return self._ledger

    def run_prompts(
        self,
        requests: Sequence[LLMRequest],
        *,
        system_prompt: str,
        schema: dict | None,
        schema_name: str,
        scope: BudgetScope,
        stage: str,
        on_result: Callable[[ItemResult], None] | None = None,
        log: logging.Logger | Any | None = None,
        mode: str = "online",
        normalize: dict[str, str] | None = None,
    ) -> CallOutcome:
        """Send every request (system_prompt first, byte-identical, so provider caching hits) and return per-item
        results and a usage summary. `on_result` is called once per item that finished for good, never
        concurrently. `normalize` maps output paths to "clamp" | "percent_to_unit", applied to each reply before
        validation and recorded in `ItemResult.normalized` (resources/llm/normalize.py). Raises JobFatalError
        (auth, quota, budget, config, or "stopped" by SIGTERM/SIGINT: no automatic retry) or ChunkRetryableError
        (items left after retryable failures); both carry `.outcome` with what finished."""
        if mode != "online":
            raise ValueError(
                f"mode={mode!r} is not implemented yet; only 'online' is (the batch path is a later issue)"
            )
        self._raise_setup_error()
        self._validate()
        rules = check_rules(normalize, schema)
        dialect = self.server_dialect()
        adapter = adapter_for(self.provider, self.dialect)
        settings = EngineSettings(
            adapter=adapter,
            base_url=self.base_url,
            api_key=self.api_key,
            model=self.model,
            price=self._price_or_fatal(),
            max_output_tokens=self.max_output_tokens,
            timeout_s=self.timeout_s,
            max_concurrency=self.effective_max_concurrency(),
            max_attempts=self.max_attempts,
            structured_output=self.effective_structured_output(),
            progress_interval_s=self.progress_interval_s,
            breaker_consecutive_failures=self.circuit_breaker_failures,
            breaker_rate_limited_s=self.circuit_breaker_rate_limited_s,
            dialect=dialect,
            min_timeout_s=self.min_timeout_s,
            max_timeouts_per_item=self.max_timeouts_per_item,
            context_tokens=self.context_tokens,
        )
        caps = self.budget_caps()
        keys = scope_keys(scope)
        spec = limit_spec(
            self.limit_key(),
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            input_tokens_per_minute=self.input_tokens_per_minute,
            output_tokens_per_minute=self.output_tokens_per_minute,
            burst_s=self.rate_limit_burst_s,
            server_slots=self.server_slots,
            slots_key=f"{self.provider}|{self.base_url.rstrip('/')}",
        )
        store = self._shared_store() if (spec is not None or caps.any) else None
        ledger = self.spend_ledger()

        async def main() -> CallOutcome:
            admission = AdmissionController(store, spec, caps_by_scope(caps, keys))
            run = PromptRun(
                settings,
                admission,
                budget_scopes=keys if caps.any else None,
                system_prompt=system_prompt,
                schema=schema,
                schema_name=schema_name,
                stage=stage,
                on_result=on_result,
                log=log,
                mode=mode,
                ledger=ledger,
                scope=scope,
                normalize=rules,
            )
            return await run.run(list(requests))

        return _run_coroutine(main)

    def budget_caps(self) -> BudgetCaps:
        """The configured caps (USD, tokens) per run, dataset and UTC day."""
        return BudgetCaps(
            self.budget_run_usd,
            self.budget_dataset_usd,
            self.budget_day_usd,
            self.budget_run_tokens,
            self.budget_dataset_tokens,
            self.budget_day_tokens,
        )

    # -- batch mode (resources/llm/batch.py) ------------------------------------------------------------
    def submit_batch(
        self,
        requests: Sequence[LLMRequest],
        *,
        system_prompt: str,
        schema: dict | None,
        schema_name: str,
        scope: BudgetScope,
        stage: str,
        journal: BatchJournal,
        round: int = 1,
        partition: str | None = None,
        log: logging.Logger | Any | None = None,
    ) -> list[BatchHandle]:
        """Submit `requests` as provider batches (half price, results within 24 h) and return their handles.

        Idempotent: every step is recorded in `journal` before the next provider call, and a call for a round
        the journal already holds resumes it (keys already in a handle of this round are never sent again).
        Splits by provider limits (OpenAI 50,000 lines / 200 MB per file; Anthropic 100,000 / 256 MB).
        Reserves the worst-case batch cost (USD, tokens) in the budget store first: raises JobFatalError
        reason="budget" before anything is uploaded when it does not fit. Round >= 2 sends each key's pending
        schema repair (recorded by collect_batch). `partition` goes into the submission ids; when None it is the
        journal's grandparent folder name (<checkpoints>/<dataset>/<partition>/<stage>/batches.json).
        Raises JobFatalError (auth, quota, budget, config) or ChunkRetryableError (provider unreachable, or an
        Anthropic batch that may be this submission's has not ended yet, see batch.py)."""
        from resources.llm import batch as batch_mode

        self._raise_setup_error()
        return batch_mode.submit(
            self,
            requests,
            system_prompt=system_prompt,
            schema=schema,
            schema_name=schema_name,
            scope=scope,
            stage=stage,
            journal=journal,
            round_=round,
            partition=partition,
            log=log,
        )

    def poll_batch(self, handle: BatchHandle) -> BatchStatus:
        """The provider's current status and line counts for `handle`; no side effects (the journal is not
        written). A handle still "submitting" answers state="submitting" without a provider call."""
        from resources.llm import batch as batch_mode

        return batch_mode.poll(self, handle)

    def collect_batch(
        self,
        handle: BatchHandle,
        *,
        schema: dict | None,
        on_result: Callable[[ItemResult], None] | None = None,
        log: logging.Logger | Any | None = None,
    ) -> BatchCollection:
        """Download and parse an ended batch's results; each line goes through the same classifier as online mode.

        ok -> ItemResult ok (validated against `schema`; a schema failure is repaired in the next round, and
        is item-permanent "schema_invalid" after its repair); item-permanent -> ItemResult failed (dead letter);
        retryable, expired or canceled -> `to_resubmit`, unless the item has used max_attempts rounds (then
        ItemResult failed "retries_exhausted" / "expired" / "canceled"). Costs at batch prices
        (ItemUsage.mode="batch", usage summed over the item's rounds); the budget reservation is reconciled with
        the actual cost. `on_result` gets every finished item once per collection. Marks the handle "collected"
        in its journal. Raises ValueError if the batch has not ended, JobFatalError if its lines failed with a
        job-fatal error (auth, quota, unknown model) or the provider rejected the whole batch."""
        from resources.llm import batch as batch_mode

        return batch_mode.collect(self, handle, schema=schema, on_result=on_result, log=log)

    def cancel_batch(self, handle: BatchHandle) -> BatchStatus:
        """Cancel the batch at the provider (already finished lines stay billed and collectable: collect the
        handle once its status has ended). Records status "cancelled" in the handle's journal."""
        from resources.llm import batch as batch_mode

        return batch_mode.cancel(self, handle)

    # -- internals ---------------------------------------------------------------------------------------
    def _validate(self) -> None:
        adapter_for(self.provider, self.dialect)
        if self.structured_output is not None and self.structured_output not in _STRUCTURED_MODES:
            raise ValueError(
                f"structured_output={self.structured_output!r}; use one of {', '.join(_STRUCTURED_MODES)}"
            )
        if self.provider == "anthropic" and self.structured_output == "json_object":
            raise ValueError(
                "structured_output='json_object' is an OpenAI-compatible setting; use json_schema or prompt"
            )
        if self.effective_max_concurrency() < 1 or self.max_attempts < 1 or self.max_output_tokens < 1:
            raise ValueError("max_concurrency, max_attempts and max_output_tokens must be at least 1")
        if self.max_timeouts_per_item < 1 or (self.server_slots is not None and self.server_slots < 1):
            raise ValueError("max_timeouts_per_item and server_slots must be at least 1")
        if self.timeout_s <= 0 or self.min_timeout_s <= 0:
            raise ValueError("timeout_s and min_timeout_s must be more than 0 seconds")

    def _raise_setup_error(self) -> None:
        if self._setup_error is not None:
            raise self._setup_error

    def _price_or_fatal(self) -> ModelPrice:
        """price(), with a missing row as a job-fatal configuration error (never retried as transient)."""
        try:
            return self.price()
        except UnknownModelPriceError as exc:
            raise JobFatalError("config", f"configuration error: {exc}") from exc

    def _shared_store(self) -> LimitStateStore:
        """The store CHUNKWISE_STATE_URL selects (state_store.open_state_store); unreachable, the job stops."""
        with self._lock:
            if self._store is None:
                try:
                    self._store = open_state_store(self.state_path())
                except StateStoreUnavailableError as exc:
                    raise JobFatalError("state_store", str(exc)) from None
            assert self._store is not None
            return self._store


def _run_coroutine(factory: Callable[[], Any]) -> Any:
    """asyncio.run in the calling thread; if that thread already runs a loop, in a helper thread instead."""
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:  # outside the except block, so an error raised here does not carry that RuntimeError
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="llm-run-prompts")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
