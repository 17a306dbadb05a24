"""Simulator configuration: models and prices, keys, limits, latency, faults, caching, batches, answer key.

Loaded from a YAML or JSON file (`--config FILE`); every key is optional. See docs/simulator.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_sim.answer_key import AnswerKey, AnswerKeyError
from llm_sim.server_dialect import ServerDialect, server_dialect

DEFAULT_API_KEY = "sk-sim-local"

# USD per million tokens. `cached_input` is a cache read; `cache_write` a 5-minute cache write.
DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "gpt-6-luna": {
        "provider": "openai",
        "input": 0.10,
        "cached_input": 0.01,
        "cache_write": 0.125,
        "output": 0.50,
    },
    "gpt-6.2-sol": {
        "provider": "openai",
        "input": 2.00,
        "cached_input": 0.10,
        "cache_write": 2.50,
        "output": 10.00,
    },
    "claude-haiku-5-5": {
        "provider": "anthropic",
        "input": 0.10,
        "cached_input": 0.01,
        "cache_write": 0.125,
        "output": 0.50,
    },
    "claude-sonnet-5-5": {
        "provider": "anthropic",
        "input": 2.00,
        "cached_input": 0.20,
        "cache_write": 2.50,
        "output": 10.00,
    },
}

DEFAULT_POISON = {"[[poison]]": "invalid_prompt", "[[refuse]]": "refusal"}

PROVIDERS = ("openai", "anthropic")


class ConfigError(ValueError):
    """The simulator config is invalid; the message names the key."""


@dataclass(frozen=True)
class Limits:
    """Rate limits of one model, each in units per `period_s` (None = unlimited)."""

    rpm: float | None = None
    tpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    per: str = "minute"

    @property
    def period_s(self) -> float:
        return 1.0 if self.per == "second" else 60.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Limits:
        raw = dict(raw or {})
        per = raw.pop("per", "minute")
        if per not in ("minute", "second"):
            raise ConfigError(f"limits.per must be 'minute' or 'second', got {per!r}")
        unknown = set(raw) - {"rpm", "tpm", "itpm", "otpm"}
        if unknown:
            raise ConfigError(f"unknown limits keys {sorted(unknown)}; use rpm, tpm, itpm, otpm, per")
        return cls(per=per, **{k: (None if v is None else float(v)) for k, v in raw.items()})


@dataclass(frozen=True)
class ModelSpec:
    """One model: provider, prices in USD per million tokens, rate limits, and its accuracy on answer-key items
    (None: labels come from the lexical answer, as for items not in the key)."""

    name: str
    provider: str
    input: float
    cached_input: float
    cache_write: float
    output: float
    cache_write_1h: float
    bills_cache_write: bool
    limits: Limits
    accuracy: float | None = None


@dataclass(frozen=True)
class LatencyConfig:
    """Simulated latency: base_ms + per_output_token_ms * output tokens + uniform(0, jitter_ms)."""

    base_ms: float = 0.0
    per_output_token_ms: float = 0.0
    jitter_ms: float = 0.0


@dataclass
class SimConfig:
    keys: list[str] = field(default_factory=lambda: [DEFAULT_API_KEY])
    models: dict[str, ModelSpec] = field(default_factory=dict)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    faults: dict[str, Any] = field(default_factory=dict)
    poison: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_POISON))
    seed: int = 0
    cache_ttl_s: float = 300.0
    cache_min_tokens: int = 1024
    batch_complete_after_s: float = 2.0
    batch_expire: bool = False
    batch_price_multiplier: float = 0.5
    server: ServerDialect = field(default_factory=ServerDialect)
    answer_key: AnswerKey | None = None


def _model_spec(name: str, raw: dict[str, Any], default_limits: dict[str, Any] | None) -> ModelSpec:
    provider = raw.get("provider")
    if provider not in PROVIDERS:
        raise ConfigError(f"models.{name}.provider must be one of {PROVIDERS}, got {provider!r}")
    try:
        price_in = float(raw["input"])
        price_out = float(raw["output"])
    except KeyError as exc:
        raise ConfigError(
            f"models.{name} needs a price for {exc.args[0]!r} (USD per million tokens)"
        ) from exc
    cached = float(raw.get("cached_input", raw.get("cache_read", price_in)))
    accuracy = raw.get("accuracy")
    if accuracy is not None and (
        not isinstance(accuracy, int | float) or isinstance(accuracy, bool) or not 0 <= accuracy <= 1
    ):
        raise ConfigError(
            f"models.{name}.accuracy must be a number between 0 and 1 (the share of answer-key items it labels "
            f"right), got {accuracy!r}"
        )
    return ModelSpec(
        name=name,
        provider=provider,
        input=price_in,
        cached_input=cached,
        cache_write=float(raw.get("cache_write", price_in * 1.25)),
        cache_write_1h=float(raw.get("cache_write_1h", price_in * 2)),
        output=price_out,
        bills_cache_write=bool(raw.get("bills_cache_write", False)),
        limits=Limits.from_dict(raw.get("limits", default_limits)),
        accuracy=None if accuracy is None else float(accuracy),
    )


def _answer_key(raw: Any, base_dir: Path | None, models: dict[str, ModelSpec]) -> AnswerKey | None:
    with_accuracy = sorted(name for name, spec in models.items() if spec.accuracy is not None)
    if raw is None:
        if with_accuracy:
            raise ConfigError(
                f"models.{with_accuracy[0]}.accuracy is set but there is no answer_key to be accurate against; "
                "add `answer_key: <key.json>` or remove the accuracy"
            )
        return None
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"answer_key must be the path of a JSON file, got {raw!r}")
    path = Path(raw)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        return AnswerKey.load(path)
    except AnswerKeyError as exc:
        raise ConfigError(str(exc)) from exc


def build_config(raw: dict[str, Any] | None, base_dir: Path | None = None) -> SimConfig:
    """A SimConfig from a parsed config document (defaults for every missing key). A relative `answer_key`
    path is relative to `base_dir` (the config file's folder), else to the working directory."""
    raw = dict(raw or {})
    known = {
        "keys",
        "models",
        "limits",
        "latency",
        "faults",
        "poison",
        "seed",
        "cache",
        "batch",
        "server",
        "answer_key",
    }
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    default_limits = raw.get("limits")
    model_raw: dict[str, dict[str, Any]] = {name: dict(spec) for name, spec in DEFAULT_MODELS.items()}
    for name, spec in (raw.get("models") or {}).items():
        model_raw[name] = {**model_raw.get(name, {}), **(spec or {})}
    models = {name: _model_spec(name, spec, default_limits) for name, spec in model_raw.items()}
    keys = raw.get("keys") or [DEFAULT_API_KEY]
    if isinstance(keys, str):
        keys = [keys]
    faults = dict(raw.get("faults") or {})
    poison = dict(DEFAULT_POISON)
    poison.update(raw.get("poison") or {})
    poison.update(faults.pop("poison", None) or {})
    cache = raw.get("cache") or {}
    batch = raw.get("batch") or {}
    return SimConfig(
        keys=[str(k) for k in keys],
        models=models,
        latency=LatencyConfig(**(raw.get("latency") or {})),
        faults=faults,
        poison=poison,
        seed=int(raw.get("seed", 0)),
        cache_ttl_s=float(cache.get("ttl_s", 300.0)),
        cache_min_tokens=int(cache.get("min_tokens", 1024)),
        batch_complete_after_s=float(batch.get("complete_after_s", 2.0)),
        batch_expire=bool(batch.get("expire", False)),
        batch_price_multiplier=float(batch.get("price_multiplier", 0.5)),
        server=server_dialect(raw.get("server")),
        answer_key=_answer_key(raw.get("answer_key"), base_dir, models),
    )


def load_config(path: str | Path | None) -> SimConfig:
    """Read a YAML or JSON config file (None: all defaults)."""
    if path is None:
        return build_config(None)
    text = Path(path).read_text()
    raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping at the top level")
    return build_config(raw, Path(path).resolve().parent)
