"""Seekable binary readers for a local file or an S3 object, so dataset chunks are read by byte range.

S3 reads are ranged GETs (``Range: bytes=a-b``) pinned to the ETag seen at open (``IfMatch``): if the object
is replaced while we read, S3 answers 412 instead of handing back bytes from a different file.
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO

from io_managers.parquet_files import is_s3_uri, parse_s3_uri, s3_client

# S3: large enough that streaming a big object costs few requests; local: the OS caches, 1 MiB is plenty.
S3_READ_BUFFER_BYTES = 8 * 1024 * 1024
LOCAL_READ_BUFFER_BYTES = 1024 * 1024


class S3RangeReader(io.RawIOBase):
    """A read-only, seekable raw stream over one S3 object; every read is one ranged GET."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        super().__init__()
        self._client = client
        self._bucket = bucket
        self._key = key
        head = client.head_object(Bucket=bucket, Key=key)
        self.size = int(head["ContentLength"])
        self.etag = str(head["ETag"])
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self.size:
            return 0
        end = min(self._pos + len(buffer), self.size) - 1
        data = self._client.get_object(
            Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-{end}", IfMatch=self.etag
        )["Body"].read()
        n = len(data)
        memoryview(buffer)[:n] = data
        self._pos += n
        return n


def open_binary(uri: str, s3: Any = None, buffer_size: int | None = None) -> BinaryIO:
    """Open a local path or s3:// object for seekable binary reading. Caller closes it.

    ``buffer_size=0`` gives an unbuffered stream: one ``read(n)`` after a ``seek`` is then exactly one ranged
    GET of ``n`` bytes on S3 (use it to fetch a known byte range); otherwise reads are buffered
    (S3: 8 MiB per GET, local: 1 MiB) for streaming.
    """
    if is_s3_uri(uri):
        loc = parse_s3_uri(uri)
        raw = S3RangeReader(s3_client(s3, uri), loc.bucket, loc.key)
        if buffer_size == 0:
            return raw  # type: ignore[return-value]
        return io.BufferedReader(raw, buffer_size=buffer_size or S3_READ_BUFFER_BYTES)
    return open(uri, "rb", buffering=LOCAL_READ_BUFFER_BYTES if buffer_size is None else buffer_size)  # noqa: SIM115


def read_range(uri: str, start: int, end: int, s3: Any = None) -> bytes:
    """Bytes [start, end) of a local file or S3 object (one ranged GET on S3)."""
    out = bytearray()
    with open_binary(uri, s3, buffer_size=0) as f:
        f.seek(start)
        while len(out) < end - start:
            block = f.read(end - start - len(out))
            if not block:
                break
            out += block
    return bytes(out)


def size_bytes(uri: str, s3: Any = None) -> int:
    """Size of a local file or S3 object in bytes."""
    if is_s3_uri(uri):
        loc = parse_s3_uri(uri)
        return int(s3_client(s3, uri).head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"])
    return os.path.getsize(uri)
