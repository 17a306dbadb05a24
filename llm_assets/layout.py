"""Where one pipeline's pieces are: its stage names in order and the prefix of its asset keys.

The built-in BANKING77 code location (definitions.py) has unprefixed keys `classified` -> `enriched`; a pipeline
built from a spec (pipeline_assets.py) has `<pipeline>/<stage>`. Chunk states and the completion report take a
layout, so one implementation serves both.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class PipelineLayout:
    stages: tuple[str, ...] = ("classified", "enriched")
    """The LLM stages, in pipeline order."""
    prefix: tuple[str, ...] = ()
    """Asset key prefix: `()` for the built-in pipeline, `(<pipeline>,)` for a spec's."""
    label_field: str | None = "label"
    """The first stage's field compared with the input's gold label for the report's `accuracy` (None: none)."""

    def key(self, name: str) -> dg.AssetKey:
        """The asset key of a stage (or of `items`)."""
        return dg.AssetKey([*self.prefix, name])

    @property
    def final_key(self) -> dg.AssetKey:
        """The last stage: a chunk succeeded when it is materialized."""
        return self.key(self.stages[-1])


BUILTIN_LAYOUT = PipelineLayout()
