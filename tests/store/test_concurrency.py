"""Many processes publishing to one model at once: versions stay gapless, nothing reports a locked database."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kiln.store import Store

from .conftest import start_together

PROCESSES, PUBLISHES = 8, 50

# Each child imports, says "ready", waits for the parent's "go" on stdin (so all start together, no sleeps), opens
# the store (the first open creates it: the schema migration races too), then publishes PUBLISHES times.
CHILD = """
import hashlib, json, sys, tempfile
from kiln.store import Store
root, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
store = Store(root)
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


def test_concurrent_publishers_get_gapless_versions(tmp_path: Path) -> None:
    root = tmp_path / "store"
    done = start_together(
        [[sys.executable, "-c", CHILD, str(root), str(w), str(PUBLISHES)] for w in range(PROCESSES)], timeout=300
    )
    errors = [err for _, _, err in done]
    assert [code for code, _, _ in done] == [0] * PROCESSES, errors
    assert not any("locked" in err for err in errors), errors

    published: dict[int, str] = {}
    for _, out, _ in done:
        mine = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
        assert len(mine) == PUBLISHES
        assert not set(mine) & set(published), "two publishers got the same version"
        published.update(mine)
    assert sorted(published) == list(range(1, PROCESSES * PUBLISHES + 1))

    store = Store(root, create=False)
    versions = store.versions("shared")
    assert [v.version for v in versions] == list(range(1, PROCESSES * PUBLISHES + 1))
    assert all(v.files["w.bin"].sha256 == published[v.version] for v in versions)
    assert store.verify("shared").ok
