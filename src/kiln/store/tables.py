"""Readable tables (rich) of runs, models, versions and verification reports, for the ``kiln`` command."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from typing import Any

from rich.table import Table
from rich.text import Text

from .registry import AliasMove, ModelSummary, ModelVersion
from .runs import RunInfo
from .verify import VerifyReport

__all__ = ["alias_table", "model_table", "run_detail", "run_table", "verify_table", "version_detail", "version_table"]

_STATUS_STYLE = {"running": "cyan", "finished": "green", "failed": "red", "killed": "yellow", "stale": "magenta"}
_STATUS_NOTE = {
    "stale": "recorded running, but its process cannot be checked from here and it has been silent too long",
    "killed": "interrupted, or its process died without finishing the run",
}


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def number(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def _metrics(values: dict[str, Any], limit: int = 4) -> str:
    keys = sorted(values, key=lambda k: (k != "loss", not k.startswith("val_"), k))[:limit]
    return "  ".join(f"{k}={number(values[k])}" for k in keys)


def run_table(runs: Iterable[RunInfo]) -> Table:
    table = Table(title="runs", title_justify="left")
    for column in ("id", "name", "status", "started", "duration", "metrics"):
        table.add_column(column, overflow="fold")
    for run in runs:
        latest = {k: v for k, v in run.latest.items() if k not in ("epoch", "batch_loss")}
        table.add_row(
            run.id[:12],
            run.name,
            Text(run.status, style=_STATUS_STYLE.get(run.status, "")),
            when(run.start_time),
            duration(run.duration),
            _metrics(latest),
        )
    return table


def _pairs(title: str, pairs: Iterable[tuple[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, min_width=len(title) + 4)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in pairs:
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, default=str))
    return table


def _process(process: dict[str, Any]) -> str:
    if not process:
        return "-"
    return f"pid {process.get('pid')} on {process.get('host')}"


def run_detail(run: RunInfo) -> list[Table]:
    status = f"{run.status} ({_STATUS_NOTE[run.status]})" if run.status in _STATUS_NOTE else run.status
    overview = _pairs(f"run {run.id}", [
        ("name", run.name), ("status", status), ("started", when(run.start_time)),
        ("ended", when(run.end_time)), ("duration", duration(run.duration)),
        ("process", _process(run.process)), ("last heartbeat", when(run.heartbeat)),
        *((f"tag {k}", v) for k, v in sorted(run.tags.items())),
    ])  # fmt: skip
    tables = [overview, _pairs("params", sorted(run.params.items())), _pairs("system", sorted(run.system.items()))]
    tables.append(_pairs("latest metrics", [(k, number(v)) for k, v in sorted(run.latest.items())]))
    if run.artifacts:
        tables.append(
            _pairs(
                "artifacts", [(k, f"{b.size} bytes  sha256:{b.sha256[:16]}") for k, b in sorted(run.artifacts.items())]
            )
        )
    return tables


def model_table(models: Iterable[ModelSummary]) -> Table:
    table = Table(title="models", title_justify="left")
    for column in ("name", "versions", "latest", "aliases", "updated"):
        table.add_column(column, overflow="fold")
    for model in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(model.aliases.items()))
        table.add_row(model.name, str(model.versions), number(model.latest), aliases or "-", when(model.updated))
    return table


def version_table(name: str, versions: Iterable[ModelVersion]) -> Table:
    table = Table(title=f"model {name}", title_justify="left")
    for column in ("version", "aliases", "created", "metrics", "run", "description"):
        table.add_column(column, overflow="fold")
    for v in versions:
        table.add_row(
            str(v.version),
            ", ".join(v.aliases) or "-",
            when(v.created),
            _metrics(v.metrics),
            (v.run_id or "-")[:12],
            v.description or "",
        )
    return table


def alias_table(name: str, moves: Iterable[AliasMove]) -> Table:
    table = Table(title=f"alias history of {name}", title_justify="left")
    for column in ("time", "alias", "from", "to"):
        table.add_column(column)
    for move in moves:
        table.add_row(when(move.time), move.alias, number(move.old_version), number(move.new_version))
    return table


def _shapes(entries: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{e['name']}: {e['dtype']}[{', '.join('N' if d is None else str(d) for d in e['shape'])}]" for e in entries
    )


def version_detail(version: ModelVersion) -> list[Table]:
    signature = version.signature or {}
    overview = _pairs(version.reference, [
        ("aliases", ", ".join(version.aliases) or "-"), ("created", when(version.created)),
        ("description", version.description or "-"), ("inputs", _shapes(signature.get("inputs", []))),
        ("outputs", _shapes(signature.get("outputs", []))), ("run", version.run_id or "-"),
        ("data fingerprint", version.data_fingerprint or "-"), ("parent", version.parent or "-"),
        *((f"metric {k}", number(v)) for k, v in sorted(version.metrics.items())),
        *((f"tag {k}", v) for k, v in sorted(version.tags.items())),
    ])  # fmt: skip
    files = Table(title="files", title_justify="left")
    for column in ("file", "bytes", "sha256"):
        files.add_column(column, overflow="fold")
    for name, blob in sorted(version.files.items()):
        files.add_row(name, str(blob.size), blob.sha256)
    return [overview, files]


def verify_table(report: VerifyReport) -> Table:
    table = Table(title=f"{len(report.problems)} problem(s)", title_justify="left", title_style="bold red")
    for column in ("version", "file", "problem", "blob"):
        table.add_column(column, overflow="fold")
    for problem in report.problems:
        table.add_row(problem.reference, problem.file, problem.message, problem.path)
    return table
