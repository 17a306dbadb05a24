"""Hard budgets: caps in USD and tokens per run, per dataset and per UTC day. Enforcement is a worst-case
reservation in the shared store before every request (state_store.py); this file names the scopes and caps
and turns a refusal into a message a person can act on."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from resources.llm.state_store import BudgetCap
from resources.llm.types import BudgetScope


@dataclass(frozen=True)
class BudgetCaps:
    """Caps in USD and tokens (input + output) for each scope; None = no cap."""

    run_usd: float | None = None
    dataset_usd: float | None = None
    day_usd: float | None = None
    run_tokens: int | None = None
    dataset_tokens: int | None = None
    day_tokens: int | None = None

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (
                self.run_usd,
                self.dataset_usd,
                self.day_usd,
                self.run_tokens,
                self.dataset_tokens,
                self.day_tokens,
            )
        )


def scope_keys(scope: BudgetScope, today: dt.date | None = None) -> tuple[str, str, str]:
    """Store keys for the run, dataset and day (UTC) scopes."""
    day = today or dt.datetime.now(dt.UTC).date()
    return (f"run:{scope.run_id}", f"dataset:{scope.dataset_id}", f"day:{day.isoformat()}")


def caps_by_scope(caps: BudgetCaps, keys: tuple[str, str, str]) -> dict[str, BudgetCap]:
    run, dataset, day = keys
    out = {
        run: BudgetCap(caps.run_usd, caps.run_tokens),
        dataset: BudgetCap(caps.dataset_usd, caps.dataset_tokens),
        day: BudgetCap(caps.day_usd, caps.day_tokens),
    }
    return {k: v for k, v in out.items() if v.usd is not None or v.tokens is not None}


_FIELD = {"run": "budgets.run", "dataset": "budgets.dataset", "day": "budgets.day"}
"""The pipeline spec's fields (docs/pipeline-spec.md) that hold each cap."""


def exhausted_message(verdict: str) -> str:
    """Turn the store's refusal ("usd|dataset:x|spent|cap|need") into what happened and what to do."""
    unit, scope, spent, cap, need = verdict.split("|")
    kind, _, name = scope.partition(":")
    field = (
        f"`{_FIELD.get(kind, 'budgets.' + kind)}_{'usd' if unit == 'usd' else 'tokens'}` in the pipeline spec"
    )
    later = " or re-run tomorrow (UTC)" if kind == "day" else ""
    if unit == "usd":
        return (
            f"budget for {kind} {name} exhausted at ${float(spent):.2f} of ${float(cap):.2f} "
            f"(the next request could cost up to ${float(need):.4f}); raise {field}{later}"
        )
    return (
        f"token budget for {kind} {name} exhausted at {int(float(spent)):,} of {int(float(cap)):,} tokens "
        f"(the next request could use up to {int(float(need)):,}); raise {field}{later}"
    )
