"""Folder-per-class file sources: the layout scan, the shared Dataset behaviour and batch collation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from ..errors import ConfigError, DataError
from .arrays import ArrayDataset

__all__ = ["ClassFolder", "collate_same_shape", "scan_class_folders"]


class ClassFolder(Dataset[tuple[torch.Tensor, int]]):
    """Files stored as ``root/<class name>/<file>``: a subclass sets ``samples`` and ``classes`` and implements
    ``load(path) -> tensor`` and ``collate_fn``; this base serves items and decodes everything into memory."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    batch_transform: Any

    def load(self, path: str | os.PathLike[str]) -> torch.Tensor:
        raise NotImplementedError

    def collate_fn(self, items: list[tuple[torch.Tensor, int]]) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.load(path), label

    def to_memory(self) -> ArrayDataset:
        """Decode every file once into an :class:`ArrayDataset` (the fast batch path) with int64 labels.

        Example:
            >>> train = ImageFolder("digits/train", size=28, grayscale=True).to_memory()
        """
        x, y = self.collate_fn([self[i] for i in range(len(self))])
        return ArrayDataset(x, y, batch_transform=self.batch_transform, classes=self.classes)


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
        raise ConfigError(f"{kind}: extensions is empty; pass the file endings to read, e.g. ('.png', '.wav').")
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
