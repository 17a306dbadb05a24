"""The one place that writes Parquet atomically, plus the small URI toolkit every store shares.

A URI is a local path (``/data/out/x.parquet``) or ``s3://bucket/key``. Local writes go through a temp file +
fsync + ``os.replace``; S3 writes are a single PutObject, which S3 applies atomically per object (readers see
the old object or the new one). ``s3`` is a dagster-aws ``S3Resource`` or a boto3 S3 client; it is needed only
for ``s3://`` URIs.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from io_managers.atomic_files import write_atomic

S3_SCHEME = "s3://"


class StorageConfigError(ValueError):
    """An s3:// URI was used without an S3 resource, or a URI is malformed."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str


def is_s3_uri(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket/a/b`` -> S3Location("bucket", "a/b")."""
    if not is_s3_uri(uri):
        raise StorageConfigError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise StorageConfigError(f"{uri!r} has no bucket; expected s3://<bucket>/<key>")
    return S3Location(bucket, key)


def join_uri(base: str, *parts: str) -> str:
    """Join path segments onto a local dir or an s3:// prefix with '/'."""
    if is_s3_uri(base):
        out = base.rstrip("/")
        for part in parts:
            out = f"{out}/{part.strip('/')}"
        return out
    return str(Path(base).joinpath(*parts))


def partition_file_name(partition_key: str) -> str:
    """A Parquet file name for a partition key: percent-encoded, so every key maps to one distinct, safe name
    (chunk keys like ``banking77-3f2a9c1d__c00012`` need no encoding)."""
    return quote(partition_key, safe="-_=.") + ".parquet"


def s3_client(s3: Any, uri: str) -> Any:
    """A boto3 S3 client from an ``S3Resource`` (``.get_client()``) or a client passed as is."""
    if s3 is None:
        raise StorageConfigError(
            f"{uri} is an s3:// URI but no S3 resource was given; configure the `s3` resource "
            "(dagster_aws.s3.S3Resource) on the IO manager / store that reads or writes it"
        )
    return s3.get_client() if hasattr(s3, "get_client") else s3


def write_parquet_atomic(df: pd.DataFrame, uri: str, s3: Any = None) -> str:
    """Write ``df`` as one Parquet file at ``uri``, replacing any previous file atomically. Returns ``uri``."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if is_s3_uri(uri):
        loc = parse_s3_uri(uri)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        s3_client(s3, uri).put_object(Bucket=loc.bucket, Key=loc.key, Body=buf.getvalue())
        return uri
    write_atomic(uri, lambda f: pq.write_table(table, f))
    return uri


def write_object(uri: str, data: bytes, s3: Any = None) -> str:
    """Write `data` at `uri` whole (an S3 put is atomic; a local file is replaced atomically). Returns `uri`."""
    if is_s3_uri(uri):
        loc = parse_s3_uri(uri)
        s3_client(s3, uri).put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        return uri
    write_atomic(uri, lambda f: f.write(data))
    return uri


def read_parquet(uri: str, s3: Any = None) -> pd.DataFrame:
    """Read one Parquet file (local or s3://) into a DataFrame. FileNotFoundError if it does not exist."""
    if is_s3_uri(uri):
        loc = parse_s3_uri(uri)
        client = s3_client(s3, uri)
        try:
            body = client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        except client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"no object at {uri}") from exc
        return pq.read_table(io.BytesIO(body)).to_pandas()
    if not os.path.exists(uri):
        raise FileNotFoundError(f"no file at {uri}")
    return pq.read_table(uri).to_pandas()


def exists(uri: str, s3: Any = None) -> bool:
    if is_s3_uri(uri):
        loc = parse_s3_uri(uri)
        client = s3_client(s3, uri)
        try:
            client.head_object(Bucket=loc.bucket, Key=loc.key)
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True
    return os.path.exists(uri)


def delete_uri(uri: str, s3: Any = None) -> bool:
    """Delete one file/object; returns whether something was there. Missing is not an error."""
    if is_s3_uri(uri):
        if not exists(uri, s3):
            return False
        loc = parse_s3_uri(uri)
        s3_client(s3, uri).delete_object(Bucket=loc.bucket, Key=loc.key)
        return True
    try:
        os.unlink(uri)
    except FileNotFoundError:
        return False
    return True


def list_uris(prefix_uri: str, suffix: str = "", s3: Any = None) -> list[str]:
    """Every file under a local directory or s3:// prefix (recursive) ending in ``suffix``, sorted."""
    if is_s3_uri(prefix_uri):
        loc = parse_s3_uri(prefix_uri)
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        paginator = s3_client(s3, prefix_uri).get_paginator("list_objects_v2")
        found = [
            f"{S3_SCHEME}{loc.bucket}/{obj['Key']}"
            for page in paginator.paginate(Bucket=loc.bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
            if obj["Key"].endswith(suffix)
        ]
        return sorted(found)
    root = Path(prefix_uri)
    if not root.is_dir():
        return []
    # Temp files of in-progress atomic writes start with '.', skip them.
    return sorted(str(p) for p in root.rglob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))
