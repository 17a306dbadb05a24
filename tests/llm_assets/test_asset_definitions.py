"""What the lineage view and the run executor read from the code location built from the shipped specs
(pipelines/*.yaml): asset keys, partitions, code versions, kinds, owners, descriptions, column schemas, and the
retry policy for transient chunk failures."""

import dagster as dg
import pytest

from llm_assets.location import PIPELINES_DIR, defs_from_env
from llm_assets.spec import PipelineSpec, load_pipelines


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> tuple[list[PipelineSpec], dg.Definitions]:
    """Every shipped spec, loaded as the code location loads them (no key needed: nothing is called), and the
    definitions the code location builds from them."""
    monkeypatch.delenv("CHUNKWISE_OUTPUTS_URI", raising=False)
    specs = load_pipelines(PIPELINES_DIR, require_secrets=False)
    return specs, defs_from_env(tmp_path, specs=specs)


def _asset_spec(defs: dg.Definitions, key: dg.AssetKey) -> dg.AssetSpec:
    return defs.get_assets_def(key).get_asset_spec(key)


def test_every_shipped_pipeline_has_its_own_keys_partitions_and_jobs(shipped):
    specs, defs = shipped
    assert {spec.name for spec in specs} >= {"banking77", "reviews"}
    keys = defs.get_repository_def().asset_graph.get_all_asset_keys()
    for spec in specs:
        chunk_assets = ["items", *(stage.name for stage in spec.stages)]
        dataset_assets = ["cost_ledger", "completion_report"]
        assert {k for k in keys if k.path[0] == spec.name} == {
            dg.AssetKey([spec.name, name]) for name in chunk_assets + dataset_assets
        }
        for name in chunk_assets:
            asset = _asset_spec(defs, dg.AssetKey([spec.name, name]))
            assert asset.partitions_def.name == f"{spec.name}__chunks" and asset.group_name == spec.name, name
        for name in dataset_assets:
            asset = _asset_spec(defs, dg.AssetKey([spec.name, name]))
            assert asset.partitions_def.name == f"{spec.name}__datasets" and asset.group_name == spec.name, (
                name
            )
        assert defs.resolve_job_def(f"{spec.name}__chunk_job").partitions_def.name == f"{spec.name}__chunks"
        assert (
            defs.resolve_job_def(f"{spec.name}__completion_job").partitions_def.name
            == f"{spec.name}__datasets"
        )
        # one LLM resource per stage, named for it
        assert {f"{spec.name}__{stage.name}__llm" for stage in spec.stages} <= set(defs.resources)


def test_stage_assets_explain_themselves_with_kinds_owners_descriptions_and_versions(shipped):
    specs, defs = shipped
    banking77 = next(spec for spec in specs if spec.name == "banking77")
    assert banking77.owners == ["team:data-platform"]
    for spec in specs:
        for name in ("items", *(stage.name for stage in spec.stages)):
            asset = _asset_spec(defs, dg.AssetKey([spec.name, name]))
            assert {"pandas", "parquet"} <= asset.kinds, (spec.name, name)
            assert asset.owners == spec.owners and len(asset.description or "") > 40, (spec.name, name)
        for stage in spec.stages:
            asset = _asset_spec(defs, dg.AssetKey([spec.name, stage.name]))
            # The provider's wire format is a kind; the stage's version (model, prompt, schema, route) is the
            # code version, so a spec edit marks older partitions unsynced.
            assert spec.profile(stage).provider in asset.kinds, stage.name
            assert asset.code_version == stage.version(), stage.name
            assert asset.description.startswith(stage.description), stage.name
            assert "`cost_usd` (USD" in asset.description and "`duration_s`" in asset.description
            last = stage.name == spec.stages[-1].name
            assert ("`total_cost_usd` (USD)" in asset.description) == last, stage.name
            assert {k: asset.metadata[k] for k in ("model", "route", "prompt_version")} == {
                "model": stage.model, "route": stage.route, "prompt_version": stage.prompt_version(),
            }  # fmt: skip
        ledger = _asset_spec(defs, dg.AssetKey([spec.name, "cost_ledger"]))
        columns = {c.name for c in ledger.metadata["dagster/column_schema"].columns}
        assert {"item_id", "team", "stage", "model", "kind", "cost_usd"} <= columns, spec.name


def test_llm_stages_retry_transient_failures_with_exponential_backoff_and_jitter(shipped):
    specs, defs = shipped
    for spec in specs:
        job = defs.resolve_job_def(f"{spec.name}__chunk_job")
        for stage in spec.stages:
            step = f"{spec.name}__{stage.name}"
            policy = job.graph.node_named(step).definition.retry_policy
            assert policy is not None and policy.max_retries >= 1, step
            assert policy == spec.retry.retry_policy(), (
                step
            )  # the spec's `retry` section, on every stage step
            if spec.name == "banking77":  # the shipped default
                assert policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter == dg.Jitter.PLUS_MINUS, (
                    step
                )
