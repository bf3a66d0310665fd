"""`kiln serve --workers 2` against signals at each moment of its life: every worker stops and the port is freed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ._server import ServerProcess, read_reply
from .conftest import Served

ARGS = ("--workers", "2", "--no-access-log")
REQUEST = b"GET /livez HTTP/1.1\r\nHost: kiln\r\n\r\n"


def running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has stopped running; it only waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


MOMENTS: dict[str, Callable[[ServerProcess], bool]] = {
    "both_spawned": lambda proc: len(proc.children()) == 2,  # the workers are importing, nothing is loaded
    "one_loaded": lambda proc: "loaded mlp@1" in proc.output(),  # one waits for the other, which may be loading
    "listening": lambda proc: "with 2 ready workers" in proc.output(),  # told to serve, installing handlers
}


@pytest.mark.parametrize(("moment", "how"), [("both_spawned", "ctrl-c"), ("one_loaded", "sigterm"),
                                             ("listening", "ctrl-c")])  # fmt: skip
def test_a_signal_at_any_moment_of_the_start_stops_every_worker(served: Served, moment: str, how: str):
    with ServerProcess("mlp@production", served.store, *ARGS, new_session=True) as proc:
        proc.wait_for(lambda: MOMENTS[moment](proc), moment)
        workers = proc.children()
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(proc.process.pid, signal.SIGINT)
        else:
            proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(timeout=30) == 0, proc.output()
        output = proc.output()
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
        assert not any(running(pid) for pid in workers), output
        assert refused(proc.port)


def test_a_worker_that_does_not_stop_in_time_is_killed_and_the_status_says_so(served: Served):
    options = {"workers": 2, "drain_timeout_s": 1.0, "access_log": False}
    with ServerProcess("mlp@production", served.store, options=options) as proc:
        proc.wait_ready()
        stuck, other = proc.children()
        os.kill(stuck, signal.SIGSTOP)  # frozen: it cannot act on the SIGTERM its parent forwards
        try:
            started = time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            assert proc.process.wait(timeout=20) == 1, proc.output()
            elapsed = time.monotonic() - started
        finally:
            if running(stuck):
                os.kill(stuck, signal.SIGKILL)
        assert 1.0 <= elapsed < 8.0, elapsed
        lines = [line for line in proc.output().splitlines() if "did not stop" in line]
        assert len(lines) == 1 and str(stuck) in lines[0] and str(other) not in lines[0], proc.output()
        assert not running(stuck) and not running(other)
        assert refused(proc.port)


def test_a_drain_refuses_new_connections_and_closes_keep_alive_ones(served: Served):
    body = b'{"inputs": [' + b"0.5, " * 63 + b"0.5]}"
    head = b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: kiln\r\nContent-Length: %d\r\n" % len(body)
    with ServerProcess("mlp@production", served.store, *ARGS) as proc:
        proc.wait_ready()
        with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as client:
            client.sendall(head + b"\r\n" + body)
            status, headers, _ = read_reply(client)
            assert status.startswith(b"HTTP/1.1 200") and headers.get("connection") != "close"
            # the next request on this keep-alive connection waits for "100 Continue" before sending its body:
            # once that arrives, the request is in the app, in flight
            client.sendall(head + b"Expect: 100-continue\r\n\r\n")
            status, _, _ = read_reply(client)
            assert status.startswith(b"HTTP/1.1 100"), status
            workers = proc.children()
            proc.process.send_signal(signal.SIGTERM)

            def draining() -> bool:  # one worker has exited, the other stopped accepting and waits for our request
                alive = [pid for pid in workers if running(pid)]
                return len(alive) == 1 and f"[{alive[0]}]: Waiting for connections to close" in proc.output()

            proc.wait_for(draining, "one worker exited and the other waiting for the request in flight")
            # nobody accepts any more: a new connection must be refused, not taken by the kernel into a backlog
            with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", proc.port), 2) as probe:
                probe.sendall(REQUEST)
                read_reply(probe)  # a TimeoutError here: accepted into the backlog and left hanging
            client.sendall(body)
            status, headers, _ = read_reply(client)
            assert status.startswith(b"HTTP/1.1 200") and headers.get("connection") == "close", headers
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(1) == b""  # and the server closed it
        assert proc.process.wait(timeout=30) == 0, proc.output()
