"""Process liveness: this process's record, alive / dead / unknown, the stale rule."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from kiln.errors import ConfigError
from kiln.store.liveness import (
    STALE_AFTER_SECONDS,
    check_stale_after,
    machine_key,
    process_liveness,
    running_status,
    this_process,
)

linux_only = pytest.mark.skipif(machine_key() is None, reason="pids are judged only where /proc tells (Linux)")
ELSEWHERE = {"host": "gpu-node-7", "machine": "another-boot/pid:[1]", "pid": 4242, "started": 1}

RECORD_CHILD = """
import json, sys
from kiln.store.liveness import this_process
print(json.dumps(this_process()), flush=True)
sys.stdin.read()
"""


@linux_only
def test_a_process_is_alive_then_dead_as_a_zombie_and_once_reaped() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", RECORD_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        record = json.loads(child.stdout.readline())
        assert record["pid"] == child.pid and process_liveness(record) == "alive"
        child.stdin.close()  # the child exits
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited but not reaped: a zombie
        assert process_liveness(record) == "dead"
    assert child.returncode == 0 and process_liveness(record) == "dead"  # reaped: the pid is gone


@pytest.mark.parametrize(
    "process",
    [
        None,  # a run from before schema 2
        {},
        {**this_process(), "started": None},  # recorded where /proc does not tell
        {**this_process(), "machine": "another-boot/pid:[1]"},  # another boot or pid namespace: pids differ
        {**this_process(), "host": "gpu-node-7"},
    ],
)
def test_a_process_that_cannot_be_checked_here_is_unknown(process: dict[str, Any] | None) -> None:
    assert process_liveness(process) == "unknown"


def test_an_unknown_process_is_stale_only_when_silent_longer_than_stale_after() -> None:
    assert running_status(ELSEWHERE, last_write=0.0, now=STALE_AFTER_SECONDS) == "running"  # at the limit
    assert running_status(ELSEWHERE, last_write=0.0, now=STALE_AFTER_SECONDS + 1) == "stale"
    assert running_status(None, last_write=0.0, now=10.0, stale_after=5.0) == "stale"


@linux_only
def test_a_checkable_process_decides_however_long_the_silence() -> None:
    assert running_status(this_process(), last_write=0.0, now=1e9) == "running"
    assert running_status({**this_process(), "started": -1}, last_write=1e9, now=1e9) == "killed"  # a reused pid


@pytest.mark.parametrize("seconds", [0, -1.0, math.inf, math.nan, True, "1800"])
def test_stale_after_must_be_a_positive_finite_number(seconds: Any) -> None:
    with pytest.raises(ConfigError, match=f"stale_after must be a positive number.*got {re.escape(repr(seconds))}"):
        check_stale_after(seconds)
