"""llm_assets/schema_check_cache.py: Dagster's migration scripts are parsed once per process, and nothing Dagster
decides from the revisions changes (an old database still reads as old)."""

from __future__ import annotations

import ast
import inspect
import sqlite3
from pathlib import Path

import dagster as dg
from alembic.script import ScriptDirectory
from dagster._core.storage import sql
from dagster._core.test_utils import instance_for_test

from llm_assets import schema_check_cache


def test_the_revision_check_is_the_only_user_of_the_patched_name():
    """If a Dagster upgrade used `ScriptDirectory` elsewhere in that module, the cache would reach it too."""
    tree = ast.parse(inspect.getsource(sql))
    users = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        for inner in ast.walk(node)
        if isinstance(inner, ast.Name) and inner.id == "ScriptDirectory"
    }
    assert users == {"check_alembic_revision"}
    schema_check_cache.install()
    assert sql.ScriptDirectory is schema_check_cache.CachedScriptDirectory
    schema_check_cache.install()  # idempotent
    assert sql.ScriptDirectory is schema_check_cache.CachedScriptDirectory


def test_instances_from_one_ref_parse_the_migrations_once(tmp_path, monkeypatch):
    schema_check_cache.install()
    monkeypatch.setattr(schema_check_cache, "_scripts", {})
    parsed: list[str] = []
    real = schema_check_cache.ScriptDirectory

    class Counting:
        @staticmethod
        def from_config(config):
            parsed.append(str(config.get_main_option("script_location")))
            return real.from_config(config)

    monkeypatch.setattr(schema_check_cache, "ScriptDirectory", Counting)
    with instance_for_test(temp_dir=str(tmp_path)) as instance:
        ref = instance.get_ref()
    with dg.DagsterInstance.from_ref(ref) as instance:
        instance.get_runs_count()
    after_one = len(parsed)
    for _ in range(3):
        with dg.DagsterInstance.from_ref(ref) as instance:
            assert instance.get_runs_count() == 0
    # The run, event-log and schedule storages share one migrations folder: parsed once, by the first instance.
    assert after_one >= 1
    assert len(parsed) == after_one == len(set(parsed))


def test_an_old_database_still_reads_as_old_and_head_is_alembics_head(tmp_path):
    schema_check_cache.install()
    with instance_for_test(temp_dir=str(tmp_path)) as instance:
        db_revision, head = instance.run_storage.alembic_version()
        assert db_revision == head
    config = sql.get_alembic_config(inspect.getfile(type(instance.run_storage)))
    script = ScriptDirectory.from_config(config)  # alembic's own, uncached
    assert head == script.as_revision_number("head")
    older = script.get_revision(head).down_revision
    assert isinstance(older, str)
    runs_db = next(Path(tmp_path).rglob("runs.db"))
    with sqlite3.connect(runs_db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (older,))
    with instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert instance.run_storage.alembic_version() == (older, head)
