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

    payloads_uri: str = ""
    """Where dead letters and completion reports go so every machine sees them (the shared backend: an s3://
    prefix, `CHUNKWISE_OUTPUTS_URI` when `CHUNKWISE_STATE_URL` is set, `payloads_uri_for`); empty: the home."""

    def home_path(self) -> Path:
        return Path(self.home).resolve() if self.home else chunkwise_home()

    def dead_letters_uri(self) -> str:
        """The dead-letter store's base (resources/dead_letters.py): `<payloads>/_dead_letters`, else the home's."""
        if self.payloads_uri:
            return self.payloads_uri.rstrip("/") + "/_dead_letters"
        return str(self.home_path() / "dead_letters")

    def reports_uri(self) -> str | None:
        """Where completion reports are shared (`<payloads>/_reports`); None: only under the home."""
        return self.payloads_uri.rstrip("/") + "/_reports" if self.payloads_uri else None


def payloads_uri_for(outputs_uri: str) -> str:
    """The shared payloads' prefix: the outputs' own S3 prefix when the shared backend is on
    (`CHUNKWISE_STATE_URL`) and the outputs are on S3; else "" (dead letters and reports under the home). Pipeline
    names are slugs, so `_dead_letters` and `_reports` never meet a pipeline's outputs there."""
    from resources.state_url import state_url

    return outputs_uri if state_url() and outputs_uri.startswith("s3://") else ""
