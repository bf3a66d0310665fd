"""Launch-configuration helpers shared by the Triton kernels (imports triton; only loaded on the Triton path)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch
import triton
from torch import Tensor

P = ParamSpec("P")
R = TypeVar("R")

# A row-wise kernel holds one whole row in registers; past this width the reference path is used instead.
MAX_ROW_BLOCK = 65536
# Backward programs when the tensors are not on CUDA (the Triton interpreter): few, so each walks several rows.
_INTERPRETER_PROGRAMS = 16


def rows_contiguous(tensor: Tensor) -> Tensor:
    """`tensor` with unit stride along its last dimension (a copy only if needed)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def row_block(n_columns: int) -> tuple[int, int]:
    """(BLOCK_SIZE, num_warps) for a kernel that holds one row of `n_columns` elements."""
    block = triton.next_power_of_2(n_columns)
    if block > MAX_ROW_BLOCK:
        raise ValueError(f"row-wise Triton kernels hold at most {MAX_ROW_BLOCK} columns; got {n_columns}")
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    return block, warps


def backward_programs(n_rows: int, device: torch.device) -> int:
    """How many programs a row-reducing backward launches: about one per streaming multiprocessor."""
    if device.type == "cuda":
        return max(1, min(n_rows, _multiprocessors(device.index or 0)))
    return max(1, min(n_rows, _INTERPRETER_PROGRAMS))


@functools.cache
def _multiprocessors(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def on_input_device(function: Callable[P, R]) -> Callable[P, R]:
    """Launch on the device of the first tensor argument: Triton launches on the *current* CUDA device, which need
    not be the tensors' (several GPUs in one process)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        tensor = next(arg for arg in args if isinstance(arg, torch.Tensor))
        if not tensor.is_cuda:
            return function(*args, **kwargs)
        with torch.cuda.device(tensor.device):
            return function(*args, **kwargs)

    return wrapper
