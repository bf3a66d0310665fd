"""The `kiln` command: a thin layer over library functions.

Each verb lives in a small ``_add_<verb>`` function that registers its parser and handler; handlers import what
they need lazily so ``kiln --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__

Handler = Callable[[argparse.Namespace], int]


def _info(args: argparse.Namespace) -> int:
    import torch

    from .train.model import default_device

    print(f"kiln {__version__}")
    print(f"torch {torch.__version__}")
    print(f"device {default_device()}")
    print(f"threads {torch.get_num_threads()}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("info", help="show kiln and torch versions and the device kiln would train on")
    parser.set_defaults(handler=_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln",
        description="kiln: train, register and serve PyTorch models.",
        epilog="Run 'kiln VERB --help' for the options of one verb.",
    )
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = parser.add_subparsers(title="verbs", metavar="VERB")
    _add_info(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    from .errors import KilnError

    try:
        return handler(args)
    except KilnError as error:
        print(f"kiln: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
