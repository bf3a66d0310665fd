"""Fixtures for store tests: a fresh store on each backend, a subprocess runner and a snapshot of a directory tree.

A test module that sets ``BACKENDS = ("sqlite", "postgresql")`` runs each of its tests that use ``backend`` (or
``store``) on both: the embedded SQLite store, and a fresh database on a throwaway PostgreSQL cluster that the test
session starts once (tests/store/postgres.py). Every other module runs on SQLite alone. Deselect the PostgreSQL half
with ``-m "not postgres"``; ``@pytest.mark.backends("postgresql")`` picks the backends of one test.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kiln.store import Store

from . import postgres

RunPython = Callable[..., subprocess.CompletedProcess]


def start_together(
    commands: list[list[str]], *, timeout: float, env: dict[str, str] | None = None
) -> list[tuple[int, str, str]]:
    """Start every command, wait until each printed "ready", then send all of them "go" at once (no sleeps).

    The children must print "ready" and read one line from stdin before their racing part. Returns each child's
    (returncode, stdout, stderr) once they have all finished. ``env`` adds to this process's environment.
    """
    children = [
        subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for command in commands
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = [child.communicate(timeout=timeout) for child in children]
    return [(child.returncode, out, err) for child, (out, err) in zip(children, results, strict=True)]


@dataclass
class Backend:
    """Where one test's store lives: ``reference`` (a directory or a URL) and ``blobs`` (None: the default)."""

    name: str
    reference: str
    blobs: str | None = None
    cluster: postgres.Cluster | None = None
    opened: list[Store] = field(default_factory=list)

    def open(self, **options: object) -> Store:
        store = Store(self.reference, blobs=self.blobs, **options)  # type: ignore[arg-type]
        self.opened.append(store)
        return store

    def env(self) -> dict[str, str]:
        """Environment variables that make ``Store()`` in a child process open this store."""
        return {"KILN_STORE": self.reference, "KILN_BLOBS": self.blobs or ""}

    def empty(self, tmp_path: Path) -> Backend:
        """Another store on this backend that does not exist yet: an empty database, or a new directory."""
        if self.cluster is None:
            return Backend(self.name, str(tmp_path / "empty-store"))
        database = self.cluster.create_database()
        return Backend(self.name, self.cluster.url(database), self.blobs, self.cluster, self.opened)

    def args(self) -> list[str]:
        """Command-line options that name this store."""
        return ["--store", self.reference, *(["--blobs", self.blobs] if self.blobs else [])]


@pytest.fixture(autouse=True)
def _no_store_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests name their stores; a developer's KILN_STORE / KILN_BLOBS (or a CLI test's --blobs) must not leak in."""
    for name in ("KILN_STORE", "KILN_BLOBS"):
        monkeypatch.setenv(name, "")  # records the original value, restored after the test
        monkeypatch.delenv(name)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        names = marker.args if marker is not None else getattr(metafunc.module, "BACKENDS", ("sqlite",))
        params = [pytest.param(n, marks=[pytest.mark.postgres] if n == "postgresql" else []) for n in names]
        metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    """A PostgreSQL 15 cluster for the whole session (stopped and removed at its end, whatever happened)."""
    if not postgres.available():
        message = f"PostgreSQL 15 is not installed ({postgres.BIN}); scripts/setup.sh installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = postgres.Cluster()
    try:
        template = cluster.create_database()
        Store(cluster.url(template), blobs=cluster.directory / "template-blobs").close()  # the tables, once
        cluster.store_template = template
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        chosen = Backend("sqlite", str(tmp_path / "store"))
    else:
        cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
        database = cluster.create_database(template=cluster.store_template)  # a store at the head revision
        chosen = Backend("postgresql", cluster.url(database), str(tmp_path / "blobs"), cluster)
    yield chosen
    for store in chosen.opened:
        store.close()
    if chosen.cluster is not None:
        chosen.cluster.drop_database(chosen.reference.rsplit("/", 1)[1])


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


@pytest.fixture
def run_python() -> RunPython:
    """Run code in a fresh interpreter (a real subprocess); returns the CompletedProcess."""

    def run(code: str, *, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    return run


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, str]]:
    """Every path under a root with a hash of its content. SQLite's shared-memory index (``-shm``) is left out:
    readers update its read marks, and it holds no data."""

    def take(root: Path) -> dict[str, str]:
        found: dict[str, str] = {}
        for path in sorted(root.rglob("*")):
            key = str(path.relative_to(root))
            if path.is_dir():
                found[key] = "dir"
            elif not path.name.endswith("-shm"):
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        return found

    return take
