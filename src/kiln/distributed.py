"""torch.distributed glue: the torchrun environment, process-group setup and teardown, rank helpers, reductions.

A script that calls ``Model.fit`` runs unchanged as ``python train.py`` or under ``torchrun``: kiln reads the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...), initialises the process group (NCCL on
GPU, gloo on CPU) with a timeout so a lost rank cannot hang the others forever, pins the device per local rank and
gives each rank its share of the CPU threads. Single-process runs see rank 0 of a world of 1, so every helper can be
called unconditionally.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_sum",
    "init",
    "is_distributed",
    "is_rank_zero",
    "local_rank",
    "local_world_size",
    "rank",
    "teardown",
    "world_size",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=5)
_EXIT_BARRIER_TIMEOUT = timedelta(seconds=60)
_EXIT_BARRIERS: list[dist.Work] = []  # see teardown: released by the main thread when the process ends


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


def local_world_size() -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def world_size() -> int:
    """Number of ranks in the job (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    """True on the one process that prints, logs and writes single-file checkpoints."""
    return rank() == 0


def init(*, backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Initialise the process group from torchrun's environment; returns True when this call created it.

    Does nothing (returns False) outside torchrun (WORLD_SIZE unset or 1) or when a group already exists. On CPU
    each rank gets ``cores // local ranks`` intra-op threads: oversubscribed OpenMP threads spin and can run
    many times slower. ``fit`` calls this itself; call it earlier to pick the backend or timeout.

    Example:
        >>> kiln.distributed.init(timeout=timedelta(minutes=2))   # torchrun --nproc-per-node 2 train.py
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank())
    chosen = backend or ("nccl" if use_cuda else "gloo")
    dist.init_process_group(backend=chosen, timeout=timeout)
    if not use_cuda and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // local_world_size()))
    atexit.register(teardown)
    if is_rank_zero():
        logger.info("initialised %s process group: %d ranks", chosen, dist.get_world_size())
    return True


def teardown() -> None:
    """Destroy the process group if one exists (safe to call twice), after a bounded barrier on gloo.

    Why, at interpreter exit: a gloo worker thread that finishes a collective drops the work's tensors on its own
    thread, and that needs the GIL. If the interpreter is finalizing by then, the thread aborts the whole process
    ("terminate called without an active exception"; seen under FSDP2 on a loaded machine, whose DTensor caches
    keep the process group, and so its worker threads, alive past ``destroy_process_group``). A gloo barrier holds
    every earlier unfinished work until the barrier itself is destroyed, and a worker finishes with a work under the
    lock the barrier takes to collect them, so every work is either done with or held by the barrier. Holding the
    barrier here until the process ends makes the main thread the one that frees them all. The wait is bounded (a
    rank still busy, or gone, must not hold the others), and a rank leaving on an uncaught exception
    (``sys.last_value`` is set) skips it so it exits at once and torchrun ends the job.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1 and dist.get_backend() == "gloo" and not hasattr(sys, "last_value"):
        try:
            work = dist.barrier(async_op=True)
            assert work is not None
            _EXIT_BARRIERS.append(work)
            work.wait(timeout=_EXIT_BARRIER_TIMEOUT)
        except Exception as error:
            logger.debug("barrier before teardown did not complete: %s", error)
    dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op when not distributed); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
