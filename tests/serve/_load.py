"""A minimal HTTP/1.1 client on asyncio streams for floods and many concurrent connections.

httpx's pool costs milliseconds per request once dozens of connections are open; these tests need hundreds of
requests in flight at once, so they speak keep-alive HTTP/1.1 with Content-Length directly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(status, headers, body)


def _request(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def post_many(port: int, path: str, bodies: list[bytes], *, connections: int, timeout: float = 60) -> list[Reply]:
    """POST every body, ``connections`` at a time (each connection sends its share one after another)."""
    replies: list[Reply | None] = [None] * len(bodies)

    async def worker(indices: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in indices:
                writer.write(_request(path, bodies[i]))
                replies[i] = await _read_reply(reader)
                if replies[i].headers.get("connection") == "close":  # type: ignore[union-attr]
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    shares = [list(range(c, len(bodies), connections)) for c in range(connections)]
    await asyncio.wait_for(asyncio.gather(*[worker(share) for share in shares if share]), timeout)
    assert all(reply is not None for reply in replies)
    return replies  # type: ignore[return-value]
