"""The ``serve`` entry point: pin the first version, set up logging, then one serving process or ``--workers N``.

Imports point one way: this module chooses between :mod:`.process` (one process) and :mod:`.workers` (N processes,
each running :mod:`.process`); neither imports it back. ``.workers`` is imported only for ``--workers N``: it is
also the workers' ``python -m`` entry point, which must not be imported by the package before it runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .app import create_app
from .config import ServeConfig
from .follow import follow_reference
from .process import configure_logging, run_server

__all__ = ["pin_reference", "serve"]


def pin_reference(reference: str | os.PathLike[str], store: Any) -> tuple[str | Path, Any]:
    """Resolve an alias to the exact ``name@version`` now, so that every worker starts with the same version (a
    followed alias then moves each worker on its own); fails fast (before binding a port) on an unknown model or a
    missing store. Returns the pinned reference and the open Store (None for a package directory)."""
    if isinstance(reference, os.PathLike):
        return Path(reference), None
    from ..store import Store

    opened = store if isinstance(store, Store) else Store(store, create=False)
    return opened.version(reference).reference, opened


def _for_workers(store: Any, opened: Any) -> str | None:
    """The store as worker processes open it: what the caller named (``None``: the default, which the workers find
    in the environment and working directory they inherit, ``--blobs`` included); for a Store object, its
    directory. A database store given as a Store object cannot travel: ask for its URL instead."""
    if store is None or isinstance(store, str | os.PathLike):
        return None if store is None else os.fspath(store)
    if opened.location.embedded:
        return str(opened.path)
    raise ConfigError(
        f"--workers cannot hand the Store object for {opened.url} to its worker processes; pass the store as a "
        "string instead (store='postgresql://...', with blobs from KILN_BLOBS), or serve with workers=1."
    )


def serve(
    reference: str | os.PathLike[str], *, store: Any = None, config: ServeConfig | None = None, **options: Any
) -> int:
    """Serve ``reference`` over HTTP until SIGTERM or Ctrl+C; returns the exit status (0 after a clean drain).

    Options are :class:`ServeConfig` fields (``port``, ``workers``, ``max_batch_size``, ``token``, ...).

    Example:
        >>> from kiln.serve import serve
        >>> serve("digits@production", store=".kiln", port=8000, max_batch_size=32)  # blocks
    """
    if config is not None and options:
        raise ConfigError(f"pass either config= or options, not both; got config and {sorted(options)}.")
    chosen = config or ServeConfig(**options)
    configure_logging(access_log=chosen.access_log)
    follow_reference(reference, chosen.follow)  # --follow on a pinned version fails here, before anything starts
    pinned, opened = pin_reference(reference, store)
    if chosen.workers > 1:
        from .workers import run_workers

        return run_workers(reference, pinned, _for_workers(store, opened), chosen)
    # One process: the app loads from, and follows through, the store opened here (any backend, blobs included).
    app = create_app(reference, store=opened, config=chosen, pinned=pinned if isinstance(pinned, str) else None)
    return run_server(app, chosen)
