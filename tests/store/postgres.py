"""A throwaway PostgreSQL 15 cluster for the tests: initdb in a temp dir, a free port, stopped at the end.

initdb refuses to run as root, so as root the server runs as the ``postgres`` user (``runuser``) in a directory it
owns; as anyone else it runs as that user. The server listens on 127.0.0.1 and on a unix socket in its directory,
takes passwords over TCP (scram-sha-256, so wrong credentials are refused as on a real server) and trusts the socket.
Durability settings are relaxed (fsync off) unless ``durable``: the tests kill processes, never the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

BIN = Path(os.environ.get("KILN_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER, PASSWORD = "kiln", "s3cret-pw-4242"


def available() -> bool:
    return (BIN / "initdb").exists() and (BIN / "pg_ctl").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """One running server; ``url(database)`` names a database on it, ``create_database()`` makes a fresh one."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable  # fsync and synchronous commits on, as a real server runs (the benchmark uses it)
        self.as_root = os.geteuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = free_port()
        self.store_template: str | None = None  # a database holding an empty store (conftest makes it)
        if self.as_root:
            shutil.chown(self.directory, "postgres", "postgres")
        (self.directory / "pw").write_text(PASSWORD + "\n")
        if self.as_root:
            shutil.chown(self.directory / "pw", "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={self.directory / 'pw'}",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")  # fmt: skip
        self.start()
        self._admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def _pg(self, tool: str, *args: str) -> None:
        command = [str(BIN / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.directory)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{log[-2000:]}")

    def _options(self) -> str:
        relaxed = "" if self.durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        return f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 {relaxed}-c max_connections=200"

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-m", "fast", "-w",
                 "restart")  # fmt: skip

    def url(self, database: str, *, password: str | None = PASSWORD, user: str = USER) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, *, template: str | None = None) -> str:
        """A new database: empty, or a copy of ``template`` (much faster than creating a store's tables anew)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        like = f' TEMPLATE "{template}"' if template else ""
        with self._admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"{like}')
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(Exception), self._admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self._admin.dispose()
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
