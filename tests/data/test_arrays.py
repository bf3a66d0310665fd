import numpy as np
import pytest
import torch

from kiln.data import ArrayDataset, as_tensor
from kiln.errors import DataError

from .files import inputs, targets


def test_as_tensor_picks_training_dtypes() -> None:
    assert as_tensor(np.zeros(3, dtype=np.float64)).dtype == torch.float32
    assert as_tensor(np.zeros(3, dtype=np.int32)).dtype == torch.int64
    assert as_tensor([[1, 2], [3, 4]]).shape == (2, 2)
    keep = torch.zeros(2, dtype=torch.float16)
    assert as_tensor(keep) is keep
    with pytest.raises(DataError, match="not numeric"):
        as_tensor(np.array(["a", "b"]), name="y")


@pytest.mark.parametrize(("n", "fraction"), [(100, 0.8), (10, 0.5), (7, 0.3)])
def test_split_sizes_are_disjoint_and_cover_the_rows(n: int, fraction: float) -> None:
    dataset = ArrayDataset(np.arange(n, dtype=np.float32)[:, None], np.arange(n))
    first, second = dataset.split(fraction, seed=3)
    assert len(first) == round(n * fraction)
    assert len(first) + len(second) == n
    rows_first, rows_second = set(targets(first).tolist()), set(targets(second).tolist())
    assert rows_first.isdisjoint(rows_second)
    assert rows_first | rows_second == set(range(n))
    # x and y stay aligned after the shuffle
    assert torch.equal(inputs(first)[:, 0].long(), targets(first))


def test_split_is_reproducible_and_keeps_class_names() -> None:
    dataset = ArrayDataset(np.random.rand(50, 2), np.random.randint(0, 2, 50), classes=["no", "yes"])
    a, _ = dataset.split(0.6, seed=1)
    b, _ = dataset.split(0.6, seed=1)
    c, _ = dataset.split(0.6, seed=2)
    assert torch.equal(inputs(a), inputs(b))
    assert not torch.equal(inputs(a), inputs(c))
    assert a.classes == ["no", "yes"]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 0.01])
def test_split_rejects_fractions_that_leave_a_side_empty(fraction: float) -> None:
    with pytest.raises(DataError, match="split"):
        ArrayDataset(np.zeros((10, 2)), np.zeros(10)).split(fraction)


def test_mismatched_lengths_name_the_shapes() -> None:
    with pytest.raises(DataError, match=r"\(10, 2\), \(9,\)"):
        ArrayDataset(np.zeros((10, 2)), np.zeros(9))


def test_take_applies_the_batch_transform_to_inputs_only() -> None:
    dataset = ArrayDataset(np.ones((4, 2)), np.arange(4), batch_transform=lambda x: x * 10)
    x, y = dataset.take(slice(0, 2))
    assert isinstance(x, torch.Tensor) and torch.equal(x, torch.full((2, 2), 10.0))
    assert y is not None and y.tolist() == [0, 1]


def test_several_inputs_stay_a_tuple() -> None:
    dataset = ArrayDataset((np.zeros((5, 3)), np.ones((5, 2))), np.arange(5))
    x, _ = dataset.take(torch.tensor([0, 4]))
    assert isinstance(x, tuple) and [t.shape for t in x] == [(2, 3), (2, 2)]
