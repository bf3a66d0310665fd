"""``--workers N``: one listening socket, N worker processes accepting on it, each with its own model and batcher.

The parent binds the port (so a busy port fails once, up front) and starts ``python -m kiln.serve.workers`` N
times with the socket inherited and the settings on stdin as JSON (the token never appears in a process list).
Each worker loads, verifies and warms up its model, reports on a pipe, and starts accepting only when the parent
says every worker is ready: a client never reaches a cold worker. The parent forwards SIGTERM/SIGINT as SIGTERM so
every worker drains, and exits 0 only if every worker did. A worker that dies on its own takes the others down
(exit 1): restarting is the process supervisor's job (systemd, Kubernetes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
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

    def stop(self, sig: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        if not self.stopping:
            logger.info("signal %d: draining %d workers", sig, len(self.children))
        self.stopping = True
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def died(self) -> bool:
        return any(child.poll() is not None for child in self.children)

    def start(self, sock: socket.socket, settings: bytes, ready_fd: int) -> None:
        for _ in range(self.config.workers):
            child = subprocess.Popen(
                [sys.executable, "-m", "kiln.serve.workers", str(sock.fileno()), str(ready_fd)],
                stdin=subprocess.PIPE, pass_fds=[sock.fileno(), ready_fd],
            )  # fmt: skip
            assert child.stdin is not None
            child.stdin.write(settings + b"\n")
            child.stdin.flush()
            self.children.append(child)

    def wait_ready(self, ready: int) -> bool:
        """True once every worker reported ready; False if one died or a signal asked us to stop first."""
        count = 0
        while count < len(self.children):
            if self.stopping or self.died():
                return False
            readable, _, _ = select.select([ready], [], [], 0.1)
            if readable:
                count += len(os.read(ready, 64))
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.close()
        return True

    def supervise(self) -> None:
        while any(child.poll() is None for child in self.children):
            if not self.stopping and self.died():
                logger.error("a worker exited unexpectedly; stopping the others")
                self.stop()
            time.sleep(0.1)


def run_workers(reference: str | Path, store: str | None, config: ServeConfig) -> int:
    """Run ``config.workers`` worker processes on one socket until a signal drains them; returns the exit status."""
    sock = _bind(config.host, config.port)
    settings = json.dumps({
        "reference": str(reference), "is_path": isinstance(reference, Path), "store": store,
        "config": {**dataclasses.asdict(config), "workers": 1, "threads": config.intra_op_threads},
    }).encode()  # fmt: skip
    workers = _Workers(config)
    previous = {sig: signal.signal(sig, workers.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    ready_read, ready_write = os.pipe()
    try:
        workers.start(sock, settings, ready_write)
        os.close(ready_write)
        if workers.wait_ready(ready_read):
            logger.info("listening on %s:%d with %d ready workers", config.host, config.port, config.workers)
        else:
            workers.stop()
        workers.supervise()
        for child in workers.children:
            child.wait(timeout=config.drain_timeout_s + 10)
    except subprocess.TimeoutExpired:
        for child in workers.children:
            if child.poll() is None:
                child.kill()
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(ready_read)
        sock.close()
    drained = all(child.returncode in (0, -signal.SIGTERM) for child in workers.children)
    return 0 if workers.stopping and drained else 1


def _worker_main(fd: int, ready_fd: int) -> int:
    from .app import create_app
    from .server import configure_logging, run_server

    settings = json.loads(sys.stdin.buffer.readline())
    config = ServeConfig(**settings["config"])
    configure_logging(access_log=config.access_log)
    sock = socket.socket(fileno=fd)
    reference = Path(settings["reference"]) if settings["is_path"] else settings["reference"]
    app = create_app(reference, store=settings["store"], config=config)
    app.preload()
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    if sys.stdin.buffer.readline().strip() != b"go":  # the parent is gone or stopping: never start serving
        return 1
    return run_server(app, config, sockets=[sock])


if __name__ == "__main__":
    raise SystemExit(_worker_main(int(sys.argv[1]), int(sys.argv[2])))
