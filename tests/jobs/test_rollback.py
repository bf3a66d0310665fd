"""`kiln models rollback NAME`: the alias goes back to its previous holder, fast, and the history shows it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.errors import NotFoundError, StoreError
from kiln.jobs.rollback import rollback
from kiln.store import Store


@pytest.fixture
def three(tmp_path: Path, store: Store) -> Store:
    """digits@1..3 with production promoted 1 -> 2 -> 3, and staging at 1."""
    for i in range(3):
        (tmp_path / "w.bin").write_bytes(f"weights {i}".encode())
        store.register("digits", {"w.bin": tmp_path / "w.bin"})
        store.promote("digits", i + 1, "production")
    store.promote("digits", 1, "staging")
    return store


def test_rollback_moves_back_and_the_history_shows_it(
    three: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    started = time.perf_counter()
    done = rollback("digits", store=str(three.path))  # the store opened from its path, as the command does
    elapsed = time.perf_counter() - started
    assert (done.version, done.previous) == (2, 3) and elapsed < 1.0, elapsed
    assert three.version("digits@production").version == 2
    three.promote("digits", 3, "production")  # forward again (3 is pushed back on the stack), then by the command
    assert main(["models", "rollback", "digits", "--store", str(three.path)]) == 0
    assert capsys.readouterr().out == "digits@production -> version 2 (rolled back from 3)\n"
    assert three.version("digits@production").version == 2
    last = three.alias_history("digits")[-1]
    assert (last.alias, last.old_version, last.new_version) == ("production", 3, 2)
    assert main(["models", "show", "digits", "--store", str(three.path)]) == 0
    assert "alias history" in capsys.readouterr().out
    # Rolling back again undoes the promotion before: 2 -> 1, not back to 3.
    assert rollback("digits", store=three).version == 1
    with pytest.raises(
        StoreError, match=r"^digits@production has no earlier holder to roll back to \(its history: 1\)"
    ):
        rollback("digits", store=three)
    assert three.version("digits@production").version == 1  # a refused rollback moves nothing
    assert three.version("digits@staging").version == 1  # other aliases are untouched


def test_rollback_of_another_alias_and_bad_input(three: Store, capsys: pytest.CaptureFixture[str]) -> None:
    three.promote("digits", 3, "staging")
    assert rollback("digits", alias="staging", store=three).version == 1
    assert three.version("digits@production").version == 3
    for args, message in [
        (["digits", "--alias", "canary"], "kiln: error: "),
        (["nothing"], "kiln: error: "),
        (["../x"], "kiln: error: invalid model name '../x'"),
    ]:
        assert main(["models", "rollback", *args, "--store", str(three.path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    before = three.alias_history("digits")
    three.delete("digits@2", force=False)
    with pytest.raises(StoreError, match=r"cannot roll digits@production back to version 2: that version was deleted"):
        rollback("digits", store=three)
    assert three.alias_history("digits") == before and three.version("digits@production").version == 3
    with pytest.raises(NotFoundError):
        rollback("digits", alias="canary", store=three)
