"""Run the app under uvicorn (with the header guard), drain on SIGTERM, set up logging; the ``serve`` entry point."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import ConfigError
from .app import KilnApp, create_app
from .config import ServeConfig
from .guard import MAX_HEADER_BYTES, guarded_protocol

__all__ = ["configure_logging", "pin_reference", "run_server", "serve"]

logger = logging.getLogger(__name__)


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


@contextlib.contextmanager
def _quiet_signals() -> Iterator[None]:
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with these handlers installed underneath,
    the re-raised signal is absorbed and a drained server exits 0."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def absorb(sig: int, frame: FrameType | None) -> None:
        logger.debug("signal %d re-raised after the graceful shutdown", sig)

    for sig in previous:
        signal.signal(sig, absorb)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_server(app: KilnApp, config: ServeConfig, *, sockets: list[socket.socket] | None = None) -> int:
    """Serve ``app`` until SIGTERM/SIGINT drains it (0) or the model fails to load (1)."""
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

    app.on_failure = failed
    with _quiet_signals():
        server.run(sockets=sockets)
    return 1 if failures else 0


def pin_reference(reference: str | os.PathLike[str], store: Any) -> tuple[str | Path, str | None]:
    """Resolve an alias to the exact ``name@version`` now, so that every worker serves the same version; fails
    fast (before binding a port) on an unknown model or a missing store."""
    if isinstance(reference, os.PathLike):
        return Path(reference), None
    from ..store import Store

    opened = store if isinstance(store, Store) else Store(store, create=False)
    return opened.version(reference).reference, str(opened.path)


def serve(
    reference: str | os.PathLike[str], *, store: Any = None, config: ServeConfig | None = None, **options: Any
) -> int:
    """Serve ``reference`` over HTTP until SIGTERM or Ctrl+C; returns the exit status (0 after a clean drain).

    Options are :class:`ServeConfig` fields (``port``, ``workers``, ``max_batch_size``, ``token``, ...).

    Example:
        >>> from kiln.serve import serve
        >>> serve("digits@production", store=".kiln", port=8000, max_batch_size=32)  # blocks
    """
    if config is not None and options:
        raise ConfigError(f"pass either config= or options, not both; got config and {sorted(options)}.")
    chosen = config or ServeConfig(**options)
    configure_logging(access_log=chosen.access_log)
    pinned, store_path = pin_reference(reference, store)
    if chosen.workers > 1:
        from .workers import run_workers

        return run_workers(pinned, store_path, chosen)
    app = create_app(pinned, store=store_path, config=chosen)
    return run_server(app, chosen)
