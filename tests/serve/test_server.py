"""End to end against real `kiln serve` subprocesses on 127.0.0.1: answers, batching, hostile clients, SIGTERM."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
import torch

from kiln.cli import main
from kiln.serve import Client, ServerError

from ._load import post_many
from ._server import ServerProcess
from .conftest import Served, reference_outputs, run

TOKEN = "e2e-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(served: Served) -> Iterator[ServerProcess]:
    with ServerProcess("mlp@production", served.store, "--max-body-bytes", "65536", "--client-timeout", "1") as proc:
        proc.wait_ready()
        yield proc
        assert proc.terminate() == 0, proc.output()[-2000:]


def rows(count: int, seed: int = 0) -> np.ndarray:
    return torch.rand(count, 64, generator=torch.Generator().manual_seed(seed)).numpy()


def assert_serves_correctly(url: str, served: Served, **client_options: str) -> None:
    x = rows(3, seed=42)
    with Client(url, **client_options) as client:
        np.testing.assert_allclose(client.predict("mlp", x), reference_outputs(served.module, x), rtol=1e-4, atol=1e-5)


def test_predictions_match_the_module_in_process(server: ServerProcess, served: Served, capsys):
    x = rows(8)
    expected = reference_outputs(served.module, x).numpy()
    with Client(server.url) as client:
        np.testing.assert_allclose(client.predict("mlp", x), expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(client.predict("mlp", x[0]), expected[0], rtol=1e-4, atol=1e-5)
        (output,) = client.infer("mlp", {"input": x}).values()
        assert output.dtype == np.float32 and output.shape == (8, 10)
        np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)
        assert client.metadata("mlp")["runtime"] == "onnx"
        with pytest.raises(ServerError, match="422"):
            client.predict("mlp", x[:, :10])
    assert main(["predict", "mlp", "--url", server.url, "--input", json.dumps(x[:2].tolist())]) == 0
    printed = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(printed["outputs"], expected[:2], rtol=1e-4, atol=1e-5)


def test_concurrent_clients_form_batches(server: ServerProcess, served: Served):
    x = rows(64, seed=3)
    expected = reference_outputs(served.module, x).numpy()
    bodies = [orjson.dumps({"inputs": x[i % 64]}, option=orjson.OPT_SERIALIZE_NUMPY) for i in range(1024)]
    replies = run(post_many(server.port, "/v1/models/mlp:predict", bodies, connections=64))
    for i, reply in enumerate(replies):
        assert reply.status == 200
        np.testing.assert_allclose(orjson.loads(reply.body)["outputs"], expected[i % 64], rtol=1e-4, atol=1e-5)
    metrics = httpx.get(server.url + "/metrics").text
    singles = _value(metrics, 'kiln_batch_size_bucket{le="1"}')
    calls = _value(metrics, "kiln_batch_size_count")
    assert calls > singles, f"no model call saw more than one sample ({calls} calls)"


def _value(metrics: str, name: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + " "))


def raw_request(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer and stop reading before we finish
            sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_hostile_inputs_get_the_right_status_and_the_server_keeps_answering(server: ServerProcess, served: Served):
    path = "/v1/models/mlp:predict"
    deep = b'{"inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    cases = [
        (b'{"inputs": [' + b"0.5," * 40000 + b"0.5]}", 413),  # over --max-body-bytes
        (b'{"inputs": [[1, 2], [3]]}', 400),  # ragged
        (b'{"inputs": [0.1, 0.2', 400),  # truncated JSON
        (deep, 400),  # deeper than the JSON parser allows
        (b'{"inputs": ' + b"[" * 100 + b"1" + b"]" * 100 + b"}", 400),  # parses, but deeper than any tensor
        (json.dumps({"inputs": ["a"] * 64}).encode(), 422),  # wrong dtype
        (json.dumps({"inputs": [[0.0] * 65]}).encode(), 422),  # wrong shape
        (b'{"inputs": [NaN' + b", 0.0" * 63 + b"]}", 400),  # NaN is not JSON
        (b'{"inputs": [1e39' + b", 0.0" * 63 + b"]}", 422),  # overflows float32 to inf
        (b"\xff\xfe\x00", 400),  # not UTF-8
    ]
    for body, status in cases:
        response = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, (body[:60], response.text)
        assert str(served.store) not in response.text and "Traceback" not in response.text
    # a body streamed in chunks, with no Content-Length, over the limit: cut off at the limit
    chunked = httpx.post(server.url + path, content=iter([b'{"inputs": [' + b"0.5," * 5000] * 10))
    assert chunked.status_code == 413
    assert_serves_correctly(server.url, served)


def test_slow_clients_are_cut_off(server: ServerProcess, served: Served):
    result: dict[str, bytes] = {}

    def slowloris() -> None:  # headers one byte at a time, never finished
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            try:
                while time.monotonic() - started < 8:
                    sock.sendall(b"X")
                    time.sleep(0.1)
            except OSError:  # the server closed the connection
                pass
            result["slowloris"] = sock.recv(4096)
            result["seconds"] = str(time.monotonic() - started).encode()

    thread = threading.Thread(target=slowloris)
    thread.start()
    assert_serves_correctly(server.url, served)  # answered while the slow client hangs on
    slow_body = raw_request(
        server.port, b'POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"inp'
    )
    huge_headers = raw_request(server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\n" + b"X-Junk: abcdefgh\r\n" * 8000)
    assert huge_headers.startswith(b"HTTP/1.1 431"), huge_headers[:200]
    thread.join(timeout=15)
    assert slow_body.startswith(b"HTTP/1.1 408"), slow_body[:200]
    assert result["slowloris"].startswith(b"HTTP/1.1 408"), result
    assert float(result["seconds"]) < 5
    assert_serves_correctly(server.url, served)


@pytest.fixture(scope="module")
def slow_server(served: Served) -> Iterator[ServerProcess]:
    """The torch runtime with a model slow enough (about 1 ms a sample) that a flood outruns it; batches wait up
    to 2 s to fill, so requests stay in flight long enough to be caught by a SIGTERM."""
    args = ("--max-queue", "64", "--max-batch-size", "64", "--max-delay-ms", "2000", "--no-access-log")
    with ServerProcess("slow", served.store, *args) as proc:
        proc.wait_ready()
        yield proc


def test_a_thousand_requests_against_a_queue_of_64(slow_server: ServerProcess):
    body = orjson.dumps({"inputs": rows(1).tolist()})
    replies = run(post_many(slow_server.port, "/v1/models/slow:predict", [body] * 1000, connections=1000))
    statuses = [reply.status for reply in replies]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(503) > 0 and statuses.count(200) >= 64
    refused = next(reply for reply in replies if reply.status == 503)
    assert refused.headers["retry-after"] == "1" and b"queue" in refused.body
    ok = httpx.post(slow_server.url + "/v1/models/slow:predict", content=b'{"inputs": [[' + b"0.5," * 63 + b"0.5]]}")
    assert ok.status_code == 200 and len(ok.json()["outputs"]) == 1
    metrics = httpx.get(slow_server.url + "/metrics").text
    assert 'kiln_errors_total{kind="queue_full"}' in metrics
    assert 'kiln_model_info{model="slow",runtime="torch",version="1"} 1' in metrics


def test_sigterm_completes_requests_in_flight_then_exits_0(slow_server: ServerProcess):
    url = slow_server.url + "/v1/models/slow:predict"
    x = rows(8, seed=5)
    results: list[httpx.Response | None] = [None] * 8

    def send(i: int) -> None:
        results[i] = httpx.post(url, json={"inputs": [x[i].tolist()]}, timeout=30)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while _value(httpx.get(slow_server.url + "/metrics").text, "kiln_queue_depth") < 8:  # all 8 wait for a batch
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.01)
    assert slow_server.terminate() == 0, slow_server.output()[-2000:]
    for thread in threads:
        thread.join(timeout=30)
    answers = [np.asarray(response.json()["outputs"]) for response in results if response is not None]
    assert len(answers) == 8 and all(answer.shape == (1, 10) for answer in answers)
    assert "Finished server process" in slow_server.output()


def test_workers_share_the_port_behind_a_token(served: Served):
    env = {"KILN_TEST_TOKEN": TOKEN}
    args = ("--workers", "2", "--token-env", "KILN_TEST_TOKEN", "--no-access-log")
    with ServerProcess("mlp@production", served.store, *args, env=env) as proc:
        auth = {"authorization": f"Bearer {TOKEN}"}
        proc.wait_ready(headers=auth)
        assert httpx.get(proc.url + "/readyz").status_code == 401
        assert httpx.post(proc.url + "/v1/models/mlp:predict", json={"inputs": [0.0] * 64}).status_code == 401
        for _ in range(4):  # connections land on either worker; each must answer correctly
            assert_serves_correctly(proc.url, served, token=TOKEN)
        assert proc.terminate() == 0, proc.output()[-2000:]
        assert TOKEN not in proc.output()


def test_non_loopback_bind_without_token_is_refused(served: Served, capsys):
    assert main(["serve", "mlp@production", "--store", str(served.store), "--host", "0.0.0.0"]) == 2
    assert "without an auth token" in capsys.readouterr().err
    assert main(["serve", "mlp@nope", "--store", str(served.store)]) == 2  # unknown alias: fails before binding
