"""The git commit and dirty flag runs record, read in real temporary repositories and checked against git itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.store import Store
from kiln.store.gitinfo import git_commit, head_commit, recorded_git

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git to build the repositories")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run([*GIT, "-C", str(repo), *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with two commits on main; model.py is tracked, its tree clean."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "model.py").write_text("width = 16\n")
    git(root, "add", "model.py")
    git(root, "commit", "-qm", "first")
    (root / "model.py").write_text("width = 32\n")
    git(root, "commit", "-qam", "second")
    return root


@pytest.fixture
def no_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH without git on it."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_a_clean_tree_records_its_commit(repo: Path) -> None:
    assert git_commit(repo) == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    (repo / "sub").mkdir()
    assert git_commit(repo / "sub") == git_commit(repo)  # from below the top, as git finds it


def test_a_changed_or_staged_file_makes_it_dirty_an_untracked_or_touched_one_does_not(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    (repo / "notes.txt").write_text("untracked\n")
    assert git_commit(repo) == {"commit": head, "dirty": False}
    stamp = (repo / "model.py").stat().st_mtime_ns + 5_000_000_000
    os.utime(repo / "model.py", ns=(stamp, stamp))  # same content, another timestamp: not a change
    assert git_commit(repo) == {"commit": head, "dirty": False}
    (repo / "model.py").write_text("width = 64\n")
    assert git_commit(repo) == {"commit": head, "dirty": True}
    git(repo, "add", "model.py")  # staged, the work tree now equal to the index
    assert git_commit(repo) == {"commit": head, "dirty": True}


def test_detached_head_and_packed_refs(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = git(repo, "rev-parse", "HEAD~1"), git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "--detach", "HEAD~1")
    assert git_commit(repo) == {"commit": first, "dirty": False}
    git(repo, "checkout", "-q", "main")
    git(repo, "tag", "-a", "v1", "-m", "annotated")  # packed-refs then holds a peeled line too
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert git_commit(repo) == {"commit": second, "dirty": False}
    monkeypatch.setenv("PATH", "")  # read from the files alone, git could not answer
    assert head_commit(repo) == second


def test_a_linked_worktree_reads_its_own_head(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    main, side = git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "HEAD~1")
    git(repo, "worktree", "add", "-q", "-b", "side", str(other), "HEAD~1")
    assert (other / ".git").is_file()  # "gitdir: .../.git/worktrees/other"
    assert git_commit(other) == {"commit": side, "dirty": False}
    (other / "model.py").write_text("width = 8\n")
    assert git_commit(other) == {"commit": side, "dirty": True}
    monkeypatch.setenv("PATH", "")  # read from the files alone
    assert head_commit(repo) == main and head_commit(other) == side


def test_not_a_repository_or_no_commit_yet(tmp_path: Path, repo: Path) -> None:
    assert git_commit(tmp_path) is None  # tmp_path holds repo/ but is not in one
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    git(fresh, "init", "-q")
    assert git_commit(fresh) is None  # HEAD names a branch that has no commit yet


def test_without_git_on_path_the_commit_is_still_read_and_dirty_is_unknown(
    repo: Path, tmp_path: Path, no_git: None
) -> None:
    assert shutil.which("git") is None
    head = (repo / ".git" / "refs" / "heads" / "main").read_text().strip()
    assert git_commit(repo) == {"commit": head, "dirty": None}
    assert git_commit(tmp_path) is None


def test_git_dir_in_the_environment_is_left_to_git(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    assert head_commit(elsewhere) == git(repo, "rev-parse", "HEAD")


def test_runs_record_git_and_a_study_records_its_start(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    head = git(repo, "rev-parse", "HEAD")
    store = Store(tmp_path / "store")
    with store.start_run("plain") as run:
        pass
    assert store.run(run.id).system["git"] == {"commit": head, "dirty": False}
    state = git_commit()
    assert state is not None
    with recorded_git({**state, "checked": "study start"}):
        (repo / "model.py").write_text("width = 128\n")  # not checked again inside: the study's code is loaded
        with store.start_run("trial") as run:
            pass
    assert store.run(run.id).system["git"] == {"commit": head, "dirty": False, "checked": "study start"}
    with store.start_run("after") as run:  # outside the block each run checks again
        pass
    assert store.run(run.id).system["git"] == {"commit": head, "dirty": True}
    store.close()
