"""Process liveness: who logs a run, whether that process still lives, and when a silent run counts as stale."""

from __future__ import annotations

import functools
import math
import os
import socket
from collections.abc import Mapping
from typing import Any, Literal

from ..errors import ConfigError

__all__ = [
    "STALE_AFTER_SECONDS",
    "Liveness",
    "check_stale_after",
    "machine_key",
    "process_liveness",
    "running_status",
    "this_process",
]

STALE_AFTER_SECONDS = 1800.0  # a tracked fit writes at least every 30 s while steps run, and at each epoch end
Liveness = Literal["alive", "dead", "unknown"]


def _read_text(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def machine_key() -> str | None:
    """Kernel boot id and pid namespace of this process: two processes with the same key see the same pids.

    None where ``/proc`` does not tell (not Linux): there kiln never judges a pid, only heartbeats.
    """
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}" if boot else None


def _process_start(pid: int) -> int | None:
    """When live process ``pid`` started (clock ticks after boot); None when there is no such process or a zombie."""
    text = _read_text(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    if fields[0] in ("Z", "X", "x"):  # exited, not yet reaped by its parent: dead all the same
        return None
    return int(fields[19])  # field 22 of proc_pid_stat(5); fields[0] is field 3


def this_process() -> dict[str, Any]:
    """Who logs a run: host name, :func:`machine_key`, pid and the process's start time (a reused pid differs)."""
    pid = os.getpid()
    key = machine_key()
    return {
        "host": socket.gethostname(),
        "machine": key,
        "pid": pid,
        "started": _process_start(pid) if key is not None else None,
    }


def process_liveness(process: Mapping[str, Any] | None) -> Liveness:
    """Whether ``process`` (a :func:`this_process` record) is "alive" or "dead", or "unknown" if not checkable here."""
    if not isinstance(process, Mapping):
        return "unknown"
    pid, started, key = process.get("pid"), process.get("started"), process.get("machine")
    if not isinstance(pid, int) or not isinstance(started, int) or key is None:
        return "unknown"
    if key != machine_key() or process.get("host") != socket.gethostname():
        return "unknown"
    try:
        now_started = _process_start(pid)
    except (IndexError, ValueError):  # a /proc entry kiln cannot parse: do not guess
        return "unknown"
    return "alive" if now_started == started else "dead"


def running_status(
    process: Mapping[str, Any] | None, *, last_write: float, now: float, stale_after: float = STALE_AFTER_SECONDS
) -> Literal["running", "killed", "stale"]:
    """What a run recorded "running" really is, given its ``process`` record and the time of its ``last_write``.

    A process checkable from here decides: "killed" once it is gone, else "running" however long it has been
    silent. Otherwise (another machine, no /proc, no record) the run is "stale" once silent for more than
    ``stale_after`` seconds: unknown, perhaps dead.

    Example:
        >>> running_status({"host": "gpu-node-7", "pid": 4242}, last_write=0.0, now=3600.0)
        'stale'
    """
    liveness = process_liveness(process)
    if liveness != "unknown":
        return "running" if liveness == "alive" else "killed"
    return "stale" if now - last_write > stale_after else "running"


def check_stale_after(seconds: float) -> float:
    """``seconds`` if it is a usable ``stale_after`` (a positive, finite number), else ConfigError."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < math.inf:
        raise ConfigError(f"stale_after must be a positive number of seconds (e.g. 1800); got {seconds!r}.")
    return seconds
