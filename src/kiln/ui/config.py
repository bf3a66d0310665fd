"""What ``kiln ui`` is told: the store, where to bind, the token, whether writes are allowed. Checked on creation."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..serve.config import check_token, is_loopback

__all__ = ["UiConfig", "token_from_env"]


def token_from_env(name: str) -> str:
    """The token held by environment variable ``name``; ConfigError when it is unset or empty."""
    token = os.environ.get(name)
    if not token:
        raise ConfigError(f"--token-env {name}: that environment variable is not set or empty.")
    return token


@dataclass(frozen=True, kw_only=True)
class UiConfig:
    """Every knob of ``kiln ui``.

    The page binds 127.0.0.1 by default. Any other address needs a ``token`` (entered once in the browser, then
    kept in a cookie; scripts send ``Authorization: Bearer <token>``). ``allow_writes`` adds the actions that
    change the registry (promote an alias, delete a version); they need a token too, so no other local user or
    process can change the store through the page.

    Example:
        >>> UiConfig(store=".kiln", host="0.0.0.0", port=8765, token=os.environ["KILN_TOKEN"])
    """

    store: str | os.PathLike[str] | None = None  # a directory or a database URL (postgresql://...)
    blobs: str | os.PathLike[str] | None = None  # a database store's blob directory (default: $KILN_BLOBS, ...)
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    allow_writes: bool = False
    threads: int = 1  # onnxruntime threads for the Try-it panel

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an integer in 0..65535; got {self.port!r}.")
        if self.token is not None:
            check_token(self.token)
        if not is_loopback(self.host) and self.token is None:
            raise ConfigError(
                f"refusing to bind {self.host!r} without a token: anyone who can reach this address could read your "
                "runs and models. Pass --token-env NAME (e.g. export KILN_TOKEN=$(openssl rand -hex 24)) or bind "
                "127.0.0.1."
            )
        if self.allow_writes and self.token is None:
            raise ConfigError(
                "--allow-writes needs a token (write actions always require one): export KILN_TOKEN=$(openssl rand "
                "-hex 24) and pass --token-env KILN_TOKEN; the page asks for it once."
            )
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"threads must be a positive integer; got {self.threads!r}.")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def url(self) -> str:
        return self.url_for(self.port)

    def url_for(self, port: int) -> str:
        """The address to open in a browser when the server listens on ``port`` (all interfaces: loopback's)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{port}/"
