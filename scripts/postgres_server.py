"""A throwaway PostgreSQL server for the tests and benchmarks that need a real one (issue #14), from the Debian
package `postgresql` (tests/postgres/install_postgres.sh installs it when missing; `make test` runs that).

`PostgresServer().start()` runs `initdb` into a new folder under /tmp (or `folder`) and starts `postgres` on a free loopback port, with
trust authentication for one role (`chunkwise`) and its socket inside `folder`; `.dsn(db)` is a libpq URL,
`.create_database(name)` a fresh database, `.stop()` a fast shutdown. PostgreSQL refuses to run as root, so as
root the server runs as the package's `postgres` user (`runuser`) and its folder is handed to it (a `folder`
given as root must be reachable by that user).

    .venv/bin/python -m scripts.postgres_server [--folder DIR] [--port N]   # a server for a manual try; Ctrl-C stops

`fast=True` (the tests' choice) turns off fsync and synchronous commit: a test's data need not survive a power
cut, and a commit then costs no disk flush. Benchmarks keep the durable defaults.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROLE = "chunkwise"
START_TIMEOUT_S = 60.0


class PostgresError(RuntimeError):
    """The server could not be set up or started; the message says what to install or look at."""


def server_bin(name: str) -> str:
    """The newest installed PostgreSQL's `name` binary (Debian keeps them under /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise PostgresError(
        f"no PostgreSQL `{name}` found (looked in /usr/lib/postgresql/*/bin and PATH): run "
        "tests/postgres/install_postgres.sh (as root; `make test` does) or `apt-get install -y postgresql`"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in `folder`, started on a free port (see the module docstring)."""

    def __init__(self, folder: Path | None = None, *, port: int | None = None, fast: bool = True) -> None:
        # None: a new folder under /tmp (which the `postgres` user can reach; a test's own tmp folder is private
        # to root), removed by stop().
        self._own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="chunkwise-pg-")) if folder is None else Path(folder)
        self.data = self.folder / "data"
        self.port = port or free_port()
        self.fast = fast
        self._as_root = os.geteuid() == 0

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> PostgresServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(self.folder, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run(
                [server_bin("initdb"), "-D", str(self.data), "-U", ROLE, "-A", "trust", "-E", "UTF8",
                 "--no-instructions"],
                "initdb",
            )  # fmt: skip
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if self.fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            [server_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options,
             "-w", "-t", str(int(START_TIMEOUT_S)), "start"],
            "pg_ctl start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([server_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], "pg_ctl stop")
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- use ----------------------------------------------------------------------------------------------
    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database `name` (dropped first if there); its DSN."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}"')
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                server_bin("psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(database),
                "-c",
                sql,
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise PostgresError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, argv: list[str], what: str) -> None:
        if self._as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S + 30)
        if result.returncode != 0:
            raise PostgresError(
                f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}\n"
                f"server log: {self.log()[-2000:]}"
            )


def wait_for(server: PostgresServer, timeout_s: float = 30.0) -> None:
    """Until `server` answers a query (pg_ctl -w already waits; this is for a server started elsewhere)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            server.psql("SELECT 1")
            return
        except PostgresError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--folder", default=".chunkwise/postgres", help="cluster folder (kept between starts)"
    )
    parser.add_argument("--port", type=int, default=55432)
    args = parser.parse_args(argv)
    server = PostgresServer(Path(args.folder).resolve(), port=args.port, fast=False).start()
    print(f"PostgreSQL up: {server.dsn()} (Ctrl-C stops it)", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
