"""What every request goes through, online or in a batch: tokens, cache, faults, the answer, the bill."""

from __future__ import annotations

import json
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from llm_sim import answers
from llm_sim.config import ModelSpec, SimConfig
from llm_sim.faults import FaultInjector
from llm_sim.ledger import Ledger, Usage
from llm_sim.prompt import Prompt
from llm_sim.prompt_cache import CachePlan, PromptCache
from llm_sim.rate_limits import ModelLimiter, Refusal
from llm_sim.server_dialect import as_percentages
from llm_sim.tokens import count_tokens, truncate_to_tokens

# HTTP status of each error fault, per provider ("dropped" = the connection is cut mid-response).
ERROR_STATUS = {
    "openai": {
        "rate_limit": 429,
        "insufficient_quota": 429,
        "server_error": 500,
        "unavailable": 503,
        "overloaded": 503,
        "outage": 503,
        "timeout": 504,
        "invalid_prompt": 400,
    },
    "anthropic": {
        "rate_limit": 429,
        "insufficient_quota": 429,
        "server_error": 500,
        "unavailable": 503,
        "overloaded": 529,
        "outage": 529,
        "timeout": 504,
        "invalid_prompt": 400,
    },
}


@dataclass
class Outcome:
    """The result of one request. `error_kind` set means an error response with HTTP `status`."""

    status: int | str
    fault: str | None
    error_kind: str | None = None
    content: str | None = None
    refusal: str | None = None
    finish: str = "stop"  # stop | length | content_filter | refusal
    usage: Usage = field(default_factory=Usage)
    prompt_tokens: int = 0
    billed_usd: float = 0.0
    latency_s: float = 0.0
    reply_id: str | None = None  # online replies: the body's `id`, also in the request log


class Engine:
    def __init__(self, config: SimConfig):
        self.config = config
        self.started = time.monotonic()
        self.ledger = Ledger()
        self.cache = PromptCache(config.cache_ttl_s, config.cache_min_tokens)
        self.faults = FaultInjector(config.faults, config.poison, config.seed, self.started)
        self.latency_rng = random.Random(config.seed + 1)
        self.limiters = {
            name: ModelLimiter(spec.limits, self.started) for name, spec in config.models.items()
        }
        self.bodies: list[dict] = []  # chat request bodies, when config.server.record_bodies

    def reset(self, faults: bool) -> None:
        self.ledger.reset()
        self.bodies.clear()
        self.cache.clear()
        now = time.monotonic()
        self.limiters = {name: ModelLimiter(spec.limits, now) for name, spec in self.config.models.items()}
        if faults:
            self.faults.reset(now)

    def model(self, name: str, provider: str) -> ModelSpec | None:
        spec = self.config.models.get(name)
        return spec if spec is not None and spec.provider == provider else None

    def plan_cache(self, prompt: Prompt) -> CachePlan:
        return self.cache.plan(prompt, time.monotonic())

    def admit(self, prompt: Prompt, cache_plan: CachePlan) -> Refusal | None:
        """Take the request's share of its model's rate limits, or say which limit refused it."""
        prompt_tokens = prompt.prompt_tokens()
        max_out = prompt.max_output_tokens or 0
        if prompt.provider == "openai":
            costs = {"requests": 1, "tokens": prompt_tokens + max_out}
        else:
            # Cache reads do not count towards Anthropic's input-token limit.
            counted_input = prompt_tokens - cache_plan.read_tokens
            costs = {
                "requests": 1,
                "input_tokens": counted_input,
                "output_tokens": max_out,
                "tokens": counted_input + max_out,
            }
        return self.limiters[prompt.model].admit(costs, time.monotonic())

    def limit_state(self, model: str) -> dict[str, tuple[float, float, float]] | None:
        limiter = self.limiters.get(model)
        return limiter.snapshot(time.monotonic()) if limiter else None

    def record_rejection(self, prompt: Prompt, endpoint: str, status: int | str, fault: str | None) -> None:
        """Log a request refused before it ran (rate limit, bad parameter): unbilled."""
        self.ledger.record(
            provider=prompt.provider,
            model=prompt.model,
            endpoint=endpoint,
            status=str(status),
            usage=None,
            billed_usd=0.0,
            user_sha256=prompt.user_sha256,
            fault=fault,
        )

    def run(
        self,
        prompt: Prompt,
        *,
        endpoint: str,
        batch: bool = False,
        custom_id: str | None = None,
        batch_id: str | None = None,
        cache_plan: CachePlan | None = None,
    ) -> Outcome:
        """Decide the fault, build the answer, bill it and log it. The model must exist."""
        spec = self.config.models[prompt.model]
        now = time.monotonic()
        fault = self.faults.decide(prompt, now, batch)
        if fault in ERROR_STATUS[prompt.provider] or fault == "drop":
            status: int | str = "dropped" if fault == "drop" else ERROR_STATUS[prompt.provider][fault]
            self.ledger.record(
                provider=prompt.provider,
                model=prompt.model,
                endpoint=endpoint,
                status=str(status),
                usage=None,
                billed_usd=0.0,
                user_sha256=prompt.user_sha256,
                custom_id=custom_id,
                batch_id=batch_id,
                fault=fault,
            )
            return Outcome(status=status, fault=fault, error_kind=fault)

        outcome = self._answer(prompt, fault)
        plan = cache_plan if cache_plan is not None else self.cache.plan(prompt, now)
        prompt_tokens = prompt.prompt_tokens()
        outcome.prompt_tokens = prompt_tokens
        outcome.usage = self._usage(
            prompt, spec, plan, prompt_tokens, count_tokens(outcome.refusal or outcome.content or "")
        )
        multiplier = self.config.batch_price_multiplier if batch else 1.0
        outcome.billed_usd = outcome.usage.cost_usd(spec, multiplier)
        self.cache.commit(plan, now)
        if not batch:
            latency = self.config.latency
            jitter = self.latency_rng.uniform(0, latency.jitter_ms) if latency.jitter_ms else 0.0
            outcome.latency_s = (
                latency.base_ms + latency.per_output_token_ms * outcome.usage.output + jitter
            ) / 1000.0
            outcome.reply_id = "chatcmpl-" if prompt.provider == "openai" else "msg_"
            outcome.reply_id += secrets.token_hex(12)
        self.ledger.record(
            provider=prompt.provider,
            model=prompt.model,
            endpoint=endpoint,
            status="200",
            usage=outcome.usage,
            billed_usd=outcome.billed_usd,
            user_sha256=prompt.user_sha256,
            custom_id=custom_id,
            batch_id=batch_id,
            fault=fault,
            reply_id=outcome.reply_id,
            latency_s=outcome.latency_s,
        )
        return outcome

    def _answer(self, prompt: Prompt, fault: str | None) -> Outcome:
        outcome = Outcome(status=200, fault=fault)
        if fault in ("refusal", "content_filter"):
            if fault == "refusal" and prompt.provider == "openai":
                outcome.refusal = answers.REFUSAL_TEXT
            elif fault == "content_filter" and prompt.provider == "openai":
                outcome.content = None
            else:
                outcome.content = answers.REFUSAL_TEXT
            outcome.finish = (
                "refusal"
                if prompt.provider == "anthropic"
                else ("content_filter" if fault == "content_filter" else "stop")
            )
            return self._cap(prompt, outcome)
        schema = prompt.schema
        value, _choice = answers.answer_for(prompt.last_user_text, prompt.full_text, schema)
        if schema is not None:
            value = self._label_from_key(prompt, value, schema)
            degrade_rate = self.faults.degrade_rate
            if degrade_rate and answers.uniform_from_text(prompt.last_user_text, "degrade") < degrade_rate:
                value = answers.degrade(value, schema)
            if fault == "schema_violation":
                value = answers.violate_schema(value, schema)
            if self.config.server.percent_numbers:
                value = as_percentages(value, schema)
            content = json.dumps(value)
        else:
            content = value if fault != "schema_violation" else json.dumps({"unexpected": value})
        if fault == "malformed_json":
            whole = content if schema is not None else json.dumps({"answer": content})
            content = whole[: max(1, len(whole) // 2)]
        if prompt.runaway:
            # No cap was read: a small model under a grammar keeps writing inside an open string.
            filler = " ".join(["and"] * (prompt.max_output_tokens or 0))
            content = (
                content[:-1] + ', "notes": "' + filler
                if schema is not None and content.endswith("}")
                else content + " " + filler
            )
        outcome.content = content
        return self._cap(prompt, outcome)

    def _label_from_key(self, prompt: Prompt, value: Any, schema: dict[str, Any]) -> Any:
        """The label field right with the model's configured accuracy when the item is in the answer key."""
        key = self.config.answer_key
        accuracy = self.config.models[prompt.model].accuracy
        if key is None or accuracy is None:
            return value
        draw = f"{self.config.seed}:{prompt.model}"
        return key.label_answer(value, schema, prompt.last_user_text, accuracy, draw)

    @staticmethod
    def _cap(prompt: Prompt, outcome: Outcome) -> Outcome:
        """Never exceed the caller's output cap: truncate and say so in finish."""
        limit = prompt.max_output_tokens
        text = outcome.refusal if outcome.refusal is not None else outcome.content
        if limit is None or text is None or count_tokens(text) <= limit:
            return outcome
        cut = truncate_to_tokens(text, limit)
        if outcome.refusal is not None:
            outcome.refusal = cut
        else:
            outcome.content = cut
        if outcome.finish == "stop":
            outcome.finish = "length"
        return outcome

    @staticmethod
    def _usage(
        prompt: Prompt, spec: ModelSpec, plan: CachePlan, prompt_tokens: int, output_tokens: int
    ) -> Usage:
        read = min(plan.read_tokens, prompt_tokens)
        if prompt.provider == "openai":
            write = min(plan.write_tokens, prompt_tokens - read) if spec.bills_cache_write else 0
            return Usage(
                input=prompt_tokens - read - write, cached_input=read, cache_write=write, output=output_tokens
            )
        write = min(plan.write_tokens, prompt_tokens - read)
        one_hour = plan.write_ttl_s >= 3600.0  # a `ttl: "1h"` breakpoint, billed at cache_write_1h
        return Usage(
            input=prompt_tokens - read - write,
            cached_input=read,
            cache_write=0 if one_hour else write,
            cache_write_1h=write if one_hour else 0,
            output=output_tokens,
        )
