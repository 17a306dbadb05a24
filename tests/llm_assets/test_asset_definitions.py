"""What the lineage view and the run executor read from the stage assets' definitions: kinds, owners,
descriptions, column schemas, and the retry policy for transient chunk failures."""

import dagster as dg

from llm_assets.builtin import build_defs


def _specs(tmp_path) -> dict[str, dg.AssetSpec]:
    defs = build_defs(base_url="http://127.0.0.1:9/v1", api_key="unused", home=tmp_path)
    specs = defs.get_repository_def().asset_graph.get_all_asset_keys()
    return {key.to_user_string(): defs.get_assets_def(key).get_asset_spec(key) for key in specs}


def test_stage_assets_explain_themselves_with_kinds_owners_descriptions_and_column_schemas(tmp_path):
    specs = _specs(tmp_path)
    for name in ("items", "classified", "enriched"):
        spec = specs[name]
        assert spec.kinds and spec.owners == ["team:data-platform"] and len(spec.description or "") > 40
        columns = {c.name for c in spec.metadata["dagster/column_schema"].columns}
        assert {"item_id", "team"} <= columns, name
    assert {"label", "confidence", "cost_usd"} <= {
        c.name for c in specs["classified"].metadata["dagster/column_schema"].columns
    }
    assert {"routed", "summary", "cache_savings_usd"} <= {
        c.name for c in specs["enriched"].metadata["dagster/column_schema"].columns
    }


def test_llm_stages_retry_transient_failures_with_exponential_backoff_and_jitter(tmp_path):
    defs = build_defs(base_url="http://127.0.0.1:9/v1", api_key="unused", home=tmp_path)
    job = defs.resolve_job_def("chunk_pipeline")
    for step in ("classified", "enriched"):
        policy = job.graph.node_named(step).definition.retry_policy
        assert policy is not None and policy.max_retries >= 1, step
        assert policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter == dg.Jitter.PLUS_MINUS, step
