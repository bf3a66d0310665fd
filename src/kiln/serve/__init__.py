"""kiln.serve: a registered model behind HTTP, fast and safe by default.

Loads a version from the store (every hash verified), warms it up, then answers through a dynamic batcher:
kiln's JSON (``POST /v1/models/{name}:predict``) and the Open Inference Protocol (KServe v2), with health,
readiness, Prometheus metrics and OpenAPI docs. Binds 127.0.0.1 unless given a token.

Example:
    >>> from kiln.serve import Client, serve
    >>> serve("digits@production", store=".kiln", port=8000)          # blocks until SIGTERM / Ctrl+C
    >>> Client("http://127.0.0.1:8000").predict("digits", x[:4]).argmax(-1)
"""

from __future__ import annotations

from .app import KilnApp, create_app
from .client import Client, ServerError
from .config import ServeConfig
from .server import serve

__all__ = ["Client", "KilnApp", "ServeConfig", "ServerError", "create_app", "serve"]
