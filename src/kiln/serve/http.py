"""Small HTTP pieces of the ASGI app: responses, request headers, reading a body within its limits.

The hot path is plain ASGI (no Request/Response objects): on this 2-core box Starlette's routing and Response
classes halved the requests per second of a one-sample JSON endpoint (7.8k vs 14.9k req/s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from .tensors import RequestError

__all__ = ["Headers", "Response", "error_response", "json_response", "read_body"]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"


class Response:
    """Status, body and headers; ``send`` writes it as two ASGI messages with a Content-Length."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: bytes = JSON, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", self.content_type), (b"content-length", b"%d" % len(self.body)), *self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(value: Any, status: int = 200, headers: Sequence[tuple[bytes, bytes]] = ()) -> Response:
    return Response(status, orjson.dumps(value), JSON, headers)


def error_response(error: RequestError) -> Response:
    """``{"error": message}``: the shape the Open Inference Protocol uses for errors, kept for every route."""
    return Response(error.status, orjson.dumps({"error": error.message}), JSON, error.headers)


class Headers:
    """The few request headers the server reads, found in one pass over the ASGI header list."""

    __slots__ = ("authorization", "body_read", "chunked", "content_length", "content_type", "inference_header_length",
                 "request_id")  # fmt: skip

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self.authorization: bytes | None = None
        self.content_length: bytes | None = None
        self.content_type: bytes | None = None  # a file body (audio/wav, image/png, ...) for declared preprocessing
        self.chunked = False
        self.request_id: bytes | None = None
        self.inference_header_length: bytes | None = None  # the binary tensor data extension's JSON length
        self.body_read = False
        for name, value in raw:
            if name == b"authorization":
                self.authorization = value
            elif name == b"content-length":
                self.content_length = value
            elif name == b"content-type":
                self.content_type = value
            elif name == b"transfer-encoding":
                self.chunked = True
            elif name == b"x-request-id":
                self.request_id = value[:128]
            elif name == b"inference-header-content-length":
                self.inference_header_length = value

    @property
    def unread_body(self) -> bool:
        """True when the request has a body the app did not read: answer with Connection: close, so that the rest
        of it is never parsed as the next request's headers."""
        return not self.body_read and (self.chunked or self.content_length not in (None, b"0"))


class Disconnected(Exception):
    """The client went away before its request body arrived."""


def _too_large(limit: int) -> RequestError:
    return RequestError(
        413, f"the request body is larger than the server's limit of {limit} bytes; send fewer samples per request.",
        headers=((b"connection", b"close"),),
    )  # fmt: skip


async def read_body(receive: Receive, headers: Headers, *, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused with 413 past ``limit`` bytes (before reading, when Content-Length says so) and
    with 408 when it does not arrive within ``timeout_s`` (a slow client holding a connection open)."""
    if headers.content_length is not None:
        try:
            declared = int(headers.content_length)
        except ValueError:
            raise RequestError(400, "Content-Length is not a number.") from None
        if declared > limit:
            raise _too_large(limit)
    message = await receive()  # the common case: the whole body already arrived with the headers
    if message["type"] == "http.disconnect":
        raise Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        headers.body_read = True
        return body
    chunks, size = [body], len(body)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise RequestError(
                408, f"the request body did not arrive within {timeout_s:g} s.", headers=((b"connection", b"close"),)
            ) from None
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            headers.body_read = True
            return b"".join(chunks)
