"""Preview for distributed_scaling.py: DDP's gradient all_reduce through shared memory instead of gloo's TCP loopback.

A change proposed for ``kiln.train.strategy.wrap``, tried from outside src/: when every rank of a CPU job is on one
machine, a DDP communication hook sums each gradient bucket in a file in /dev/shm. Each rank copies its bucket into
its slot, publishes a sequence number, spins until every rank has published the same number, and sums the slots.
Two slot sets used in turn make this safe without a second barrier: a rank can only be one bucket ahead of the
slowest, and that rank has finished reading the set it is about to be overwritten in before it publishes.

On this 2-core VM a gloo all_reduce of these models' gradients (250-340 KB) costs 1-2 ms however small the buffer
(it is latency: TCP round trips between threads that sleep and are woken), 7-8% of a LeNet step; this does the same
reduction in tens of microseconds. A preview only: spinning is right when every rank has its own core.
"""

import os  # no `from __future__ import annotations`: DDP checks the hook's annotations are dist.GradBucket and Future

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["SharedMemoryAllReduce", "use_shared_memory_all_reduce"]


class SharedMemoryAllReduce:
    """The state of a DDP comm hook that averages gradient buckets over the ranks of one machine through /dev/shm."""

    def __init__(self, numel: int) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        run = os.environ.get("TORCHELASTIC_RUN_ID", "run") + "_" + os.environ.get("MASTER_PORT", "0")
        self.path = f"/dev/shm/kiln_preview_allreduce_{run}"
        self.capacity = numel
        shape = (2 * self.world * numel + 16 * self.world,)  # two slot sets, then one 64-byte flag line per rank
        if self.rank == 0:
            self.memory = np.memmap(self.path, dtype=np.float32, mode="w+", shape=shape)
        dist.barrier()
        if self.rank != 0:
            self.memory = np.memmap(self.path, dtype=np.float32, mode="r+", shape=shape)
        dist.barrier()
        if self.rank == 0:
            os.unlink(self.path)  # the mappings stay valid; nothing is left behind if a rank dies
        slots = torch.from_numpy(self.memory[: 2 * self.world * numel])
        self.slots = slots.view(2, self.world, numel)  # (set, rank, numel)
        flags = self.memory[2 * self.world * numel :].view(np.int64)
        self.flags = flags.reshape(self.world, 8)[:, 0]  # one int64 per 64-byte line: no false sharing
        self.sequence = 0

    def reduce(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buffer = bucket.buffer()
        n = buffer.numel()
        if n > self.capacity:
            raise RuntimeError(f"bucket of {n} elements exceeds the shared buffer ({self.capacity})")
        self.sequence += 1
        slots = self.slots[self.sequence % 2]  # (world, numel)
        slots[self.rank, :n].copy_(buffer)
        self.flags[self.rank] = self.sequence  # after the copy: x86 keeps stores in order
        flags, sequence = self.flags, self.sequence
        while int(flags.min()) < sequence:
            pass
        torch.sum(slots[:, :n], dim=0, out=buffer)
        buffer.div_(self.world)
        future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        future.set_result(buffer)
        return future


def shared_memory_hook(state: SharedMemoryAllReduce, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    return state.reduce(bucket)


def use_shared_memory_all_reduce(module: torch.nn.parallel.DistributedDataParallel) -> None:
    """Register the shared-memory all_reduce on a DDP module (all its ranks on this machine)."""
    numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
    module.register_comm_hook(state=SharedMemoryAllReduce(numel), hook=shared_memory_hook)
