"""`kiln ui` on the command line: what it refuses, in one line each (the served path runs in test_browser.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.store import Store


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["ui", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_a_store_that_does_not_exist(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "no kiln store at" in _error(capsys, "--store", str(tmp_path / "nowhere"))


def test_other_hosts_and_writes_need_a_token(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    Store(tmp_path / "s").close()
    assert "without a token" in _error(capsys, "--store", str(tmp_path / "s"), "--host", "0.0.0.0")
    assert "needs a token" in _error(capsys, "--store", str(tmp_path / "s"), "--allow-writes")
    monkeypatch.delenv("KILN_UI_TEST_TOKEN", raising=False)
    assert "not set or empty" in _error(capsys, "--store", str(tmp_path / "s"), "--token-env", "KILN_UI_TEST_TOKEN")


def test_a_busy_port(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    Store(tmp_path / "s").close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert "pass another --port" in _error(capsys, "--store", str(tmp_path / "s"), "--port", str(port))
