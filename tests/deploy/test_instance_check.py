"""llm_assets/instance_check.py against a real PostgreSQL: it answers where the instance's database is when it is
up; when it is down (or not configured) a user gets one line naming the CHUNKWISE_PG_* variables to fix, quickly,
without the password. (Dagster's own error for the same outage comes after ~11 s of retries and names no setting.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_assets.instance_check import InstanceDatabaseUnreachable, check_instance_postgres
from scripts.postgres_server import free_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-that-must-never-be-shown"


def test_the_check_connects_to_the_database_the_variables_name(pg_env):
    db = check_instance_postgres()
    assert db.where() == (
        f"{pg_env['CHUNKWISE_PG_USER']}@{pg_env['CHUNKWISE_PG_HOST']}:{pg_env['CHUNKWISE_PG_PORT']}"
        f"/{pg_env['CHUNKWISE_PG_DB']}"
    )
    assert PASSWORD not in repr(db)


def test_postgres_down_at_start_is_one_line_naming_host_and_port_settings_and_never_the_password(
    pg_env, monkeypatch
):
    closed = free_port()  # nothing listens there
    monkeypatch.setenv("CHUNKWISE_PG_PORT", str(closed))
    monkeypatch.setenv("CHUNKWISE_PG_PASSWORD", PASSWORD)

    started = time.monotonic()
    with pytest.raises(InstanceDatabaseUnreachable) as raised:
        check_instance_postgres()
    assert time.monotonic() - started < 5  # one try, no retry loop
    message = str(raised.value)
    assert "CHUNKWISE_PG_HOST" in message and "CHUNKWISE_PG_PORT" in message
    assert f"127.0.0.1:{closed}" in message and "Connection refused" in message
    assert PASSWORD not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__

    # What an operator sees from the command a deployment runs before the daemon or a run worker.
    cli = subprocess.run(
        [sys.executable, "-m", "llm_assets.instance_check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 2 and cli.stdout == ""
    assert cli.stderr.strip() == message and "\n" not in cli.stderr.strip()


def test_an_unset_variable_is_named_before_any_connection(pg_env, monkeypatch):
    monkeypatch.delenv("CHUNKWISE_PG_DB")
    monkeypatch.delenv("CHUNKWISE_PG_PASSWORD")
    with pytest.raises(InstanceDatabaseUnreachable, match="set CHUNKWISE_PG_PASSWORD, CHUNKWISE_PG_DB"):
        check_instance_postgres()
    # An empty password is a setting (trust or peer auth), not a missing one.
    monkeypatch.setenv("CHUNKWISE_PG_DB", pg_env["CHUNKWISE_PG_DB"])
    monkeypatch.setenv("CHUNKWISE_PG_PASSWORD", "")
    assert check_instance_postgres().db == pg_env["CHUNKWISE_PG_DB"]
