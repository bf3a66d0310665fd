"""Crash points for the durability tests: the one place the store reads a debugging environment variable.

``KILN_DEBUG_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches that point of a write, so tests
can prove that a publish interrupted at any step leaves the version either complete or absent. Unset (always, in
normal use) a crash point costs one string comparison.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_POINTS", "crash_point"]

CRASH_POINTS = (
    "blob:written",  # a blob's bytes are in its temp file, not yet fsynced or renamed
    "blob:renamed",  # the blob has its content address; its directory is not yet fsynced
    "publish:locked",  # the write lock is held; nothing inserted yet
    "publish:inserted",  # version and file rows inserted, not committed
    "publish:committed",  # committed; the call has not returned yet
    "delete:committed",  # a version is gone from the database; its blobs are not yet unlinked
    "delete:unlinking",  # some of a deleted version's blobs are unlinked, maybe not all
)

_CRASH_AT = os.environ.get("KILN_DEBUG_CRASH_AT", "")


def crash_point(point: str) -> None:
    """SIGKILL this process if ``KILN_DEBUG_CRASH_AT`` names ``point`` (a test-only fault injection)."""
    if _CRASH_AT and point == _CRASH_AT:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
