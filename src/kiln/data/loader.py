"""Loaders: turn a dataset into the batches of one epoch, reproducibly and resumably.

Every loader draws its epoch order from ``(seed, epoch)`` alone, so an epoch can be replayed from any batch
position without replaying the batches before it; this is what makes resume exact. Under torch.distributed each
rank takes a stride of the global batch order, so ranks see disjoint data and the same number of steps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .arrays import ArrayDataset

__all__ = ["BatchLoader", "DatasetLoader", "IterableLoader", "Loader", "epoch_order", "make_loader"]

Batch = Any


class Loader(Protocol):
    """What the training loop needs from data: batches per epoch, and one epoch from a given batch position."""

    resumable: bool

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]: ...


def epoch_order(n: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``n`` rows for ``epoch``: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=generator)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}.")


class _Plan:
    """Which rows form batch ``i`` of an epoch on this rank."""

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool, rank: int, world: int,
        even: bool = True,
    ):
        _check_batch_size(batch_size)
        if n == 0:
            raise DataError("the dataset is empty: there is nothing to train or evaluate on.")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        global_batches = n // batch_size if drop_last else -(-n // batch_size)
        if global_batches == 0:
            raise DataError(f"drop_last with batch_size {batch_size} leaves no batch from {n} rows.")
        if world == 1:
            self.batches = global_batches
        elif even:
            # Training: every rank takes the same number of batches, so collective ops never wait on a rank that
            # finished early (the remainder of global batches is dropped).
            self.batches = max(global_batches // world, 1)
        else:
            # Evaluation: together the ranks cover every row once; results are reduced after the loop.
            self.batches = len(range(rank, global_batches, world))

    def order(self, epoch: int) -> torch.Tensor | None:
        return epoch_order(self.n, seed=self.seed, epoch=epoch) if self.shuffle else None

    def rows(self, order: torch.Tensor | None, i: int) -> torch.Tensor | slice:
        g = i * self.world + self.rank  # global batch index taken by this rank
        lo, hi = g * self.batch_size, min((g + 1) * self.batch_size, self.n)
        return slice(lo, hi) if order is None else order[lo:hi]


class BatchLoader:
    """Serves an :class:`ArrayDataset` by slicing whole batches (no per-sample indexing or collate)."""

    resumable = True

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
        even: bool = True,
    ) -> None:
        self.dataset = dataset
        self.plan = _Plan(
            len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank, world=world,
            even=even,
        )

    def __len__(self) -> int:
        return self.plan.batches

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        order = self.plan.order(epoch)
        take = self.dataset.take
        for i in range(start, self.plan.batches):
            yield take(self.plan.rows(order, i))


class _PlanSampler:
    """A batch sampler whose epoch and start position are set before each epoch's iterator is created."""

    def __init__(self, plan: _Plan) -> None:
        self.plan, self.epoch, self.start = plan, 0, 0

    def __len__(self) -> int:
        return self.plan.batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = self.plan.order(self.epoch)
        for i in range(self.start, self.plan.batches):
            rows = self.plan.rows(order, i)
            if isinstance(rows, slice):
                yield list(range(rows.start, rows.stop))
            else:
                yield rows.tolist()


def default_workers() -> int:
    """Worker processes for file sources: leave a core for the training loop, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // 2))


class DatasetLoader:
    """Serves a map-style torch ``Dataset`` (file sources) through a DataLoader with worker processes."""

    resumable = True

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        rank: int = 0,
        world: int = 1,
        even: bool = True,
    ) -> None:
        self.dataset = dataset
        plan = _Plan(
            len(dataset),  # type: ignore[arg-type]
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world=world,
            even=even,
        )
        self.sampler = _PlanSampler(plan)
        workers = default_workers() if num_workers is None else num_workers
        collate = collate_fn or getattr(dataset, "collate_fn", None)
        self.batch_transform = getattr(dataset, "batch_transform", None)
        # The DataLoader draws its worker base seed from this generator, not from torch's global RNG, so creating an
        # iterator (at an epoch's start, or mid-epoch on resume) never shifts the RNG stream that dropout uses.
        self.generator = torch.Generator()
        self.loader: DataLoader[Any] = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            generator=self.generator,
        )

    def __len__(self) -> int:
        return self.sampler.plan.batches

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.sampler.epoch, self.sampler.start = epoch, start
        self.generator.manual_seed((self.sampler.plan.seed * 1_000_003 + epoch) % (2**63))
        transform = self.batch_transform
        for batch in self.loader:
            if transform is not None:
                x, y = batch
                batch = (transform(x), y)
            yield batch


class IterableLoader:
    """Wraps a user's DataLoader or any re-iterable of ``(x, y)`` batches; kiln does not control its order."""

    resumable = False

    def __init__(self, batches: Iterable[Batch]) -> None:
        self.batches = batches
        try:
            self._length = len(batches)  # type: ignore[arg-type]
        except TypeError:
            self._length = 0

    def __len__(self) -> int:
        return self._length

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        set_epoch = getattr(getattr(self.batches, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        iterator = iter(self.batches)
        for _ in range(start):
            next(iterator, None)
        yield from iterator


def make_loader(
    data: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int | None = None,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
    even: bool = True,
) -> Loader:
    """Pick the loader for ``data``: an ArrayDataset, a (x, y) tuple of arrays, a torch Dataset or batches.

    Under several ranks each takes a stride of the global batches: ``even`` (training) gives every rank the same
    number of batches; otherwise (evaluation) the ranks together cover every row exactly once.
    """
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple | list | Dataset):
        data = ArrayDataset(*data)
    if isinstance(data, ArrayDataset):
        return BatchLoader(
            data, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank, world=world, even=even
        )
    if isinstance(data, DataLoader) or (isinstance(data, Iterable) and not hasattr(data, "__getitem__")):
        return IterableLoader(data)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        if hasattr(data, "__len__") and len(data) == 0:
            raise DataError(f"the dataset {type(data).__name__} is empty: there is nothing to train or evaluate on.")
        return DatasetLoader(
            data,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
            rank=rank,
            world=world,
            even=even,
        )
    raise DataError(
        f"cannot load data of type {type(data).__name__}: pass a kiln.data.ArrayDataset, an (x, y) tuple of arrays, "
        "a torch Dataset (each item an (x, y) pair) or an iterable of (x, y) batches such as a DataLoader."
    )
