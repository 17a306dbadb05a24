"""Pipeline settings: what the stages do (taxonomy, routing rule, length policy), not how providers are reached.

One `PipelineSettings` resource is shared by every stage asset. The defaults are the demo's; a deployment
overrides them in `definitions.py` or with run config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import dagster as dg

DEFAULT_TAXONOMY = Path(__file__).resolve().parent.parent / "data" / "banking77" / "categories.json"


def chunkwise_home() -> Path:
    """Where Chunkwise keeps its local state (manifests, checkpoints, outputs, reports).

    `$CHUNKWISE_HOME`, default `./.chunkwise`; the Dagster instance lives in `<home>/dagster` for the demo.
    """
    return Path(os.environ.get("CHUNKWISE_HOME", ".chunkwise")).resolve()


MODE_ENV = "CHUNKWISE_MODE"
STAGE_MODES = ("online", "batch")


def stage_modes_from_env() -> dict[str, str]:
    """`classify_mode` and `enrich_mode` both set from `$CHUNKWISE_MODE` (`online` | `batch`, default online)."""
    mode = os.environ.get(MODE_ENV, "online").strip() or "online"
    if mode not in STAGE_MODES:
        raise ValueError(f"{MODE_ENV}={mode!r} is not a stage mode; use one of {', '.join(STAGE_MODES)}")
    return {"classify_mode": mode, "enrich_mode": mode}


class PipelineSettings(dg.ConfigurableResource):
    """What the stages compute. Changing a prompt-shaping field changes `prompt_version`, so outputs of the
    old prompt are never mistaken for outputs of the new one (it is part of every idempotency key)."""

    home: str = ""
    """Local state folder (manifests, checkpoints, dead letters). Empty: `$CHUNKWISE_HOME` or `./.chunkwise`."""

    taxonomy_path: str = str(DEFAULT_TAXONOMY)
    """JSON list of the labels `classified` may use (the BANKING77 intents by default)."""

    few_shot_path: str = ""
    """CSV with `text,label` few-shot examples put into the classification prompt. Empty: none."""

    max_input_tokens: int = 512
    """Length policy: an item longer than this (estimated tokens) is truncated or rejected before any call."""

    length_policy: Literal["truncate", "reject"] = "truncate"

    route: Literal["all", "low_confidence", "labels", "low_confidence_or_labels", "none"] = "low_confidence"
    """Which classified items the stronger `enriched` model sees. `all` sends every item."""

    route_confidence_below: float = 0.3
    """Default from the demo: against the simulator, items under 0.3 (37% of them) are 27% accurate and the
    rest 63%, so the dearer model sees the items that need it. Calibrate on your own model's confidences."""
    route_labels: list[str] = []

    checkpoint_every: int = 25
    """Compact the per-chunk checkpoint log into a snapshot every K completions."""

    checkpointing: bool = True
    """Off only to measure what checkpoints cost (bench/pipeline_overhead.py): a crash then re-pays the chunk."""

    classify_mode: Literal["online", "batch"] = "online"
    """`batch`: `classified` goes through the provider's Batch API (half price, results within 24 h): a run
    submits the chunk and ends; `batch_poll_sensor` requests the run that collects and materializes it
    (docs/batch_mode.md)."""

    enrich_mode: Literal["online", "batch"] = "online"
    """The same choice for `enriched`."""

    def home_path(self) -> Path:
        return Path(self.home).resolve() if self.home else chunkwise_home()
