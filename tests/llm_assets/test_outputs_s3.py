"""Stage outputs on S3 (a real S3 API on localhost, moto's server mode), configured as a deployment would:
`CHUNKWISE_OUTPUTS_URI=s3://...` and the S3 endpoint in the environment. Every stage partition of BANKING77's
spec is one object, nothing lands on local disk, and the cost ledger and completion report read the outputs back
from S3."""

import json
import uuid

import dagster as dg
import pytest
from pipeline_support import write_dataset

from io_managers.parquet_files import read_parquet
from io_managers.s3_config import s3_from_env
from llm_assets.location import OUTPUTS_URI_ENV, build_defs, defs_from_env
from llm_assets.spec import load_pipeline
from tests.spec_pipelines import BANKING77_SPEC, point_at, register_file, run_chunk, run_completion, test_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_outputs(s3_env, monkeypatch):
    """An empty bucket on the local S3 server; the environment points the code location's outputs at it."""
    bucket = f"outputs-{uuid.uuid4().hex[:8]}"
    s3_from_env().get_client().create_bucket(Bucket=bucket)
    monkeypatch.setenv(OUTPUTS_URI_ENV, f"s3://{bucket}/chunkwise")
    return bucket


def test_outputs_on_s3_are_one_object_per_partition_and_feed_the_ledger_and_report(
    sim, s3_outputs, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    point_at(sim, monkeypatch)
    spec = test_spec()
    defs = defs_from_env(home, specs=[spec])  # the code location, configured from the environment
    write_dataset(tmp_path / "tickets.csv", 40)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tickets.csv", instance, home, chunk_size=20)
        for key in dataset.partition_keys:
            assert run_chunk(defs, spec, instance, key).success
        assert run_completion(defs, spec, instance, dataset.dataset_id).success

    client = s3_from_env().get_client()
    listed = client.list_objects_v2(Bucket=s3_outputs, Prefix="chunkwise/")
    keys = sorted(obj["Key"] for obj in listed.get("Contents", []))
    stages = ("classified", "enriched", "items")
    expected = [
        f"chunkwise/banking77/{stage}/{k}.parquet" for stage in stages for k in dataset.partition_keys
    ]
    assert [k for k in keys if k.split("/")[2] in stages] == sorted(expected)
    assert all(k.startswith("chunkwise/banking77/") for k in keys)
    assert f"chunkwise/banking77/cost_ledger/{dataset.dataset_id}.parquet" in keys
    assert not (home / "outputs").exists()
    enriched = read_parquet(f"s3://{s3_outputs}/{expected[len(dataset.partition_keys)]}", s3=s3_from_env())
    assert len(enriched) == 20

    report = json.loads((home / "reports" / dataset.dataset_id / "completion_report.json").read_text())
    assert report["total_items"] == 40 and report["succeeded"] == 40
    assert report["total_cost_usd"] == pytest.approx(sim.stats()["billed_usd"], abs=1e-6)


def test_outputs_on_s3_without_an_s3_resource_is_refused_when_the_definitions_load(tmp_path):
    spec = load_pipeline(BANKING77_SPEC, require_secrets=False)
    with pytest.raises(ValueError, match="no S3 resource"):
        build_defs([spec], home=tmp_path, outputs_uri="s3://bucket/out", sensors=[])
