"""Follow an alias: poll the store, load the version it names now in the background, then switch to it at once.

``kiln serve digits@production`` follows the alias by default: promoting a new version (or ``kiln models rollback``)
reaches a running server within ``poll_interval_s`` plus the new version's load time, with no restart and no failed
request. Each poll is one read of the store (:meth:`kiln.store.Store.version`), in a thread of its own. When the
alias names another version, that version is loaded exactly as at startup: every file re-hashed, the same trust
rules (``ServeConfig.trust``, ``KILN_TRUST``), warmed up (or, with ``warmup=False``, checked on one batch) with the
signature's example input; only then does the app switch (see :meth:`KilnApp.switch`).

A version that fails to load (a corrupt blob, an untrusted factory without an ONNX graph, outputs that do not fit
its signature) leaves the old one serving and is logged in one line; it is tried again only once the alias has
named another version (a failure of that kind does not heal by waiting; retrying it every poll would re-hash its
blobs and log the same line every few seconds). A poll that cannot read the store (a database restarting, the
alias removed) is logged once, counted (``kiln_alias_poll_failures_total``) and retried on the next poll; a poll does
not wait for a database that stopped answering (:meth:`kiln.store.database.Database.waiting`), so the warning comes
within one poll interval, and one info line says when the alias can be read again. Predictions never need the
store: the server keeps answering, and stays ready, with the version it has. A load cut short by the database is
not a failed version: it is tried again at the next poll. A new signature is allowed, and logged: requests are
checked against the version that answers them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from ..errors import ConfigError
from .config import ServeConfig
from .metrics import Metrics
from .runtime import LoadedRuntime, load_runtime

__all__ = ["Follower", "follow_reference"]

logger = logging.getLogger(__name__)


def follow_reference(reference: str | os.PathLike[str], follow: bool | None) -> str | None:
    """The store reference a server keeps following, or None when it serves the version it loads first for good.

    ``follow=None`` (the default) follows ``name@alias`` and pins everything else: ``name@3`` is one version, a
    package directory is not in a store, and ``name`` / ``name@latest`` would serve every newly registered version
    before anyone promoted it. ``follow=True`` also follows ``name`` and ``name@latest`` (the newest version).

    Example:
        >>> follow_reference("digits@production", None), follow_reference("digits@3", None)
        ('digits@production', None)
    """
    if follow is False:
        return None
    if isinstance(reference, os.PathLike):
        if follow:
            raise ConfigError(
                f"--follow needs a store reference such as digits@production; {os.fspath(reference)!r} is a package "
                "directory, which has no alias to follow. Drop --follow, or register the package and serve an alias."
            )
        return None
    from ..store import parse_reference  # torch-free, and the store's own reading of a reference

    parsed = parse_reference(reference)
    if parsed.version is not None:
        if follow:
            raise ConfigError(
                f"--follow needs an alias, and {reference!r} names one version, which never moves; serve "
                f"{parsed.name}@ALIAS (e.g. {parsed.name}@production) to follow it, or drop --follow."
            )
        return None
    if parsed.alias is None and not follow:
        return None  # the newest version: followed only when asked
    return reference


class Target(Protocol):
    """What a follower drives: the app (:class:`kiln.serve.KilnApp`)."""

    metrics: Metrics

    @property
    def runtime(self) -> LoadedRuntime | None: ...

    def load_and_warm(self, loader: Any, *, check: bool = False) -> LoadedRuntime: ...

    def switch(self, runtime: LoadedRuntime, *, reason: str) -> None: ...


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _unreachable(error: BaseException) -> bool:
    from ..store.database import DatabaseUnavailable

    return isinstance(error, DatabaseUnavailable)


def _signature(runtime: LoadedRuntime) -> tuple[list[str], list[str]]:
    def described(specs: Any) -> list[str]:
        return [f"{s.name}: {s.describe()}" for s in specs]

    return described(runtime.inputs), described(runtime.outputs)


class Follower:
    """Poll ``reference`` in ``store`` every ``config.poll_interval_s`` seconds and switch the app to what it names.

    Example:
        >>> follower = Follower("digits@production", store=".kiln", config=ServeConfig(poll_interval_s=5))
        >>> task = asyncio.create_task(follower.run(app))    # KilnApp starts it once the first version is ready
    """

    def __init__(self, reference: str, *, store: Any, config: ServeConfig) -> None:
        self.reference = reference
        self.config = config
        self._store_reference = store
        self._store: Any = None
        self._failed: int | None = None  # the version that failed to load, until the alias names another one
        self._problem: str | None = None  # the poll error last logged, so that a lasting one is logged once
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, target: Target) -> None:
        """Poll until cancelled (the app's shutdown cancels it)."""
        logger.info("following %s: polling the store every %g s", self.reference, self.config.poll_interval_s)
        try:
            while True:
                await asyncio.sleep(self.config.poll_interval_s)
                await self.poll(target)
        finally:
            self.close()

    def close(self) -> None:
        """Close the store once the load in progress, if any, has finished; returns at once."""
        if self._executor is not None:
            self._executor.submit(self._close_store)
            self._executor.shutdown(wait=False)
            self._executor = None

    async def poll(self, target: Target) -> None:
        """Read which version the reference names; load and switch to it if it is new and not known to fail."""
        served = target.runtime
        assert served is not None, "a follower starts once the first version serves"
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(self._thread(), self._current_version)
        except Exception as error:
            target.metrics.poll_failures += 1
            self._cannot_read(error, served.reference)
            return
        finally:
            target.metrics.polls += 1
        if self._problem is not None:
            logger.info("%s can be read again: it names version %d", self.reference, version)
            self._problem = None
        if str(version) == served.version or version == self._failed:
            return
        self._failed = None
        candidate = f"{served.name}@{version}"
        loader = functools.partial(self._load, candidate)
        try:
            runtime = await loop.run_in_executor(
                self._thread(), functools.partial(target.load_and_warm, loader, check=True)
            )
        except Exception as error:
            if _unreachable(error):  # the database went away mid-load: nothing wrong with the version
                self._cannot_read(error, served.reference)
                return
            self._failed = version
            target.metrics.switch("failed")
            logger.error("not switching to %s (%s names it now): %s; still serving %s until %s names another "
                         "version", candidate, self.reference, _one_line(error), served.reference,
                         self.reference)  # fmt: skip
            return
        before, after = _signature(served), _signature(runtime)
        if before != after:
            logger.warning("%s changes the signature: inputs %s -> %s, outputs %s -> %s; requests are checked "
                           "against the version that answers them", candidate, before[0], after[0], before[1],
                           after[1])  # fmt: skip
        target.switch(runtime, reason=f"{self.reference} moved")

    def _cannot_read(self, error: BaseException, served: str) -> None:
        """Log a poll's failure once while it lasts (an unreachable database is one problem, whatever it says)."""
        problem = "unreachable" if _unreachable(error) else _one_line(error)
        if problem != self._problem:
            logger.warning("cannot read which version %s names (%s); still serving %s, polling on",
                           self.reference, _one_line(error), served)  # fmt: skip
        self._problem = problem

    def _thread(self) -> ThreadPoolExecutor:
        """The follower's one thread: every store access (a poll, then a load) runs there, one at a time."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-follow")
        return self._executor

    # ---------------------------------------------------------------- in the follower's thread
    def _opened(self) -> Any:
        from ..store import Store

        if self._store is None:
            given = self._store_reference
            self._store = given if isinstance(given, Store) else Store(given, create=False)
        return self._store

    def _current_version(self) -> int:
        store = self._opened()
        with store.database.waiting(0):  # a database that went away: say so now, serve on, ask again next poll
            return int(store.version(self.reference).version)

    def _load(self, reference: str) -> LoadedRuntime:
        config = self.config
        return load_runtime(
            reference, store=self._opened(), runtime=config.runtime, threads=config.intra_op_threads, trust=config.trust
        )

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None and store is not self._store_reference:
            store.close()
