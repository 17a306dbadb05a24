"""Read Dagster's migration scripts once per process, not once per instance.

Every `DagsterInstance.from_ref` on SQLite storage (Dagster makes one for each sensor tick in the code server
and one for each run) checks the database's schema revision against the head revision of Dagster's migrations:
`dagster._core.storage.sql.check_alembic_revision` builds a new alembic `ScriptDirectory` for that, which reads
and executes every migration script of the run, event-log and schedule storages, each time. Measured on the
2-core machines here it was the largest cost of the code server while the demo ran (41% of its CPU, py-spy) and
3% of a run worker's.

The head revision of an installed Dagster cannot change while a process runs (a new Dagster means new processes),
so the parsed `ScriptDirectory` is kept per script location. The database's own revision is still read from the
database every time (`run_storage.alembic_version()` reports an old database as old, tested), so what Dagster
decides from the two is unchanged. Only `check_alembic_revision` sees the cache: it is the one user of the
`ScriptDirectory` name in that module (tests/llm_assets/test_schema_check_cache.py checks this against the installed
Dagster); migrations (`dagster instance migrate`) build their own.
"""

from __future__ import annotations

import threading

from alembic.config import Config
from alembic.script import ScriptDirectory

_lock = threading.Lock()
_scripts: dict[tuple[str, str], ScriptDirectory] = {}


class CachedScriptDirectory:
    """Stands in for alembic's ScriptDirectory class in `dagster._core.storage.sql` (`from_config` only)."""

    @staticmethod
    def from_config(config: Config) -> ScriptDirectory:
        key = (
            str(config.get_main_option("script_location")),
            str(config.get_main_option("version_locations")),
        )
        with _lock:
            script = _scripts.get(key)
            if script is None:
                script = _scripts[key] = ScriptDirectory.from_config(config)
            return script


def install() -> None:
    """Idempotent. Called when the code location is imported (code server, warm run launcher, tests)."""
    from dagster._core.storage import sql

    if sql.ScriptDirectory is ScriptDirectory:
        sql.ScriptDirectory = CachedScriptDirectory  # type: ignore[assignment]


def preload() -> None:
    """Parse the SQLite storages' migrations now (the warm run launcher's parent, before it forks runs)."""
    from dagster._core.storage.event_log.sqlite import sqlite_event_log
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage
    from dagster._core.storage.sql import get_alembic_config

    for module in (sqlite_run_storage, sqlite_event_log, sqlite_schedule_storage):
        CachedScriptDirectory.from_config(get_alembic_config(module.__file__)).as_revision_number("head")
