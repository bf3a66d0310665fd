"""Bytes edited after publish are caught by verify and read, with the file named; pickles are refused by content."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest

from kiln.errors import IntegrityError
from kiln.store import Store
from kiln.store.content import check_package_file, classify, read_head


def _publish(store: Store, tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"0123456789" * 100)
    (tmp_path / "spec.json").write_text('{"a": 1}')
    store.register("digits", {"w.bin": tmp_path / "w.bin", "spec.json": tmp_path / "spec.json"})


@pytest.mark.parametrize("edit", ["flip", "append", "truncate", "remove"])
def test_edited_blob_is_reported_by_verify_and_refused_by_read(store: Store, tmp_path: Path, edit: str) -> None:
    _publish(store, tmp_path)
    blob = store.blobs.path(store.version("digits@1").files["w.bin"].sha256)
    data = bytearray(blob.read_bytes())
    assert blob.stat().st_mode & 0o777 == 0o444  # stored read-only: editing takes a deliberate chmod
    blob.chmod(0o644)
    if edit == "flip":
        data[500] ^= 1
        blob.write_bytes(bytes(data))
    elif edit == "append":
        blob.write_bytes(bytes(data) + b"!")
    elif edit == "truncate":
        blob.write_bytes(bytes(data[:10]))
    else:
        blob.unlink()
    report = store.verify()
    assert not report.ok and [(p.reference, p.file) for p in report.problems] == [("digits@1", "w.bin")]
    assert report.problems[0].path == str(blob)
    with pytest.raises(IntegrityError, match=r"digits@1 file 'w.bin'"):
        store.read("digits@1", "w.bin")
    assert bytes(store.read("digits@1", "spec.json")) == b'{"a": 1}'  # the untouched file still reads


class _Canary:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_of_every_protocol_are_recognised(tmp_path: Path, protocol: int) -> None:
    payload = pickle.dumps({"weights": [1.0] * 10, "hook": _Canary(tmp_path / "canary")}, protocol=protocol)
    assert classify(payload, len(payload)) == "pickle"
    for name in ("weights.safetensors", "model.bin", "model.onnx", "spec.json", "notes.txt"):
        with pytest.raises(IntegrityError, match="pickle"):
            check_package_file(name, payload, len(payload))
    assert not (tmp_path / "canary").exists()


def test_long_pickle_is_recognised_from_its_head(tmp_path: Path) -> None:
    payload = pickle.dumps([_Canary(tmp_path / "canary"), b"x" * (3 << 20)], protocol=0)
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    assert classify(*read_head(path)) == "pickle"


def test_zip_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_Canary(tmp_path / "canary")))
    with pytest.raises(IntegrityError, match="zip archive"):
        check_package_file("model.bin", *read_head(path))


@pytest.mark.parametrize(("name", "content"), [("w.safetensors", b"not safetensors at all"), ("a.json", b"{oops")])
def test_extension_must_match_content(name: str, content: bytes) -> None:
    with pytest.raises(IntegrityError, match="its bytes are not"):
        check_package_file(name, content, len(content))


def test_register_refuses_pickle_under_any_name(store: Store, tmp_path: Path, snapshot) -> None:
    canary = tmp_path / "canary"
    payload = tmp_path / "payload"
    payload.write_bytes(pickle.dumps(_Canary(canary)))
    (tmp_path / "ok.json").write_text("{}")
    before = snapshot(store.path)
    for name in ("weights.safetensors", "model.bin", "model.onnx"):
        with pytest.raises(IntegrityError, match=f"'{name}' holds a Python pickle"):
            store.register("digits", {"ok.json": tmp_path / "ok.json", name: payload})
        streamed = store.blobs.writer()
        streamed.write(payload.read_bytes())  # streamed bytes are judged before they get an address too
        with pytest.raises(IntegrityError, match="pickle"):
            store.register("digits", {name: streamed})
    assert snapshot(store.path) == before
    assert store.models() == []
    assert not canary.exists()
