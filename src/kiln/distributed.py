"""torch.distributed glue: reading the torchrun environment and rank helpers.

Single-process runs see rank 0 of a world of 1, so every caller can use these helpers unconditionally.
"""

from __future__ import annotations

import os

import torch.distributed as dist

__all__ = ["is_distributed", "is_rank_zero", "local_rank", "rank", "world_size"]


def is_distributed() -> bool:
    """True when a process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine, from torchrun's LOCAL_RANK (0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of ranks in the job (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    """True on the one process that prints, logs and writes single-file checkpoints."""
    return rank() == 0
