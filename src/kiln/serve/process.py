"""One serving process: logging set up for it, and the app run under uvicorn until a signal drains it.

Both entry points use this module: ``serve()`` (one process) and each worker of ``--workers N``. It imports neither
of them, so the dependency points one way: ``server -> workers -> process``.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from .app import KilnApp
from .config import ServeConfig
from .guard import MAX_HEADER_BYTES, guarded_protocol

__all__ = ["configure_logging", "run_server"]

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _AccessFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()  # already one JSON object per line


def configure_logging(*, access_log: bool) -> None:
    """Log kiln's messages to stderr (access logs as JSON lines), unless the program configured logging itself."""
    root, kiln = logging.getLogger(), logging.getLogger("kiln")
    if root.handlers or kiln.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"))
    for name in ("kiln", "uvicorn.error"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = False
    access = logging.getLogger("kiln.serve.access")
    access.propagate = False
    access.setLevel(logging.INFO if access_log else logging.WARNING)
    lines = logging.StreamHandler(sys.stderr)
    lines.setFormatter(_AccessFormatter())
    access.addHandler(lines)


def run_server(
    app: KilnApp,
    config: ServeConfig,
    *,
    sockets: list[socket.socket] | None = None,
    stopping: Callable[[], bool] | None = None,
) -> int:
    """Serve ``app`` until SIGTERM/SIGINT drains it (0) or the model fails to load (1).

    ``stopping`` says whether a signal already came before this call (a worker records them from its first line):
    the server then starts and drains at once instead of serving. A signal that arrives after that check but
    before uvicorn has installed its own handlers lands on ours, which ask uvicorn to exit as well; uvicorn
    re-raises the signal after its graceful shutdown, and ours absorb it, so a drained server returns 0.
    """
    import uvicorn

    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=guarded_protocol(
            config.header_timeout_s,
            max_connections=config.max_connections,
            max_connections_per_client=config.connections_per_client,
        ),
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=config.keep_alive_s,
        timeout_graceful_shutdown=math.ceil(config.drain_timeout_s),
        limit_concurrency=None,  # the guard caps connections (in all and per client) and answers 503 in JSON
        h11_max_incomplete_event_size=2 * MAX_HEADER_BYTES,  # without httptools: the guard's 431 comes first
        backlog=2048,
    )
    server = uvicorn.Server(uv_config)
    failures: list[BaseException] = []

    def failed(error: BaseException) -> None:
        failures.append(error)
        server.should_exit = True

    def exit_on_signal(sig: int, frame: FrameType | None) -> None:
        logger.debug("signal %d: draining", sig)
        server.should_exit = True

    app.on_failure = failed
    previous: dict[int, Any] = {sig: signal.signal(sig, exit_on_signal) for sig in _SIGNALS}
    try:
        if stopping is not None and stopping():
            server.should_exit = True  # uvicorn starts, skips serving and drains (nothing is in flight)
        server.run(sockets=sockets)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failures else 0
