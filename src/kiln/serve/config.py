"""What a server is told: where to bind, how to batch, what to refuse. One kw_only dataclass, checked on creation."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["MIN_TOKEN", "ServeConfig", "check_token", "default_threads", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``127.0.0.0/8``, ``::1`` and ``localhost``; any other name or address counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


MIN_TOKEN = 16


def check_token(token: object) -> str:
    """``token`` when it can be a bearer token (16+ printable ASCII characters, no spaces); ConfigError otherwise.

    The servers (``kiln serve``, ``kiln ui``) both check their tokens here.
    """
    if not isinstance(token, str) or len(token) < MIN_TOKEN:
        raise ConfigError(f"token must be a string of at least {MIN_TOKEN} characters (e.g. `openssl rand -hex 24`).")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("token must be printable ASCII without spaces (it travels in an HTTP header).")
    return token


def default_threads(workers: int) -> int:
    """Intra-op threads per worker: one on a small box (oversubscribed OpenMP threads spin and stall the HTTP loop),
    else half of this worker's share of the cores, leaving the rest for HTTP and JSON."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= 4:
        return 1
    return max(1, cores // max(1, workers) // 2)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (value == 0 and not allow_zero):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a number {allowed}; got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Every knob of ``kiln serve``; the defaults suit a small CPU box.

    ``max_batch_size`` caps the samples one model call sees; ``max_delay_ms`` is how long the oldest queued request
    may wait for others to fill its batch (0: run as soon as the model is free, batches still form under load);
    ``max_queue`` requests may wait, beyond that the answer is 503 with Retry-After; a request not answered within
    ``timeout_s`` gets 504. ``header_timeout_s`` and ``body_timeout_s`` cut off slow clients. ``max_connections``
    open connections in all, and ``max_connections_per_client`` from one client address (None: a quarter of
    ``max_connections``), are served; a connection past either is answered 503 with Retry-After and closed.
    ``follow`` (None: follow ``name@alias`` references, pin the rest) polls the store every ``poll_interval_s``
    and switches to the version the reference names now (see :mod:`kiln.serve.follow`).

    Example:
        >>> ServeConfig(port=8080, max_batch_size=32, token="s3cret", host="0.0.0.0")
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int | None = None
    runtime: str = "auto"
    max_batch_size: int = 64
    max_delay_ms: float = 0.0
    max_queue: int = 1024
    timeout_s: float = 10.0
    max_body_bytes: int = 4 << 20
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_s: int = 5
    drain_timeout_s: float = 30.0
    max_connections: int = 2048
    max_connections_per_client: int | None = None
    token: str | None = None
    access_log: bool = True
    warmup: bool = True
    trust: tuple[str, ...] = ()  # modules whose factories the torch runtime may import (kiln.export.trust)
    follow: bool | None = None
    poll_interval_s: float = 5.0

    def __post_init__(self) -> None:
        from ..export.trust import check_trust  # torch-free

        object.__setattr__(self, "trust", check_trust(self.trust))  # a list from JSON (workers) becomes a tuple
        if self.runtime not in ("auto", "onnx", "torch"):
            raise ConfigError(f"runtime must be 'auto', 'onnx' or 'torch'; got {self.runtime!r}.")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an integer in 0..65535; got {self.port!r}.")
        for name in ("workers", "max_batch_size", "max_queue", "max_body_bytes", "max_connections", "keep_alive_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}.")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):  # fmt: skip
            raise ConfigError(f"threads must be a positive integer or None (automatic); got {self.threads!r}.")
        per_client = self.max_connections_per_client
        if per_client is not None and (isinstance(per_client, bool) or not isinstance(per_client, int)
                                       or not 1 <= per_client <= self.max_connections):  # fmt: skip
            raise ConfigError(
                f"max_connections_per_client must be an integer in 1..max_connections ({self.max_connections}) or "
                f"None (a quarter of max_connections); got {per_client!r}."
            )
        _positive("max_delay_ms", self.max_delay_ms, allow_zero=True)
        for name in ("timeout_s", "header_timeout_s", "body_timeout_s", "drain_timeout_s", "poll_interval_s"):
            _positive(name, getattr(self, name))
        if self.follow is not None and not isinstance(self.follow, bool):
            raise ConfigError(f"follow must be True, False or None (follow alias references); got {self.follow!r}.")
        if self.token is not None:
            check_token(self.token)
        if not is_loopback(self.host) and self.token is None:
            raise ConfigError(
                f"refusing to bind {self.host!r} without an auth token: anyone who can reach this address could "
                "use the model. Pass a token (--token-env NAME, or token=...) or bind 127.0.0.1."
            )

    @property
    def connections_per_client(self) -> int:
        """Open connections one client address may hold (``max_connections_per_client``, else a quarter of all)."""
        if self.max_connections_per_client is not None:
            return self.max_connections_per_client
        return max(1, self.max_connections // 4)

    @property
    def intra_op_threads(self) -> int:
        """The threads each worker gives its runtime (``threads``, else :func:`default_threads`)."""
        return self.threads if self.threads is not None else default_threads(self.workers)
