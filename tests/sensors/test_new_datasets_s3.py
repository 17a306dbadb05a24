"""The new-dataset sensor on an S3 prefix, against a real S3 API on localhost (moto's server mode): files land,
register once (with a `_SUCCESS` marker at once, without one when settled over two ticks; read by a registration
run, never by the tick), and their chunks run
end to end reading the input from S3. The pipeline is BANKING77's spec with the sensors the code location builds
for it (recovery_support), its new-dataset sensor watching the prefix.

A code location without S3 fails such a chunk with a job-fatal error that says what to set, instead of retrying
it."""

import sys
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_support import (  # noqa: E402
    is_registration,
    launch,
    recovery_location,
    recovery_spec,
    register_landed,
    tick,
    write_labelled_dataset,
)

from io_managers.s3_config import S3_ENDPOINT_ENV, s3_from_env  # noqa: E402
from llm_assets.failure_class import FailureClass, run_failure_class  # noqa: E402
from llm_assets.pipeline_assets import register  # noqa: E402
from tests.spec_pipelines import point_at, run_chunk  # noqa: E402

WATCHER = "banking77__new_dataset_sensor"

pytestmark = pytest.mark.slow


def test_files_landing_under_an_s3_prefix_register_once_and_their_chunks_run_from_s3(
    start_sim, s3_env, tmp_path, monkeypatch
):
    sim = start_sim({"seed": 5})
    point_at(sim, monkeypatch)
    s3 = s3_from_env()
    assert s3 is not None
    client = s3.get_client()
    bucket = f"landing-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    write_labelled_dataset(tmp_path / "tickets.csv", 40)
    write_labelled_dataset(tmp_path / "refunds.csv", 20, seed=11)
    client.put_object(Bucket=bucket, Key="inbox/tickets.csv", Body=(tmp_path / "tickets.csv").read_bytes())
    client.put_object(Bucket=bucket, Key="inbox/tickets.csv._SUCCESS", Body=b"")
    client.put_object(
        Bucket=bucket, Key="inbox/_staging.csv", Body=b"id,text\n1,ignored\n"
    )  # a writer's temp
    client.put_object(Bucket=bucket, Key="inbox/archive/old.csv", Body=b"id,text\n1,not watched\n")  # nested

    home = tmp_path / "home"
    spec = recovery_spec(input={"chunk_size": 20})
    defs, sensors = recovery_location(spec, home, watch=f"s3://{bucket}/inbox", s3=s3)
    watcher = sensors[WATCHER]
    with dg.instance_for_test() as instance:
        requested, cursor, _ = tick(watcher, instance, defs, None)
        assert [is_registration(r) for r in requested] == [True]  # the object is read by a run, not the tick
        requests, cursor, _ = register_landed(watcher, instance, defs, cursor, requested)
        keys = [r.partition_key for r in requests]
        assert len(keys) == 2 and all(k.startswith("banking77-tickets-") for k in keys)
        results = [launch(defs, instance, watcher, r) for r in requests]
        assert all(r is not None and r.success for r in results)
        outputs = pd.concat(
            pd.read_parquet(home / "outputs" / spec.name / "enriched" / f"{k}.parquet") for k in keys
        )
        assert sorted(outputs["item_id"]) == [f"item-{i:04d}" for i in range(40)]

        again, cursor, _ = tick(watcher, instance, defs, cursor)
        assert again == []

        # No marker: registered only once its size and LastModified held over two ticks.
        client.put_object(
            Bucket=bucket, Key="inbox/refunds.csv", Body=(tmp_path / "refunds.csv").read_bytes()
        )
        waiting, cursor, skip = tick(watcher, instance, defs, cursor)
        assert waiting == [] and "1 still being written" in skip
        requested, cursor, _ = tick(watcher, instance, defs, cursor)
        settled, cursor, _ = register_landed(watcher, instance, defs, cursor, requested)
        assert [r.partition_key.split("__c")[0].startswith("banking77-refunds-") for r in settled] == [True]

        assert launch(defs, instance, watcher, settled[0]).success


def test_an_s3_dataset_in_a_code_location_without_s3_fails_job_fatal_naming_the_setting(
    start_sim, s3_env, tmp_path, monkeypatch
):
    sim = start_sim({"seed": 5})
    point_at(sim, monkeypatch)
    s3 = s3_from_env()
    assert s3 is not None
    bucket = f"landing-{uuid.uuid4().hex[:8]}"
    s3.get_client().create_bucket(Bucket=bucket)
    write_labelled_dataset(tmp_path / "refunds.csv", 20, seed=11)
    s3.get_client().put_object(
        Bucket=bucket, Key="inbox/refunds.csv", Body=(tmp_path / "refunds.csv").read_bytes()
    )
    home = tmp_path / "home"
    spec = recovery_spec(input={"chunk_size": 20})
    with dg.instance_for_test() as instance:
        dataset = register(spec, f"s3://{bucket}/inbox/refunds.csv", instance, home, s3=s3)
        (key,) = dataset.partition_keys
        local_only, _ = recovery_location(spec, home)
        failed = run_chunk(local_only, spec, instance, key, raise_on_error=False)
        assert not failed.success
        assert run_failure_class(instance, failed.run_id) == FailureClass.JOB_FATAL
        (failure,) = [e for e in failed.all_events if e.is_step_failure]
        assert S3_ENDPOINT_ENV in str(failure.step_failure_data.error)
        with_s3, _ = recovery_location(spec, home, s3=s3)
        assert run_chunk(with_s3, spec, instance, key).success  # with S3 configured it runs
