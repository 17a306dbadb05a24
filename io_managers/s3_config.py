"""The deployment's S3 resource, built from the environment, and only when S3 is in use.

A code location that reads or writes nothing on S3 never imports dagster_aws: its package import costs every
run worker ~0.6 s (docs/benchmarks.md). S3 is in use when any of these holds where Dagster runs:
- `CHUNKWISE_S3_ENDPOINT_URL` is set: an S3-compatible server (MinIO, moto, ...);
- `CHUNKWISE_S3=1`: AWS S3 itself;
- the caller knows it needs S3 (`required=True`: an `s3://` dataset, watched prefix or outputs URI).
Credentials and region come from the standard AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`, a profile, an instance role), never from Chunkwise's config, so they never show in the UI.
"""

import os
from typing import Any

S3_ENDPOINT_ENV = "CHUNKWISE_S3_ENDPOINT_URL"
S3_ON_ENV = "CHUNKWISE_S3"
_TRUE = ("1", "true", "yes", "on")


def s3_from_env(required: bool = False) -> Any:
    """A dagster-aws `S3Resource` when S3 is in use (see the module docstring), else None."""
    endpoint = os.environ.get(S3_ENDPOINT_ENV, "").strip()
    wanted = os.environ.get(S3_ON_ENV, "").strip().lower() in _TRUE
    if not (required or endpoint or wanted):
        return None
    from dagster_aws.s3 import S3Resource  # only here: see the module docstring

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return S3Resource(endpoint_url=endpoint or None, region_name=region or None)
