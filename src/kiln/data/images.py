"""Image folders: one subfolder per class, decoded with Pillow into float32 CHW tensors."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..errors import ConfigError, DataError
from .arrays import ArrayDataset

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _pillow() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("kiln's image sources need Pillow: pip install 'kiln[data]'") from error
    return Image


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """Images stored as ``root/<class name>/<file>``, served as (float32 (C, H, W) tensor in [0, 1], class id).

    Class ids follow the sorted folder names (``.classes``); pass ``classes=`` (e.g. ``train.classes``) to pin
    the ids of another split, which may then lack some folders. ``size`` resizes every image to (H, W) (an int
    means square), ignoring the aspect ratio; without it all images must already share one size. ``grayscale``
    gives 1 channel instead of 3. ``batch_transform`` (see :mod:`kiln.data.transforms`) runs on whole batches.

    Files are decoded in DataLoader workers; for a dataset that fits in memory, :meth:`to_memory` decodes it once
    into an :class:`ArrayDataset`, which kiln then serves a whole batch at a time.

    Example:
        >>> train = ImageFolder("photos/train", size=64, batch_transform=RandomHorizontalFlip())
        >>> val = ImageFolder("photos/val", size=64, classes=train.classes)
        >>> x, y = train[0]
        >>> x.shape, train.classes[y]
        (torch.Size([3, 64, 64]), 'cat')
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        size: int | tuple[int, int] | None = None,
        grayscale: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        classes: Sequence[str] | None = None,
        batch_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        _pillow()  # fail here, with the install hint, rather than inside a worker process
        self.root = Path(root)
        self.size = _image_size(size)
        self.grayscale = grayscale
        self.batch_transform = batch_transform
        self.classes, self.samples = scan_class_folders(self.root, extensions, classes=classes, kind="ImageFolder")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.load(path), label

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, n={len(self)}, classes={len(self.classes)}, size={self.size})"

    def load(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """Decode one image file into a float32 (C, H, W) tensor in [0, 1], as this dataset does."""
        Image = _pillow()
        try:
            with Image.open(path) as image:
                image = _upright(image)
                if image.mode == "P" and "transparency" in image.info:
                    image = image.convert("RGBA")  # palette transparency must go through RGBA to convert cleanly
                image = image.convert("L" if self.grayscale else "RGB")
                if self.size is not None and image.size != (self.size[1], self.size[0]):
                    image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)  # PIL: (W, H)
                array = np.array(image, dtype=np.uint8)  # a writable copy: torch rejects read-only memory
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise DataError(f"cannot decode image {os.fspath(path)!r} ({error}); fix or remove the file.") from error
        if array.ndim == 2:
            array = array[:, :, None]  # (H, W) -> (H, W, 1)
        return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)  # (C, H, W)

    def collate_fn(self, items: list[tuple[torch.Tensor, int]]) -> Any:
        """Stack samples into a batch, with a clear error when images differ in size."""
        return collate_same_shape(items, hint="pass size=(H, W) to ImageFolder to resize every image")

    def to_memory(self) -> ArrayDataset:
        """Decode every image once into an :class:`ArrayDataset` ((N, C, H, W) float32, (N,) int64 labels).

        Example:
            >>> train = ImageFolder("digits/train", size=28, grayscale=True).to_memory()
        """
        items = [self[i] for i in range(len(self))]
        x, y = self.collate_fn(items)
        return ArrayDataset(x, y, batch_transform=self.batch_transform, classes=self.classes)


def _upright(image: Any) -> Any:
    """Apply the EXIF orientation tag (phone photos), so pixels are stored the way the picture is viewed."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(image) or image


def _image_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ConfigError(f"ImageFolder: size must be a positive int or an (H, W) pair, got {size!r}.")
    return pair[0], pair[1]


def collate_same_shape(items: list[tuple[torch.Tensor, Any]], *, hint: str) -> Any:
    """default_collate for (tensor, label) samples, raising DataError (with ``hint``) when shapes differ."""
    first = items[0][0].shape
    for x, _ in items:
        if x.shape != first:
            raise DataError(f"samples in one batch have different shapes, {tuple(first)} and {tuple(x.shape)}; {hint}.")
    return default_collate(items)


def scan_class_folders(
    root: Path, extensions: Sequence[str], *, classes: Sequence[str] | None, kind: str
) -> tuple[list[str], list[tuple[str, int]]]:
    """The class names and the sorted (file, class id) pairs under ``root/<class>/``; hidden entries are skipped."""
    if not root.is_dir():
        raise DataError(
            f"{kind}: {os.fspath(root)!r} is not a directory; pass the folder holding one subfolder per class."
        )
    suffixes = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if not suffixes:
        raise ConfigError(f"{kind}: extensions is empty; pass the file endings to read, e.g. {IMAGE_EXTENSIONS[:2]}.")
    found = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if classes is None:
        names = found
    else:
        names = list(classes)
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise DataError(f"{kind}: folders {unknown} under {os.fspath(root)!r} are not in classes={names}.")
    if not names:
        raise DataError(
            f"{kind}: {os.fspath(root)!r} has no class subfolders; lay files out as root/<class name>/<file>, "
            f"e.g. {os.fspath(root / 'cat' / ('1' + suffixes[0]))}."
        )
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        for directory, subdirs, files in os.walk(folder):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            samples.extend(
                (os.path.join(directory, file), label)
                for file in sorted(files)
                if not file.startswith(".") and file.lower().endswith(suffixes)
            )
    if not samples:
        raise DataError(
            f"{kind}: no files ending in {list(suffixes)} in the class folders {names} of {os.fspath(root)!r}."
        )
    return names, samples
