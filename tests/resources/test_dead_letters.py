import json
import uuid
from pathlib import Path

import pytest
from dagster_aws.s3 import S3Resource
from moto.server import ThreadedMotoServer

from io_managers.parquet_files import read_parquet
from resources.dead_letters import DEAD_LETTER_COLUMNS, DeadLetter, DeadLetterStore

DS = "tickets-0123abcd"
P0, P1 = f"{DS}__c00000", f"{DS}__c00001"


def _letter(item_id: str, partition_key: str = P0, stage: str = "classified", **overrides) -> DeadLetter:
    fields = dict(
        dataset_id=DS,
        partition_key=partition_key,
        item_id=item_id,
        stage=stage,
        error_class="schema_invalid",
        error_message="label 'x' not in taxonomy after one repair",
        attempts=2,
        first_attempt_at="2026-01-01T00:00:00+00:00",
        last_attempt_at="2026-01-01T00:00:03+00:00",
        model="sim-small",
        run_id="run-1",
        input_text=f"text of {item_id}",
        input_json=json.dumps({"id": item_id, "text": f"text of {item_id}"}),
    )
    fields.update(overrides)
    return DeadLetter(**fields)


@pytest.fixture(scope="module")
def s3_resource():
    """A real S3 API (moto's server mode) on 127.0.0.1 for this module."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Resource(
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        use_ssl=False,
    )
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> DeadLetterStore:
    if request.param == "local":
        return DeadLetterStore(str(tmp_path / "dead_letters"))
    s3 = request.getfixturevalue("s3_resource")
    bucket = f"dl-{uuid.uuid4().hex[:8]}"
    s3.get_client().create_bucket(Bucket=bucket)
    return DeadLetterStore(f"s3://{bucket}/dead_letters", s3=s3)


def test_write_then_query_by_dataset_partition_and_stage(store: DeadLetterStore) -> None:
    store.write_partition(DS, P0, "classified", [_letter("a"), _letter("b")])
    store.write_partition(DS, P0, "items", [_letter("c", stage="items", error_class="invalid_input")])
    store.write_partition(DS, P1, "enriched", [_letter("d", P1, "enriched")])

    assert sorted(store.query(DS)["item_id"]) == ["a", "b", "c", "d"]
    assert sorted(store.query(DS, partition_key=P0)["item_id"]) == ["a", "b", "c"]
    assert store.query(DS, stage="items")["item_id"].tolist() == ["c"]
    assert store.query(DS, P0, "classified")["item_id"].tolist() == ["a", "b"]
    assert store.query(DS, P1, "items").empty
    assert list(store.query("other-00000000").columns) == DEAD_LETTER_COLUMNS
    row = store.query(DS, P1, "enriched").iloc[0]
    assert (row["attempts"], row["model"], row["run_id"]) == (2, "sim-small", "run-1")
    assert json.loads(row["input_json"]) == {"id": "d", "text": "text of d"}


def test_rewriting_a_partition_replaces_never_duplicates(store: DeadLetterStore) -> None:
    store.write_partition(DS, P0, "classified", [_letter("a"), _letter("b")])
    store.write_partition(DS, P0, "classified", [_letter("b", attempts=3)])  # the re-run
    result = store.query(DS, P0, "classified")
    assert result["item_id"].tolist() == ["b"] and result["attempts"].tolist() == [3]


def test_empty_write_removes_the_partition_file(store: DeadLetterStore) -> None:
    store.write_partition(DS, P0, "classified", [_letter("a")])
    store.write_partition(DS, P1, "classified", [_letter("z", P1)])
    assert store.write_partition(DS, P0, "classified", []) is None  # no file: no path to show anyone
    assert store.query(DS)["item_id"].tolist() == ["z"]
    assert store.write_partition(DS, P0, "classified", []) is None  # nothing there: still fine


def test_uri_for_points_at_the_file_a_person_opens(store: DeadLetterStore) -> None:
    uri = store.write_partition(DS, P0, "classified", [_letter("a")])
    assert uri == store.uri_for(DS, P0, "classified")
    assert uri.replace("\\", "/").endswith(f"dataset={DS}/stage=classified/{P0}.parquet")
    assert store.uri_for(DS).replace("\\", "/").endswith(f"dataset={DS}")
    assert read_parquet(uri, s3=store._s3)["item_id"].tolist() == ["a"]


def test_rows_of_another_partition_are_refused(store: DeadLetterStore) -> None:
    with pytest.raises(ValueError, match="belong to another dataset/partition/stage"):
        store.write_partition(DS, P0, "classified", [_letter("a", P1)])
    with pytest.raises(ValueError, match="not a lowercase name"):
        store.write_partition(DS, P0, "Classified/../x", [])
