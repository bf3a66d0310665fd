"""Pipeline executions as the store records them (see :mod:`kiln.jobs.execution`), listed and shown as tables.

The store has no query by tag, so listing reads the newest runs and keeps those tagged ``kiln.kind = pipeline``
(a store-side tag filter would make this one query; see docs/pipelines.md).
"""

from __future__ import annotations

import datetime as dt
import json

from rich.table import Table
from rich.text import Text

from ..store import RunInfo, Store
from .execution import read_record, summarize

__all__ = ["execution_detail", "execution_table", "executions"]

_STYLE = {"finished": "green", "failed": "red", "killed": "yellow", "running": "cyan", "pending": "dim",
          "stale": "magenta"}  # fmt: skip


def executions(store: Store, *, name: str | None = None, limit: int = 20) -> list[RunInfo]:
    """The newest pipeline executions (optionally of one pipeline), newest first."""
    found = [r for r in store.runs(name=name, limit=max(limit, 1) * 20) if r.tags.get("kiln.kind") == "pipeline"]
    return found[:limit]


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}m"


def execution_table(runs: list[RunInfo]) -> Table:
    table = Table(title="pipeline executions", title_justify="left")
    for column in ("id", "pipeline", "status", "started", "duration", "steps"):
        table.add_column(column, overflow="fold")
    for run in runs:
        total = len(run.params.get("pipeline", {}).get("steps", []))
        done = int(run.latest.get("steps_finished", 0))
        table.add_row(
            run.id[:12],
            run.name,
            Text(run.status, style=_STYLE.get(run.status, "")),
            _when(run.start_time),
            _seconds(run.duration),
            f"{done}/{total} finished",
        )
    return table


def execution_detail(store: Store, run: RunInfo) -> list[Table]:
    """A summary of one execution and a table of its steps (status, duration, outputs, error)."""
    summary = Table(title=f"pipeline {run.name}", title_justify="left", show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value", overflow="fold")
    summary.add_row("execution", run.id)
    summary.add_row("status", Text(run.status, style=_STYLE.get(run.status, "")))
    summary.add_row("started", _when(run.start_time))
    summary.add_row("duration", _seconds(run.duration))
    summary.add_row("file", json.dumps(run.params.get("file")))
    summary.add_row("sha256", str(run.params.get("sha256")))
    steps = Table(title="steps", title_justify="left")
    for column in ("step", "kind", "status", "duration", "outputs", "error"):
        steps.add_column(column, overflow="fold")
    for entry in read_record(store, run)["steps"]:
        steps.add_row(
            entry["name"],
            entry["kind"],
            Text(entry["status"], style=_STYLE.get(entry["status"], "")),
            _seconds(entry["seconds"]),
            summarize(entry["outputs"]),
            entry["error"] or "",
        )
    return [summary, steps]
