"""Content-addressed blobs: digests, deduplication, read-only storage, verified reads."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest

from kiln.errors import ConfigError, IntegrityError
from kiln.store import Blob, GcReport, Store


@pytest.mark.parametrize("pattern", ["plain", "stable", "stable-then-plain", "plain-then-stable"])
def test_digest_matches_bytes_whatever_the_write_pattern(store: Store, pattern: str) -> None:
    parts = [os.urandom(3 << 20), b"header", os.urandom(1000)]
    writer = store.blobs.writer()
    for i, part in enumerate(parts):
        stable = {"plain": False, "stable": True, "stable-then-plain": i == 0, "plain-then-stable": i == 2}[pattern]
        writer.write(part, stable=stable)
    blob = writer.commit()
    whole = b"".join(parts)
    assert blob.sha256 == hashlib.sha256(whole).hexdigest() and blob.size == len(whole)
    path = store.blobs.path(blob.sha256)
    assert path.read_bytes() == whole
    assert path.relative_to(store.path).parts[:4] == ("blobs", "sha256", blob.sha256[:2], blob.sha256[2:4])
    assert path.stat().st_mode & 0o222 == 0  # read-only
    assert bytes(store.blobs.read(blob, label="test")) == whole


def _large_blob_round_trip(store: Store) -> None:
    # Page-aligned large stable writes go around the page cache (O_DIRECT) where the file system allows it, their
    # unaligned tails and everything else through it: the bytes on disk and the digest must not depend on the mix.
    parts = [
        (b"h" * 4096, False),  # a page of header: the next write starts page-aligned
        (os.urandom((9 << 20) + 100), True),  # direct: 9 MiB (more than one bounce buffer), then a 100-byte tail
        (os.urandom(5 << 20), True),  # starts unaligned (after the tail): through the page cache
        (os.urandom(3000), False),
    ]
    writer = store.blobs.writer()
    for data, stable in parts:
        writer.write(data, stable=stable)
    blob = writer.commit()
    whole = b"".join(data for data, _ in parts)
    assert blob == Blob(hashlib.sha256(whole).hexdigest(), len(whole))
    assert store.blobs.path(blob.sha256).read_bytes() == whole
    assert bytes(store.blobs.read(blob, label="test")) == whole


def test_large_writes_around_the_page_cache_store_the_same_bytes(store: Store) -> None:
    _large_blob_round_trip(store)
    _large_blob_round_trip(store)  # the second writer reuses what the first learnt about the file system


def test_a_file_system_that_refuses_o_direct_gets_the_page_cache(store: Store, monkeypatch) -> None:
    # Injected, like the disk-full tests: this machine's file systems (ext4, and tmpfs on Linux >= 6.6) accept
    # O_DIRECT, while some FUSE and older tmpfs mounts answer EINVAL when a file is opened with it.
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    _large_blob_round_trip(store)
    assert not store.blobs.direct  # remembered: later writers go straight to the page cache
    _large_blob_round_trip(store)


def test_same_bytes_are_stored_once_and_a_spare_covers_a_concurrent_delete(store: Store) -> None:
    first = store.blobs.put_file(__file__)
    first.commit()
    second = store.blobs.put_file(__file__)
    assert second.commit() == first.blob and second.spare is not None
    store.blobs.unlink(first.blob.sha256)  # what a concurrent delete of the only other user would do
    assert store.blobs.restore(second)  # the publish puts its own copy in place
    assert bytes(store.blobs.read(second.blob, label="x")) == Path(__file__).read_bytes()
    second.release()
    assert list(store.blobs.tmp_dir.iterdir()) == []


def test_aborted_writer_leaves_nothing(store: Store) -> None:
    writer = store.blobs.writer()
    writer.write(b"partial")
    writer.abort()
    assert list(store.blobs.tmp_dir.iterdir()) == [] and list(store.blobs.blobs()) == []


def test_read_refuses_wrong_size_and_missing(store: Store) -> None:
    writer = store.blobs.writer()
    writer.write(b"abc")
    stored = writer.commit()
    with pytest.raises(IntegrityError, match="has 3 bytes, the manifest records 4"):
        store.blobs.read(Blob(stored.sha256, 4), label="f")
    with pytest.raises(IntegrityError, match="is missing"):
        store.blobs.read(Blob("0" * 64, 3), label="f")


def _age(path: Path, seconds: float = 7200) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_gc_dry_run_reports_what_gc_then_frees(store: Store, tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"live weights")
    live = store.register("m", {"w.bin": tmp_path / "w.bin"})
    orphan = store.blobs.put_file(__file__)  # stored, then never referenced (a publish that died before commit)
    blob = orphan.commit()
    orphan.release()
    crashed = store.blobs.tmp_dir / "blob-crashed.tmp"
    crashed.write_bytes(b"x" * 1000)
    for path in [*store.blobs.blobs(), crashed]:
        _age(path)
    fresh = store.blobs.tmp_dir / "blob-writing.tmp"  # a writer in flight: inside the grace
    fresh.write_bytes(b"y" * 10)

    planned = store.gc(dry_run=True)
    assert (planned.blobs, planned.temp_files, planned.bytes, planned.dry_run) == (1, 1, blob.size + 1000, True)
    assert store.blobs.path(blob.sha256).exists() and crashed.exists()  # nothing removed
    done = store.gc()
    assert (done.blobs, done.temp_files, done.bytes, done.dry_run) == (1, 1, blob.size + 1000, False)
    assert not store.blobs.path(blob.sha256).exists() and not crashed.exists() and fresh.exists()
    assert store.gc() == GcReport(0, 0, 0)
    assert bytes(store.read(live, "w.bin")) == b"live weights" and store.verify().ok
    with pytest.raises(ConfigError, match="grace_seconds must be a number >= 0"):
        store.gc(grace_seconds=-1)


def test_gc_refuses_a_blob_directory_two_stores_share(tmp_path: Path) -> None:
    from kiln.errors import StoreError

    shared = tmp_path / "shared"
    with Store(tmp_path / "a", blobs=shared) as first, Store(tmp_path / "b", blobs=shared) as second:
        (tmp_path / "w.bin").write_bytes(b"only the first store references me")
        first.register("m", {"w.bin": tmp_path / "w.bin"})
        assert second.gc(grace_seconds=0, dry_run=True).blobs == 1  # what it would wrongly remove
        with pytest.raises(StoreError, match=r"is used by 2 stores .* its own --blobs directory"):
            second.gc(grace_seconds=0)
        assert first.verify().ok
        assert first.blobs.owners() == sorted([str(tmp_path / "a"), str(tmp_path / "b")])
