"""The price table: one dated, sourced row per model (USD per million tokens), shipped as prices.json and
overridable by a user JSON file of the same shape. The ONE place where tokens become dollars."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from resources.llm.errors import UnknownModelPriceError
from resources.llm.types import TokenUsage

SHIPPED_PRICES = Path(__file__).with_name("prices.json")


ALLOW_UNPRICED_SOURCE = "allow_unpriced (zero price)"
"""The `source` of the zero-price row `PriceTable.lookup` makes for a model with no row whose provider profile
sets `allow_unpriced: true` (the completion report lists those stages)."""


@dataclass(frozen=True)
class ModelPrice:
    """Rates in USD per million tokens."""

    provider: str
    model: str
    input: float
    cached_input: float
    cache_write: float
    output: float
    batch_multiplier: float
    as_of: str
    source: str

    def cost_usd(self, usage: TokenUsage, *, batch: bool = False) -> float:
        """Dollars for one response's reported usage (cached reads and cache writes at their own rates)."""
        usd = (
            usage.uncached_input_tokens * self.input
            + usage.cached_input_tokens * self.cached_input
            + usage.cache_write_tokens * self.cache_write
            + usage.output_tokens * self.output
        ) / 1e6
        return usd * self.batch_multiplier if batch else usd

    def cache_savings_usd(self, usage: TokenUsage, *, batch: bool = False) -> float:
        """Net dollars caching saved versus paying full input price: read discount minus write premium."""
        usd = (
            usage.cached_input_tokens * (self.input - self.cached_input)
            - usage.cache_write_tokens * (self.cache_write - self.input)
        ) / 1e6
        return usd * self.batch_multiplier if batch else usd

    def worst_case_usd(self, input_tokens: int, output_tokens: int, *, batch: bool = False) -> float:
        """Upper bound for a request: every input token at the dearest input rate, all output at list price."""
        in_rate = max(self.input, self.cache_write)
        usd = (input_tokens * in_rate + output_tokens * self.output) / 1e6
        return usd * self.batch_multiplier if batch else usd


def _rows_from(path: Path) -> dict[str, ModelPrice]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"cannot read price table {path}: {exc}; fix the file or the provider profile's `price_file`"
        ) from exc
    rows: dict[str, ModelPrice] = {}
    for raw in data.get("models", []):
        try:
            row = ModelPrice(
                provider=str(raw["provider"]),
                model=str(raw["model"]),
                input=float(raw["input"]),
                cached_input=float(raw.get("cached_input", raw["input"])),
                cache_write=float(raw.get("cache_write", raw["input"])),
                output=float(raw["output"]),
                batch_multiplier=float(raw.get("batch_multiplier", 1.0)),
                as_of=str(raw.get("as_of", "unknown")),
                source=str(raw.get("source", str(path))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"bad price row in {path}: {raw!r} ({exc}); each row needs provider, model, input, output"
            ) from exc
        rows[row.model] = row
    return rows


class PriceTable:
    """Shipped rows, with a user's override file merged over them (same model id replaces the row)."""

    def __init__(self, override_path: str | None = None) -> None:
        self.override_path = override_path
        self.rows = _rows_from(SHIPPED_PRICES)
        if override_path:
            self.rows.update(_rows_from(Path(override_path)))

    def lookup(self, model: str, *, provider: str, allow_unpriced: bool = False) -> ModelPrice:
        """The row for `model`; unknown models raise a clear error unless explicitly allowed at zero price."""
        row = self.rows.get(model)
        if row is not None:
            return row
        if allow_unpriced:
            return ModelPrice(provider, model, 0.0, 0.0, 0.0, 0.0, 1.0, "n/a", ALLOW_UNPRICED_SOURCE)
        known = ", ".join(sorted(self.rows))
        where = f"the shipped table and {self.override_path}" if self.override_path else "the shipped table"
        raise UnknownModelPriceError(
            f"no price for model '{model}' in {where} (known: {known}). Give the pipeline spec's provider profile "
            "a `prices` row for it (or a `price_file`), or set `allow_unpriced: true` on the profile for a local "
            "model you do not pay for."
        )
