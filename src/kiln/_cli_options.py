"""Options several verbs share, defined once: ``kiln`` itself and the subsystems' commands modules (jobs, tune, ui)
build their parsers with these, so ``--store``, ``--blobs`` and ``--trust`` mean the same everywhere.

Imports only the standard library: building the parser must stay instant.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["store_options", "trust_option"]


class _BlobsAction(argparse.Action):
    """``--blobs PATH``: also exported as KILN_BLOBS, so verbs that open the store deeper down see it too."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        os.environ["KILN_BLOBS"] = str(values)
        setattr(namespace, self.dest, values)


def store_options(parser: argparse.ArgumentParser) -> None:
    """``--store PATH|URL`` and ``--blobs PATH``."""
    parser.add_argument(
        "--store", metavar="PATH|URL", default=None,
        help="the store: a directory (the embedded store) or a database URL, postgresql://USER@HOST/DB (default: "
        "$KILN_STORE, else $KILN_HOME, else ./.kiln)",
    )  # fmt: skip
    parser.add_argument(
        "--blobs", metavar="PATH", default=None, action=_BlobsAction,
        help="the blob directory of a database store, shared by every machine (default: $KILN_BLOBS, else "
        "$KILN_HOME/blobs, else ./.kiln/blobs)",
    )  # fmt: skip


def trust_option(parser: argparse.ArgumentParser, why: str) -> None:
    """``--trust MODULE`` (repeatable); ``why`` says what trusting means for this verb."""
    parser.add_argument(
        "--trust", action="append", default=[], metavar="MODULE",
        help=f"trust the factory code of MODULE and its submodules (repeatable; also KILN_TRUST=a,b): {why}",
    )  # fmt: skip
