"""Training checkpoints: one safetensors file per checkpoint, tensors as tensors and everything else as JSON.

A checkpoint is a nested state (model, optimizer, loss scaler, schedule, callbacks, RNG states, loop position).
Tensors go into the safetensors body; the rest of the structure, with placeholders for the tensors, goes into its
JSON header. Nothing is ever unpickled. Files are written atomically (temp -> fsync -> rename -> fsync dir), so a
crash leaves either the previous checkpoint or the new one, never a half-written file under a checkpoint name.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_path
from ..errors import CheckpointError

__all__ = ["FORMAT", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "save_checkpoint"]

FORMAT = "kiln.checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{10})\.safetensors$")


def _encode(value: Any, tensors: dict[str, torch.Tensor], seen: set[int]) -> Any:
    """JSON-able structure with tensors and arrays moved into ``tensors`` (dict key types and tuples preserved)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        storage = tensor.untyped_storage().data_ptr() if tensor.numel() else -len(tensors) - 1
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()  # safetensors refuses tensors that share memory
        seen.add(storage)
        key = str(len(tensors))
        tensors[key] = tensor
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        return {"__ndarray__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, tensors, seen), _encode(v, tensors, seen)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, seen) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, seen) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.dtype | torch.device):
        return {"__str__": str(value)}
    raise CheckpointError(f"cannot checkpoint a value of type {type(value).__name__} ({value!r:.80}); state_dict "
                          "values must be tensors, numbers, strings, lists, tuples or dicts.")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__dict__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__dict__"]}
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__str__" in value:
        return value["__str__"]
    raise CheckpointError(f"unknown checkpoint entry {sorted(value)}")


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary files of interrupted writes are ignored)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _NAME.match(p.name))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(directory: str | Path, state: dict[str, Any], *, step: int, keep: int = 3) -> Path:
    """Write ``state`` as ``ckpt-<step>.safetensors`` atomically and keep the newest ``keep`` checkpoints.

    On failure (disk full, permissions) raises CheckpointError and leaves every earlier checkpoint intact.

    Example:
        >>> save_checkpoint("checkpoints", model.state_dict(), step=model.global_step)
    """
    from safetensors.torch import save_file

    root = Path(directory)
    path = root / f"ckpt-{step:010d}.safetensors"
    tensors: dict[str, torch.Tensor] = {}
    header = json.dumps({"format": FORMAT, "state": _encode(state, tensors, set())})
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".ckpt-*.tmp"):  # left by a write that was killed
            stale.unlink(missing_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"kiln": header})
    except OSError as error:
        previous = latest_checkpoint(root) if root.is_dir() else None
        reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason}. "
            f"{f'The previous checkpoint {previous.name} is intact.' if previous else 'No earlier checkpoint exists.'}"
        ) from error
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`; return its state."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        header = json.loads(metadata["kiln"])
    except (SafetensorError, KeyError, ValueError, OSError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a kiln checkpoint: {error}") from error
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {header.get('format')!r}; this kiln reads {FORMAT}.")
    return dict(_decode(header["state"], tensors))
