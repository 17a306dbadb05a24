"""Where one pipeline's pieces are: its stages, asset keys, partitions, jobs, LLM resources and gates, by name.

A pipeline built from a spec (pipeline_assets.py `spec_layout`) has asset keys `<pipeline>/<stage>`, its own
partitions (`<pipeline>__chunks`, `<pipeline>__datasets`), jobs (`<pipeline>__chunk_job`,
`<pipeline>__completion_job`) and one LLM resource per stage (`<pipeline>__<stage>__llm`). Chunk states, the
completion report and the sensors take a layout, so one implementation serves every pipeline, and the sensors
need not import the spec model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

DEFAULT_ALERT_WEBHOOK_ENV = "CHUNKWISE_ALERT_WEBHOOK_URL"
DEFAULT_COMPLETION_WEBHOOK_ENV = "CHUNKWISE_COMPLETION_WEBHOOK_URL"


@dataclass(frozen=True)
class PipelineLayout:
    name: str
    """The pipeline's name; datasets registered for it carry it in their manifest."""
    stages: tuple[str, ...]
    """The LLM stages, in pipeline order."""
    chunks_partitions: str
    """The dynamic partitions of its chunk assets (one per chunk of each registered dataset)."""
    datasets_partitions: str
    """The dynamic partitions of its cost ledger and completion report (one per dataset)."""
    chunk_job: str
    """The job that runs one chunk through every stage (what the sensors launch)."""
    completion_job: str
    """The job that materializes a finished dataset's cost ledger and completion report."""
    llm_keys: tuple[str, ...]
    """The LLM resource key of each stage, in `stages` order (polls and collects its batches)."""
    providers: tuple[str, ...]
    """The providers its stages call: a halt of any stops its launches; the first labels its chunk runs."""
    label_field: str | None = None
    """The first stage's field compared with the input's gold label for the report's `accuracy` (None: none)."""
    check_specs: tuple[dg.AssetCheckSpec, ...] = ()
    """Its quality gates in stage order, for the report's checks section."""
    alert_webhook_env: str | None = DEFAULT_ALERT_WEBHOOK_ENV
    """The variable holding the URL its failed checks and "needs a human" notices go to (None: none)."""
    completion_webhook_env: str | None = DEFAULT_COMPLETION_WEBHOOK_ENV
    """The variable holding the URL its datasets' completion summaries go to (None: none)."""
    backfill: tuple[tuple[str, float], ...] = ()
    """Its backfill policy's fields (sensors/backfill.py BackfillPolicy), as pairs; `()`: the defaults."""

    def key(self, name: str) -> dg.AssetKey:
        """The asset key of a stage (or of `items`, `cost_ledger`, `completion_report`)."""
        return dg.AssetKey([self.name, name])

    @property
    def final_key(self) -> dg.AssetKey:
        """The last stage: a chunk succeeded when it is materialized."""
        return self.key(self.stages[-1])

    @property
    def completion_key(self) -> dg.AssetKey:
        """The asset materialized once per finished dataset, carrying the report."""
        return self.key("completion_report")

    @property
    def ledger_key(self) -> dg.AssetKey:
        return self.key("cost_ledger")

    def llm_key(self, stage: str) -> str:
        """The LLM resource key of `stage`."""
        return self.llm_keys[self.stages.index(stage)]

    def stages_from(self, stage: str) -> tuple[str, ...]:
        """`stage` and every later stage: what a run that collects `stage`'s batches materializes."""
        return self.stages[self.stages.index(stage) :]


def layout_for_job(layouts: Iterable[PipelineLayout], job_name: str) -> PipelineLayout | None:
    """The pipeline whose chunk or completion job is `job_name` (None: not a Chunkwise pipeline's)."""
    for layout in layouts:
        if job_name in (layout.chunk_job, layout.completion_job):
            return layout
    return None


def layout_named(layouts: Iterable[PipelineLayout], name: str) -> PipelineLayout | None:
    """The pipeline called `name`, None if it is not loaded."""
    for layout in layouts:
        if layout.name == name:
            return layout
    return None
