"""The ``--json`` documents of the ``kiln`` command: one stable, documented shape per listing and show verb.

Every document is one JSON object with ``"schema": "kiln.cli/1"``; docs/cli.md describes each field. Within a schema
version fields are only ever added, never renamed or removed. Times are ISO 8601 strings in UTC; numbers that JSON
cannot hold (NaN, infinities) are null. This module reads the store's records by their attributes and imports
nothing of kiln, so it sits below every layer that hands it records.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SCHEMA", "document", "dumps"]

SCHEMA = "kiln.cli/1"


def dumps(value: Mapping[str, Any]) -> str:
    """``value`` as strict JSON (non-finite numbers as null), indented, with its keys in their given order."""
    return json.dumps(_finite(value), indent=2, allow_nan=False, default=str)


def document(**fields: Any) -> dict[str, Any]:
    """A document of this schema: ``{"schema": "kiln.cli/1", **fields}``."""
    return {"schema": SCHEMA, **fields}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def time(timestamp: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC (``2026-05-01T12:00:00.250000+00:00``), or None."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).isoformat()


def _blobs(files: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: {"sha256": blob.sha256, "size": blob.size} for name, blob in sorted(files.items())}


def run_summary(run: Any) -> dict[str, Any]:
    """One row of ``kiln runs list``."""
    return {"id": run.id, "name": run.name, "status": run.status, "start_time": time(run.start_time),
            "end_time": time(run.end_time), "duration": run.duration, "tags": dict(run.tags),
            "latest": dict(run.latest)}  # fmt: skip


def run_detail(run: Any) -> dict[str, Any]:
    """``kiln runs show``: the summary plus params, system, heartbeat, process and artifacts."""
    return {**run_summary(run), "heartbeat": time(run.heartbeat), "process": dict(run.process),
            "params": dict(run.params), "system": dict(run.system), "artifacts": _blobs(run.artifacts)}  # fmt: skip


def model_summary(model: Any) -> dict[str, Any]:
    """One row of ``kiln models list``."""
    return {"name": model.name, "versions": model.versions, "latest": model.latest, "aliases": dict(model.aliases),
            "created": time(model.created), "updated": time(model.updated)}  # fmt: skip


def version(entry: Any) -> dict[str, Any]:
    """One version of a model, with its files."""
    return {"reference": entry.reference, "name": entry.name, "version": entry.version,
            "aliases": list(entry.aliases), "created": time(entry.created), "description": entry.description,
            "metrics": dict(entry.metrics), "tags": dict(entry.tags), "run_id": entry.run_id,
            "data_fingerprint": entry.data_fingerprint, "parent": entry.parent, "signature": entry.signature,
            "files": _blobs(entry.files)}  # fmt: skip


def alias_moves(moves: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"time": time(m.time), "alias": m.alias, "from": m.old_version, "to": m.new_version} for m in moves]


def trust(found: Iterable[Any]) -> list[dict[str, Any]]:
    """Each version's factory and who trusts it (``trusted_by`` null and ``untrusted`` true: onnxruntime only)."""
    return [{"reference": t.reference, "factory": t.factory, "trusted_by": t.trusted_by, "untrusted": t.untrusted,
             "problem": t.problem} for t in found]  # fmt: skip


def verify(report: Any) -> dict[str, Any]:
    """``kiln models verify``: what was hashed and every problem found."""
    return {"ok": report.ok, "versions": report.versions, "files": report.files, "bytes": report.bytes,
            "problems": [{"reference": p.reference, "file": p.file, "path": p.path, "message": p.message}
                         for p in report.problems]}  # fmt: skip
