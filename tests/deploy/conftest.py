"""The deployment's Dagster instance on a real PostgreSQL: deploy/dagster-postgres.yaml as `$DAGSTER_HOME/dagster.yaml`,
its CHUNKWISE_PG_* variables pointing at the test's fresh database (`postgres_dsn`, tests/conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest

POSTGRES_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "dagster-postgres.yaml"


@pytest.fixture
def pg_env(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """CHUNKWISE_PG_* set from the test's database URL (trust auth: the password is empty), as a dict too."""
    url = urlparse(postgres_dsn)
    env = {
        "CHUNKWISE_PG_HOST": url.hostname or "",
        "CHUNKWISE_PG_PORT": str(url.port),
        "CHUNKWISE_PG_USER": url.username or "",
        "CHUNKWISE_PG_PASSWORD": url.password or "",
        "CHUNKWISE_PG_DB": url.path.lstrip("/"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def dagster_home(pg_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME holding deploy/dagster-postgres.yaml as its dagster.yaml, unchanged."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(POSTGRES_CONFIG, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def postgres_instance(dagster_home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance a deployment's daemon, webserver and run workers open from that home."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance
