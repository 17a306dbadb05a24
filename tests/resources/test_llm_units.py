"""The LLM resource's server-free parts: prices, the token estimator, the schema validator, the classifier,
the shared store's budget arithmetic and crashed-process reclaim."""

from __future__ import annotations

import json
import multiprocessing as mp
import random

import pytest

from llm_sim.tokens import count_tokens as sim_count_tokens
from resources.llm import LLMResource, UnknownModelPriceError
from resources.llm.errors import FailureLevel, ProviderError, classify_provider_error
from resources.llm.prices import PriceTable
from resources.llm.state_store import BudgetCap, BudgetNeed, LimitSpec, Permit, Settlement, SQLiteStateStore
from resources.llm.structured import parse_json_object, validate
from resources.llm.tokens import count_tokens
from resources.llm.types import TokenUsage


def test_estimator_counts_exactly_like_the_simulator():
    rng = random.Random(3)
    alphabet = "abcdefghij XYZ 0123456789 .,;:!?-_'\"()[]{}=>\n\tüé€"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        assert count_tokens(text) == sim_count_tokens(text)


def test_cost_uses_each_rate_and_batch_multiplier():
    row = PriceTable().lookup("claude-haiku-5-5", provider="anthropic")
    usage = TokenUsage(
        input_tokens=1_000_000 + 2_000_000 + 4_000_000,
        cached_input_tokens=2_000_000,
        cache_write_tokens=4_000_000,
        output_tokens=1_000_000,
    )
    assert row.cost_usd(usage) == pytest.approx(0.10 + 2 * 0.01 + 4 * 0.125 + 0.50)
    assert row.cost_usd(usage, batch=True) == pytest.approx((0.10 + 0.02 + 0.5 + 0.5) / 2)
    assert row.as_of and row.source


def test_unknown_model_fails_at_setup_with_what_to_do(tmp_path):
    resource = LLMResource(model="my-local-llama", api_key="k", state_dir=str(tmp_path))
    with pytest.raises(UnknownModelPriceError, match="`allow_unpriced: true` on the profile") as info:
        resource.price()
    assert "my-local-llama" in str(info.value)
    free = LLMResource(
        model="my-local-llama", api_key="k", allow_unpriced_model=True, state_dir=str(tmp_path)
    )
    assert free.price().cost_usd(TokenUsage(1000, 0, 0, 1000)) == 0.0


def test_price_override_file_replaces_and_adds_rows(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "models": [
                    {"provider": "openai", "model": "gpt-6-luna", "input": 1.0, "output": 2.0},
                    {
                        "provider": "openai",
                        "model": "local-qwen",
                        "input": 0.0,
                        "output": 0.0,
                        "source": "self-hosted",
                    },
                ]
            }
        )
    )
    table = PriceTable(str(path))
    assert table.lookup("gpt-6-luna", provider="openai").input == 1.0
    assert table.lookup("local-qwen", provider="openai").source == "self-hosted"


def test_validator_reports_enum_required_type_and_extra_properties():
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["a", "b"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["label", "confidence"],
        "additionalProperties": False,
    }
    assert validate({"label": "a", "confidence": 0.5, "tags": ["x"]}, schema) == []
    errors = validate({"label": "c", "tags": [1], "extra": True, "confidence": True}, schema)
    text = " | ".join(errors)
    for fragment in ("not one of", "expected number", "expected string", "unexpected property 'extra'"):
        assert fragment in text
    assert validate({"label": "a"}, schema) == ["$: missing required property 'confidence'"]
    assert parse_json_object('```json\n{"a": 1}\n```')[0] == {"a": 1}
    assert parse_json_object("{not json")[0] is None
    assert parse_json_object("[1]")[1].startswith("the reply is JSON but not an object")


@pytest.mark.parametrize(
    ("status", "etype", "code", "message", "retry_after", "level", "error_class"),
    [
        (
            429,
            "tokens",
            "rate_limit_exceeded",
            "Rate limit reached",
            1.0,
            FailureLevel.RETRYABLE,
            "rate_limited",
        ),
        (429, "insufficient_quota", "insufficient_quota", "quota", None, FailureLevel.FATAL, "quota"),
        (
            429,
            "rate_limit_error",
            None,
            "You have reached your spend limit",
            None,
            FailureLevel.FATAL,
            "quota",
        ),
        (
            429,
            "tokens",
            "rate_limit_exceeded",
            "Request too large for gpt",
            1.0,
            FailureLevel.ITEM,
            "input_too_long",
        ),
        (401, "authentication_error", None, "bad key", None, FailureLevel.FATAL, "auth"),
        (403, "permission_error", None, "no", None, FailureLevel.FATAL, "auth"),
        (402, "billing_error", None, "pay", None, FailureLevel.FATAL, "quota"),
        (
            400,
            "invalid_request_error",
            "invalid_prompt",
            "flagged",
            None,
            FailureLevel.ITEM,
            "invalid_prompt",
        ),
        (
            400,
            "invalid_request_error",
            None,
            "prompt is too long: 300000 tokens",
            None,
            FailureLevel.ITEM,
            "input_too_long",
        ),
        (413, "request_too_large", None, "too big", None, FailureLevel.ITEM, "input_too_long"),
        (408, None, None, "timeout", None, FailureLevel.RETRYABLE, "server_error"),
        (500, "server_error", None, "boom", None, FailureLevel.RETRYABLE, "server_error"),
        (503, None, None, "overloaded", None, FailureLevel.RETRYABLE, "server_error"),
        (529, "overloaded_error", None, "overloaded", None, FailureLevel.RETRYABLE, "server_error"),
    ],
)
def test_classifier_maps_each_provider_error(status, etype, code, message, retry_after, level, error_class):
    got = classify_provider_error(ProviderError(status, etype, code, message, retry_after))
    assert (got.level, got.error_class) == (level, error_class)


def _store(tmp_path) -> SQLiteStateStore:
    return SQLiteStateStore(tmp_path / "state.sqlite")


def _reserve_and_die(path: str) -> None:
    store = SQLiteStateStore(path)
    store.transact(
        None, [], [Permit({}, BudgetNeed(("day:d",), usd=0.25, tokens=100))], {"day:d": BudgetCap(1.0, None)}
    )
    # exits without settling: a crash mid-request


def test_crashed_process_reservation_is_reclaimed_and_charged(tmp_path):
    path = str(tmp_path / "state.sqlite")
    child = mp.get_context("spawn").Process(target=_reserve_and_die, args=(path,))
    child.start()
    child.join()
    store = SQLiteStateStore(path)
    assert store.spend("day:d") == pytest.approx((0.0, 0.25, 0))
    store.transact(None, [], [], {})  # any transaction reclaims dead processes' reservations
    assert store.spend("day:d") == pytest.approx((0.25, 0.0, 100))
    assert [row[3] for row in store.reclaimed()] == [child.pid]


def test_token_bucket_waits_and_a_429_blocks_everyone_sharing_it(tmp_path):
    store = _store(tmp_path)
    spec = LimitSpec("openai|x|m", {"tokens": 1000.0}, burst_s=1.0)  # 1000 tokens/s, 750 burst
    got = store.transact(spec, [], [Permit({"tokens": 300.0})] * 4, {})
    assert len(got.grants) == 2 and 0 < got.wait_s <= 0.2
    other = SQLiteStateStore(tmp_path / "state.sqlite")  # another process's view of the same limit
    other.transact(spec, [Settlement(None, rate_limited=True, retry_after_s=2.0)], [], {})
    got = store.transact(spec, [], [Permit({"tokens": 1.0})], {})
    assert got.grants == [] and 1.5 < got.wait_s <= 2.0
