"""``kiln runs`` and ``kiln models``: run through main() and once as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.store import Store


@pytest.fixture
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("COLUMNS", "200")
    store = Store(tmp_path / "store")
    for i in range(3):
        (tmp_path / "w.bin").write_bytes(f"weights {i}".encode())
        store.register(
            "digits", {"w.bin": tmp_path / "w.bin"}, metrics={"val_accuracy": 0.9 + i / 100}, description=f"try {i}"
        )
    with store.start_run("digits-mlp", params={"lr": 0.01}) as run:
        run.log({"loss": 0.25}, step=10)
    store.run_id = run.id  # type: ignore[attr-defined]
    return store


def kiln(*args: str) -> int:
    return main(list(args))


def test_models_list_show_promote(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    where = str(filled.path)
    assert kiln("models", "list", "--store", where) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "│ 3 " in out
    assert kiln("models", "promote", "digits", "2", "production", "--store", where) == 0
    assert "digits@production -> version 2" in capsys.readouterr().out
    assert kiln("models", "promote", "digits", "3", "production", "--store", where) == 0
    assert "(was 2)" in capsys.readouterr().out
    assert kiln("models", "show", "digits", "--store", where) == 0
    out = capsys.readouterr().out
    assert "try 0" in out and "production" in out and "alias history" in out
    assert kiln("models", "show", "digits@production", "--store", where) == 0
    out = capsys.readouterr().out
    assert "digits@3" in out and "w.bin" in out and filled.version("digits@3").files["w.bin"].sha256 in out


def test_models_verify_reports_tampering(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    where = str(filled.path)
    assert kiln("models", "verify", "--store", where) == 0
    assert "ok: 3 files" in capsys.readouterr().out
    blob = filled.blobs.path(filled.version("digits@2").files["w.bin"].sha256)
    blob.chmod(0o644)  # blobs are stored read-only
    blob.write_bytes(b"tampered")
    assert kiln("models", "verify", "--store", where) == 1
    captured = capsys.readouterr()
    assert "digits@2" in captured.out and "w.bin" in captured.out and "1 problem" in captured.err
    assert kiln("models", "verify", "digits@3", "--store", where) == 0


def test_models_delete(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    where = str(filled.path)
    kiln("models", "promote", "digits", "3", "production", "--store", where)
    assert kiln("models", "delete", "digits@3", "--store", where) == 2
    assert "aliased as production" in capsys.readouterr().err
    assert kiln("models", "delete", "digits@3", "--force", "--store", where) == 0
    assert kiln("models", "delete", "digits", "--store", where) == 2
    assert "--all" in capsys.readouterr().err
    assert kiln("models", "delete", "digits", "--all", "--store", where) == 0
    assert "versions [1, 2]" in capsys.readouterr().out
    assert filled.versions("digits") == []


def test_runs_list_and_show(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    where = str(filled.path)
    run_id = filled.run_id  # type: ignore[attr-defined]
    assert kiln("runs", "list", "--store", where) == 0
    out = capsys.readouterr().out
    assert run_id[:12] in out and "digits-mlp" in out and "finished" in out and "loss=0.25" in out
    assert kiln("runs", "show", run_id[:8], "--store", where) == 0
    out = capsys.readouterr().out
    assert run_id in out and "lr" in out and "0.01" in out and "python" in out


def test_errors_are_one_line_and_touch_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kiln("models", "list", "--store", str(tmp_path / "nowhere")) == 2
    assert "no kiln store" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
    Store(tmp_path / "s").close()
    assert kiln("models", "show", "../x", "--store", str(tmp_path / "s")) == 2
    assert "invalid model name '../x'" in capsys.readouterr().err


def test_store_defaults_to_kiln_home(
    filled: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KILN_HOME", str(filled.path))
    assert kiln("models", "list") == 0
    assert "digits" in capsys.readouterr().out


def test_cli_as_a_subprocess(filled: Store) -> None:
    env = {**os.environ, "KILN_HOME": str(filled.path), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "models", "show", "digits"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "try 2" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "models", "verify"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0 and "ok: 3 files" in done.stdout


def _cli(*args: str, store: Store) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILN_HOME": str(store.path), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_store_gc_frees_unreferenced_blobs(filled: Store, tmp_path: Path) -> None:
    (tmp_path / "orphan.bin").write_bytes(b"o" * 4321)
    writer = filled.blobs.put_file(tmp_path / "orphan.bin")  # stored but never referenced
    orphan = filled.blobs.path(writer.commit().sha256)
    writer.release()
    old = time.time() - 7200
    for path in filled.blobs.blobs():
        os.utime(path, (old, old))
    young = filled.blobs.tmp_dir / "blob-young.tmp"  # a write in flight, inside the default grace
    young.write_bytes(b"y" * 100)

    done = _cli("store", "gc", "--dry-run", store=filled)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "would free 1 unreferenced blob(s) and 0 temp file(s): 4321 bytes (0.0 MB)"
    assert orphan.exists()
    done = _cli("store", "gc", store=filled)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "freed 1 unreferenced blob(s) and 0 temp file(s): 4321 bytes (0.0 MB)"
    assert not orphan.exists() and young.exists()
    done = _cli("store", "gc", "--grace", "0", "--store", str(filled.path), store=filled)
    assert done.returncode == 0 and "freed 0 unreferenced blob(s) and 1 temp file(s): 100 bytes" in done.stdout
    assert not young.exists()
    assert _cli("models", "verify", store=filled).returncode == 0  # every live version is whole
    assert filled.run(filled.run_id).status == "finished"  # type: ignore[attr-defined]


def test_store_gc_help_and_errors(filled: Store) -> None:
    done = _cli("store", "gc", "--help", store=filled)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--grace SECONDS" in text and "--dry-run" in text and "no model version and no run artifact" in text
    assert "temp files left by crashed writers" in text and "use 0 only when no process is writing" in text
    done = _cli("store", "gc", "--grace", "-5", store=filled)
    assert done.returncode == 2 and "grace_seconds must be a number >= 0" in done.stderr and "-5" in done.stderr


def test_runs_silent_on_another_machine_are_shown_stale(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.store.liveness import this_process
    from kiln.store.schema import runs

    run = filled.start_run("remote")
    away = {**this_process(), "host": "gpu-node-7", "machine": "another-boot/pid:[1]", "pid": 4242}
    update = runs.update().where(runs.c.id == run.id).values(process=away, heartbeat=time.time() - 7200)
    filled.database.write(lambda connection: connection.execute(update))
    where = str(filled.path)
    assert kiln("runs", "list", "--status", "stale", "--store", where) == 0
    out = capsys.readouterr().out
    assert run.id[:12] in out and "stale" in out and filled.run_id[:12] not in out  # type: ignore[attr-defined]
    assert kiln("runs", "show", run.id, "--store", where) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "stale (recorded running, but its process cannot be checked from here" in out
    assert "pid 4242 on gpu-node-7" in out
