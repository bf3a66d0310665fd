import numpy as np
import pytest
import torch

from kiln.data import (
    ArrayDataset,
    Compose,
    GaussianNoise,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    make_loader,
)
from kiln.errors import ConfigError, DataError


def test_normalize_gives_zero_mean_unit_std_per_channel() -> None:
    torch.manual_seed(0)
    scale, shift = torch.tensor([1.0, 5.0, 0.1]), torch.tensor([0.0, -3.0, 10.0])
    x = torch.randn(64, 3, 8, 8) * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    out = Normalize(mean.tolist(), std.tolist())(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def test_normalize_converts_integer_batches_and_broadcasts_one_value() -> None:
    out = Normalize(0.5, 0.5)(torch.full((2, 1, 3), 1, dtype=torch.uint8))
    assert out.dtype == torch.float32 and torch.equal(out, torch.ones(2, 1, 3))


def test_normalize_reports_a_channel_mismatch_and_bad_std() -> None:
    with pytest.raises(DataError, match="3 per-channel values but the batch has 1 channels"):
        Normalize([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ConfigError, match="positive"):
        Normalize(0.0, [1.0, 0.0])


@pytest.mark.parametrize("shape", [(16, 3, 4, 5), (16, 7), (16, 1, 100)])
def test_horizontal_flip_mirrors_whole_samples_with_probability_p(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)
    torch.manual_seed(1)
    out = RandomHorizontalFlip(p=0.5)(x)
    flipped = [bool(torch.equal(o, s.flip(-1))) for o, s in zip(out, x, strict=True)]
    kept = [bool(torch.equal(o, s)) for o, s in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each sample is one or the other
    assert 0 < sum(flipped) < len(x)


def test_flip_rate_matches_p_over_many_samples() -> None:
    torch.manual_seed(2)
    x = torch.arange(2.0).expand(20000, 2)
    flipped = (RandomHorizontalFlip(p=0.3)(x)[:, 0] == 1).float().mean().item()
    assert abs(flipped - 0.3) < 0.02


def test_random_crop_takes_windows_of_the_padded_sample() -> None:
    torch.manual_seed(3)
    x = torch.arange(2 * 2 * 6 * 7, dtype=torch.float32).reshape(2, 2, 6, 7)
    out = RandomCrop((4, 5), padding=1)(x)
    assert out.shape == (2, 2, 4, 5)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for sample, crop in zip(padded, out, strict=True):
        windows = [sample[:, i : i + 4, j : j + 5] for i in range(8 - 4 + 1) for j in range(9 - 5 + 1)]
        assert any(torch.equal(window, crop) for window in windows)


def test_random_crop_offsets_vary_per_sample_and_full_size_is_identity() -> None:
    x = torch.randn(32, 3, 8, 8)
    assert torch.equal(RandomCrop(8)(x), x)
    torch.manual_seed(4)
    out = RandomCrop(8, padding=2)(x)
    differs = [not torch.equal(o, s) for o, s in zip(out, x, strict=True)]
    assert 0 < sum(differs) < 32
    with pytest.raises(DataError, match="larger"):
        RandomCrop(9)(x)


def test_gaussian_noise_has_the_requested_std() -> None:
    torch.manual_seed(5)
    x = torch.full((64, 1, 1000), 3.0)
    noise = GaussianNoise(0.2)(x) - x
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 0.2) < 0.01
    with pytest.raises(ConfigError):
        GaussianNoise(-1.0)


def test_compose_applies_in_order_and_seeding_reproduces_augmentation() -> None:
    augment = Compose([RandomCrop(6, padding=1), RandomHorizontalFlip(), GaussianNoise(0.1), Normalize(0.5, 2.0)])
    x = torch.rand(8, 3, 6, 6)
    torch.manual_seed(6)
    first = augment(x)
    torch.manual_seed(6)
    assert torch.equal(first, augment(x))
    assert torch.equal(Compose([lambda t: t + 1, lambda t: t * 2])(torch.zeros(1)), torch.full((1,), 2.0))


def test_batch_transform_runs_on_every_batch_of_an_array_dataset() -> None:
    dataset = ArrayDataset(np.ones((10, 2, 3, 3), dtype=np.float32), np.arange(10), batch_transform=Normalize(1.0, 0.5))
    for x, _ in make_loader(dataset, 4, shuffle=True).epoch(0):
        assert torch.equal(x, torch.zeros_like(x))


def test_random_transforms_do_not_augment_during_evaluation():
    import kiln

    x = torch.rand(16, 1, 8, 8)
    augment = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip(p=1.0), GaussianNoise(0.5)])
    seen: list[torch.Tensor] = []

    class Record(torch.nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            seen.append(batch.detach().clone())
            return batch.flatten(1)

    data = kiln.data.ArrayDataset(x, torch.zeros(16, 64), batch_transform=augment)
    model = kiln.Model(torch.nn.Sequential(Record(), torch.nn.Linear(64, 64)), loss="mse")
    model.fit(data, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert not torch.equal(seen[-1], x)  # training batches are augmented
    model.evaluate(data)
    assert torch.equal(seen[-1], x)  # evaluation batches are not
    with torch.no_grad():
        torch.testing.assert_close(RandomCrop(4)(x), x[..., 2:6, 2:6])
