"""CSV files: numeric feature columns and one label column, read into an in-memory ArrayDataset."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .arrays import ArrayDataset

__all__ = ["read_csv"]

Column = str | int


def read_csv(
    path: str | os.PathLike[str],
    *,
    label: Column | None = -1,
    features: Sequence[Column] | None = None,
    delimiter: str = ",",
    header: bool | None = None,
    classes: Sequence[str] | None = None,
) -> ArrayDataset:
    """Read a CSV file into an :class:`ArrayDataset` of float32 features (B, F) and labels (B,).

    ``label`` and ``features`` name columns by header name or by 0-based index (negative counts from the end);
    ``features=None`` takes every column except the label, ``label=None`` reads features only (data to predict on).
    ``header=None`` detects a header row: the first row is a header when it holds text where the second row holds
    numbers (naming a column by string implies a header).

    Labels that are all integers stay int64 class ids as written; labels with a decimal point are float32
    regression targets; any other text labels are class names, mapped to ids in sorted order and recorded in
    ``dataset.classes``. Pass ``classes=`` (e.g. ``train.classes``) so a validation file maps names to the same ids
    even when it lacks a class.

    Example:
        >>> train = read_csv("iris.csv", label="species")
        >>> train.x.shape, train.classes
        (torch.Size([150, 4]), ['setosa', 'versicolor', 'virginica'])
        >>> test = read_csv("iris_test.csv", label="species", classes=train.classes)
    """
    if len(delimiter) != 1:
        raise ConfigError(f"read_csv: delimiter must be one character, got {delimiter!r}.")
    rows, lines = _read_rows(path, delimiter)
    if not rows:
        raise DataError(f"{os.fspath(path)} is empty: a CSV needs at least one data row.")
    named = isinstance(label, str) or any(isinstance(column, str) for column in features or ())
    if header is None:
        header = named or _looks_like_header(rows)
    names = [cell.strip() for cell in rows[0]] if header else None
    if header:
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise DataError(f"{os.fspath(path)} has a header row but no data rows.")

    width = len(names) if names is not None else len(rows[0])
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            raise DataError(
                f"{os.fspath(path)}, line {line}: expected {width} columns (as in the first row), found {len(row)}; "
                f"check for a stray {delimiter!r} or a missing value."
            )
    label_index = None if label is None else _column_index(label, names, width, path, "label")
    if features is None:
        feature_index = [j for j in range(width) if j != label_index]
    else:
        feature_index = [_column_index(column, names, width, path, "feature") for column in features]
        if label_index is not None and label_index in feature_index:
            raise ConfigError(f"read_csv: the label column {label!r} is also listed in features; remove it there.")
    if not feature_index:
        raise ConfigError(f"read_csv: {os.fspath(path)} has no feature columns besides the label.")

    x = _features(rows, lines, feature_index, names, path)
    if label_index is None:
        return ArrayDataset(x)
    y, class_names = _labels([row[label_index].strip() for row in rows], lines, classes, path)
    return ArrayDataset(x, y, classes=class_names)


def _read_rows(path: str | os.PathLike[str], delimiter: str) -> tuple[list[list[str]], list[int]]:
    """All non-blank rows of the file with the line number each ends on."""
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs put before the first header name.
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, delimiter=delimiter)
            try:
                for row in reader:
                    if any(cell.strip() for cell in row):
                        rows.append(row)
                        lines.append(reader.line_num)
            except csv.Error as error:
                raise DataError(f"{os.fspath(path)}, line {reader.line_num}: malformed CSV ({error}).") from error
    except FileNotFoundError as error:
        raise DataError(f"read_csv: no such file {os.fspath(path)!r}.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"read_csv: cannot read {os.fspath(path)!r} as UTF-8 text ({error}).") from error
    return rows, lines


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_like_header(rows: list[list[str]]) -> bool:
    """A first row of text above a row of numbers in the same column is a header."""
    first = rows[0]
    if len(rows) == 1:
        return not any(_is_number(cell) for cell in first)
    return any(not _is_number(a) and _is_number(b) for a, b in zip(first, rows[1], strict=False))


def _column_index(column: Column, names: list[str] | None, width: int, path: str | os.PathLike[str], role: str) -> int:
    if isinstance(column, int) and not isinstance(column, bool):
        index = column + width if column < 0 else column
        if not 0 <= index < width:
            raise ConfigError(
                f"read_csv: {role} column {column} is out of range; {os.fspath(path)} has {width} columns "
                f"(indices 0..{width - 1}, or negative from the end)."
            )
        return index
    if isinstance(column, str):
        if names is None:
            raise ConfigError(
                f"read_csv: {role} column {column!r} is a name but header=False; use a column index instead."
            )
        if column not in names:
            raise DataError(f"{os.fspath(path)} has no column {column!r}; its header names {names}.")
        return names.index(column)
    raise ConfigError(f"read_csv: a {role} column must be a header name (str) or an index (int), got {column!r}.")


def _features(
    rows: list[list[str]],
    lines: list[int],
    index: list[int],
    names: list[str] | None,
    path: str | os.PathLike[str],
) -> np.ndarray:
    x = np.empty((len(rows), len(index)), dtype=np.float32)  # (B, F)
    for i, row in enumerate(rows):
        try:
            x[i] = [float(row[j]) for j in index]
        except ValueError:
            bad = next(j for j in index if not _is_number(row[j]))
            column = f"column {bad}" + (f" ({names[bad]!r})" if names is not None else "")
            hint = " If this line is a header row, pass header=True." if i == 0 and names is None else ""
            raise DataError(
                f"{os.fspath(path)}, line {lines[i]}, {column}: {row[bad]!r} is not a number. Feature columns must "
                "be numeric: encode categories as numbers, fill or drop missing values, or leave the column out "
                f"with features=[...].{hint}"
            ) from None
    return x


def _labels(
    values: list[str], lines: list[int], classes: Sequence[str] | None, path: str | os.PathLike[str]
) -> tuple[np.ndarray, list[str] | None]:
    """Class ids (int64), regression targets (float32) or class names mapped to ids, and the class names."""
    for value, line in zip(values, lines, strict=True):
        if not value:
            raise DataError(f"{os.fspath(path)}, line {line}: the label is empty; fill it or drop the row.")
    if classes is None:
        try:
            return np.array([int(v) for v in values], dtype=np.int64), None
        except ValueError:
            pass
        try:
            return np.array([float(v) for v in values], dtype=np.float32), None
        except ValueError:
            pass
        classes = sorted(set(values))
    ids = {name: i for i, name in enumerate(classes)}
    y = np.empty(len(values), dtype=np.int64)
    for i, (value, line) in enumerate(zip(values, lines, strict=True)):
        if value not in ids:
            raise DataError(
                f"{os.fspath(path)}, line {line}: label {value!r} is not one of classes={list(classes)}; "
                "pass the full list of class names."
            )
        y[i] = ids[value]
    return y, list(classes)
