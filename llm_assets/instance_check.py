"""Is the Dagster instance's PostgreSQL reachable? One try at the connection deploy/dagster-postgres.yaml reads
from CHUNKWISE_PG_*, failing with one line that names the variables to fix, never the password.

Dagster's own answer to a database that is down comes after ~11 s of retries and reads "too many retries for DB
connection", naming no setting. Call `check_instance_postgres()` before opening the instance, or run it before
`dagster-daemon run` / `dagster-webserver` / a run worker:

    python -m llm_assets.instance_check     # prints where it connected; exit 2 with the one line otherwise
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

HOST_ENV = "CHUNKWISE_PG_HOST"
PORT_ENV = "CHUNKWISE_PG_PORT"
USER_ENV = "CHUNKWISE_PG_USER"
PASSWORD_ENV = "CHUNKWISE_PG_PASSWORD"
DB_ENV = "CHUNKWISE_PG_DB"
CONNECT_TIMEOUT_S = 5


class InstanceDatabaseUnreachable(RuntimeError):
    """The instance's PostgreSQL is not configured or does not answer; the message names the variables to fix."""


@dataclass(frozen=True)
class InstanceDatabase:
    """Where the instance's PostgreSQL is, as deploy/dagster-postgres.yaml reads it from the environment."""

    host: str
    port: int
    user: str
    db: str
    password: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InstanceDatabase:
        env = os.environ if environ is None else environ
        # The password may be empty (trust or peer auth) but must be set: Dagster's config refuses an unset one.
        missing = [n for n in (HOST_ENV, PORT_ENV, USER_ENV, PASSWORD_ENV, DB_ENV) if env.get(n) is None]
        if missing:
            raise InstanceDatabaseUnreachable(
                f"the Dagster instance's PostgreSQL is not configured: set {', '.join(missing)} "
                "(deploy/dagster-postgres.yaml reads them; CHUNKWISE_PG_PASSWORD may be empty)"
            )
        port = env[PORT_ENV]
        if not port.isdigit():
            raise InstanceDatabaseUnreachable(f"{PORT_ENV}={port!r} is not a port number")
        return cls(env[HOST_ENV], int(port), env[USER_ENV], env[DB_ENV], env[PASSWORD_ENV])

    def where(self) -> str:
        """`user@host:port/db`, for messages (no password)."""
        return f"{self.user}@{self.host}:{self.port}/{self.db}"


def check_instance_postgres(
    environ: Mapping[str, str] | None = None, timeout_s: int = CONNECT_TIMEOUT_S
) -> InstanceDatabase:
    """Connect once (at most `timeout_s` seconds) to the database CHUNKWISE_PG_* name and run `SELECT 1`.

    Returns where it connected; raises InstanceDatabaseUnreachable, naming the variables, when it cannot."""
    import psycopg2

    db = InstanceDatabase.from_env(environ)
    try:
        connection = psycopg2.connect(
            host=db.host,
            port=db.port,
            user=db.user,
            password=db.password,
            dbname=db.db,
            connect_timeout=timeout_s,
        )
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if db.password:
            reason = reason.replace(db.password, "***")
        # `from None`: the driver's own traceback adds nothing this line does not say.
        raise InstanceDatabaseUnreachable(
            f"the Dagster instance's PostgreSQL at {db.host}:{db.port} ({HOST_ENV}, {PORT_ENV}), database "
            f"{db.db!r} ({DB_ENV}) as {db.user!r} ({USER_ENV}) cannot be reached: {reason}. Start the server or "
            f"fix those variables"
        ) from None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()
    return db


def main() -> int:
    try:
        db = check_instance_postgres()
    except InstanceDatabaseUnreachable as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"the Dagster instance's PostgreSQL answers at {db.where()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
