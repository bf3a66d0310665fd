"""Worker processes: forked copies of the tuner, each running its share of the trials against the shared store.

The objective is a Python function already in memory, so workers are forked (nothing is pickled or imported by
name). Before forking, the parent closes its database connections; each worker opens its own store and Optuna
storage, reseeds its sampler and runs ``study.optimize`` for its share. The first worker starts alone: only once it
has checked the study's metric against its first trial's logs do the others start, so a wrong metric costs one
failed trial, not one per worker. A worker dies with its parent (Linux ``PR_SET_PDEATHSIG``), so killing the tuner
stops the whole study; the trials that were running are then recovered by :func:`kiln.tune.storage.fail_dead_trials`.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from ..errors import KilnError

__all__ = ["WorkerFailed", "run_workers", "shares"]

logger = logging.getLogger(__name__)

_READY = b"ready"


class WorkerFailed(KilnError):
    """A worker process ended with an error (its message is in the failed trial's ``kiln_error`` attribute)."""


@dataclass(frozen=True)
class Work:
    """What one worker does: ``run(index, trials, on_ready)``; ``on_ready`` is called once the metric is checked."""

    run: Callable[[int, int, Callable[[], None]], None]
    threads: int


def shares(trials: int, workers: int) -> list[int]:
    """``trials`` split as evenly as possible over at most ``workers`` workers (none gets zero)."""
    count = min(trials, workers)
    return [trials // count + (1 if i < trials % count else 0) for i in range(count)]


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills this process when its parent dies


def _child(work: Work, index: int, trials: int, ready: Connection) -> None:
    _die_with_parent()
    import torch

    torch.set_num_threads(work.threads)
    signalled = False

    def on_ready() -> None:
        nonlocal signalled
        if not signalled:
            signalled = True
            ready.send_bytes(_READY)

    try:
        work.run(index, trials, on_ready)
    except BaseException as error:
        print(f"kiln tune: worker {index} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.stderr.flush()
        os._exit(1)
    on_ready()  # a worker whose trials were all pruned or failed before the check still lets the others start
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_workers(work: Work, trials: int, workers: int, *, before_fork: Callable[[], None]) -> None:
    """Run ``trials`` over ``workers`` forked processes; raises WorkerFailed when one of them fails."""
    context = multiprocessing.get_context("fork")
    plan = shares(trials, workers)
    before_fork()
    processes: list[Any] = []
    pipes: list[Connection] = []
    for index, count in enumerate(plan):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(work, index, count, send), name=f"kiln-tune-{index}",
                                  daemon=False)  # fmt: skip
        processes.append(process)
        pipes.append(receive)
        if index == 0:
            process.start()
            send.close()
            if not _wait_ready(process, receive):
                break  # the first worker failed its first trial: the others would fail the same way
        else:
            process.start()
            send.close()
    failed = _join(processes)
    for pipe in pipes:
        pipe.close()
    if failed is not None:
        raise WorkerFailed(f"worker process {failed} failed; the other workers were stopped")


def _wait_ready(process: Any, pipe: Connection) -> bool:
    """Block until the first worker has checked the metric (True) or has ended (True when it ended well)."""
    while True:
        ready = wait([pipe, process.sentinel])
        if pipe in ready:
            try:
                if pipe.recv_bytes() == _READY:
                    return True
            except EOFError:
                pass
        if process.sentinel in ready or not process.is_alive():
            process.join()
            return process.exitcode == 0


def _join(processes: list[Any]) -> int | None:
    """Wait for every started worker; on the first failure stop the rest (SIGTERM). The first failed one's index."""
    failed: int | None = None
    pending = {p.sentinel: (i, p) for i, p in enumerate(processes) if p.pid is not None}
    while pending:
        for sentinel in wait(list(pending)):
            index, process = pending.pop(sentinel)
            process.join()
            if process.exitcode != 0 and failed is None:
                failed = index
                for _, other in pending.values():
                    other.terminate()
    return failed
