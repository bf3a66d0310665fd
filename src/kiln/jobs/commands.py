"""The verbs of kiln.jobs: ``kiln train``, ``kiln run``, ``kiln pipelines list|show``, ``kiln runs rerun`` and
``kiln models rollback``.

Only argparse and the standard library are imported here; each handler imports what it needs when it runs, so
``kiln --help`` stays instant. ``rerun`` and ``rollback`` join the existing ``runs`` and ``models`` groups.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_commands"]


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", metavar="PATH", default=None, help="the store directory (default: $KILN_HOME, else ./.kiln)"
    )


def _short(metrics: dict[str, float], limit: int = 6) -> str:
    keys = sorted(metrics, key=lambda k: (k != "loss", not k.startswith("val_"), not k.startswith("test_"), k))
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys[:limit])


def _print_result(result: Any, label: str) -> None:
    print(f"{label} {result.run_id} finished: {_short(result.metrics)}")
    if result.version is not None:
        promoted = f", {result.version.name}@{result.promoted} -> {result.version.version}" if result.promoted else ""
        print(f"registered {result.version.reference}{promoted}")


def _train(args: argparse.Namespace) -> int:
    from .config import load_job
    from .train import run_job

    job = load_job(args.config, args.overrides)
    _print_result(run_job(job, store=args.store), "run")
    return 0


def _rerun(args: argparse.Namespace) -> int:
    from .train import rerun

    result = rerun(args.run_id, store=args.store, trust=args.trust, overrides=args.overrides, register=args.register)
    _print_result(result, f"rerun of {args.run_id}:")
    return 0


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise AssertionError(f"the {parser.prog!r} verb has no actions to extend")


def _trust_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust", action="append", default=[], metavar="MODULE",
        help="trust the factory code of MODULE and its submodules (repeatable; also KILN_TRUST=a,b): a recorded "
        "config is data, so the factories it names are imported only when trusted",
    )  # fmt: skip


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train a job described by a TOML config, recorded as a run that can be rerun exactly",
        description="Read CONFIG (see docs/pipelines.md and docs/job.schema.json), apply the overrides, check every "
        "key, type, file and factory, then train and record the run: the resolved config, the config file's "
        "SHA-256, the code version and a fingerprint of the data. The factory your config names is trusted for "
        "this job.",
    )
    parser.add_argument("config", help="the job's TOML file")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE",
                        help="override a value, e.g. fit.epochs=20 model.lr=3e-4")  # fmt: skip
    _store_option(parser)
    parser.set_defaults(handler=_train)


def _add_rerun(runs: argparse._SubParsersAction) -> None:
    parser = runs.add_parser(
        "rerun",
        help="run a recorded job config again as a new run linked to its origin",
        description="Reads the config RUN_ID recorded and trains it again as a new run tagged kiln.rerun_of; on the "
        "CPU the metrics equal the original's bit for bit. Writes no checkpoints and registers nothing unless asked.",
    )
    parser.add_argument("run_id", help="a run id or a unique prefix of one")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="override recorded values")
    parser.add_argument("--register", action="store_true", help="also register (and promote) as the job says")
    _trust_option(parser)
    _store_option(parser)
    parser.set_defaults(handler=_rerun)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the jobs verbs on the ``kiln`` parser (after the core verbs, whose groups two of them join)."""
    _add_train(sub)
    _add_rerun(_subparsers(sub.choices["runs"]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run these verbs through `kiln`")
