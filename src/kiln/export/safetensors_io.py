"""The safetensors format, streamed: tensors go straight from their memory to a hashing writer, and come back
as views into one verified buffer.

Writing this way costs one pass over the bytes (hashed as they are written, no serialised copy in between);
reading costs one read (hashed as it arrives) and no copy at all. Files stay byte-compatible with the
``safetensors`` library, which the tests use as the reference reader and writer.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping
from typing import Protocol

import torch

from ..errors import IntegrityError

__all__ = ["TensorWriter", "read_state_dict", "write_state_dict"]

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 100 << 20
_ALIGN = 64
_PAGE = 4096  # the data section starts here, and whole-page tensors come first: large writes can skip the page cache


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _check_little_endian() -> None:
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships wheels for is little-endian
        raise IntegrityError("kiln's safetensors reader and writer need a little-endian machine.")


class TensorWriter(Protocol):
    """Where a file's bytes go; ``stable=True`` marks data that stays unchanged until the file is finished."""

    def write(self, data: memoryview, *, stable: bool = False) -> object: ...


def write_state_dict(
    writer: TensorWriter,
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Stream ``tensors`` as a safetensors file into ``writer`` (the header, then each tensor's memory, uncopied).

    The header is padded so the data starts at 4096 bytes, and tensors whose size is a multiple of 4096 bytes come
    first, then those of a multiple of 64 (then the rest by element size, largest first). Read into a page-aligned
    buffer, every large tensor is as aligned as torch allocates it, and every tensor at least to its element size, so
    all load as zero-copy views; and written, the page-multiple tensors stay page-aligned in the file, which lets a
    store write them around the page cache (see :class:`kiln.store.BlobWriter`).

    Example:
        >>> with store.blobs.writer() as writer:
        ...     write_state_dict(writer, module.state_dict())
    """
    _check_little_endian()
    prepared: list[tuple[str, torch.Tensor]] = []
    for name, tensor in tensors.items():
        if tensor.dtype not in _NAMES:
            raise IntegrityError(
                f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold; "
                f"supported: {sorted(str(d) for d in _NAMES)}."
            )
        prepared.append((name, tensor.detach().to("cpu").contiguous()))

    def order(item: tuple[str, torch.Tensor]) -> tuple[bool, bool, int, str]:
        size = _nbytes(item[1])
        return size % _PAGE != 0, size % _ALIGN != 0, -item[1].element_size(), item[0]

    prepared.sort(key=order)
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in prepared:
        size = _nbytes(tensor)
        header[name] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % _PAGE)  # spaces: the data section starts page-aligned
    writer.write(memoryview(struct.pack("<Q", len(encoded))))
    writer.write(memoryview(encoded))
    for _, tensor in prepared:  # `prepared` holds every tensor until the writer is finished: the data is stable
        if tensor.numel():
            writer.write(tensor.reshape(-1).view(torch.uint8).numpy().data, stable=True)


def _entry(name: str, entry: object, data_size: int) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"entry {name!r} must have exactly dtype, shape and data_offsets")
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    shape, offsets = entry["shape"], entry["data_offsets"]
    if dtype is None:
        raise ValueError(f"entry {name!r} has unknown dtype {entry['dtype']!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ValueError(f"entry {name!r} has invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise ValueError(f"entry {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"entry {name!r}: offsets {offsets} do not fit shape {shape} of {dtype}")
    return dtype, shape, begin, end


def read_state_dict(data: bytearray | memoryview, *, label: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file held in ``data``, as views sharing its memory (keep ``data`` alive).

    Every header entry is checked (dtype, shape, offsets inside the data and covering it exactly once) before
    any tensor is made; IntegrityError names ``label`` when the file is malformed.
    """
    _check_little_endian()
    try:
        if len(data) < 8:
            raise ValueError("the file is shorter than a safetensors header")
        (header_size,) = struct.unpack_from("<Q", data)
        if header_size > min(len(data) - 8, _MAX_HEADER):
            raise ValueError(f"header size {header_size} exceeds the file")
        header = json.loads(bytes(memoryview(data)[8 : 8 + header_size]))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        header.pop("__metadata__", None)
        start, data_size = 8 + header_size, len(data) - 8 - header_size
        entries = {name: _entry(name, entry, data_size) for name, entry in header.items()}
        spans = sorted((begin, end) for _, _, begin, end in entries.values() if end > begin)
        position = 0
        for begin, end in spans:
            if begin != position:
                raise ValueError("tensor data overlaps or leaves gaps")
            position = end
        if position != data_size:
            raise ValueError("the data section is longer than its tensors")
    except (ValueError, UnicodeDecodeError, struct.error) as error:
        raise IntegrityError(f"{label} is not a valid safetensors file: {error}.") from error
    tensors: dict[str, torch.Tensor] = {}
    for name, (dtype, shape, begin, end) in entries.items():
        count = (end - begin) // dtype.itemsize
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif (start + begin) % dtype.itemsize == 0:
            tensors[name] = torch.frombuffer(data, dtype=dtype, count=count, offset=start + begin).view(shape)
        else:  # misaligned (another writer's layout): copy this one tensor
            chunk = bytearray(memoryview(data)[start + begin : start + end])
            tensors[name] = torch.frombuffer(chunk, dtype=dtype, count=count).view(shape)
    return tensors
