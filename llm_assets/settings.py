"""Where Chunkwise keeps its state, and how the stages checkpoint: the one `settings` resource every asset shares.

What a pipeline computes (prompts, schemas, routes, length policy, gates) is its spec (llm_assets/spec.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg


def chunkwise_home() -> Path:
    """Where Chunkwise keeps its local state (manifests, checkpoints, outputs, reports).

    `$CHUNKWISE_HOME`, default `./.chunkwise`; the Dagster instance lives in `<home>/dagster` for the demo.
    """
    return Path(os.environ.get("CHUNKWISE_HOME", ".chunkwise")).resolve()


class PipelineSettings(dg.ConfigurableResource):
    """Local state and checkpointing, shared by every pipeline of the code location."""

    home: str = ""
    """Local state folder (manifests, checkpoints, dead letters). Empty: `$CHUNKWISE_HOME` or `./.chunkwise`."""

    checkpoint_every: int = 25
    """Compact the per-chunk checkpoint log into a snapshot every K completions."""

    checkpointing: bool = True
    """Off only to measure what checkpoints cost (bench/pipeline_overhead.py): a crash then re-pays the chunk."""

    def home_path(self) -> Path:
        return Path(self.home).resolve() if self.home else chunkwise_home()
