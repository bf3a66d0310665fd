"""SIGKILL a real publishing (or deleting) process at every step: afterwards the version is whole or absent."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from kiln.store import Store
from kiln.store.faults import CRASH_POINTS

CHILD_PUBLISH = """
from kiln.store import Store
store = Store({root!r})
store.register("model", {{"a.bin": {a!r}, "b.json": {b!r}}}, metrics={{"acc": 0.5}})
"""

CHILD_DELETE = """
from kiln.store import Store
Store({root!r}).delete("model@2")
"""


def _files(tmp_path: Path, tag: str) -> tuple[Path, Path]:
    a, b = tmp_path / f"a-{tag}.bin", tmp_path / f"b-{tag}.json"
    a.write_bytes(f"weights {tag} ".encode() * 1000)
    b.write_text(f'{{"tag": "{tag}"}}')
    return a, b


def _publish(store: Store, tmp_path: Path, tag: str) -> int:
    a, b = _files(tmp_path, tag)
    return store.register("model", {"a.bin": a, "b.json": b}).version


PUBLISH_POINTS = [p for p in CRASH_POINTS if p.split(":")[0] in ("blob", "publish")]


@pytest.mark.parametrize("point", PUBLISH_POINTS)
def test_publish_killed_at_each_step_leaves_version_whole_or_absent(point: str, tmp_path: Path, run_python) -> None:
    root = tmp_path / "store"
    with Store(root) as store:
        assert _publish(store, tmp_path, "first") == 1
    a, b = _files(tmp_path, "second")
    done = run_python(CHILD_PUBLISH.format(root=str(root), a=str(a), b=str(b)), env={"KILN_DEBUG_CRASH_AT": point})
    assert done.returncode == -signal.SIGKILL, done.stderr

    with Store(root, create=False) as store:
        numbers = [v.version for v in store.versions("model")]
        # Only a crash after COMMIT leaves the new version; every earlier point leaves it absent.
        assert numbers == ([1, 2] if point == "publish:committed" else [1])
        report = store.verify()
        assert report.ok, report.problems
        if numbers == [1, 2]:
            assert bytes(store.read("model@2", "a.bin")) == a.read_bytes()
            assert bytes(store.read("model@2", "b.json")) == b.read_bytes()
        # The next publish takes the next number: no gap, no reuse.
        assert _publish(store, tmp_path, "third") == numbers[-1] + 1
        # What a crash leaves behind is never under a blob name of a live version: temp files not yet renamed,
        # and blobs no row references. gc sweeps exactly those.
        stray = {"blob:written": (0, 2), "blob:renamed": (1, 1), "publish:locked": (2, 0), "publish:inserted": (2, 0)}
        report = store.gc(grace_seconds=0)
        assert (report.blobs, report.temp_files) == stray.get(point, (0, 0))
        assert store.verify().ok
        assert len(store.versions("model")) == len(numbers) + 1


@pytest.mark.parametrize("point", ["delete:committed", "delete:unlinking"])
def test_delete_killed_midway_leaves_store_consistent(point: str, tmp_path: Path, run_python) -> None:
    root = tmp_path / "store"
    with Store(root) as store:
        _publish(store, tmp_path, "one")
        _publish(store, tmp_path, "two")
    done = run_python(CHILD_DELETE.format(root=str(root)), env={"KILN_DEBUG_CRASH_AT": point})
    assert done.returncode == -signal.SIGKILL, done.stderr

    with Store(root, create=False) as store:
        assert [v.version for v in store.versions("model")] == [1]
        assert store.verify().ok
        # Blobs the crash left behind are unreferenced; gc removes them and nothing live is lost.
        before = len(list(store.blobs.blobs()))
        removed = store.gc(grace_seconds=0).blobs
        assert len(list(store.blobs.blobs())) == before - removed == 2
        assert store.verify().ok
        assert _publish(store, tmp_path, "three") == 3
