"""Batch mode on the shared backend (CHUNKWISE_STATE_URL, a real PostgreSQL): the chunks are submitted by runs of
one "machine" (its own CHUNKWISE_HOME; outputs in a bucket of a local S3 server), and the batch poll sensor and the collecting runs of another (another
home) find the journals in the database, collect every line once and materialize the chunks. Counted at the
simulator: every item is in exactly one batch line, and what the partitions say they cost is what it billed."""

from __future__ import annotations

import collections
import uuid

import dagster as dg
import psycopg2
import pytest
from batch_support import batch_defs, drive_batches, latest_meta, provider_spec
from pipeline_support import write_dataset

from io_managers.s3_config import s3_from_env
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk

pytestmark = pytest.mark.slow


def test_batches_submitted_on_one_machine_are_collected_on_another(
    postgres_dsn, s3_env, start_sim, monkeypatch, tmp_path
):
    sim = start_sim({"seed": 6, "batch": {"complete_after_s": 0.5}})
    point_at(sim, monkeypatch)
    monkeypatch.setenv("CHUNKWISE_STATE_URL", postgres_dsn)
    write_dataset(tmp_path / "tiny.csv", 40)
    spec = provider_spec(sim.base_url, "openai", "batch")
    layout = layout_of(spec)
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    bucket = f"batch-{uuid.uuid4().hex[:8]}"
    s3_from_env().get_client().create_bucket(Bucket=bucket)
    location = {"s3": s3_from_env(), "outputs_uri": f"s3://{bucket}/out"}  # outputs where both machines read
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home_a, chunk_size=20)
        keys = dataset.partition_keys
        defs_a = batch_defs(spec, home_a, **location)
        for key in keys:
            assert run_chunk(defs_a, spec, instance, key).success  # submits; nothing materialized past items
        assert not list(home_a.glob("checkpoints/**/batches.json")), "a journal was written under a home"
        with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM chunkwise_documents WHERE kind = 'batch_journal'")
            assert cur.fetchone()[0] == len(keys)  # one journal per chunk of the first stage

        runs = drive_batches(
            batch_defs(spec, home_b, **location), instance
        )  # machine B: its sensor, its runs
        assert runs and all(r.success for r in runs)
        assert set(instance.get_materialized_partitions(layout.key("classified"))) == set(keys)
        cost = sum(
            latest_meta(instance, layout.key(stage), key)["cost_usd"]
            for stage in ("classified", "enriched")
            for key in keys
        )
    lines = collections.Counter(
        (r["model"], r["custom_id"])
        for r in sim.requests()
        if r.get("custom_id") and str(r["status"]) == "200"
    )
    assert lines and max(lines.values()) == 1, "an item was sent in two batch lines"
    assert cost == pytest.approx(sim.stats()["billed_usd"], abs=1e-5)
