"""The pipelines the tests run: the shipped specs, loaded with overrides, wired to a simulator.

Most tests run BANKING77's stages (pipelines/banking77.yaml: `classified` on every item, `enriched` on the
routed ones) on small datasets of their own with the columns `id,text,team[,label]`: `test_spec()` is that
spec with the input columns of those files and whatever a test changes (`stages={"enriched": {"route":
"true"}}`, `providers={"default": {"max_attempts": 2}}`, `budgets={"run_usd": 0.01}`, ...: the same fields a
user writes, llm_assets/spec_load.apply_overrides). The provider profile reads `CHUNKWISE_LLM_BASE_URL` and
`CHUNKWISE_LLM_API_KEY`: `point_at(sim, monkeypatch)` sets them (child processes inherit them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from llm_assets.layout import PipelineLayout
from llm_assets.location import build_defs
from llm_assets.pipeline_assets import spec_layout
from llm_assets.spec import PipelineSpec, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
BANKING77_SPEC = ROOT / "pipelines" / "banking77.yaml"
REVIEWS_SPEC = ROOT / "pipelines" / "reviews.yaml"
TEST_INPUT = {
    "columns": {"id": "id", "text": "text", "team": "team", "label": "label"},
    "team_from_label": None,
    "watch": None,
}
"""The tests' own files: ids, texts and teams as columns, gold labels when they have them."""


def point_at(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped specs' provider profiles at the simulator `sim` (a SimHandle), through the variables they read."""
    monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", sim.openai_base_url)
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", sim.api_key)
    monkeypatch.setenv("CHUNKWISE_ANTHROPIC_BASE_URL", sim.base_url)
    monkeypatch.setenv("CHUNKWISE_ANTHROPIC_API_KEY", sim.api_key)


def test_spec(
    *,
    name: str | None = None,
    stages: dict[str, dict[str, Any]] | None = None,
    providers: dict[str, dict[str, Any]] | None = None,
    budgets: dict[str, Any] | None = None,
    input: dict[str, Any] | None = None,  # noqa: A002 - the spec's own field name
    path: Path = BANKING77_SPEC,
    **fields: Any,
) -> PipelineSpec:
    """`path` (BANKING77 by default) with the tests' input columns and the given overrides."""
    overrides: dict[str, Any] = {"input": {**TEST_INPUT, **(input or {})}, **fields}
    if path != BANKING77_SPEC:
        overrides["input"] = dict(input or {})
    if name is not None:
        overrides["name"] = name
    if stages:
        overrides["stages"] = stages
    if providers:
        overrides["providers"] = providers
    if budgets:
        overrides["budgets"] = budgets
    return load_pipeline(path, overrides=overrides)


test_spec.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test pytest should collect


def spec_defs(
    spec: PipelineSpec,
    home: Path,
    *,
    sensors: list[dg.SensorDefinition] | None = None,
    s3: Any = None,
    outputs_uri: str | None = None,
) -> dg.Definitions:
    """The pipeline as the code location builds it (`sensors` None: none, unlike the code location)."""
    return build_defs([spec], home=home, sensors=sensors or [], s3=s3, outputs_uri=outputs_uri)


def layout_of(spec: PipelineSpec) -> PipelineLayout:
    return spec_layout(spec)


def register_file(
    spec: PipelineSpec,
    path: Path | str,
    instance: dg.DagsterInstance,
    home: Path,
    chunk_size: int | None = None,
):
    """Register a file as a dataset of `spec` (its `<pipeline>__chunks` partitions), as the sensors do."""
    from llm_assets.pipeline_assets import register

    return register(spec, str(path), instance, home, chunk_size=chunk_size)


def run_chunk(
    defs: dg.Definitions,
    spec: PipelineSpec,
    instance: dg.DagsterInstance,
    key: str,
    *,
    raise_on_error: bool = True,
    attempt: int = 1,
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    """One chunk through the pipeline's chunk job (stages and their gates), tagged as the sensors tag it."""
    from sensors.chunk_runs import chunk_run_request, layout_providers

    layout = spec_layout(spec)
    request = chunk_run_request(
        key, attempt=attempt, provider=layout_providers(layout)[0], launched_by="test"
    )
    tags = {**request.tags, **kwargs.pop("tags", {})}
    return defs.resolve_job_def(layout.chunk_job).execute_in_process(
        instance=instance, partition_key=key, raise_on_error=raise_on_error, tags=tags, **kwargs
    )


def run_completion(
    defs: dg.Definitions, spec: PipelineSpec, instance: dg.DagsterInstance, dataset_id: str, **kwargs: Any
) -> dg.ExecuteInProcessResult:
    """The dataset's cost ledger and completion report (its partition added first, as the sensor does)."""
    layout = spec_layout(spec)
    instance.add_dynamic_partitions(layout.datasets_partitions, [dataset_id])
    return defs.resolve_job_def(layout.completion_job).execute_in_process(
        instance=instance, partition_key=dataset_id, **kwargs
    )
