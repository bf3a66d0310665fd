"""The verbs of kiln.tune: ``kiln tune JOB --space SPACE`` and ``kiln tune show [STUDY]``.

Only argparse and the standard library are imported here; handlers import kiln.tune (and Optuna) when they run, so
``kiln --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._cli_options import store_options, trust_option

__all__ = ["add_commands"]


def _print(*renderables: Any) -> None:
    import shutil

    from rich.console import Console

    console = Console(width=shutil.get_terminal_size((120, 24)).columns, soft_wrap=False)
    for renderable in renderables:
        console.print(renderable)


def _need_optuna() -> None:
    from ..errors import ConfigError

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("kiln tune needs Optuna: pip install 'kiln[tune]'.") from None


def _show(args: argparse.Namespace) -> int:
    from ..store import Store
    from .report import studies_table, study_tables
    from .results import list_studies, load_study

    _need_optuna()
    store = Store(args.store, create=False)
    if args.study is None:
        _print(studies_table(list_studies(store)))
        return 0
    study = load_study(args.study, store=store)
    _print(*study_tables(study))
    if args.plot is not None:
        for path in study.plot(args.plot):
            print(f"wrote {path}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    if args.target == "show":
        return _show(args)
    if args.study is not None and args.study_option is not None:
        raise ConfigError("give the study name once: --study NAME.")
    _need_optuna()
    if args.space is None:
        raise ConfigError("kiln tune JOB needs --space SPACE.toml (the parameters to search and their ranges).")
    from .jobs import job_objective
    from .space import read_space
    from .study import tune

    space = read_space(args.space)
    objective = job_objective(args.target, overrides=args.set, trust=args.trust, store=args.store)
    study = tune(objective, space=space, trials=args.trials, metric=args.metric, direction=args.direction,
                 workers=args.workers, timeout=args.timeout, pruner=args.pruner, sampler=args.sampler,
                 study=args.study_option or args.study, store=args.store, resume=args.resume, seed=args.seed,
                 register=args.register)  # fmt: skip
    best = study.best_trial
    print(f"study {study.name}: best trial {best.number}, {study.metric} {best.value:.4g}, run {best.run_id}")
    print("best params: " + ", ".join(f"{k}={v!r}" for k, v in best.params.items()))
    if args.register is not None:
        print(f"registered {args.register} from trial {best.number} (kiln models show {args.register})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``kiln tune`` (and its ``show`` form) on the ``kiln`` parser."""
    parser = sub.add_parser(
        "tune",
        help="search hyperparameters with Optuna (every trial a run); 'kiln tune show [STUDY]' to inspect one",
        description="kiln tune JOB --space SPACE: run a study whose trials train the job config JOB with the "
        "parameters of SPACE (a TOML file: lr = {log = [1e-4, 1e-1]}, width = {int = [32, 256]}, ...), each one "
        "a run in the store. kiln tune show: the studies of the store; kiln tune show STUDY: its best trial, "
        "trials and parameter importances.",
    )
    parser.add_argument("target", metavar="JOB|show", help="a job config (job.toml), or 'show'")
    parser.add_argument("study", nargs="?", default=None, help="with 'show': the study to show")
    parser.add_argument("--space", metavar="SPACE.toml", help="the search space")
    parser.add_argument("--trials", type=int, default=50, help="trials in the study, in all (default 50)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the store (default 1)")
    parser.add_argument("--metric", default="val_accuracy", help="the epoch log to optimise (default val_accuracy)")
    parser.add_argument("--direction", default="maximize", help="maximize (default) or minimize")
    parser.add_argument("--pruner", default="median", help="median (default), hyperband, successive_halving, none")
    parser.add_argument("--sampler", default="tpe", help="tpe (default), random, cmaes")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop starting trials after")
    parser.add_argument("--study", dest="study_option", default=None, metavar="NAME",
                        help="the study's name (default: the job's name and the time)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue the study NAME up to --trials trials")
    parser.add_argument("--seed", type=int, default=None, help="seed the sampler")
    parser.add_argument("--register", metavar="MODEL", default=None,
                        help="register the best trial as the next version of MODEL (lineage to its run)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override the job config for every trial, as kiln train does (repeatable)")  # fmt: skip
    trust_option(parser, "the job's factory module, as kiln train --trust")
    parser.add_argument("--plot", metavar="DIR", default=None,
                        help="with 'show': write the optimisation history and importances as PNGs to DIR")  # fmt: skip
    store_options(parser)
    parser.set_defaults(handler=_tune)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run these verbs through `kiln`")
