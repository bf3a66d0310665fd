"""kiln.ui: ``kiln ui``, a web page over the store: runs and their live curves, compare, the model gallery, Try it.

Server-rendered HTML (Jinja2, autoescaped) on Starlette and uvicorn; charts by a vendored uPlot; a little plain
JavaScript, no build step, nothing fetched from the internet. Each view (runs, run, compare, models) owns its few
routes, thin glue over ``*_impl`` functions that return data.

Example:
    >>> from kiln.ui import UiConfig, serve_ui
    >>> serve_ui(UiConfig(store=".kiln"), on_ready=print)   # or, in a shell: kiln ui
    http://127.0.0.1:8765/
"""

from __future__ import annotations

from .app import create_app
from .config import UiConfig
from .server import serve_ui

__all__ = ["UiConfig", "create_app", "serve_ui"]
