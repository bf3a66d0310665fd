"""A job's data fingerprint: the SHA-256 of the content of every file it reads, cached by path, size and mtime.

The fingerprint hashes, for each file or folder the job reads, the sorted relative paths of its files with the
SHA-256 of each file's bytes: renaming the data folder keeps it, changing a byte or a file name changes it. Hashing
is done once per file version: ``<store>/jobs/fingerprints.json`` remembers each file's digest under its absolute
path, size and modification time (nanoseconds), so the second run over a 10 GB image folder reads no pixel. The
cache is only a shortcut: lose it, or let two jobs overwrite each other's entries, and files are hashed again.
Data made by a factory (no files) is fingerprinted by its tensors' bytes instead
(:func:`kiln.train.tracking.fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_bytes
from ..errors import DataError

__all__ = ["CACHE_FILE", "files_fingerprint"]

logger = logging.getLogger(__name__)

CACHE_FILE = Path("jobs") / "fingerprints.json"
_CHUNK = 1 << 20
_MAX_ENTRIES = 200_000  # a bound on the cache file (about 30 MB): the oldest entries go first


def _files_under(root: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every regular file at or under ``root``, sorted; hidden entries skipped."""
    if root.is_file():
        return [(root.name, root)]
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(directory) / name
                found.append((path.relative_to(root).as_posix(), path))
    return found


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache.read_bytes())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def files_fingerprint(roots: Sequence[str | os.PathLike[str]], *, cache: Path | None = None) -> str:
    """``"sha256:<hex>"`` over the content of every file under ``roots`` (files or folders), in order.

    ``cache`` is the JSON file of known digests (see the module docstring); None hashes everything.

    Example:
        >>> files_fingerprint(["data/train.csv"], cache=store.path / CACHE_FILE)
        'sha256:9f86d081884c7d65...'
    """
    known = _load(cache) if cache is not None else {}
    changed = False
    digest = hashlib.sha256(b"kiln.data-files/1;")
    for index, root in enumerate(Path(r) for r in roots):
        digest.update(f"root {index}\n".encode())
        if not root.exists():
            raise DataError(f"data fingerprint: {root} does not exist")
        for name, path in _files_under(root):
            stat = path.stat()
            key = str(path.absolute())
            entry = known.get(key)
            if isinstance(entry, list) and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
                sha = str(entry[2])
            else:
                sha = _digest(path)
                known.pop(key, None)  # re-inserted last: the newest entries survive the bound
                known[key] = [stat.st_size, stat.st_mtime_ns, sha]
                changed = True
            digest.update(f"{name}\0{sha}\n".encode())
    if cache is not None and changed:
        entries = list(known.items())[-_MAX_ENTRIES:]
        try:
            atomic_write_bytes(cache, json.dumps(dict(entries), separators=(",", ":")).encode())
        except OSError as error:  # a read-only store: the fingerprint is right, only the shortcut is lost
            logger.warning("could not write the fingerprint cache %s: %s", cache, error)
    return f"sha256:{digest.hexdigest()}"
