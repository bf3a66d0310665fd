"""What the gallery examples share: their command line, and serving the registered model and querying it over HTTP.

Not an example of its own; the gallery scripts import it (``from serving import served``), so copy it along with the
script you copy. ``example_parser`` is each script's argument parser: its ``--help`` prints the first paragraph of
the script's docstring and where the rest is (the docstring is the script's whole gallery page, too long for a
terminal). ``served`` starts ``kiln serve NAME@ALIAS`` as a real process on 127.0.0.1 (the store is the same
``$KILN_HOME`` or ``./.kiln`` the script registered into), waits until it is ready, hands you a
:class:`kiln.serve.Client`, and stops the server with SIGTERM (it answers what is in flight, then exits 0).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import kiln.store
from kiln.serve import Client


def example_parser(doc: str | None, script: str) -> argparse.ArgumentParser:
    """The argument parser of the gallery script ``script`` (its ``__file__``) whose docstring is ``doc``.

    ``--help`` prints the docstring's first paragraph and where the rest is, not the whole page.
    """
    summary = (doc or "").strip().split("\n\n", 1)[0]
    path = Path(script).resolve()
    folder = Path(__file__).resolve().parent
    name = path.relative_to(folder).with_suffix("").as_posix() if path.is_relative_to(folder) else path.stem
    where = f"examples/{name}.py" if path.is_relative_to(folder) else path.name
    more = f"The whole page: {where}'s docstring (gallery/{name}.md on the docs site)."
    formatter = argparse.RawDescriptionHelpFormatter  # keeps the two paragraphs apart
    return argparse.ArgumentParser(description=f"{summary}\n\n{more}", formatter_class=formatter)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(reference: str, *, timeout: float = 120.0) -> Iterator[Client]:
    """``kiln serve REFERENCE`` on a free port for the duration of the ``with`` block.

    Example:
        >>> with served("tabular@production") as client:
        ...     logits = client.predict("tabular", x)
    """
    port = free_port()
    command = [sys.executable, "-m", "kiln.cli", "serve", reference, "--port", str(port), "--no-access-log"]
    with tempfile.TemporaryFile(mode="w+") as log:  # the server's log, shown if it fails to start
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            with Client(f"http://127.0.0.1:{port}") as client:
                deadline = time.monotonic() + timeout
                while not client.ready():  # poll /readyz; give up if the server exits or the deadline passes
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise SystemExit(f"kiln serve {reference} did not become ready:\n{log.read()[-2000:]}")
                    time.sleep(0.1)
                yield client
        finally:
            if server.poll() is None:
                server.terminate()  # SIGTERM: the server drains in-flight requests and exits 0
            server.wait(timeout=60)


def promote(version: Any, run_id: str | None) -> str:
    """Point ``NAME@production`` at a just-registered ``version`` and say so; returns ``"NAME@production"``."""
    kiln.store.Store().promote(version.name, version.version, "production")  # $KILN_HOME or ./.kiln, as the Model's
    print(f"registered {version.reference} (run {run_id}) and promoted it to production")
    return f"{version.name}@production"


def show_commands(reference: str, request: dict[str, Any], path: Path, *, note: str = "") -> None:
    """Write one request body to ``path`` and print the two commands that serve the model and send it."""
    path.write_text(json.dumps(request, default=_plain) + "\n")
    name = reference.split("@")[0]
    print(f"\nserve it:   kiln serve {reference}")
    print(
        f"query it:   kiln predict {name} --input @{path}     # or: curl -s localhost:8000/v1/models/{name}:predict "
        f"-d @{path}"
    )
    if note:
        print(f"            {note}")


def show_file_commands(reference: str, path: Path, content_type: str, *, note: str = "") -> None:
    """Print the commands that serve the model and send it one file (WAV, PNG, ...) as it is."""
    name = reference.split("@")[0]
    print(f"\nserve it:   kiln serve {reference}")
    print(
        f"query it:   kiln predict {name} --file {path}     # or: curl -s localhost:8000/v1/models/{name}:predict "
        f"--data-binary @{path} -H 'Content-Type: {content_type}'"
    )
    if note:
        print(f"            {note}")


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
