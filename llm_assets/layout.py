"""Where one pipeline's pieces are: its stages, asset keys, partitions, jobs and LLM resources, by name.

The built-in BANKING77 code location (definitions.py) has unprefixed keys `classified` -> `enriched`; a pipeline
built from a spec (pipeline_assets.py `spec_layout`) has `<pipeline>/<stage>`, its own partitions
(`<pipeline>__chunks`, `<pipeline>__datasets`), jobs (`<pipeline>__chunk_job`, `<pipeline>__completion_job`)
and one LLM resource per stage (`<pipeline>__<stage>__llm`). Chunk states, the completion report and the
sensors take a layout, so one implementation serves every pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    name: str = ""
    """The pipeline's name (`""`: the built-in one); datasets registered for it carry it in their manifest."""
    chunks_partitions: str = "chunks"
    """The dynamic partitions of its chunk assets (one per chunk of each registered dataset)."""
    datasets_partitions: str = "datasets"
    """The dynamic partitions of its cost ledger and completion report (one per dataset)."""
    chunk_job: str = "chunk_pipeline"
    """The job that runs one chunk through every stage (what the sensors launch)."""
    completion_job: str = "dataset_completion"
    """The job that materializes a finished dataset's cost ledger and completion report."""
    llm_keys: tuple[str, ...] = ("classifier_llm", "enricher_llm")
    """The LLM resource key of each stage, in `stages` order (polls and collects its batches)."""
    providers: tuple[str, ...] = ()
    """The providers its stages call (a halt of any stops its launches); `()`: `$CHUNKWISE_LLM_PROVIDER`."""
    check_specs: tuple[dg.AssetCheckSpec, ...] | None = None
    """Its quality gates in stage order, for the report's checks section (None: the built-in pipeline's)."""

    def key(self, name: str) -> dg.AssetKey:
        """The asset key of a stage (or of `items`, `cost_ledger`, `completion_report`)."""
        return dg.AssetKey([*self.prefix, name])

    @property
    def final_key(self) -> dg.AssetKey:
        """The last stage: a chunk succeeded when it is materialized."""
        return self.key(self.stages[-1])

    @property
    def completion_key(self) -> dg.AssetKey:
        """The asset materialized once per finished dataset, carrying the report."""
        return self.key("completion_report") if self.prefix else dg.AssetKey("dataset_complete")

    @property
    def ledger_key(self) -> dg.AssetKey:
        return self.key("cost_ledger")

    def llm_key(self, stage: str) -> str:
        """The LLM resource key of `stage`."""
        return self.llm_keys[self.stages.index(stage)]

    def stages_from(self, stage: str) -> tuple[str, ...]:
        """`stage` and every later stage: what a run that collects `stage`'s batches materializes."""
        return self.stages[self.stages.index(stage) :]


BUILTIN_LAYOUT = PipelineLayout()


def layout_for_job(layouts: Iterable[PipelineLayout], job_name: str) -> PipelineLayout | None:
    """The pipeline whose chunk or completion job is `job_name` (None: not a Chunkwise pipeline's)."""
    for layout in layouts:
        if job_name in (layout.chunk_job, layout.completion_job):
            return layout
    return None


def layout_named(layouts: Iterable[PipelineLayout], name: str) -> PipelineLayout | None:
    """The pipeline called `name` (`""`: the built-in one), None if it is not loaded."""
    for layout in layouts:
        if layout.name == name:
            return layout
    return None
