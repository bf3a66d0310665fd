"""Run the page on uvicorn: bind first (so a busy port is a one-line error), then serve until Ctrl+C."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from ..errors import ConfigError
from .config import UiConfig

__all__ = ["bind", "serve_ui"]

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ConfigError naming the fix when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror}); pass another --port.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve_ui(config: UiConfig, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the store of ``config`` until interrupted; ``on_ready(url)`` once the port is bound.

    Example:
        >>> serve_ui(UiConfig(store=".kiln", port=8765), on_ready=print)
    """
    import uvicorn

    from ..serve.guard import guarded_protocol
    from .app import create_app

    app = create_app(config)  # opens the store first: a wrong --store fails before anything listens
    sock = bind(config.host, config.port)
    url = config.url_for(sock.getsockname()[1])
    settings = uvicorn.Config(
        app, lifespan="off", log_level="warning", access_log=False, server_header=False,
        http=guarded_protocol(10.0, max_connections=256, max_connections_per_client=64),
    )  # fmt: skip
    server = uvicorn.Server(settings)
    if on_ready is not None:
        on_ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        app.state.ui.store.close()
