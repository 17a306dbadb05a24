import uuid
from collections.abc import Iterator

import pytest
from dagster_aws.s3 import S3Resource
from moto.server import ThreadedMotoServer


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server mode) on 127.0.0.1, free port; stopped at the end of the session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> tuple[S3Resource, str]:
    """An S3Resource pointed at the local server with dummy credentials, and a fresh bucket."""
    s3 = S3Resource(
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        use_ssl=False,
    )
    bucket = f"chunkwise-test-{uuid.uuid4().hex[:12]}"
    s3.get_client().create_bucket(Bucket=bucket)
    return s3, bucket
