"""``kiln store copy``: a whole store SQLite -> PostgreSQL -> SQLite with nothing lost, every blob verified."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from kiln.cli import main
from kiln.errors import IntegrityError, StoreError
from kiln.store import Store
from kiln.store.copy import copy_store

from .conftest import Backend

FIXTURE = Path(__file__).parent / "fixtures" / "store-v2"


def _everything(store: Store) -> dict[str, Any]:
    """What a person can read back from a store, keyed so two stores compare equal when nothing was lost."""
    runs = {r.id: store.run(r.id) for r in store.runs(limit=1000)}
    return {
        "runs": {
            i: (
                r.name,
                r.status,
                r.start_time,
                r.end_time,
                r.params,
                r.tags,
                r.system,
                r.heartbeat,
                r.process,
                r.artifacts,
            )
            for i, r in runs.items()
        },
        "metrics": {
            i: {k: [(s, "nan" if math.isnan(v) else v) for s, v in values] for k, values in store.metrics(i).items()}
            for i in runs
        },
        "models": [(m.name, m.versions, m.latest, m.aliases, m.created) for m in store.models()],
        "versions": {m.name: store.versions(m.name) for m in store.models()},
        "history": {m.name: store.alias_history(m.name) for m in store.models()},
    }


def _source(tmp_path: Path) -> Store:
    shutil.copytree(FIXTURE, tmp_path / "laptop")
    return Store(tmp_path / "laptop", create=False)


@pytest.mark.backends("postgresql")
def test_sqlite_to_postgresql_and_back_loses_nothing(backend: Backend, tmp_path: Path) -> None:
    laptop = _source(tmp_path)
    seen: list[tuple[str, int, int]] = []
    report = copy_store(laptop, backend.reference, blobs=backend.blobs, progress=lambda *p: seen.append(p))
    assert (report.runs, report.models, report.versions, report.aliases, report.alias_moves) == (3, 3, 5, 1, 4)
    assert report.metrics == 11 and report.artifacts == 1 and report.blobs_copied == 7 and report.blobs_present == 0
    assert ("blobs", 7, 7) in seen and ("metric rows", 11, 11) in seen
    team = backend.open(create=False)
    assert _everything(team) == _everything(laptop)
    assert team.verify().ok and team.verify().artifacts == 1
    (tmp_path / "w.bin").write_bytes(b"trained on the team store")
    assert team.register("digits", {"w.bin": tmp_path / "w.bin"}).version == 4  # numbering continues past 3

    back = copy_store(team, tmp_path / "back")
    assert back.versions == 6 and back.blobs_copied == 8
    with Store(tmp_path / "back", create=False) as returned:
        assert _everything(returned) == _everything(team)
        assert returned.verify().ok


def test_a_store_that_is_not_empty_is_refused_unless_forced(tmp_path: Path) -> None:
    laptop = _source(tmp_path)
    copy_store(laptop, tmp_path / "other")
    with pytest.raises(StoreError, match=r"already holds 3 run\(s\) and 3 model\(s\).*--force"):
        copy_store(laptop, tmp_path / "other")
    with Store(tmp_path / "other") as other:
        other.start_run("only-here").finish()
    report = copy_store(laptop, tmp_path / "other", force=True)
    assert (report.runs, report.models, report.skipped_runs, report.skipped_models) == (0, 0, 3, 3)
    with Store(tmp_path / "other") as other:
        assert len(other.runs()) == 4 and [v.version for v in other.versions("digits")] == [1, 2]
    with pytest.raises(StoreError, match="are the same store"):
        copy_store(laptop, tmp_path / "laptop")


def test_a_damaged_source_blob_stops_the_copy_before_any_row(tmp_path: Path) -> None:
    laptop = _source(tmp_path)
    blob = laptop.blobs.path(laptop.version("digits@2").files["w.bin"].sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="does not match its digest"):
        copy_store(laptop, tmp_path / "copy")
    with Store(tmp_path / "copy") as copy:
        assert copy.runs() == [] and copy.models() == []  # blobs may have arrived; no row refers to them


def test_kiln_store_copy_shows_progress_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(FIXTURE, tmp_path / "laptop")
    assert main(["store", "copy", str(tmp_path / "laptop"), f"sqlite:///{tmp_path}/copy"]) == 0
    captured = capsys.readouterr()
    assert "blobs: 7/7" in captured.err and "metric rows: 11/11" in captured.err
    assert captured.out.startswith(f"copied {tmp_path / 'laptop'} -> {tmp_path / 'copy'}: 3 run(s), 11 metric")
    assert "7 blob(s) copied" in captured.out and "every one verified" in captured.out
    assert main(["store", "copy", str(tmp_path / "laptop"), str(tmp_path / "copy")]) == 2
    assert "already holds" in capsys.readouterr().err
