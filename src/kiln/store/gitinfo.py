"""The git commit a run's code comes from, and whether its work tree differs from it, cheaply.

:func:`git_commit` reads the commit from the repository's files (``HEAD``, the loose ref it names, else
``packed-refs``; worktrees and ``.git`` files included), so it starts no process; only the dirty check runs git, once
(``git diff --quiet HEAD``, which, unlike ``git diff-index``, does not take a file whose timestamp alone changed for
a modified one, and costs about half of ``git status``). Anything the file reader does not know for certain (a reftable
repository, ``GIT_DIR`` and the other variables that move the repository, an odd ref) is left to ``git rev-parse``.

Checking the work tree costs a process start per run. A tuning study starts a run per trial from code it imported once,
so it checks once, at its start, and its runs record that state marked ``"checked": "study start"`` (inside
:func:`recorded_git`, :func:`run_git` returns it) instead of checking again for every trial.
"""

from __future__ import annotations

import contextvars
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["git_commit", "head_commit", "recorded_git", "run_git"]

_HASH = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")  # SHA-1, or SHA-256 in a repository that uses it
_REF = re.compile(r"refs/[A-Za-z0-9._/-]+")
# Variables with which the user moves or bounds the repository git would find; with any of them set, git decides.
_GIT_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_CEILING_DIRECTORIES",
                  "GIT_DISCOVERY_ACROSS_FILESYSTEM", "GIT_OBJECT_DIRECTORY")  # fmt: skip
_TIMEOUT_S = 5
_recorded: contextvars.ContextVar[tuple[dict[str, Any] | None] | None] = contextvars.ContextVar(
    "kiln_recorded_git", default=None
)


class _Unsure(Exception):
    """The files do not settle it; ask git."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="strict").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise _Unsure from error


def _git_dir(start: Path) -> Path | None:
    """The git directory of the work tree holding ``start``, found as git finds it; None outside any."""
    try:
        device = start.stat().st_dev
    except OSError as error:
        raise _Unsure from error
    for directory in (start, *start.parents):
        try:
            if directory.stat().st_dev != device:
                return None  # git does not cross a file system boundary looking for a repository
        except OSError as error:
            raise _Unsure from error
        dot_git = directory / ".git"
        if dot_git.is_dir():
            if (dot_git / "HEAD").is_file():
                return dot_git
            continue  # not a repository (git skips it too)
        if dot_git.is_file():  # a worktree or a submodule: "gitdir: <path>"
            text = _read(dot_git) or ""
            if not text.startswith("gitdir:"):
                raise _Unsure
            return (directory / text.removeprefix("gitdir:").strip()).resolve()
    return None


def _packed(common: Path, ref: str) -> str | None:
    text = _read(common / "packed-refs")
    for line in (text or "").splitlines():
        if line.startswith(("#", "^")):
            continue  # the header, and the peeled commit of the annotated tag above
        value, _, name = line.partition(" ")
        if name == ref:
            return value
    return None


def _resolve(git_dir: Path) -> str | None:
    """The commit HEAD names (None on a branch with no commit yet is left to git: raises _Unsure)."""
    common_text = _read(git_dir / "commondir")  # a linked worktree shares branches with its main repository
    common = (git_dir / common_text).resolve() if common_text else git_dir
    if (common / "reftable").exists():
        raise _Unsure  # refs in reftable files (git 2.45's --ref-format=reftable): only git reads them
    value = _read(git_dir / "HEAD")
    for _ in range(5):  # HEAD -> refs/heads/main (-> a symbolic ref, rarely) -> a commit
        if value is None:
            raise _Unsure  # a branch without commits, or a ref we could not find: git settles it
        if _HASH.fullmatch(value):
            return value
        ref = value.removeprefix("ref:").strip() if value.startswith("ref:") else ""
        if not _REF.fullmatch(ref) or ".." in ref.split("/"):
            raise _Unsure
        value = _read(git_dir / ref)
        if value is None and common != git_dir:
            value = _read(common / ref)
        if value is None:
            value = _packed(common, ref)
    raise _Unsure


def _git(directory: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    # GIT_OPTIONAL_LOCKS=0: a look at the tree, so never take the index lock a git command of the user may want.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=_TIMEOUT_S,
                              env=env)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def head_commit(directory: str | os.PathLike[str] | None = None) -> str | None:
    """The commit checked out in the work tree holding ``directory`` (default: cwd); None outside git.

    Read from the repository's files; git itself answers only where they do not settle it.
    """
    start = Path(directory if directory is not None else os.getcwd()).resolve()
    if not any(os.environ.get(name) for name in _GIT_VARIABLES):
        try:
            git_dir = _git_dir(start)
            return None if git_dir is None else _resolve(git_dir)
        except _Unsure:
            pass
    done = _git(start, "rev-parse", "--verify", "--quiet", "HEAD")
    commit = done.stdout.strip() if done is not None and done.returncode == 0 else ""
    return commit if _HASH.fullmatch(commit) else None


def git_commit(directory: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """``{"commit": ..., "dirty": ...}`` for the work tree holding ``directory`` (default: cwd), None outside git.

    ``dirty`` is True when a tracked file differs from the commit (staged or not; untracked files do not count), and
    None when git could not tell (git not installed, a repository it refuses to read).

    Example:
        >>> git_commit()
        {'commit': '3f3d0e2c...', 'dirty': False}
    """
    commit = head_commit(directory)
    if commit is None:
        return None
    start = Path(directory if directory is not None else os.getcwd())
    done = _git(start, "diff", "--no-ext-diff", "--quiet", "HEAD", "--")
    dirty = None if done is None or done.returncode not in (0, 1) else done.returncode == 1
    return {"commit": commit, "dirty": dirty}


def run_git() -> dict[str, Any] | None:
    """What a run starting now records as its ``git``: the state :func:`recorded_git` holds, else a fresh check."""
    recorded = _recorded.get()
    return git_commit() if recorded is None else recorded[0]


@contextmanager
def recorded_git(state: dict[str, Any] | None) -> Iterator[None]:
    """Runs started inside the block record ``state`` (from :func:`git_commit`, checked once) instead of checking.

    For many runs of code imported once, such as a tuning study's trials: what they run is what was there when it
    was imported. Mark ``state`` with when it was checked (``{**state, "checked": "study start"}``).

    Example:
        >>> state = git_commit()
        >>> with recorded_git(state and {**state, "checked": "study start"}):
        ...     study.optimize(objective, n_trials=50)  # every trial's run: {"commit", "dirty", "checked"}
    """
    token = _recorded.set((state,))
    try:
        yield
    finally:
        _recorded.reset(token)
