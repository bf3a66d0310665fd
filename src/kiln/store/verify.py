"""Re-hash every blob a version (or the whole store) references and report what does not match."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..errors import IntegrityError
from .blobs import Blob, BlobStore, hash_file
from .content import check_package_file, read_head
from .database import Database
from .onnx_check import check_onnx
from .registry import ModelVersion
from .schema import run_artifacts

__all__ = ["Problem", "VerifyReport", "verify_versions"]


@dataclass(frozen=True)
class Problem:
    """One file that failed verification: which version and file, where its blob is, and what is wrong."""

    reference: str
    file: str
    path: str
    message: str


@dataclass
class VerifyReport:
    """What ``Store.verify`` checked and every problem it found (``ok`` when there are none)."""

    versions: int = 0
    files: int = 0
    bytes: int = 0
    artifacts: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_blob(blobs: BlobStore, blob: Blob, name: str, *, package: bool) -> str | None:
    """None when the blob is present, hashes to its digest and (in a package) holds acceptable content."""
    path = blobs.path(blob.sha256)
    if not path.exists():
        return "blob is missing"
    actual = hash_file(path)
    if actual != blob:
        return (
            f"contents changed after publish: SHA-256 {actual.sha256[:16]}... and {actual.size} bytes, "
            f"recorded {blob.sha256[:16]}... and {blob.size} bytes"
        )
    if package:
        try:
            check_package_file(name, *read_head(path))
            if name.endswith(".onnx"):
                check_onnx(path.read_bytes(), label=name, trust=None)
        except IntegrityError as error:
            return str(error)
    return None


def verify_versions(
    database: Database, blobs: BlobStore, targets: Iterable[ModelVersion], *, artifacts: bool = False
) -> VerifyReport:
    """Hash each distinct blob once; report every file whose blob is missing, altered or holds refused content."""
    report = VerifyReport()
    seen: dict[tuple[str, str], str | None] = {}
    for version in targets:
        report.versions += 1
        for name, blob in sorted(version.files.items()):
            key = (blob.sha256, name)
            if key not in seen:
                seen[key] = _check_blob(blobs, blob, name, package=True)
                report.bytes += blob.size
            report.files += 1
            if seen[key] is not None:
                report.problems.append(Problem(version.reference, name, str(blobs.path(blob.sha256)), seen[key] or ""))
    if artifacts:
        rows = database.read(lambda connection: connection.execute(sa.select(run_artifacts)).all())
        for row in rows:
            report.artifacts += 1
            message = _check_blob(blobs, Blob(row.sha256, int(row.size)), row.name, package=False)
            if message is not None:
                report.problems.append(Problem(f"run {row.run_id}", row.name, str(blobs.path(row.sha256)), message))
    return report
