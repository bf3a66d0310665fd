"""Many processes on one store at once, on SQLite and on PostgreSQL: the same rules hold on both.

Publishers get gapless, distinct version numbers; an alias moving back and forth is never seen pointing at nothing;
eight runs logging at once lose no metric row; nothing reports a locked database.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .conftest import Backend, start_together

BACKENDS = ("sqlite", "postgresql")
PROCESSES, PUBLISHES = 8, 15


def _together(commands: list[tuple[str, list[str]]], backend: Backend) -> list[str]:
    """Run ``(code, argv)`` children on the backend's store, all started together; each one's last stdout line."""
    argv = [[sys.executable, "-c", code, *args] for code, args in commands]
    done = start_together(argv, timeout=300, env=backend.env())
    errors = [err for _, _, err in done]
    assert [code for code, _, _ in done] == [0] * len(commands), errors
    assert not any("locked" in err for err in errors), errors
    return [out.strip().splitlines()[-1] for _, out, _ in done]


# Each child imports, says "ready", waits for the parent's "go" on stdin (so all start together, no sleeps), opens
# the store named by KILN_STORE / KILN_BLOBS, then publishes PUBLISHES times.
PUBLISHER = """
import hashlib, json, sys, tempfile
from kiln.store import Store
worker, count = int(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
store = Store()
published = {}
with tempfile.TemporaryDirectory() as tmp:
    for i in range(count):
        path = f"{tmp}/w.bin"
        data = f"worker {worker} publish {i}".encode()
        with open(path, "wb") as handle:
            handle.write(data)
        version = store.register("shared", {"w.bin": path}, tags={"worker": str(worker)})
        published[version.version] = hashlib.sha256(data).hexdigest()
print(json.dumps(published), flush=True)
"""


def test_concurrent_publishers_get_gapless_versions(backend: Backend) -> None:
    lines = _together([(PUBLISHER, [str(w), str(PUBLISHES)]) for w in range(PROCESSES)], backend)
    published: dict[int, str] = {}
    for line in lines:
        mine = {int(k): v for k, v in json.loads(line).items()}
        assert len(mine) == PUBLISHES
        assert not set(mine) & set(published), "two publishers got the same version"
        published.update(mine)
    assert sorted(published) == list(range(1, PROCESSES * PUBLISHES + 1))

    store = backend.open(create=False)
    versions = store.versions("shared")
    assert [v.version for v in versions] == list(range(1, PROCESSES * PUBLISHES + 1))
    assert all(v.files["w.bin"].sha256 == published[v.version] for v in versions)
    assert store.verify("shared").ok


# One child moves "production" between versions 1 and 2 (promote, roll back, ...); the others resolve it and read
# its file over and over. Every read must find a live version whose bytes verify.
MOVER = """
import sys
from kiln.store import Store
store = Store()
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[1])):
    store.promote("model", 1 + i % 2, "production")
print("moved", flush=True)
"""

READER = """
import json, sys
from kiln.store import Store
store = Store()
print("ready", flush=True)
sys.stdin.readline()
seen = {}
for _ in range(int(sys.argv[1])):
    version = store.version("model@production")
    data = bytes(store.read(version, "w.bin"))
    assert data == f"v{version.version}".encode(), (version.version, data)
    seen[version.version] = seen.get(version.version, 0) + 1
print(json.dumps(seen), flush=True)
"""


def test_alias_moves_are_atomic_for_readers(backend: Backend, tmp_path: Path) -> None:
    store = backend.open()
    for i in (1, 2):
        (tmp_path / "w.bin").write_bytes(f"v{i}".encode())
        store.register("model", {"w.bin": tmp_path / "w.bin"})
    store.promote("model", 1, "production")
    moves, reads = 120, 80
    lines = _together([(MOVER, [str(moves)])] + [(READER, [str(reads)])] * 3, backend)
    assert lines[0] == "moved"
    for line in lines[1:]:
        seen = json.loads(line)
        assert sum(seen.values()) == reads and set(seen) <= {"1", "2"}
    history = store.alias_history("model")
    assert len(history) == moves  # every move but the first (already at 1) is recorded, plus the initial promote
    assert all(m.old_version != m.new_version for m in history)
    assert store.version("model@production").version == 2


# Each child starts a run and logs ROWS rows of two metrics, flushing every 50 rows, then finishes it.
LOGGER = """
import sys
from kiln.store import Store
worker, steps = int(sys.argv[1]), int(sys.argv[2])
store = Store()
print("ready", flush=True)
sys.stdin.readline()
with store.start_run(f"worker-{worker}", flush_rows=50, flush_seconds=1e9) as run:
    for step in range(steps):
        run.log({"loss": worker + step / steps, "acc": step / steps}, step=step)
print(run.id, flush=True)
"""


def test_eight_runs_logging_at_once_lose_nothing(backend: Backend) -> None:
    steps = 300
    ids = _together([(LOGGER, [str(w), str(steps)]) for w in range(8)], backend)
    store = backend.open(create=False)
    for worker, run_id in enumerate(ids):
        info = store.run(run_id)
        assert (info.name, info.status) == (f"worker-{worker}", "finished")
        logged = store.metrics(run_id)
        assert [s for s, _ in logged["loss"]] == list(range(steps)) == [s for s, _ in logged["acc"]]
        assert logged["loss"][-1][1] == worker + (steps - 1) / steps
