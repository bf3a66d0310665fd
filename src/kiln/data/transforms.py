"""Batch-level transforms: each takes a whole batch ``x`` of shape (B, ...) and returns a new one.

They are vectorised over the batch (one tensor op per transform, no per-sample Python loop) and draw their
randomness from torch's global generator, so seeding torch (kiln's ``seed``) makes augmented runs reproducible.
Datasets apply them through their ``batch_transform`` attribute, after the batch is assembled.

Random transforms augment only while gradients are enabled, i.e. while training: ``evaluate`` and ``predict`` run
without gradients, so a validation split that shares its dataset's ``batch_transform`` is never augmented (flip and
noise pass the batch through; RandomCrop cuts the centre window). Deterministic ones (Normalize) always apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

__all__ = ["Compose", "GaussianNoise", "Normalize", "RandomCrop", "RandomHorizontalFlip"]


def _augmenting() -> bool:
    """True while training: kiln evaluates and predicts with gradients off (inference mode)."""
    return torch.is_grad_enabled()

Transform = Callable[[torch.Tensor], torch.Tensor]


class Compose:
    """Apply several batch transforms in order.

    Example:
        >>> augment = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize([0.5] * 3, [0.25] * 3)])
        >>> dataset = ImageFolder("images/train", size=32, batch_transform=augment)
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        for transform in transforms:
            if not callable(transform):
                raise ConfigError(f"Compose: every transform must be callable, got {transform!r}.")
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            x = transform(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _per_channel(values: float | Sequence[float], name: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"Normalize: {name} must be a number or a sequence of numbers, got {values!r}.") from error
    if tensor.numel() == 0:
        raise ConfigError(f"Normalize: {name} is empty; pass one value per channel (or a single value for all).")
    return tensor


class Normalize:
    """Subtract a per-channel mean and divide by a per-channel std; channels are dim 1 of (B, C, ...).

    A single number applies to every channel. Integer batches (uint8 images) are converted to float32 first.

    Example:
        >>> normalize = Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        >>> normalize(torch.rand(8, 3, 32, 32)).shape
        torch.Size([8, 3, 32, 32])
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = _per_channel(mean, "mean")
        self.std = _per_channel(std, "std")
        if not bool((self.std > 0).all()):
            raise ConfigError(f"Normalize: every std must be positive, got {std!r}.")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ConfigError(
                f"Normalize: mean has {len(self.mean)} values and std {len(self.std)}; pass the same number of each."
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:
            raise DataError(f"Normalize expects a batch of shape (B, C, ...), got shape {tuple(x.shape)}.")
        if not x.is_floating_point():
            x = x.float()
        channels = x.shape[1]
        for values in (self.mean, self.std):
            if len(values) not in (1, channels):
                raise DataError(
                    f"Normalize has {len(values)} per-channel values but the batch has {channels} channels "
                    f"(shape {tuple(x.shape)}); pass one mean and std per channel of dim 1, or a single number."
                )
        shape = (1, -1) + (1,) * (x.ndim - 2)  # broadcast over (B, C, ...)
        mean = self.mean.to(device=x.device, dtype=x.dtype).view(shape)
        std = self.std.to(device=x.device, dtype=x.dtype).view(shape)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def _check_probability(p: float, name: str) -> float:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name}: p must be a probability in [0, 1], got {p!r}.")
    return float(p)


class RandomHorizontalFlip:
    """Mirror each sample along its last dimension (image width) with probability ``p``.

    Example:
        >>> flip = RandomHorizontalFlip(p=0.5)
        >>> flip(torch.rand(8, 3, 32, 32)).shape
        torch.Size([8, 3, 32, 32])
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = _check_probability(p, "RandomHorizontalFlip")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:
            raise DataError(f"RandomHorizontalFlip expects a batch of shape (B, ..., W), got shape {tuple(x.shape)}.")
        if not _augmenting():
            return x
        flip = torch.rand(x.shape[0], device=x.device) < self.p  # (B,)
        return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ConfigError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {size!r}.")
    return pair[0], pair[1]


class RandomCrop:
    """Cut a random ``size`` window (height, width) from each sample, after zero-padding each side by ``padding``.

    Works on (B, H, W) and (B, C, H, W) batches (any number of dims between B and H, W); every sample gets its own
    offset, taken in one gather for the whole batch.

    Example:
        >>> crop = RandomCrop(32, padding=4)
        >>> crop(torch.rand(8, 3, 32, 32)).shape
        torch.Size([8, 3, 32, 32])
    """

    def __init__(self, size: int | Sequence[int], padding: int = 0) -> None:
        self.size = _pair(size, "RandomCrop: size")
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
            raise ConfigError(f"RandomCrop: padding must be a non-negative int, got {padding!r}.")
        self.padding = padding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3:
            raise DataError(f"RandomCrop expects a batch of shape (B, ..., H, W), got shape {tuple(x.shape)}.")
        if self.padding:
            p = self.padding
            x = F.pad(x, (p, p, p, p))
        batch, lead, (height, width) = x.shape[0], x.shape[1:-2], x.shape[-2:]
        h, w = self.size
        if h > height or w > width:
            raise DataError(
                f"RandomCrop({self.size}) is larger than the (padded) samples, {height}x{width}; "
                "crop a smaller size or add padding."
            )
        if _augmenting():
            top = torch.randint(0, height - h + 1, (batch,), device=x.device)
            left = torch.randint(0, width - w + 1, (batch,), device=x.device)
        else:  # evaluation: the centre window (with padding only, that is the unpadded sample itself)
            top = torch.full((batch,), (height - h) // 2, device=x.device)
            left = torch.full((batch,), (width - w) // 2, device=x.device)
        rows = top[:, None] + torch.arange(h, device=x.device)  # (B, h)
        cols = left[:, None] + torch.arange(w, device=x.device)  # (B, w)
        index = (rows[:, :, None] * width + cols[:, None, :]).reshape(batch, 1, h * w)  # (B, 1, h*w)
        flat = x.reshape(batch, -1, height * width)  # (B, M, H*W)
        out = flat.gather(2, index.expand(batch, flat.shape[1], h * w))  # (B, M, h*w)
        return out.reshape(batch, *lead, h, w)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class GaussianNoise:
    """Add zero-mean Gaussian noise with standard deviation ``std`` to every element.

    Example:
        >>> noisy = GaussianNoise(0.01)(torch.zeros(4, 1, 16000))
    """

    def __init__(self, std: float) -> None:
        if not std >= 0:
            raise ConfigError(f"GaussianNoise: std must be a non-negative number, got {std!r}.")
        self.std = float(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise DataError(f"GaussianNoise expects a floating-point batch, got dtype {x.dtype}.")
        if not _augmenting():
            return x
        return x + torch.randn_like(x) * self.std

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"
