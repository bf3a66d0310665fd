"""Fixtures for store tests: a fresh store, a subprocess runner and a snapshot of a directory tree."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.store import Store

RunPython = Callable[..., subprocess.CompletedProcess]


def start_together(commands: list[list[str]], *, timeout: float) -> list[tuple[int, str, str]]:
    """Start every command, wait until each printed "ready", then send all of them "go" at once (no sleeps).

    The children must print "ready" and read one line from stdin before their racing part. Returns each child's
    (returncode, stdout, stderr) once they have all finished.
    """
    children = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=os.environ.copy())
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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store")
    yield opened
    opened.close()


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
