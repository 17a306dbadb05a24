"""The billing ledger and request log: what the simulator charged, for whom, and why.

Every HTTP 200 that carries usage is billed, as providers bill it (refusals and malformed content included);
error responses, dropped connections and timeouts are not. `tokens.input` counts tokens billed at the full
input rate, `cached_input` cache reads, `cache_write` cache writes billed at a write rate (always for Anthropic;
for OpenAI only on models with `bills_cache_write`), `output` output tokens.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from llm_sim.config import ModelSpec


@dataclass
class Usage:
    """Tokens of one request split by billing rate. `input` excludes cache reads and billed cache writes."""

    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    output: int = 0

    def cost_usd(self, model: ModelSpec, multiplier: float) -> float:
        """USD: tokens * price / 1e6 per rate, times the batch multiplier (1 online)."""
        return (
            (
                self.input * model.input
                + self.cached_input * model.cached_input
                + self.cache_write * model.cache_write
                + self.cache_write_1h * model.cache_write_1h
                + self.output * model.output
            )
            * multiplier
            / 1e6
        )


@dataclass
class RequestRecord:
    seq: int
    t: float
    provider: str
    model: str
    endpoint: str  # "chat" | "messages" | "batch_line"
    status: str  # HTTP status as a string, or "dropped"
    billed_usd: float
    input_tokens: int  # all input tokens, cached and written included
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    user_sha256: str
    custom_id: str | None = None
    batch_id: str | None = None
    fault: str | None = None
    reply_id: str | None = (
        None  # the `id` of the reply body (`chatcmpl-...` / `msg_...`): what the client saw
    )
    latency_s: float = 0.0  # how long the reply was held after billing: in flight over [t, t + latency_s]
    usage: Usage = field(default_factory=Usage, repr=False)


def _token_totals() -> dict[str, int]:
    return {"input": 0, "cached_input": 0, "cache_write": 0, "output": 0}


@dataclass
class Ledger:
    records: list[RequestRecord] = field(default_factory=list)
    batches: dict[str, int] = field(
        default_factory=lambda: {"created": 0, "completed": 0, "cancelled": 0, "expired": 0, "failed": 0}
    )

    def reset(self) -> None:
        self.records.clear()
        for key in self.batches:
            self.batches[key] = 0

    def record(
        self,
        *,
        provider: str,
        model: str,
        endpoint: str,
        status: str,
        usage: Usage | None,
        billed_usd: float,
        user_sha256: str,
        custom_id: str | None = None,
        batch_id: str | None = None,
        fault: str | None = None,
        reply_id: str | None = None,
        latency_s: float = 0.0,
    ) -> RequestRecord:
        usage = usage or Usage()
        record = RequestRecord(
            seq=len(self.records) + 1,
            t=time.time(),
            provider=provider,
            model=model,
            endpoint=endpoint,
            status=status,
            billed_usd=billed_usd,
            input_tokens=usage.input + usage.cached_input + usage.cache_write + usage.cache_write_1h,
            cached_input_tokens=usage.cached_input,
            cache_write_tokens=usage.cache_write + usage.cache_write_1h,
            output_tokens=usage.output,
            user_sha256=user_sha256,
            custom_id=custom_id,
            batch_id=batch_id,
            fault=fault,
            reply_id=reply_id,
            latency_s=latency_s,
            usage=usage,
        )
        self.records.append(record)
        return record

    def stats(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        by_model: dict[str, dict[str, Any]] = {}
        tokens = _token_totals()
        billed = billed_online = billed_batch = 0.0
        billed_count = lines_billed = 0
        for rec in self.records:
            by_status[rec.status] = by_status.get(rec.status, 0) + 1
            model = by_model.setdefault(
                rec.model,
                {"requests_total": 0, "requests_billed": 0, "billed_usd": 0.0, "tokens": _token_totals()},
            )
            model["requests_total"] += 1
            if rec.status != "200":
                continue
            billed_count += 1
            billed += rec.billed_usd
            if rec.endpoint == "batch_line":
                billed_batch += rec.billed_usd
                lines_billed += 1
            else:
                billed_online += rec.billed_usd
            usage = rec.usage
            row = {
                "input": usage.input,
                "cached_input": usage.cached_input,
                "cache_write": usage.cache_write + usage.cache_write_1h,
                "output": usage.output,
            }
            model["requests_billed"] += 1
            model["billed_usd"] += rec.billed_usd
            for key, value in row.items():
                tokens[key] += value
                model["tokens"][key] += value
        for model in by_model.values():
            model.update(model["tokens"])
        return {
            "requests_total": len(self.records),
            "requests_billed": billed_count,
            "billed_usd": billed,
            "billed_usd_online": billed_online,
            "billed_usd_batch": billed_batch,
            "by_status": by_status,
            "tokens": tokens,
            "by_model": by_model,
            "batches": {**self.batches, "lines_billed": lines_billed},
        }

    def request_log(self) -> list[dict[str, Any]]:
        rows = []
        for rec in self.records:
            row = asdict(rec)
            del row["usage"]
            rows.append(row)
        return rows
