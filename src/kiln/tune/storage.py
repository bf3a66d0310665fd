"""Optuna's RDBStorage on the kiln store's own database, and the recovery of trials whose process died.

Studies live in Optuna's own tables (``studies``, ``trials``, ...) beside kiln's, in the database the store already
has: the SQLite file ``<store>/kiln.db`` (or the store's PostgreSQL database, whatever URL its engine uses). Optuna
writes them; kiln only tunes the SQLite connection the way the store tunes its own (WAL, a busy timeout and
``BEGIN IMMEDIATE``, so that writers queue for the lock instead of failing with "database is locked" when a read
transaction tries to upgrade).

A trial is RUNNING in the database until its process says otherwise. When that process is killed, the trial is
marked failed and a retry of the same parameters queued (Optuna's ``RetryHeartbeatStaleTrialCallback``) by
:func:`fail_dead_trials`, at once, for trials whose process is provably gone (same machine; kiln's process records,
as for runs), and on a database that several machines share (PostgreSQL) also by Optuna's heartbeat, after
``grace`` seconds of silence. An SQLite store lives on one machine, so it needs no heartbeat (a thread and a write
per trial saved).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..store.liveness import process_liveness

if TYPE_CHECKING:
    import optuna

    from ..store import Store

__all__ = ["HEARTBEAT_SECONDS", "MAX_RETRY", "fail_dead_trials", "open_storage", "quiet_optuna", "storage_url"]

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30  # a running trial writes its heartbeat this often
GRACE_SECONDS = 120  # a trial silent this long is stale: failed and retried by the next trial to start
MAX_RETRY = 3  # times one trial's parameters are re-run after its process died
_BUSY_TIMEOUT_S = 60


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning around the heartbeat and retry features kiln relies on."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def storage_url(store: Store) -> str:
    """The SQLAlchemy URL of the store's database, as Optuna should open it."""
    return store.database.engine.url.render_as_string(hide_password=False)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN itself
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # As the store's run metrics: a commit survives the crash of the process (what resume needs); only a power
        # loss can take the last ones back. FULL would fsync on every one of Optuna's many small commits.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(connection: sa.engine.Connection) -> None:
    # Every Optuna session may write after reading; taking the write lock up front means it waits its turn (busy
    # timeout) rather than failing at once when another process wrote since its read snapshot.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_storage(store: Store, *, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS) -> Any:
    """An ``optuna.storages.RDBStorage`` on ``store``'s database (with heartbeats and retries unless SQLite).

    Example:
        >>> storage = open_storage(Store())
        >>> optuna.load_study(study_name="digits", storage=storage).best_params
    """
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = storage_url(store)
    sqlite = url.startswith("sqlite")
    options = {"connect_args": {"timeout": _BUSY_TIMEOUT_S}} if sqlite else {"pool_pre_ping": True}
    beat: dict[str, Any] = {}
    if not sqlite:
        with quiet_optuna():  # the callback is "experimental" in Optuna: a warning on every open, at every user
            retry = RetryHeartbeatStaleTrialCallback(MAX_RETRY)
        beat = {"heartbeat_interval": heartbeat, "grace_period": grace, "heartbeat_stale_trial_callback": retry}
    for attempt in range(5):
        try:
            with quiet_optuna():
                storage = RDBStorage(url, engine_kwargs=options, **beat)
            break
        except (sa.exc.OperationalError, sa.exc.IntegrityError):
            # Several processes opening a fresh store at once race to create Optuna's tables and version rows;
            # the loser finds them there on its next try.
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))  # backoff before a retry, not synchronisation
    if sqlite:
        sa.event.listen(storage.engine, "connect", _sqlite_connect)
        sa.event.listen(storage.engine, "begin", _sqlite_begin)
        storage.engine.dispose()  # connections opened while creating the tables lack the settings above
    return storage


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark failed the RUNNING trials whose process is provably gone, and queue each one's retry; their numbers.

    A trial's process is the ``kiln_process`` user attribute its worker records when the trial starts. Trials of
    processes that cannot be checked from here (another machine) are left to Optuna's heartbeat.
    """
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if process_liveness(trial.user_attrs.get("kiln_process")) != "dead":
            continue
        try:
            frozen = study.tell(trial.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another process failed it first (the write is serialised)
            continue
        with quiet_optuna():
            RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)
        failed.append(trial.number)
    if failed:
        logger.warning(
            "trial(s) %s of study %r were running in a process that is gone: marked failed, and queued "
            "to run again with the same parameters",
            ", ".join(map(str, failed)),
            study.study_name,
        )
    return failed
