"""kiln.store: tracked runs and a versioned, integrity-checked model registry. Never imports torch.

One directory (``./.kiln``, ``$KILN_HOME`` or ``Store(path)``) holds an SQLite database (runs, metrics, models,
versions, aliases, lineage) and content-addressed blobs (``blobs/sha256/ab/cd/<sha256>``); a team keeps the same
tables in PostgreSQL instead (``Store("postgresql://user@host/db", blobs="/shared/blobs")``, ``$KILN_STORE``), with
the blobs on a filesystem every machine shares. References name versions everywhere: ``digits`` (newest),
``digits@3``, ``digits@production``.

Example:
    >>> from kiln.store import Store
    >>> store = Store()
    >>> [(v.version, v.aliases) for v in store.versions("digits")]
    [(1, ()), (2, ('production',))]
"""

from __future__ import annotations

from .blobs import Blob, BlobWriter
from .names import Reference, parse_reference
from .registry import AliasMove, ModelSummary, ModelVersion
from .runs import Run, RunInfo
from .store import GcReport, Store, default_path
from .verify import Problem, VerifyReport

__all__ = [
    "AliasMove",
    "Blob",
    "BlobWriter",
    "GcReport",
    "ModelSummary",
    "ModelVersion",
    "Problem",
    "Reference",
    "Run",
    "RunInfo",
    "Store",
    "VerifyReport",
    "default_path",
    "parse_reference",
]
