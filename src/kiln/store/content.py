"""Judge a file by its bytes, never by its extension: safetensors, JSON, pickle, zip (torch.save) or other.

kiln never unpickles. A package file that holds a pickle (any protocol) or a zip archive (the torch.save format,
which wraps ``data.pkl``) is refused wherever the store or the loader meets it, whatever the file is called.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import struct
from typing import Literal

from ..errors import IntegrityError

__all__ = ["HEAD_BYTES", "Kind", "check_package_file", "classify", "head_of", "read_head"]

Kind = Literal["safetensors", "json", "pickle", "zip", "other"]

HEAD_BYTES = 1 << 20  # enough to see a pickle's opening opcodes or a safetensors header of ~10k tensors
_MAX_SAFETENSORS_HEADER = 100 << 20
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# Opcodes that import or call something: the part of a pickle that runs code when it is loaded.
_CODE_OPCODES = frozenset(
    {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2", "EXT4"}
)


def read_head(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """The first bytes of ``path`` (a whole safetensors header if it starts with one) and the file's size."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(HEAD_BYTES)
        declared = _safetensors_header_size(head, size)
        if declared is not None and 8 + declared > len(head):
            head += handle.read(8 + declared - len(head))
    return head, size


def head_of(data: bytes | bytearray | memoryview) -> bytes:
    """What :func:`read_head` would return for a file holding ``data``."""
    view = memoryview(data)
    declared = _safetensors_header_size(bytes(view[:9]), len(view))
    return bytes(view[: max(HEAD_BYTES, 8 + declared if declared is not None else 0)])


def _safetensors_header_size(head: bytes, size: int) -> int | None:
    if len(head) < 9:
        return None
    (declared,) = struct.unpack("<Q", head[:8])
    if 2 <= declared <= min(size - 8, _MAX_SAFETENSORS_HEADER) and head[8:9] == b"{":
        return int(declared)
    return None


def _is_safetensors(head: bytes, size: int) -> bool:
    declared = _safetensors_header_size(head, size)
    if declared is None or len(head) < 8 + declared:
        return False
    try:
        header = json.loads(head[8 : 8 + declared])
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict)


def _is_pickle(head: bytes, size: int) -> bool:
    """True when ``head`` is a pickle opcode stream (run through pickletools, which never executes anything)."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    names: list[str] = []
    try:
        for opcode, _, _ in pickletools.genops(io.BytesIO(head)):
            names.append(opcode.name)
            if opcode.name == "STOP":
                return True
    except ValueError:
        pass
    # The head ended inside a stream of valid opcodes that imports or calls something: a (long) pickle.
    truncated = size > len(head)
    return truncated and len(names) >= 2 and any(name in _CODE_OPCODES for name in names)


def classify(head: bytes, size: int) -> Kind:
    """What the bytes are, from the file's first bytes (see :func:`read_head`) and its total size.

    Example:
        >>> classify(*read_head("weights.safetensors"))
        'safetensors'
    """
    if _is_safetensors(head, size):
        return "safetensors"
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if _is_pickle(head, size):
        return "pickle"
    if size == len(head) and head.lstrip()[:1] in (b"{", b"["):
        try:
            json.loads(head)
            return "json"
        except (UnicodeDecodeError, ValueError):
            pass
    return "other"


def check_package_file(name: str, head: bytes, size: int) -> Kind:
    """Refuse pickles and zip archives under any name, and files whose bytes contradict their extension.

    ``name`` is the file's name inside the package, repeated in the error so the user knows which file to look at.
    """
    kind = classify(head, size)
    if kind == "pickle":
        raise IntegrityError(
            f"{name!r} holds a Python pickle, which kiln never loads (unpickling runs arbitrary code). Re-export the "
            "model with kiln.export (safetensors weights) instead of torch.save / pickle."
        )
    if kind == "zip":
        raise IntegrityError(
            f"{name!r} is a zip archive (the torch.save format, which wraps a pickle); kiln packages never contain "
            "one. Re-export the model with kiln.export (safetensors weights)."
        )
    if name.endswith(".safetensors") and kind != "safetensors":
        raise IntegrityError(f"{name!r} is named .safetensors but its bytes are not a safetensors file.")
    large_json = size > len(head) and head.lstrip()[:1] in (b"{", b"[")  # parsed in full by whoever reads it
    if name.endswith(".json") and kind != "json" and not large_json:
        raise IntegrityError(f"{name!r} is named .json but its bytes are not a JSON document.")
    return kind
