"""The verbs of kiln.jobs: ``kiln train``, ``kiln run``, ``kiln pipelines list|show``, ``kiln runs rerun`` and
``kiln models rollback``.

Only argparse and the standard library are imported here; each handler imports what it needs when it runs, so
``kiln --help`` stays instant. ``rerun`` and ``rollback`` join the existing ``runs`` and ``models`` groups.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .._cli_options import store_options, trust_option

__all__ = ["add_commands"]


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


def _run(args: argparse.Namespace) -> int:
    from .execution import run_pipeline
    from .pipeline import load_pipeline
    from .steps import GateFailed

    pipeline = load_pipeline(args.pipeline, args.overrides)
    try:
        result = run_pipeline(pipeline, store=args.store, resume=args.resume, log=print)
    except GateFailed as failed:
        print(failed, file=sys.stderr)
        return 1
    print(f"pipeline {pipeline.section.name} finished: execution {result.run_id}")
    return 0


def _print(*renderables: Any) -> None:
    import shutil

    from rich.console import Console

    console = Console(width=shutil.get_terminal_size((120, 24)).columns, soft_wrap=False)
    for renderable in renderables:
        console.print(renderable)


def _open_store(args: argparse.Namespace) -> Any:
    from ..store import Store

    return Store(args.store, create=False)


def _pipelines_list(args: argparse.Namespace) -> int:
    from .records import execution_table, executions

    _print(execution_table(executions(_open_store(args), name=args.name, limit=args.limit)))
    return 0


def _pipelines_show(args: argparse.Namespace) -> int:
    from .records import execution_detail

    store = _open_store(args)
    _print(*execution_detail(store, store.run(args.run_id)))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from .rollback import rollback

    done = rollback(args.name, alias=args.alias, store=_open_store(args))
    print(f"{done.name}@{done.alias} -> version {done.version} (rolled back from {done.previous})")
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """A verb's parser whose positional words may stand before, between and after its options.

    Plain argparse fills each positional from one run of words, so in ``kiln train job.toml --store s fit.epochs=3``
    the override after ``--store s`` is an unrecognized argument. ``parse_known_intermixed_args`` reads the options
    first and then all the remaining words as the positionals. The ``kiln`` parser hands a verb its words through
    ``parse_known_args``, so that is where intermixing starts; the intermixed parse calls ``parse_known_args`` itself
    (on Python before 3.13), which ``_intermixing`` lets through to argparse's own.
    """

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _add_verb(sub: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``sub.add_parser(name, **kwargs)`` as an `_IntermixedParser`: overrides may follow the options."""
    parser_class = sub._parser_class
    sub._parser_class = _IntermixedParser
    try:
        return sub.add_parser(name, **kwargs)
    finally:
        sub._parser_class = parser_class


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise AssertionError(f"the {parser.prog!r} verb has no actions to extend")


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = _add_verb(
        sub,
        "train",
        help="train a job described by a TOML config, recorded as a run that can be rerun exactly",
        description="Read CONFIG (see docs/pipelines.md and docs/job.schema.json), apply the overrides, check every "
        "key, type, file and factory, then train and record the run: the resolved config, the config file's "
        "SHA-256, the code version and a fingerprint of the data. The factory your config names is trusted for "
        "this job.",
        epilog="example: kiln train job.toml fit.epochs=20 --store runs model.lr=3e-4  (overrides may stand "
        "before, between or after the options)",
    )
    parser.add_argument("config", help="the job's TOML file")
    parser.add_argument("overrides", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a value, e.g. fit.epochs=20 model.lr=3e-4")  # fmt: skip
    store_options(parser)
    parser.set_defaults(handler=_train)


def _add_rerun(runs: argparse._SubParsersAction) -> None:
    parser = _add_verb(
        runs,
        "rerun",
        help="run a recorded job config again as a new run linked to its origin",
        description="Reads the config RUN_ID recorded and trains it again as a new run tagged kiln.rerun_of; on the "
        "CPU the metrics equal the original's bit for bit. Writes no checkpoints and registers nothing unless asked.",
        epilog="example: kiln runs rerun 3f2a --register fit.epochs=30  (overrides may stand before, between or "
        "after the options)",
    )
    parser.add_argument("run_id", help="a run id or a unique prefix of one")
    parser.add_argument(
        "overrides", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override recorded values"
    )
    parser.add_argument("--register", action="store_true", help="also register (and promote) as the job says")
    trust_option(parser, "a recorded config is data, so the factories it names are imported only when trusted")
    store_options(parser)
    parser.set_defaults(handler=_rerun)


def _add_run(sub: argparse._SubParsersAction) -> None:
    parser = _add_verb(
        sub,
        "run",
        help="run a pipeline (train, evaluate, gate, register, promote, export, shell), recorded in the store",
        description="Run PIPELINE's steps in order; each execution is recorded in the store (kiln pipelines list). "
        "A failed gate stops it with 'not promoted: ...' and exit status 1. With --resume, an execution that "
        "stopped (a crash, SIGKILL, a failed step) continues: finished steps are skipped, a train step resumes "
        "from its last checkpoint.",
        epilog="example: kiln run release.toml --resume train.fit.epochs=20  (overrides may stand before, between "
        "or after the options)",
    )
    parser.add_argument("pipeline", help="the pipeline's TOML file")
    parser.add_argument("overrides", nargs="*", default=[], metavar="STEP.SECTION.KEY=VALUE",
                        help="override a train step's job, e.g. train.fit.epochs=20")  # fmt: skip
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest execution of this pipeline if it stopped before finishing",
    )
    store_options(parser)
    parser.set_defaults(handler=_run)


def _add_pipelines(sub: argparse._SubParsersAction) -> None:
    actions = sub.add_parser("pipelines", help="list and show pipeline executions").add_subparsers(metavar="ACTION")
    listing = actions.add_parser("list", help="pipeline executions, newest first")
    listing.add_argument("--name", help="only executions of this pipeline")
    listing.add_argument("--limit", type=int, default=20)
    show = actions.add_parser("show", help="one execution's steps: status, duration, outputs, error")
    show.add_argument("run_id", help="the execution's run id or a unique prefix of one")
    for parser, handler in ((listing, _pipelines_list), (show, _pipelines_show)):
        store_options(parser)
        parser.set_defaults(handler=handler)


def _add_rollback(models: argparse._SubParsersAction) -> None:
    parser = models.add_parser(
        "rollback",
        help="move an alias back to the version it pointed at before",
        description="Points NAME@ALIAS back at its previous holder from the alias history (a promotion undone; "
        "rolling back again goes further back). The move is recorded in the history like any promotion.",
    )
    parser.add_argument("name", help="the model, e.g. digits")
    parser.add_argument("--alias", default="production", help="the alias to move back (default production)")
    store_options(parser)
    parser.set_defaults(handler=_rollback)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the jobs verbs on the ``kiln`` parser (after the core verbs, whose groups two of them join)."""
    _add_train(sub)
    _add_run(sub)
    _add_pipelines(sub)
    _add_rerun(_subparsers(sub.choices["runs"]))
    _add_rollback(_subparsers(sub.choices["models"]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run these verbs through `kiln`")
