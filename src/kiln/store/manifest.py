"""``manifest.json``: the SHA-256 and size of every other file of a package."""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..errors import IntegrityError, InvalidNameError
from .blobs import Blob
from .names import check_file_name, check_sha256

__all__ = ["FORMAT", "MANIFEST", "dump_manifest", "read_manifest"]

MANIFEST = "manifest.json"
FORMAT = "kiln.package/1"


def dump_manifest(files: Mapping[str, Blob]) -> bytes:
    """The manifest of ``files`` (name -> blob) as canonical JSON bytes."""
    entries = {
        name: {"sha256": blob.sha256, "size": blob.size} for name, blob in sorted(files.items()) if name != MANIFEST
    }
    return json.dumps({"format": FORMAT, "files": entries}, indent=1, sort_keys=True).encode()


def read_manifest(data: bytes | bytearray | memoryview, *, where: str) -> dict[str, Blob]:
    """Parse and check a manifest; IntegrityError (naming ``where``) when it is malformed."""
    try:
        document = json.loads(bytes(data))
        if document.get("format") != FORMAT:
            raise ValueError(f"format is {document.get('format')!r}, expected {FORMAT!r}")
        files = {
            check_file_name(name): Blob(check_sha256(entry["sha256"]), int(entry["size"]))
            for name, entry in document["files"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError, InvalidNameError) as error:
        raise IntegrityError(f"{where}: {MANIFEST} is malformed ({error}); export the package again.") from error
    if any(blob.size < 0 for blob in files.values()):
        raise IntegrityError(f"{where}: {MANIFEST} records a negative size.")
    return files
