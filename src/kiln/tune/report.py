"""How a study is shown: the best trial, the trials table and the importances (rich), and two PNG plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .summary import StudySummary, TrialSummary


class Study(Protocol):
    """What the tables and plots read of a :class:`kiln.tune.Study` (typed so, without importing it)."""

    @property
    def name(self) -> str: ...

    @property
    def metric(self) -> str | None: ...

    @property
    def direction(self) -> str: ...

    @property
    def best_trial(self) -> TrialSummary: ...

    def trials(self) -> list[TrialSummary]: ...

    def importances(self) -> dict[str, float]: ...


__all__ = ["plot_study", "studies_table", "study_tables", "trials_table"]

_STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}


def _value(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _evaluator() -> str:
    """The importance evaluator :meth:`kiln.tune.Study.importances` uses here: fANOVA needs scikit-learn."""
    import importlib.util

    return "fANOVA" if importlib.util.find_spec("sklearn") is not None else "PED-ANOVA"


def studies_table(studies: Sequence[StudySummary]) -> Any:
    from rich.table import Table

    table = Table(title="studies", title_justify="left")
    for column in ("name", "metric", "direction", "trials", "best", "states"):
        table.add_column(column, justify="right" if column in ("trials", "best") else "left")
    for s in studies:
        states = ", ".join(f"{count} {state.lower()}" for state, count in sorted(s.states.items()))
        table.add_row(s.name, s.metric or "-", s.direction, str(s.trials), _value(s.best_value), states)
    return table


def trials_table(study: Study, trials: Sequence[TrialSummary], *, best: int | None) -> Any:
    from rich.table import Table
    from rich.text import Text

    names = list(dict.fromkeys(name for t in trials for name in t.params))
    table = Table(title=f"trials of {study.name}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("state")
    table.add_column(study.metric or "value", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for column in ("epochs", "seconds", "run"):
        table.add_column(column, justify="right" if column != "run" else "left")
    for t in trials:
        mark = " *" if t.number == best else ""
        state = t.state.lower() + (f" (retry of {t.retry_of})" if t.retry_of is not None else "")
        table.add_row(
            f"{t.number}{mark}", Text(state, style=_STATE_STYLE.get(t.state, "")), _value(t.value),
            *(_param(t.params[n]) if n in t.params else "-" for n in names),
            str(t.epochs), "-" if t.seconds is None else f"{t.seconds:.1f}", (t.run_id or "-")[:12],
        )  # fmt: skip
    return table


def study_tables(study: Study) -> list[Any]:
    """What ``kiln tune show STUDY`` prints: summary and best params, the trials table, the importances."""
    from rich.table import Table

    trials = study.trials()
    head = Table(title=f"study {study.name}", title_justify="left", show_header=False)
    head.add_column("key")
    head.add_column("value")
    head.add_row("metric", f"{study.metric} ({study.direction})")
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.lower()] = counts.get(t.state.lower(), 0) + 1
    head.add_row("trials", ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none")
    best = None
    if any(t.state == "COMPLETE" for t in trials):
        top = study.best_trial
        best = top.number
        head.add_row("best trial", f"{top.number}: {study.metric} {_value(top.value)} (run {top.run_id})")
        for name, value in top.params.items():
            head.add_row(f"  {name}", _param(value))
    out = [head, trials_table(study, trials, best=best)]
    importances = study.importances()
    if importances:
        table = Table(title=f"parameter importances ({_evaluator()})", title_justify="left")
        table.add_column("parameter")
        table.add_column("importance", justify="right")
        table.add_column("")
        for name, share in importances.items():
            table.add_row(name, f"{share:.3f}", "█" * round(share * 30))
        out.append(table)
    return out


def plot_study(study: Study, directory: Path) -> list[Path]:
    """``<study>-history.png`` (every trial's value, the best so far, pruned trials marked) and, with 2+ completed
    trials, ``<study>-importances.png``."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    except ImportError as error:
        raise ImportError("kiln tune show --plot needs matplotlib: pip install 'kiln[tune]'.") from error
    directory.mkdir(parents=True, exist_ok=True)
    trials = study.trials()
    maximize = study.direction == "maximize"
    paths = []
    figure = Figure(figsize=(7.0, 4.0), dpi=100)
    axes = figure.subplots()
    for state, color, marker in (("COMPLETE", "C0", "o"), ("PRUNED", "C1", "x")):
        points = [(t.number, t.value) for t in trials if t.state == state and t.value is not None]
        if points:
            numbers, values = zip(*points, strict=True)
            axes.scatter(numbers, values, color=color, marker=marker, s=22, label=state.lower(), zorder=3)
    best_x, best_y, running = [], [], None
    for t in trials:
        value = t.value if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value) else None
        if value is not None and (running is None or (value > running if maximize else value < running)):
            running = value
        if running is not None:
            best_x.append(t.number)
            best_y.append(running)
    if best_x:
        axes.step(best_x, best_y, where="post", color="C3", linewidth=1.5, label="best so far")
    axes.set_xlabel("trial")
    axes.set_ylabel(study.metric or "value")
    axes.set_title(f"optimisation history: {study.name}")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    path = directory / f"{study.name}-history.png"
    figure.savefig(path)
    paths.append(path)
    importances = study.importances()
    if importances:
        names = list(importances)[::-1]
        figure = Figure(figsize=(6.0, 0.5 + 0.45 * len(names)), dpi=100)
        axes = figure.subplots()
        axes.barh(names, [importances[n] for n in names], color="C0")
        axes.set_xlabel(f"importance ({_evaluator()}: share of the variation of the metric)")
        axes.set_xlim(0, 1)
        axes.set_title(f"parameter importances: {study.name}")
        figure.tight_layout()
        path = directory / f"{study.name}-importances.png"
        figure.savefig(path)
        paths.append(path)
    return paths
