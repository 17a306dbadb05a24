"""Stage outputs on S3 (a real S3 API on localhost, moto's server mode), configured as a deployment would:
`CHUNKWISE_OUTPUTS_URI=s3://...` and the S3 endpoint in the environment. Every stage partition is one object,
nothing lands on local disk, and the cost ledger and completion report read the outputs back from S3."""

import json
import uuid

import dagster as dg
import pytest
from pipeline_support import materialize_partition, register, write_dataset

from io_managers.parquet_files import read_parquet
from io_managers.s3_config import s3_from_env
from llm_assets.builtin import OUTPUTS_URI_ENV, build_defs, defs_from_env

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
    monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", f"{sim.base_url}/v1")
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", sim.api_key)
    defs = defs_from_env(home)
    write_dataset(tmp_path / "tickets.csv", 40)
    with dg.instance_for_test() as instance:
        dataset = register(tmp_path / "tickets.csv", instance, home, chunk_size=20)
        for key in dataset.partition_keys:
            assert materialize_partition(defs, instance, key).success
        instance.add_dynamic_partitions("datasets", [dataset.dataset_id])
        done = defs.resolve_job_def("dataset_completion").execute_in_process(
            instance=instance, partition_key=dataset.dataset_id
        )
        assert done.success

    client = s3_from_env().get_client()
    listed = client.list_objects_v2(Bucket=s3_outputs, Prefix="chunkwise/")
    keys = sorted(obj["Key"] for obj in listed.get("Contents", []))
    expected = [f"chunkwise/{stage}/{k}.parquet" for stage in ("classified", "enriched", "items")
                for k in dataset.partition_keys]  # fmt: skip
    assert [k for k in keys if k.split("/")[1] in ("classified", "enriched", "items")] == sorted(expected)
    assert not (home / "outputs").exists()
    enriched = read_parquet(f"s3://{s3_outputs}/{expected[len(dataset.partition_keys)]}", s3=s3_from_env())
    assert len(enriched) == 20

    report = json.loads((home / "reports" / dataset.dataset_id / "completion_report.json").read_text())
    assert report["total_items"] == 40 and report["succeeded"] == 40
    assert report["total_cost_usd"] == pytest.approx(sim.stats()["billed_usd"], abs=1e-6)


def test_outputs_on_s3_without_an_s3_resource_is_refused_when_the_definitions_load(tmp_path):
    with pytest.raises(ValueError, match="no S3 resource"):
        build_defs(
            base_url="http://127.0.0.1:9/v1", api_key="k", home=tmp_path, outputs_uri="s3://bucket/out"
        )
