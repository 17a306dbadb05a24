"""The one setting that chooses where Chunkwise keeps its state between runs (issue #14), and how it is shown.

`CHUNKWISE_STATE_URL` unset or empty: the embedded backend (SQLite files and local folders under each machine's
home: `make demo` as ever). A `postgresql://user:password@host:port/db` URL: the shared backend, one PostgreSQL
database every process and machine with the same URL shares: the limit and budget store
(resources/llm/postgres_state_store.py), the spend ledger and halts (resources/llm/spend_ledger_pg.py), the
item checkpoints (resources/checkpoints_pg.py), the dataset manifests, estimates, batch journals and cancel marks
(resources/shared_docs.py) and the model trials' answers (resources/trial_answers_pg.py). The URL may carry a
password: messages, logs and metadata show it only through `redact`.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

STATE_URL_ENV = "CHUNKWISE_STATE_URL"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 10
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 3
"""TCP keepalives on every connection: a peer gone without a FIN (a dead machine, a cut network) ends the session
after KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S x KEEPALIVE_COUNT = 40 s, and the server drops its locks with it."""


class StateUrlError(RuntimeError):
    """The state database cannot be reached or the setting is wrong; the message names the setting, never the
    password."""


def state_url() -> str | None:
    """The shared backend's URL, or None for the embedded backend. Raises StateUrlError for a URL that is not
    PostgreSQL's."""
    url = os.environ.get(STATE_URL_ENV, "").strip()
    if not url:
        return None
    if not url.startswith(POSTGRES_SCHEMES):
        raise StateUrlError(
            f"{STATE_URL_ENV}={redact(url)} is not a postgresql:// URL: set it to "
            "postgresql://user:password@host:port/db for state shared across machines, or unset it for the local "
            "SQLite files"
        )
    return url


def redact(url: str) -> str:
    """`url` with its password (in the userinfo or a `password=` parameter) replaced by `***`."""
    masked = re.sub(r"(?i)(password\s*=\s*)[^&\s]*", r"\1***", url)
    try:
        parts = urllib.parse.urlsplit(masked)
        if parts.password is None:
            return masked
        netloc = f"{parts.username or ''}:***@{parts.netloc.rsplit('@', 1)[1]}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


def connect(url: str, what: str) -> Any:
    """A psycopg2 connection to `url` with keepalives; StateUrlError naming `what` and the setting when it fails."""
    import psycopg2

    try:
        return psycopg2.connect(
            url,
            connect_timeout=CONNECT_TIMEOUT_S,
            keepalives=1,
            keepalives_idle=KEEPALIVE_IDLE_S,
            keepalives_interval=KEEPALIVE_INTERVAL_S,
            keepalives_count=KEEPALIVE_COUNT,
        )
    except psycopg2.Error as error:
        text = str(error).strip()
        reason = redact(text.splitlines()[0] if text else type(error).__name__)
        raise StateUrlError(
            f"{what}: cannot reach the state database {redact(url)} ({reason}); check {STATE_URL_ENV} and that "
            "the server is up, then re-run the chunk"
        ) from None
