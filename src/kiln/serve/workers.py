"""``--workers N``: one listening socket, N worker processes accepting on it, each with its own model and batcher.

The parent binds the port (so a busy port fails once, up front), starts ``python -m kiln.serve.workers`` N times
with the socket inherited and the settings on stdin as JSON (the token never appears in a process list), then closes
its own copy of the socket: once every worker has stopped accepting, a new connection is refused at once instead of
waiting in a listen backlog that nobody reads. Each worker loads, verifies and warms up its model, reports on a pipe,
and starts accepting only when the parent says every worker is ready: a client never reaches a cold worker.

Stopping. The parent forwards SIGTERM/SIGINT as SIGTERM; the workers run in their own session, so a terminal's
Ctrl+C reaches the parent alone. A worker records signals from its first line on: before it serves, a signal (or
the parent closing its stdin instead of saying "go") makes it exit 0 at once; once it serves, uvicorn drains it, and
a signal that came in between is honoured as soon as uvicorn runs. A worker still running ``drain_timeout_s`` + 2 s
after the signal is killed, logged in one line, and the parent exits 1; otherwise it exits 0 once every worker has.
A worker that dies on its own takes the others down (exit 1): restarting is the process supervisor's job (systemd,
Kubernetes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from .config import ServeConfig

__all__ = ["run_workers"]

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_KILL_GRACE_S = 2.0  # past drain_timeout_s, for a worker's own shutdown (lifespan, interpreter exit)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


class _Workers:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.signaled = False
        self.deadline = math.inf

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signaled = True
        self.stop(f"signal {sig}")

    def stop(self, reason: str) -> None:
        """SIGTERM every worker; those still running ``drain_timeout_s`` + 2 s from the first call are killed."""
        if not self.stopping:
            self.stopping = True
            self.deadline = time.monotonic() + self.config.drain_timeout_s + _KILL_GRACE_S
            logger.info("%s: draining %d workers", reason, len(self.children))
        for child in self.children:
            child.send_signal(signal.SIGTERM)  # a no-op for a worker already reaped

    def start(self, sock: socket.socket, settings: bytes, ready_fd: int) -> None:
        for _ in range(self.config.workers):
            if self.stopping:  # a signal during the start: the workers started so far are enough to stop
                return
            child = subprocess.Popen(
                [sys.executable, "-m", "kiln.serve.workers", str(sock.fileno()), str(ready_fd)],
                stdin=subprocess.PIPE, pass_fds=[sock.fileno(), ready_fd], start_new_session=True,
            )  # fmt: skip
            self.children.append(child)
            if self.stopping:  # the signal came while this one was being started: stop() did not see it
                child.send_signal(signal.SIGTERM)
            assert child.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died at once: wait_ready sees that
                child.stdin.write(settings + b"\n")
                child.stdin.flush()

    def wait_ready(self, ready: int) -> bool:
        """True once every worker reported ready; False if one died or a signal asked us to stop first."""
        count = 0
        while count < len(self.children):
            if self.stopping or any(child.poll() is not None for child in self.children):
                return False
            readable, _, _ = select.select([ready], [], [], 0.1)
            if readable:
                count += len(os.read(ready, 64))
        return True

    def release(self, *, go: bool) -> bool:
        """Tell every worker to serve ("go"), or to exit (stdin closed without it); True if all were told to serve."""
        told = 0
        for child in self.children:
            assert child.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                if go and not self.stopping:  # a signal in the middle of this loop: the rest exit
                    child.stdin.write(b"go\n")
                    told += 1
                child.stdin.close()
        return told == len(self.children)

    def supervise(self) -> bool:
        """Wait until every worker has exited (reaping each); False if some had to be killed past the deadline."""
        while True:
            alive = [child for child in self.children if child.poll() is None]
            if not alive:
                return True
            if not self.stopping and len(alive) < len(self.children):
                self.stop("a worker exited unexpectedly")
            if time.monotonic() > self.deadline:
                logger.error(
                    "%d of %d workers did not stop within %g s (drain_timeout_s + %g s) of being told; killed pid %s",
                    len(alive), len(self.children), self.config.drain_timeout_s + _KILL_GRACE_S, _KILL_GRACE_S,
                    ", ".join(str(child.pid) for child in alive),
                )  # fmt: skip
                for child in alive:
                    child.kill()
                for child in alive:
                    child.wait()
                return False
            time.sleep(0.1)


def run_workers(reference: str | os.PathLike[str], pinned: str | Path, store: str | None, config: ServeConfig) -> int:
    """Run ``config.workers`` worker processes on one socket until a signal drains them; returns the exit status.

    Every worker loads ``pinned`` first (the version ``reference`` named at start) and, when it follows
    ``reference``, follows it on its own: after a promotion the workers switch within a poll interval of each other.
    """
    sock = _bind(config.host, config.port)
    settings = json.dumps({
        "reference": os.fspath(reference), "is_path": isinstance(reference, os.PathLike),
        "pinned": pinned if isinstance(pinned, str) else None, "store": store,
        "config": {**dataclasses.asdict(config), "workers": 1, "threads": config.intra_op_threads},
    }).encode()  # fmt: skip
    workers = _Workers(config)
    previous = {sig: signal.signal(sig, workers.on_signal) for sig in _SIGNALS}
    ready_read, ready_write = os.pipe()
    try:
        try:
            workers.start(sock, settings, ready_write)
        finally:
            os.close(ready_write)
            sock.close()  # the workers hold it now
        ready = workers.wait_ready(ready_read)
        if workers.release(go=ready):
            logger.info("listening on %s:%d with %d ready workers", config.host, config.port, config.workers)
        elif not workers.stopping:
            workers.stop("a worker exited before it was ready")
        finished = workers.supervise()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(ready_read)
    stopped = (0, -signal.SIGTERM, -signal.SIGINT)  # killed by a stop signal before its handlers were installed
    failed = [child for child in workers.children if child.returncode not in stopped]
    if failed and finished:
        logger.error("worker exit status: %s", ", ".join(f"pid {child.pid}: {child.returncode}" for child in failed))
    return 0 if workers.signaled and finished and not failed else 1


class _Signals:
    """A worker's SIGTERM/SIGINT handler from its first line: before it serves, a signal ends it at once; once it
    serves, a signal is only recorded, for :func:`run_server` to honour."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.serving = False

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        if not self.serving:
            # Nothing served, so nothing to drain or flush (log records are flushed as written). Not an exception:
            # raised while a C extension initialises (onnxruntime's import), it comes out as an ImportError.
            os._exit(0)
        self.received.append(sig)


def _worker_main(fd: int, ready_fd: int) -> int:
    signals = _Signals()
    for sig in _SIGNALS:
        signal.signal(sig, signals)
    sock = socket.socket(fileno=fd)
    line = sys.stdin.buffer.readline()
    if not line:  # the parent stopped before sending the settings
        return 0
    from .app import create_app
    from .process import configure_logging, run_server

    settings = json.loads(line)
    config = ServeConfig(**settings["config"])
    configure_logging(access_log=config.access_log)
    reference = Path(settings["reference"]) if settings["is_path"] else settings["reference"]
    app = create_app(reference, store=settings["store"], config=config, pinned=settings["pinned"])
    app.preload()
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    if sys.stdin.buffer.readline().strip() != b"go":  # stdin closed: the parent is stopping (or gone)
        return 0
    signals.serving = True

    return run_server(app, config, sockets=[sock], stopping=lambda: bool(signals.received))


if __name__ == "__main__":
    raise SystemExit(_worker_main(int(sys.argv[1]), int(sys.argv[2])))
