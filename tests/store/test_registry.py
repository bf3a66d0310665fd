"""Models, versions, aliases, lineage and deletion, on a real SQLite store and a real PostgreSQL database."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import ConfigError, IntegrityError, NotFoundError, StoreError
from kiln.store import Store

BACKENDS = ("sqlite", "postgresql")


def _file(tmp_path: Path, content: bytes, name: str = "w.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_versions_count_up_and_references_resolve(store: Store, tmp_path: Path) -> None:
    for i in range(3):
        version = store.register("digits", {"w.bin": _file(tmp_path, f"v{i}".encode())}, metrics={"acc": i / 10})
        assert version.version == i + 1 and version.reference == f"digits@{i + 1}"
    assert store.version("digits").version == 3
    assert store.version("digits@latest").version == 3
    assert store.version("digits@2").metrics == {"acc": 0.1}
    assert bytes(store.read("digits@1", "w.bin")) == b"v0"
    assert [m.name for m in store.models()] == ["digits"]
    assert store.models()[0].versions == 3 and store.models()[0].latest == 3


def test_aliases_move_and_keep_history(store: Store, tmp_path: Path) -> None:
    for i in range(3):
        store.register("digits", {"w.bin": _file(tmp_path, f"v{i}".encode())})
    assert store.promote("digits", 1, "production") is None
    assert store.promote("digits", "digits@3", "production") == 1
    assert store.promote("digits", 3, "production") == 3  # no move, no history row
    store.promote("digits", 2, "staging")
    assert store.version("digits@production").version == 3
    assert store.version("digits@3").aliases == ("production",)
    assert store.models()[0].aliases == {"production": 3, "staging": 2}
    assert store.remove_alias("digits", "staging") == 2
    moves = [(m.alias, m.old_version, m.new_version) for m in store.alias_history("digits")]
    assert moves == [("production", None, 1), ("production", 1, 3), ("staging", None, 2), ("staging", 2, None)]
    with pytest.raises(NotFoundError, match="no alias 'staging'"):
        store.version("digits@staging")
    with pytest.raises(NotFoundError, match="no version 9"):
        store.promote("digits", 9, "production")
    with pytest.raises(ConfigError):
        store.promote("digits", 0, "production")


def test_lineage_is_recorded(store: Store, tmp_path: Path) -> None:
    run = store.start_run("train-digits")
    run.finish()
    store.register("base", {"w.bin": _file(tmp_path, b"base")})
    version = store.register(
        "digits", {"w.bin": _file(tmp_path, b"tuned")}, run_id=run.id[:8], data_fingerprint="sha256:abc",
        parent="base@1", description="fine-tuned", tags={"team": "vision"}, signature={"inputs": []},
    )  # fmt: skip
    assert (version.run_id, version.data_fingerprint, version.parent) == (run.id, "sha256:abc", "base@1")
    assert (version.description, version.tags, version.signature) == ("fine-tuned", {"team": "vision"}, {"inputs": []})
    with pytest.raises(NotFoundError):
        store.register("digits", {"w.bin": _file(tmp_path, b"x")}, parent="base@7")
    with pytest.raises(NotFoundError):
        store.register("digits", {"w.bin": _file(tmp_path, b"x")}, run_id="0" * 32)
    assert [v.version for v in store.versions("digits")] == [1]


def test_deleted_numbers_are_never_reused(store: Store, tmp_path: Path) -> None:
    for i in range(3):
        store.register("digits", {"w.bin": _file(tmp_path, f"v{i}".encode())})
    store.promote("digits", 3, "production")
    with pytest.raises(StoreError, match="aliased as production"):
        store.delete("digits@3")
    with pytest.raises(StoreError, match="needs a version"):
        store.delete("digits")
    deleted = store.delete("digits@production", force=True)
    assert deleted.version == 3
    assert not store.blobs.exists(deleted.files["w.bin"])  # its blob was only used by version 3
    with pytest.raises(NotFoundError, match="was deleted"):
        store.version("digits@3")
    assert store.version("digits").version == 2
    assert store.register("digits", {"w.bin": _file(tmp_path, b"new")}).version == 4
    assert store.delete_model("digits") == [1, 2, 4]
    assert store.versions("digits") == []
    assert store.register("digits", {"w.bin": _file(tmp_path, b"again")}).version == 5
    assert [m.alias for m in store.alias_history("digits")] == ["production", "production"]


def test_shared_blobs_survive_deleting_one_version(store: Store, tmp_path: Path) -> None:
    same = _file(tmp_path, b"same bytes")
    first = store.register("a", {"w.bin": same})
    store.register("b", {"w.bin": same})
    assert len(list(store.blobs.blobs())) == 1  # content addressing stores them once
    store.delete("a@1")
    assert store.blobs.exists(first.files["w.bin"])
    assert bytes(store.read("b@1", "w.bin")) == b"same bytes"


def test_package_directory_with_manifest(store: Store, tmp_path: Path) -> None:
    from kiln.store.blobs import hash_file
    from kiln.store.manifest import dump_manifest

    package = tmp_path / "package"
    package.mkdir()
    (package / "w.bin").write_bytes(b"weights")
    (package / "manifest.json").write_bytes(dump_manifest({"w.bin": hash_file(package / "w.bin")}))
    assert set(store.register("digits", package).files) == {"w.bin", "manifest.json"}
    (package / "w.bin").write_bytes(b"weightz")
    with pytest.raises(IntegrityError, match=r"'w\.bin' does not match"):
        store.register("digits", package)
    (package / "sub").mkdir()
    with pytest.raises(IntegrityError, match="not a regular file"):
        store.register("digits", package)
    assert [v.version for v in store.versions("digits")] == [1]


def test_unknown_things_are_clear_errors(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no model named 'ghost'"):
        store.version("ghost")
    with pytest.raises(NotFoundError, match="no run"):
        store.run("abcd")
    with pytest.raises(StoreError, match="no kiln store"):
        Store(store.path / "missing", create=False)
