"""Small JSON documents every machine must see alike, in the shared backend's database (issue #14): dataset
manifests (llm_assets/datasets.py), estimates (llm_assets/estimate.py), provider batch journals and their cancel
marks (resources/llm/batch_journal.py `SharedBatchJournal`, llm_assets/stages.py), keyed by kind and key. With the embedded backend the same documents are
files under the home, written by their own modules; this is only the shared side.

    chunkwise_documents(kind, key, doc jsonb, updated_at)   primary key (kind, key)

`put_new` inserts unless the key exists and returns the document that is there (two machines registering the
same file at once agree on one manifest); `put` replaces; reads are single statements. Connections are opened
per call (these are rare: one per registration, one per chunk run's manifest read) with the keepalives and
password-free errors of resources/state_url.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import psycopg2

from resources.state_url import STATE_URL_ENV, StateUrlError, connect, redact

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunkwise_documents (
    kind TEXT NOT NULL, key TEXT NOT NULL, doc JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kind, key))
"""
_SCHEMA_LOCK_ID = int.from_bytes(
    hashlib.sha256(b"chunkwise_documents schema").digest()[:8], "big", signed=True
)
_ready: set[str] = set()
_ready_lock = threading.Lock()


class SharedDocumentError(StateUrlError):
    """The shared documents could not be read or written; names the setting, never the password."""


class SharedDocuments:
    """The documents of one kind (e.g. "manifest") in the database `url` names."""

    def __init__(self, url: str, kind: str) -> None:
        self.url = url
        self.kind = kind

    def get(self, key: str) -> dict | None:
        rows = self._query(
            "SELECT doc FROM chunkwise_documents WHERE kind = %s AND key = %s", (self.kind, key)
        )
        return rows[0][0] if rows else None

    def list_keys(self) -> list[str]:
        rows = self._query("SELECT key FROM chunkwise_documents WHERE kind = %s ORDER BY key", (self.kind,))
        return [row[0] for row in rows]

    def put_new(self, key: str, doc: dict) -> dict:
        """Insert `doc` unless `key` exists; the document stored under `key` either way."""
        rows = self._query(
            "INSERT INTO chunkwise_documents (kind, key, doc) VALUES (%s, %s, %s) "
            "ON CONFLICT (kind, key) DO NOTHING RETURNING doc",
            (self.kind, key, json.dumps(doc)),
        )
        if rows:
            return rows[0][0]
        stored = self.get(key)
        assert stored is not None, "a document cannot vanish between an insert conflict and its read"
        return stored

    def put(self, key: str, doc: dict) -> None:
        self._query(
            "INSERT INTO chunkwise_documents (kind, key, doc) VALUES (%s, %s, %s) ON CONFLICT (kind, key) "
            "DO UPDATE SET doc = EXCLUDED.doc, updated_at = clock_timestamp() RETURNING key",
            (self.kind, key, json.dumps(doc)),
        )

    def delete(self, key: str) -> None:
        self._query("DELETE FROM chunkwise_documents WHERE kind = %s AND key = %s", (self.kind, key))

    def _query(self, sql: str, params: tuple) -> list[tuple[Any, ...]]:
        conn = connect(self.url, f"the shared {self.kind} documents")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                self._ensure_schema(cur)
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        except psycopg2.Error as error:
            text = str(error).strip()
            raise SharedDocumentError(
                f"the shared {self.kind} documents in {redact(self.url)} failed "
                f"({redact(text.splitlines()[0] if text else type(error).__name__)}); check {STATE_URL_ENV} and "
                "that the server is up, then try again"
            ) from None
        finally:
            conn.close()

    def _ensure_schema(self, cur: Any) -> None:
        with _ready_lock:
            if self.url in _ready:
                return
            cur.execute("BEGIN")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
            cur.execute(_SCHEMA)
            cur.execute("COMMIT")
            _ready.add(self.url)
