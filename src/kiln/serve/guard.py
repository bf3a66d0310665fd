"""Slow, oversized and greedy clients, stopped at the connection: a header deadline, a header size limit, and caps
on open connections in all and per client address.

uvicorn waits for request headers forever and does not bound their size with httptools. A client that opens a
connection and trickles its headers (slowloris), or sends more than 64 KiB of them, is answered 408 or 431 and
disconnected. The size is counted on the bytes as they arrive, before the parser sees them: headers that arrive
in one read (up to about 128 KiB on loopback) are counted as strictly as those that trickle in. A connection past
``max_connections`` in all, or past ``max_connections_per_client`` from one address, is answered 503 with
Retry-After (JSON, like every other error) and closed, so that one client cannot hold every connection. The body
has its own deadline and size limit in the app (``body_timeout_s``, ``max_body_bytes``).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["MAX_HEADER_BYTES", "guarded_protocol"]

MAX_HEADER_BYTES = 64 << 10  # the request line, the headers and the blank line after them
_LINGER_S = 1.0
_END = b"\r\n\r\n"


def _response(status: bytes, message: bytes, extra: bytes = b"") -> bytes:
    body = b'{"error":"' + message + b'"}'
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        + extra + b"connection: close\r\n\r\n" + body
    )  # fmt: skip


_TIMEOUT = _response(b"408 Request Timeout", b"the request headers did not arrive in time.")
_TOO_LARGE = _response(b"431 Request Header Fields Too Large", b"the request headers are larger than 64 KiB.")
_UNAVAILABLE = b"503 Service Unavailable"
_RETRY = b"retry-after: 1\r\n"


class _Connections:
    """Open connections, in all and per client address; ``admit`` counts one in or says why not."""

    def __init__(self, limit: int | None, per_client: int | None) -> None:
        self.total = 0
        self.by_address: dict[str, int] = {}
        self.limit = limit
        self.per_client = per_client
        self.full = _response(
            _UNAVAILABLE, b"the server has %d open connections, its limit; retry shortly." % (limit or 0), _RETRY
        )
        self.greedy = _response(
            _UNAVAILABLE,
            b"this client address has %d open connections, the limit for one client; close some or retry shortly."
            % (per_client or 0),
            _RETRY,
        )

    def admit(self, address: str) -> bytes | None:
        """None if the connection is counted in; else the 503 response to refuse it with."""
        if self.limit is not None and self.total >= self.limit:
            return self.full
        held = self.by_address.get(address, 0)
        if self.per_client is not None and held >= self.per_client:
            return self.greedy
        self.total += 1
        self.by_address[address] = held + 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        held = self.by_address[address] - 1
        if held:
            self.by_address[address] = held
        else:
            del self.by_address[address]


def guarded_protocol(
    header_timeout_s: float, *, max_connections: int | None = None, max_connections_per_client: int | None = None
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with the header deadline and size limit and the
    connection caps (None: no cap); each call makes a new class with its own connection counts.

    Example:
        >>> uvicorn.Config(app, http=guarded_protocol(10.0, max_connections=2048, max_connections_per_client=512))
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol
    connections = _Connections(max_connections, max_connections_per_client)

    class GuardedProtocol(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._header_bytes = 0
            self._seam = b""  # the last bytes of a head that continues in the next read (a split blank line)
            self._discarding = False
            self._address: str | None = None  # set while this connection is counted
            inner: Any = getattr(self, "app")  # noqa: B009 - set by uvicorn's __init__, unknown to mypy

            async def app(scope: Any, receive: Any, send: Any) -> None:
                self._disarm()  # the headers are complete: the app now owns the request
                await inner(scope, receive, send)

            self.app: Any = app

        def _waiting(self) -> bool:
            """True while no request's headers are complete (uvicorn makes a cycle when they are)."""
            return self.cycle is None or bool(self.cycle.response_complete)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            address = self.client[0] if self.client else ""  # (host, port) from uvicorn; none on a Unix socket
            refusal = connections.admit(address)
            if refusal is not None:
                self._refuse(refusal)
                return
            self._address = address
            self._arm()  # a connection that sends nothing at all is cut off as well

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return
            if self._waiting() and not self.transport.is_closing():
                if self._header_timer is None:
                    self._arm()
                if not self._within_limit(data):
                    self._refuse(_TOO_LARGE)
                    return
            super().data_received(data)

        def _within_limit(self, data: bytes) -> bool:
            """Count the bytes of the request head in ``data``; False once the head is over MAX_HEADER_BYTES."""
            end = -1
            if self._seam:  # the blank line may straddle two reads
                at = (self._seam + data[:3]).find(_END)
                end = at + 4 - len(self._seam) if at >= 0 else -1
            if end < 0:
                at = data.find(_END)
                end = at + 4 if at >= 0 else -1
            size = self._header_bytes + (len(data) if end < 0 else end)
            if size > MAX_HEADER_BYTES:
                return False
            if end < 0:
                self._header_bytes, self._seam = size, (self._seam + data)[-3:]
            else:
                self._header_bytes, self._seam = 0, b""  # the head is complete; the next one starts from zero
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._release()
            super().connection_lost(exc)
            # uvicorn's protocol and its request cycle refer to each other (and our app wrapper to the protocol),
            # so a closed connection, with up to 64 KiB of buffered body, waits for a full garbage collection.
            # Under connection churn (clients refused with 413 and closed) that held tens of MB; drop the links.
            # Measured: 100k requests, a tenth of them refused, grew RSS by 15% before this and 1% after.
            self.cycle = None
            self.app = None
            getattr(self, "pipeline", []).clear()

        def _release(self) -> None:
            if self._address is not None:
                connections.release(self._address)
                self._address = None

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self._waiting():
                self._refuse(_TIMEOUT)

        def _refuse(self, response: bytes) -> None:
            """Answer, stop sending, and read (discarding) for a moment before closing: closing a socket with unread
            input resets the connection, and the client would never see the answer. A refused connection no longer
            counts against the caps while it lingers."""
            self._disarm()
            self._release()
            if self.transport.is_closing():
                return
            self._discarding = True
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)

    return GuardedProtocol
