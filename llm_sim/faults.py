"""Fault injection: which fault (if any) a request gets.

Order: the poison rule (exact: a marker in any user message), then `outage`, then an active time window, then
one uniform draw from a seeded RNG against the configured rates (each kind gets exactly its rate of the draws,
as long as the rates sum to at most 1). `degrade_rate` is separate and deterministic per item (see engine).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from llm_sim.prompt import Prompt

# Order matters only for how the unit interval is split between kinds.
FAULT_KINDS = (
    "rate_limit",
    "insufficient_quota",
    "server_error",
    "unavailable",
    "overloaded",
    "timeout",
    "drop",
    "malformed_json",
    "schema_violation",
    "refusal",
    "content_filter",
    "invalid_prompt",
)
# Faults of the transport or of admission; a batch line cannot meet them.
ONLINE_ONLY_KINDS = frozenset({"rate_limit", "insufficient_quota", "timeout", "drop"})
OTHER_KEYS = frozenset({"degrade_rate", "outage", "windows", "hang_s", "batch_expire_rate", "poison"})


class FaultConfigError(ValueError):
    """A fault setting is invalid; the message names the key."""


@dataclass(frozen=True)
class Window:
    kind: str
    start: float  # monotonic seconds
    end: float


def validate_faults(update: dict[str, Any]) -> None:
    for key, value in update.items():
        if key in FAULT_KINDS or key in ("degrade_rate", "batch_expire_rate"):
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise FaultConfigError(f"faults.{key} must be a rate between 0 and 1, got {value!r}")
        elif key == "outage":
            if not isinstance(value, bool):
                raise FaultConfigError(f"faults.outage must be true or false, got {value!r}")
        elif key == "hang_s":
            if not isinstance(value, int | float) or value < 0:
                raise FaultConfigError(f"faults.hang_s must be a number of seconds >= 0, got {value!r}")
        elif key == "windows":
            if not isinstance(value, list):
                raise FaultConfigError("faults.windows must be a list of {kind, start_s, end_s}")
            for w in value:
                if not isinstance(w, dict) or w.get("kind") not in FAULT_KINDS + ("outage",):
                    raise FaultConfigError(f"faults.windows entry {w!r} needs a kind among {FAULT_KINDS}")
                if float(w.get("end_s", 0)) < float(w.get("start_s", 0)):
                    raise FaultConfigError(f"faults.windows entry {w!r} ends before it starts")
        elif key == "poison":
            if not isinstance(value, dict):
                raise FaultConfigError("faults.poison must map a marker string to a fault kind")
        else:
            raise FaultConfigError(
                f"unknown fault key {key!r}; known: {sorted(FAULT_KINDS + tuple(OTHER_KEYS))}"
            )
    total = sum(float(update.get(k, 0)) for k in FAULT_KINDS)
    if total > 1 + 1e-9:
        raise FaultConfigError(f"fault rates sum to {total:.3f}; they must sum to at most 1")


class FaultInjector:
    def __init__(self, faults: dict[str, Any], poison: dict[str, str], seed: int, now: float):
        self.settings: dict[str, Any] = {}
        self.windows: list[Window] = []
        self.poison = dict(poison)
        self.rng = random.Random(seed)
        self.merge(faults, now)

    def merge(self, update: dict[str, Any], now: float) -> dict[str, Any]:
        """Apply `update` (same keys as the config's `faults`); windows are relative to `now` and replace the
        current list. Returns the settings now in force."""
        validate_faults(update)
        update = dict(update)
        if "poison" in update:
            self.poison.update(update.pop("poison"))
        if "windows" in update:
            self.windows = [
                Window(w["kind"], now + float(w.get("start_s", 0)), now + float(w.get("end_s", 0)))
                for w in update["windows"]
            ]
        self.settings.update(update)
        total = sum(float(self.settings.get(k, 0)) for k in FAULT_KINDS)
        if total > 1 + 1e-9:
            raise FaultConfigError(f"fault rates would sum to {total:.3f}; they must sum to at most 1")
        return self.describe()

    def reset(self, now: float) -> None:
        self.settings = {}
        self.windows = []

    def describe(self) -> dict[str, Any]:
        return {**self.settings, "poison": dict(self.poison)}

    @property
    def hang_s(self) -> float:
        return float(self.settings.get("hang_s", 30.0))

    @property
    def degrade_rate(self) -> float:
        return float(self.settings.get("degrade_rate", 0.0))

    def poison_kind(self, prompt: Prompt) -> str | None:
        for text in prompt.user_texts:
            for marker, kind in self.poison.items():
                if marker in text:
                    return kind
        return None

    def decide(self, prompt: Prompt, now: float, batch: bool) -> str | None:
        """The fault kind for this request, or None. Draws one number from the seeded RNG every time."""
        draw = self.rng.random()
        poisoned = self.poison_kind(prompt)
        if poisoned:
            return poisoned
        if not batch and self.settings.get("outage"):
            return "outage"
        for window in self.windows:
            if window.start <= now < window.end:
                return None if batch and window.kind in ONLINE_ONLY_KINDS | {"outage"} else window.kind
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += float(self.settings.get(kind, 0.0))
            if draw < edge:
                return None if batch and kind in ONLINE_ONLY_KINDS else kind
        return None
