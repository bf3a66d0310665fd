"""A pickle that would create a canary file, disguised as .safetensors/.bin/.onnx: refused, canary never created."""

from __future__ import annotations

import io
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kiln.errors import IntegrityError
from kiln.export import load, register_module, save_package
from kiln.store import Store
from kiln.store.blobs import hash_file
from kiln.store.manifest import dump_manifest, read_manifest


class Canary:
    """Unpickling this calls ``open(path, "w")``: the canary file appears if anything ever unpickles it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def payloads(canary: Path) -> dict[str, bytes]:
    torch_save = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "hook": Canary(canary)}, torch_save)  # the zip format, data.pkl inside
    return {
        "pickle-protocol-2": pickle.dumps(Canary(canary), protocol=2),
        "pickle-protocol-5": pickle.dumps({"state": Canary(canary)}, protocol=5),
        "pickle-protocol-0": pickle.dumps(Canary(canary), protocol=0),
        "torch-save-zip": torch_save.getvalue(),
    }


@pytest.mark.parametrize("kind", ["pickle-protocol-2", "torch-save-zip"])
def test_the_payloads_are_live(tmp_path: Path, kind: str) -> None:
    """Control: unpickled in a separate interpreter, the payload does create its canary."""
    canary = tmp_path / "canary"
    if kind == "torch-save-zip":
        code = "import io, sys, torch; torch.load(io.BytesIO(sys.stdin.buffer.read()), weights_only=False)"
    else:
        code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=payloads(canary)[kind], check=True, timeout=120)
    assert canary.exists()


def _package(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    return save_package(net, tmp_path / "pkg", example_input=torch.randn(1, 4), onnx=False)


def _rewrite_manifest(directory: Path) -> None:
    """What an attacker who can write the directory would do: make the manifest match the planted files."""
    files = read_manifest((directory / "manifest.json").read_bytes(), where="test")
    files = {p.name: hash_file(p) for p in directory.iterdir() if p.name != "manifest.json"} | {
        k: v for k, v in files.items() if (directory / k).exists()
    }
    (directory / "manifest.json").write_bytes(dump_manifest(files))


@pytest.mark.parametrize("disguise", ["weights.safetensors", "model.bin", "model.onnx"])
@pytest.mark.parametrize("kind", ["pickle-protocol-2", "pickle-protocol-5", "pickle-protocol-0", "torch-save-zip"])
def test_package_directory_with_disguised_pickle_is_refused(tmp_path: Path, disguise: str, kind: str) -> None:
    canary = tmp_path / "canary"
    directory = _package(tmp_path)
    (directory / disguise).write_bytes(payloads(canary)[kind])
    _rewrite_manifest(directory)
    with pytest.raises(IntegrityError, match=rf"'{disguise}' (holds a Python pickle|is a zip archive)"):
        load(directory)
    assert not canary.exists()


@pytest.mark.parametrize("disguise", ["weights.safetensors", "model.onnx"])
def test_store_blob_swapped_for_a_pickle_is_refused_by_content(tmp_path: Path, disguise: str) -> None:
    """Even with the database rewritten so hashes match, the bytes themselves are judged and refused."""
    canary = tmp_path / "canary"
    store = Store(tmp_path / "store")
    register_module(torch.nn.Sequential(torch.nn.Linear(4, 2)), "m", store=store,
                              example_input=torch.randn(1, 4), onnx=False)  # fmt: skip
    payload = payloads(canary)["pickle-protocol-5"]
    planted = store.blobs.writer()
    planted.write(payload)
    blob = planted.finish()
    planted.commit()  # the attacker writes a blob directly, bypassing register's content check
    with sqlite3.connect(store.path / "kiln.db") as connection:
        version_id = connection.execute("SELECT id FROM versions WHERE version = 1").fetchone()[0]
        connection.execute("DELETE FROM version_files WHERE version_id = ? AND name = ?", (version_id, disguise))
        connection.execute(
            "INSERT INTO version_files VALUES (?, ?, ?, ?)", (version_id, disguise, blob.sha256, blob.size)
        )
    assert store.version("m@1").files[disguise] == blob  # the hashes now agree: only the content gives it away
    with pytest.raises(IntegrityError, match=rf"'{disguise}' holds a Python pickle"):
        store.read("m@1", disguise)
    with pytest.raises(IntegrityError, match=rf"'{disguise}' holds a Python pickle"):
        load("m@1", store=store, runtime="onnx" if disguise == "model.onnx" else "torch")
    report = store.verify()
    assert [p.file for p in report.problems] == [disguise] and "pickle" in report.problems[0].message
    assert not canary.exists()
