import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from io_managers.atomic_files import write_atomic
from io_managers.parquet_files import (
    StorageConfigError,
    delete_uri,
    exists,
    list_uris,
    read_parquet,
    write_parquet_atomic,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _frame(n: int, tag: str) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"{tag}{i}" for i in range(n)], "value": list(range(n))})


def test_local_write_then_read_round_trips_and_overwrite_replaces(tmp_path: Path) -> None:
    uri = str(tmp_path / "nested" / "dir" / "part.parquet")
    write_parquet_atomic(_frame(5, "a"), uri)
    pd.testing.assert_frame_equal(read_parquet(uri), _frame(5, "a"))

    write_parquet_atomic(_frame(2, "b"), uri)
    assert read_parquet(uri)["id"].tolist() == ["b0", "b1"]
    # no temp files left beside the target
    assert sorted(p.name for p in (tmp_path / "nested" / "dir").iterdir()) == ["part.parquet"]


def test_failed_replace_leaves_old_file_and_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    uri = str(tmp_path / "part.parquet")
    write_parquet_atomic(_frame(3, "old"), uri)

    def refuse(src, dst):  # the rename step fails (e.g. disk full, permissions)
        raise OSError("simulated failure in os.replace")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="simulated failure"):
        write_parquet_atomic(_frame(10, "new"), uri)
    monkeypatch.undo()

    assert read_parquet(uri)["id"].tolist() == ["old0", "old1", "old2"]
    assert [p.name for p in tmp_path.iterdir()] == ["part.parquet"]


def test_writer_killed_mid_write_leaves_old_file_intact(tmp_path: Path) -> None:
    uri = tmp_path / "part.parquet"
    write_parquet_atomic(_frame(3, "old"), str(uri))
    # The child writes half a file through the real atomic writer, says so, then hangs until killed.
    child_code = textwrap.dedent(
        f"""
        import sys, time
        from io_managers.atomic_files import write_atomic
        def slow_writer(f):
            f.write(b"PAR1" + b"x" * 100_000)
            f.flush()
            print("HALFWAY", flush=True)
            time.sleep(60)
        write_atomic({str(uri)!r}, slow_writer)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", child_code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "HALFWAY"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert read_parquet(str(uri))["id"].tolist() == ["old0", "old1", "old2"]
    # The orphaned temp file is hidden (dot-prefixed) and never listed as data.
    assert list_uris(str(tmp_path), suffix=".parquet") == [str(uri)]
    assert any(p.name.startswith(".part.parquet.") for p in tmp_path.iterdir())


def test_write_atomic_error_in_writer_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        write_atomic(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_local_exists_delete_and_list(tmp_path: Path) -> None:
    a, b = str(tmp_path / "x" / "a.parquet"), str(tmp_path / "x" / "y" / "b.parquet")
    assert not exists(a)
    write_parquet_atomic(_frame(1, "a"), a)
    write_parquet_atomic(_frame(1, "b"), b)
    assert exists(a)
    assert list_uris(str(tmp_path), suffix=".parquet") == [a, b]
    assert delete_uri(a) is True
    assert delete_uri(a) is False
    assert list_uris(str(tmp_path), suffix=".parquet") == [b]
    assert list_uris(str(tmp_path / "missing")) == []


def test_read_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no file at .*nope.parquet"):
        read_parquet(str(tmp_path / "nope.parquet"))


def test_s3_write_read_list_delete_against_local_s3_api(s3_bucket) -> None:
    s3, bucket = s3_bucket
    uri = f"s3://{bucket}/out/items/k1.parquet"
    assert not exists(uri, s3)
    write_parquet_atomic(_frame(4, "s"), uri, s3=s3)
    assert exists(uri, s3)
    pd.testing.assert_frame_equal(read_parquet(uri, s3=s3), _frame(4, "s"))
    write_parquet_atomic(_frame(1, "t"), uri, s3=s3)
    assert read_parquet(uri, s3=s3)["id"].tolist() == ["t0"]
    write_parquet_atomic(_frame(1, "u"), f"s3://{bucket}/out/items/k2.parquet", s3=s3)
    assert list_uris(f"s3://{bucket}/out", suffix=".parquet", s3=s3) == [
        f"s3://{bucket}/out/items/k1.parquet",
        f"s3://{bucket}/out/items/k2.parquet",
    ]
    assert delete_uri(uri, s3) is True
    assert delete_uri(uri, s3) is False
    with pytest.raises(FileNotFoundError, match="no object at"):
        read_parquet(uri, s3=s3)


def test_s3_uri_without_s3_resource_is_a_config_error() -> None:
    with pytest.raises(StorageConfigError, match="configure the `s3` resource"):
        write_parquet_atomic(_frame(1, "a"), "s3://bucket/key.parquet")
