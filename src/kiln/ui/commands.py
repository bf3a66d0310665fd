"""The ``kiln ui`` verb. Imports only argparse at the top: the handler imports the web stack when it runs."""

from __future__ import annotations

import argparse

from .._cli_options import store_options

__all__ = ["add_commands"]


def _ui(args: argparse.Namespace) -> int:
    import contextlib
    import logging
    import sys

    from .config import UiConfig, token_from_env

    token = token_from_env(args.token_env) if args.token_env else None
    config = UiConfig(store=args.store, blobs=args.blobs, host=args.host, port=args.port, token=token,
                      allow_writes=args.allow_writes)  # fmt: skip
    from .server import serve_ui

    logging.basicConfig(level=logging.WARNING, format="kiln ui: %(levelname)s %(name)s: %(message)s")

    def ready(url: str) -> None:
        mode = "read-write" if config.allow_writes else "read-only"
        print(f"kiln ui: serving {mode} at {url}  (Ctrl+C to stop)", flush=True)
        if token is not None:
            print("kiln ui: the page asks for the token once; scripts send 'Authorization: Bearer <token>'", flush=True)
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is how it stops
        serve_ui(config, on_ready=ready)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ui",
        help="browse runs, curves and models in a web page (127.0.0.1:8765)",
        description="Serve a dashboard of the store: runs with live curves, compare, the model gallery with Try it. "
        "Binds 127.0.0.1 unless given a token; read-only unless --allow-writes (which needs a token too).",
    )
    store_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need a token)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--token-env", metavar="NAME", help="read the access token from this environment variable")
    parser.add_argument(
        "--allow-writes", action="store_true", help="offer promote-alias and delete-version actions (needs a token)"
    )
    parser.set_defaults(handler=_ui)
