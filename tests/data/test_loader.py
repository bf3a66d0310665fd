from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from kiln.data import ArrayDataset, BatchLoader, DatasetLoader, IterableLoader, epoch_order, make_loader
from kiln.errors import ConfigError, DataError


class Indexed(Dataset[tuple[torch.Tensor, int]]):
    """Item i is (tensor([i.]), i): batches show which rows they hold."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(index)]), index


def rows(dataset_n: int) -> ArrayDataset:
    return ArrayDataset(np.arange(dataset_n, dtype=np.float32)[:, None], np.arange(dataset_n))


def labels(batches: Any) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


def test_epoch_order_is_a_pure_function_of_seed_and_epoch() -> None:
    a = epoch_order(50, seed=7, epoch=2)
    assert torch.equal(a, epoch_order(50, seed=7, epoch=2))
    assert sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_order(50, seed=7, epoch=3))
    assert not torch.equal(a, epoch_order(50, seed=8, epoch=2))


@pytest.mark.parametrize(("n", "batch_size", "drop_last", "sizes"), [(10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4])])
def test_batch_loader_covers_each_row_once(n: int, batch_size: int, drop_last: bool, sizes: list[int]) -> None:
    loader = make_loader(rows(n), batch_size, shuffle=True, seed=1, drop_last=drop_last)
    assert isinstance(loader, BatchLoader) and len(loader) == len(sizes)
    batches = list(loader.epoch(0))
    assert [len(y) for y in labels(batches)] == sizes
    seen = [i for batch in labels(batches) for i in batch]
    assert len(set(seen)) == len(seen) and (drop_last or sorted(seen) == list(range(n)))
    for x, y in batches:  # rows stay aligned
        assert torch.equal(x[:, 0].long(), y)


def test_unshuffled_loader_keeps_file_order() -> None:
    loader = make_loader(rows(5), 2, shuffle=False)
    assert labels(loader.epoch(3)) == [[0, 1], [2, 3], [4]]


def test_seeded_shuffle_is_reproducible_and_changes_with_the_epoch() -> None:
    first = labels(make_loader(rows(30), 8, shuffle=True, seed=5).epoch(0))
    again = labels(make_loader(rows(30), 8, shuffle=True, seed=5).epoch(0))
    assert first == again
    assert first != labels(make_loader(rows(30), 8, shuffle=True, seed=5).epoch(1))
    assert first != labels(make_loader(rows(30), 8, shuffle=True, seed=6).epoch(0))


@pytest.mark.parametrize("start", [0, 1, 3, 5])
def test_epoch_from_a_start_position_is_the_tail_of_the_full_epoch(start: int) -> None:
    loader = make_loader(rows(23), 5, shuffle=True, seed=2)
    assert labels(loader.epoch(4, start=start)) == labels(loader.epoch(4))[start:]


@pytest.mark.parametrize(("n", "batch_size"), [(40, 5), (37, 4)])
def test_two_ranks_get_disjoint_batches_and_the_same_number_of_steps(n: int, batch_size: int) -> None:
    data = rows(n)
    per_rank = [
        labels(make_loader(data, batch_size, shuffle=True, seed=9, rank=rank, world=2).epoch(1)) for rank in (0, 1)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == (-(-n // batch_size)) // 2
    seen = [[i for batch in batches for i in batch] for batches in per_rank]
    assert set(seen[0]).isdisjoint(seen[1])
    if n % (2 * batch_size) == 0:
        assert sorted(seen[0] + seen[1]) == list(range(n))
    # rank r takes global batches r, r + 2, ...: the two ranks interleave to the single-process epoch
    single = labels(make_loader(data, batch_size, shuffle=True, seed=9).epoch(1))
    assert [batch for pair in zip(*per_rank, strict=True) for batch in pair] == single[: 2 * len(per_rank[0])]


def test_empty_datasets_are_rejected() -> None:
    with pytest.raises(DataError, match="empty"):
        make_loader(ArrayDataset(np.zeros((0, 3)), np.zeros(0)), 4, shuffle=True)
    with pytest.raises(DataError, match="empty"):
        make_loader(Indexed(0), 4, shuffle=True)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_invalid_batch_size_is_a_config_error(batch_size: Any) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        make_loader(rows(4), batch_size, shuffle=False)


def test_make_loader_picks_the_loader_for_the_data() -> None:
    assert isinstance(make_loader((np.zeros((4, 2)), np.zeros(4)), 2, shuffle=False), BatchLoader)
    assert isinstance(make_loader(Indexed(4), 2, shuffle=False, num_workers=0), DatasetLoader)
    assert isinstance(make_loader(DataLoader(Indexed(4), batch_size=2), 2, shuffle=False), IterableLoader)
    with pytest.raises(DataError, match="cannot load data"):
        make_loader(42, 2, shuffle=False)


def test_dataset_loader_serves_the_same_rows_as_the_batch_loader() -> None:
    by_slices = labels(make_loader(rows(21), 4, shuffle=True, seed=3).epoch(2))
    by_items = make_loader(Indexed(21), 4, shuffle=True, seed=3, num_workers=0)
    assert labels(by_items.epoch(2)) == by_slices
    assert labels(by_items.epoch(2, start=2)) == by_slices[2:]
