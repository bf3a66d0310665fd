"""A real `kiln serve` subprocess on 127.0.0.1 for end-to-end tests: free port, bounded readiness poll, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

# `serve(...)` with ServeConfig fields the command line does not offer (drain_timeout_s, ...), as JSON in argv[3]
_SERVE = (
    "import json, sys\nfrom kiln.serve import serve\n"
    "raise SystemExit(serve(sys.argv[1], store=sys.argv[2], **json.loads(sys.argv[3])))"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m kiln.cli serve REFERENCE --store STORE --port P ...`` with its log in a temporary file.

    With ``options`` it runs ``kiln.serve.serve(REFERENCE, store=STORE, port=P, **options)`` instead (for settings
    the command line lacks); ``new_session`` makes it a process group leader, so a test can send the group a
    terminal's Ctrl+C.
    """

    def __init__(
        self, reference: str, store: Path | str, *args: str, env: dict[str, str] | None = None,
        options: dict[str, Any] | None = None, new_session: bool = False,
    ) -> None:  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="kiln-serve-", suffix=".log", delete=False)  # noqa: SIM115
        if options is None:
            command = [sys.executable, "-m", "kiln.cli", "serve", reference, "--store", str(store),
                       "--port", str(self.port), *args]  # fmt: skip
        else:
            command = [sys.executable, "-c", _SERVE, reference, str(store), json.dumps({"port": self.port, **options})]
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=new_session,
        )  # fmt: skip

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0, headers: dict[str, str] | None = None) -> None:
        """Poll /readyz until 200 (bounded); fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", headers=headers, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.output()[-3000:]}")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
        """Poll ``condition`` until it holds (bounded); fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode} before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.005)

    def children(self) -> list[int]:
        """Process ids of the server's children (the workers of ``--workers N``)."""
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log.close()
        os.unlink(self.log.name)


def read_reply(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """Status line, headers and body of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return status.encode(), headers, body
