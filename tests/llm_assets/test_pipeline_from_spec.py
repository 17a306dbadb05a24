"""A pipeline written only as a spec file runs through every stage as its own assets (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import jsonschema
import pandas as pd
import pytest

from io_managers.parquet_files import read_parquet
from llm_assets.chunk_status import ChunkState, chunk_states
from llm_assets.datasets import load_dataset
from llm_assets.pipeline_assets import (
    asset_key,
    chunk_job_name,
    completion_job_name,
    pipeline_definitions,
    register,
    spec_layout,
    stage_values,
)
from llm_assets.report import NO_CHECKS, build_completion_report
from llm_assets.spec import load_pipeline
from resources.dead_letters import DeadLetterStore
from resources.llm.resource import spend_ledger_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim_env(spec_sim):
    return spec_sim


def _output(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> pd.DataFrame:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{key.to_user_string()} {partition} was not materialized"
    return read_parquet(str(records[0].asset_materialization.metadata["uri"].value))


def test_the_reviews_spec_runs_three_stages_as_its_own_assets(sim_env, tmp_path):
    sim = sim_env
    spec = load_pipeline(ROOT / "pipelines" / "reviews.yaml")
    home = tmp_path / "home"
    defs = pipeline_definitions(spec, home=home)
    with dg.instance_for_test() as instance:
        dataset = register(spec, spec.input.demo_data, instance, home)
        key = dataset.partition_keys[0]
        result = defs.resolve_job_def(chunk_job_name(spec)).execute_in_process(
            instance=instance, partition_key=key
        )
        assert result.success
        assert {e.asset_key for e in result.get_asset_materialization_events()} == {
            asset_key(spec, name) for name in ("items", "sentiment", "aspects", "reply_draft")
        }
        items = _output(instance, asset_key(spec, "items"), key)
        outputs = {s.name: _output(instance, asset_key(spec, s.name), key) for s in spec.stages}

        # Each stage: one row per item that reached it; routed rows carry the model's valid answer.
        for index, stage in enumerate(spec.stages):
            frame = outputs[stage.name]
            assert frame["item_id"].is_unique
            earlier = {s.name: outputs[s.name] for s in spec.stages[:index]}
            reached = (
                items
                if index == 0
                else items[items["item_id"].isin(outputs[spec.stages[index - 1].name]["item_id"])]
            )
            values = stage_values(spec, reached, earlier)
            expected = set(values.index[stage.route_condition().evaluate(values).to_numpy(dtype=bool)])
            routed = frame[frame["routed"]]
            assert set(routed["item_id"]) == expected
            assert len(routed) > 0, stage.name
            schema = stage.resolved_schema()
            for _, row in routed.iterrows():
                reply = {f: _json(row[f]) for f in stage.output_fields()}
                jsonschema.validate(reply, schema)
            assert (frame.loc[~frame["routed"], "cost_usd"] == 0).all()
        assert 0 < len(outputs["reply_draft"][outputs["reply_draft"]["routed"]]) < len(items)

        # The Anthropic stage went over the Messages API; the others over Chat Completions.
        log = sim.requests()
        assert {r["endpoint"] for r in log if r["model"] == "claude-haiku-5-5"} == {"messages"}
        assert {r["endpoint"] for r in log if r["model"] != "claude-haiku-5-5"} == {"chat"}
        # Every dollar the simulator billed is in the spend ledger, with the pipeline's teams.
        rows = spend_ledger_for(instance.storage_directory()).rows(dataset.dataset_id)
        billed = rows[rows["event"] == "billed"]
        assert billed["cost_usd"].sum() == pytest.approx(sim.stats()["billed_usd"], abs=1e-9)
        assert set(billed["team"]) <= {"audio", "kitchen", "wearables", "smart_home"}

        # The stage's version is the asset's code version.
        for stage in spec.stages:
            assert (
                defs.get_assets_def(asset_key(spec, stage.name)).code_versions_by_key[
                    asset_key(spec, stage.name)
                ]
                == stage.version()
            )

        # Chunk states and the completion report read the pipeline's own keys: every row in one bucket, the
        # report's cost the simulator's bill (the gates are not built from specs yet: no checks section).
        layout = spec_layout(spec)
        assert chunk_states(instance, [key], layout)[key].state == ChunkState.SUCCEEDED
        report = build_completion_report(
            instance,
            load_dataset(dataset.dataset_id, home),
            DeadLetterStore(str(home / "dead_letters")),
            0.0,
            ledger_rows=rows,
            layout=layout,
            checks=NO_CHECKS,
        )
        first_chunk = min(spec.input.chunk_size, dataset.total_rows)
        assert report.buckets["succeeded"] == len(outputs["reply_draft"]) and report.buckets["succeeded"] > 0
        assert report.buckets["not_processed"] == dataset.total_rows - first_chunk
        assert sum(report.buckets.values()) == dataset.total_rows
        assert report.total_cost_usd == pytest.approx(sim.stats()["billed_usd"], abs=1e-9)
        assert set(report.cost_by_stage) == {"sentiment", "aspects", "reply_draft"}

        # Re-running the chunk pays nothing: every item is in its stage's checkpoint.
        requests = len(sim.requests())
        again = defs.resolve_job_def(chunk_job_name(spec)).execute_in_process(
            instance=instance, partition_key=key
        )
        assert again.success and len(sim.requests()) == requests


def _json(value):
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    if hasattr(value, "item"):
        return value.item()
    return value


def test_a_spec_pipeline_has_its_own_cost_ledger_and_completion_report(sim_env, tmp_path):
    """Every chunk of the reviews dataset through its chunk job, then `<pipeline>__completion_job`: the report
    reads the pipeline's own stages and gates, adds every row up and equals the simulator's bill."""
    sim = sim_env
    spec = load_pipeline(ROOT / "pipelines" / "reviews.yaml")
    home = tmp_path / "home"
    defs = pipeline_definitions(spec, home=home)
    layout = spec_layout(spec)
    with dg.instance_for_test() as instance:
        subset = tmp_path / "reviews.csv"  # 40 rows, 2 chunks: the spec's rate limit makes all 122 take 60 s
        pd.read_csv(spec.input.demo_data).head(40).to_csv(subset, index=False)
        dataset = register(spec, str(subset), instance, home, chunk_size=20)
        for key in dataset.partition_keys:
            assert (
                defs.resolve_job_def(chunk_job_name(spec))
                .execute_in_process(instance=instance, partition_key=key)
                .success
            )
        instance.add_dynamic_partitions(layout.datasets_partitions, [dataset.dataset_id])
        done = defs.resolve_job_def(completion_job_name(spec)).execute_in_process(
            instance=instance, partition_key=dataset.dataset_id
        )
        assert done.success
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=layout.completion_key, asset_partitions=[dataset.dataset_id]),
            limit=1,
        ).records[0]
        metadata = record.asset_materialization.metadata
        report = json.loads(Path(str(metadata["report_uri"].value)).read_text())
        assert sum(report["buckets"].values()) == dataset.total_rows
        assert report["total_cost_usd"] == pytest.approx(sim.stats()["billed_usd"], abs=1e-9)
        assert set(report["cost_by_stage"]) >= {"sentiment", "aspects", "reply_draft"}
        assert set(report["checks"]["checks"]) == {s.key.to_user_string() for s in layout.check_specs}
        assert report["chunk_states"] == {"succeeded": dataset.n_chunks}
        # Accuracy of the first stage's gated field against the input's gold column, over every item.
        sentiment = pd.concat(
            [_output(instance, asset_key(spec, "sentiment"), k) for k in dataset.partition_keys]
        )
        expected = float((sentiment["sentiment"] == sentiment["gold_label"]).mean())
        assert report["accuracy"] == pytest.approx(expected) and 0 < expected < 1
        assert "in the final `reply_draft` output" in str(metadata["report"].value)
        ledger = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=layout.ledger_key, asset_partitions=[dataset.dataset_id]), limit=1
        ).records[0]
        assert float(ledger.asset_materialization.metadata["cost_usd"].value) == pytest.approx(
            report["total_cost_usd"], abs=1e-6
        )
