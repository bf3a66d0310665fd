"""kiln's streaming safetensors writer and zero-copy reader agree with the safetensors library, both ways."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO

import pytest
import torch
from safetensors.torch import load_file, save_file

from kiln.errors import IntegrityError
from kiln.export.safetensors_io import read_state_dict, write_state_dict

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool, torch.float8_e4m3fn]  # fmt: skip


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    out = {f"t_{str(d).removeprefix('torch.')}": (torch.rand(3, 5, generator=generator) * 100).to(d) for d in DTYPES}
    out.update(
        odd_half=torch.rand(7, generator=generator).half(),
        scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 4),
        transposed=torch.rand(4, 6, generator=generator).t(),
    )
    return out


class _File:
    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle

    def write(self, data: memoryview, *, stable: bool = False) -> None:
        self.handle.write(data)


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with open(path, "wb") as handle:
        write_state_dict(_File(handle), tensors, metadata=metadata)


def test_library_reads_what_kiln_writes(tmp_path: Path) -> None:
    tensors = _tensors()
    _write(tmp_path / "k.safetensors", tensors, metadata={"format": "pt"})
    loaded = load_file(tmp_path / "k.safetensors")
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name].float(), tensor.float()), name


def test_kiln_reads_what_the_library_writes(tmp_path: Path) -> None:
    tensors = {k: v.contiguous() for k, v in _tensors().items()}
    save_file(tensors, tmp_path / "l.safetensors")
    loaded = read_state_dict(bytearray((tmp_path / "l.safetensors").read_bytes()))
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name].float(), tensor.float()), name


def test_reading_is_zero_copy(tmp_path: Path) -> None:
    _write(tmp_path / "k.safetensors", {"w": torch.ones(1000)})
    data = bytearray((tmp_path / "k.safetensors").read_bytes())
    weight = read_state_dict(data)["w"]
    data[-4:] = struct.pack("<f", 7.0)
    assert weight[-1].item() == 7.0  # a view into the verified buffer, not a copy


def _file(header: dict, data: bytes = b"\0" * 16) -> bytearray:
    encoded = json.dumps(header).encode()
    return bytearray(struct.pack("<Q", len(encoded)) + encoded + data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytearray(b"abc"), "shorter than"),
        (bytearray(struct.pack("<Q", 1 << 40) + b"{}"), "exceeds the file"),
        (_file({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}), "do not fit"),
        (_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), "longer than its tensors"),
        (
            _file(
                {
                    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                }
            ),
            "overlaps",
        ),
        (_file({"w": {"dtype": "OBJECT", "shape": [4], "data_offsets": [0, 16]}}), "unknown dtype"),
        (_file({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}), "invalid shape"),
        (_file({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "extra": 1}}), "exactly"),
        (_file([1, 2]), "not a JSON object"),  # type: ignore[arg-type]
    ],
)
def test_malformed_files_are_refused(data: bytearray, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        read_state_dict(data, label="weights of test")
