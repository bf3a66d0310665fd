"""A real `kiln serve` at its edges: connection caps from real client addresses, the header size limit, v2 shapes
that overflow, bearer schemes in any case."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest

from kiln.serve import Client
from kiln.serve.guard import MAX_HEADER_BYTES

from ._server import ServerProcess, read_reply
from .conftest import Served

TOKEN = "edge-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def capped(served: Served) -> Iterator[ServerProcess]:
    """8 connections in all, so 2 per client address (the default: a quarter), behind a token."""
    args = ("--max-connections", "8", "--token-env", "KILN_EDGE_TOKEN")
    with ServerProcess("mlp@production", served.store, *args, env={"KILN_EDGE_TOKEN": TOKEN}) as proc:
        proc.wait_ready(headers=AUTH)
        yield proc
        assert proc.terminate() == 0, proc.output()[-2000:]


def connect(port: int, source: str) -> socket.socket:
    """A connection from ``source`` (any 127.x.y.z is this machine's loopback, each a different client address)."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def ask(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    sock.sendall(f"GET /livez HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    status, headers, body = read_reply(sock)
    return int(status.split()[1]), headers, body


def assert_refused(answer: tuple[int, dict[str, str], bytes], words: str) -> None:
    status, headers, body = answer
    assert status == 503 and headers["retry-after"] == "1" and headers["content-type"] == "application/json"
    assert words in orjson.loads(body)["error"], body


def test_one_client_address_cannot_hold_every_connection(capped: ServerProcess):
    port = capped.port
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(port, "127.0.0.2")) for _ in range(2)]
        assert [ask(sock)[0] for sock in held] == [200, 200]
        assert_refused(ask(stack.enter_context(connect(port, "127.0.0.2"))), "2 open connections, the limit for one")
        # other addresses still get in, up to the server's cap of 8 in all
        for address in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
            assert [ask(stack.enter_context(connect(port, address)))[0] for _ in range(2)] == [200, 200]
        assert_refused(ask(stack.enter_context(connect(port, "127.0.0.6"))), "8 open connections, its limit")
        # a closed connection frees its place once the server has seen it close
        held[0].close()
        deadline = time.monotonic() + 10
        while (answer := ask(stack.enter_context(connect(port, "127.0.0.2"))))[0] != 200:
            assert_refused(answer, "open connections")
            assert time.monotonic() < deadline, "a closed connection still counted after 10 s"
            time.sleep(0.01)


def head(size: int) -> bytes:
    """A GET whose request head (request line, headers, blank line) is exactly ``size`` bytes, in 1 KiB headers."""
    start = f"GET /livez HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
    lines, room = [], size - len(start) - 2
    while room > 0:
        line = b"X-Pad-%d: " % len(lines)
        fill = min(1024, room) - len(line) - 2
        if fill < 1:  # too little room for one more header: widen the previous one
            lines[-1] = lines[-1][:-2] + b"a" * room + b"\r\n"
            break
        lines.append(line + b"a" * fill + b"\r\n")
        room -= len(lines[-1])
    data = start + b"".join(lines) + b"\r\n"
    assert len(data) == size
    return data


@pytest.mark.parametrize(("size", "status"), [(63 << 10, 200), (MAX_HEADER_BYTES, 200), (65 << 10, 431)])
def test_request_heads_are_limited_to_64_KiB(capped: ServerProcess, size: int, status: int):
    with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as sock:
        sock.sendall(head(size))  # in one piece: the server reads it in one or two reads
        answer, _, body = read_reply(sock)
    assert int(answer.split()[1]) == status, (answer, body[:200])
    if status == 431:
        assert b"64 KiB" in body


@pytest.mark.parametrize(
    ("shape", "count", "words"),
    [
        ([2**58 + 1, 64], 64, "needs 18446744073709551680"),  # numpy's product wraps around to 64
        ([2**63, 64], 64, "below 2**63"),
        ([-1, 64], 64, "non-negative"),
        ([1, 64], 63, "holds 63 values"),
    ],
)
def test_v2_shapes_that_overflow_or_disagree_with_the_data_get_400(
    capped: ServerProcess, shape: list[int], count: int, words: str
):
    tensor = {"name": "input", "shape": shape, "datatype": "FP32", "data": [0.5] * count}
    response = httpx.post(capped.url + "/v2/models/mlp/infer", json={"inputs": [tensor]}, headers=AUTH)
    assert response.status_code == 400 and words in response.json()["error"], response.text
    assert "\n" not in response.json()["error"]
    assert "Traceback" not in capped.output() and "unexpected error" not in capped.output()


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(capped: ServerProcess, scheme: str):
    assert httpx.get(capped.url + "/readyz", headers={"authorization": f"{scheme} {TOKEN}"}).status_code == 200
    assert httpx.get(capped.url + "/readyz", headers={"authorization": f"{scheme} {TOKEN}x"}).status_code == 401
    assert httpx.get(capped.url + "/readyz", headers={"authorization": f"Basic {TOKEN}"}).status_code == 401


def test_non_finite_outputs_reach_the_client_as_numbers(capped: ServerProcess):
    x = np.full((2, 64), 3e38, np.float32)  # finite in float32, but the first layer's sums overflow
    raw = httpx.post(capped.url + "/v1/models/mlp:predict", json={"inputs": x.tolist()}, headers=AUTH)
    assert raw.status_code == 200 and "null" not in raw.text and "Infinity" in raw.text, raw.text
    with Client(capped.url, token=TOKEN) as client:
        predicted = client.predict("mlp", x)
        (inferred,) = client.infer("mlp", {"input": x}).values()
    assert predicted.dtype == np.float64 and inferred.dtype == np.float32 and np.isinf(predicted).any()
    np.testing.assert_array_equal(predicted, inferred)  # same values, NaN in the same places
