"""Image folders: one subfolder per class, decoded with Pillow into float32 CHW tensors."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .folders import ClassFolder, collate_same_shape, scan_class_folders

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _pillow() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("kiln's image sources need Pillow: pip install 'kiln[data]'") from error
    return Image


class ImageFolder(ClassFolder):
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
