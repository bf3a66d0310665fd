"""Text: a vocabulary of tokens and JSON-lines files read into padded token ids."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .._tokens import PAD_ID, PAD_TOKEN, TOKENIZERS, UNK_ID, UNK_TOKEN, lookup, pad_ids
from ..errors import ConfigError, DataError
from .arrays import ArrayDataset, BatchTransform

__all__ = ["TextDataset", "Vocabulary", "read_jsonl"]

Tokenizer = str | Callable[[str], list[str]]

# One tokenizer and lookup for training and serving (kiln._tokens is torch-free, so the server imports it alone).
_BUILTIN = TOKENIZERS


class Vocabulary:
    """Maps tokens to integer ids: ``<pad>`` is 0, ``<unk>`` (any token not in the vocabulary) is 1.

    ``tokenizer`` is ``"word"`` (lowercased words and punctuation marks), ``"char"`` (every character) or a
    callable from a string to a list of tokens, such as a HuggingFace tokenizer's ``.tokenize``. Build the
    vocabulary on the training set and reuse it for validation and test data; ``state_dict()`` is plain JSON, so
    it can ship next to the model.

    Example:
        >>> vocab = Vocabulary.build(["a good film", "a bad film"], min_freq=1)
        >>> vocab.encode("a good plot")
        [2, 5, 1]
        >>> vocab.decode([2, 5, 1])
        'a good <unk>'
        >>> same = Vocabulary().load_state_dict(json.loads(json.dumps(vocab.state_dict())))
    """

    pad_id = PAD_ID
    unk_id = UNK_ID

    def __init__(self, tokens: Iterable[str] = (), *, tokenizer: Tokenizer = "word") -> None:
        # None after loading a "custom" state without a function: tokenize() then says how to fix it.
        self.tokenizer: str | Callable[[str], list[str]] | None = _check_tokenizer(tokenizer)
        self.tokens: list[str] = [PAD_TOKEN, UNK_TOKEN]
        self._ids: dict[str, int] = {PAD_TOKEN: 0, UNK_TOKEN: 1}
        for token in tokens:
            if token not in self._ids:
                self._ids[token] = len(self.tokens)
                self.tokens.append(token)

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        tokenizer: Tokenizer = "word",
        min_freq: int = 1,
        max_size: int | None = None,
    ) -> Vocabulary:
        """Count the tokens of ``texts`` and keep those seen ``min_freq`` times or more, most frequent first.

        ``max_size`` caps the number of ids, ``<pad>`` and ``<unk>`` included. Ties in frequency are broken by
        the token's text, so the same texts always give the same ids.
        """
        vocabulary = cls(tokenizer=tokenizer)
        return vocabulary._fill((vocabulary.tokenize(text) for text in texts), min_freq=min_freq, max_size=max_size)

    def _fill(self, token_lists: Iterable[list[str]], *, min_freq: int, max_size: int | None) -> Vocabulary:
        if not isinstance(min_freq, int) or min_freq < 1:
            raise ConfigError(f"Vocabulary: min_freq must be an int >= 1, got {min_freq!r}.")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 2):
            raise ConfigError(f"Vocabulary: max_size must be an int >= 2 (<pad> and <unk>) or None, got {max_size!r}.")
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        ranked = sorted((item for item in counts.items() if item[1] >= min_freq), key=lambda item: (-item[1], item[0]))
        for token, _ in ranked:
            if max_size is not None and len(self.tokens) >= max_size:
                break
            if token not in self._ids:
                self._ids[token] = len(self.tokens)
                self.tokens.append(token)
        return self

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, tokenizer={self._tokenizer_name()!r})"

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into tokens with this vocabulary's tokenizer."""
        if self.tokenizer is None:
            raise ConfigError(
                "this Vocabulary was built with a custom tokenizer function, which a state_dict cannot hold; "
                "create it with Vocabulary(tokenizer=your_function) before load_state_dict(...)."
            )
        if isinstance(self.tokenizer, str):
            return _BUILTIN[self.tokenizer](text)
        tokens = self.tokenizer(text)
        if not isinstance(tokens, list | tuple):
            raise ConfigError(f"the tokenizer must return a list of strings, got {type(tokens).__name__}.")
        return [str(token) for token in tokens]

    def encode(self, text: str, *, max_length: int | None = None) -> list[int]:
        """Token ids of ``text`` (unknown tokens map to 1), truncated to ``max_length`` tokens."""
        return lookup(self.tokenize(text), self._ids, max_length)

    def encode_batch(self, texts: Sequence[str], *, max_length: int = 128) -> torch.Tensor:
        """An int64 (B, max_length) tensor of token ids, truncated and padded with 0 at the end."""
        return _pad([self.encode(text, max_length=max_length) for text in texts], max_length)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of token ids, padding dropped (characters joined directly, other tokens with spaces)."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        tokens = [self.tokens[i] if 0 <= i < len(self.tokens) else UNK_TOKEN for i in values if i != self.pad_id]
        return ("" if self.tokenizer == "char" else " ").join(tokens)

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able dict: the tokenizer name (``"custom"`` for a function) and the tokens in id order."""
        return {"tokenizer": self._tokenizer_name(), "tokens": list(self.tokens)}

    def load_state_dict(self, state: dict[str, Any]) -> Vocabulary:
        """Restore the tokens and tokenizer from :meth:`state_dict`; returns self for chaining.

        A ``"custom"`` tokenizer keeps the function this vocabulary was created with (it cannot be saved).
        """
        tokens, name = state.get("tokens"), state.get("tokenizer")
        if not isinstance(tokens, list) or tokens[:2] != [PAD_TOKEN, UNK_TOKEN] or len(set(tokens)) != len(tokens):
            raise DataError(
                "Vocabulary.load_state_dict: 'tokens' must be a list of distinct tokens starting with "
                f"{[PAD_TOKEN, UNK_TOKEN]}; pass a dict from Vocabulary.state_dict()."
            )
        if name == "custom":
            if not callable(self.tokenizer):
                self.tokenizer = None
        elif name in _BUILTIN:
            self.tokenizer = name
        else:
            raise DataError(
                f"Vocabulary.load_state_dict: unknown tokenizer {name!r}; expected 'word', 'char' or 'custom'."
            )
        self.tokens = [str(token) for token in tokens]
        self._ids = {token: i for i, token in enumerate(self.tokens)}
        return self

    def _tokenizer_name(self) -> str:
        return self.tokenizer if isinstance(self.tokenizer, str) else "custom"


def _check_tokenizer(tokenizer: Tokenizer) -> str | Callable[[str], list[str]]:
    if isinstance(tokenizer, str):
        if tokenizer not in _BUILTIN:
            raise ConfigError(f"unknown tokenizer {tokenizer!r}; use 'word', 'char' or a function str -> list[str].")
        return tokenizer
    if not callable(tokenizer):
        raise ConfigError(f"tokenizer must be 'word', 'char' or a function str -> list[str], got {tokenizer!r}.")
    return tokenizer


def _pad(sequences: list[list[int]], max_length: int) -> torch.Tensor:
    if not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"max_length must be a positive int, got {max_length!r}.")
    return torch.from_numpy(pad_ids(sequences, max_length))  # (B, max_length), 0 = <pad>


class TextDataset(ArrayDataset):
    """An :class:`ArrayDataset` of padded token ids that keeps the :class:`Vocabulary` that encoded them.

    Subsets and splits keep the vocabulary too, so ``train.vocabulary`` survives ``read_jsonl(...).split(0.9)``.
    """

    def __init__(
        self,
        x: Any,
        y: Any = None,
        *,
        vocabulary: Vocabulary,
        batch_transform: BatchTransform | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(x, y, batch_transform=batch_transform, classes=classes)
        self.vocabulary = vocabulary

    def subset(self, index: torch.Tensor | Sequence[int]) -> TextDataset:
        part = super().subset(index)
        return TextDataset(
            part.x, part.y, vocabulary=self.vocabulary, batch_transform=part.batch_transform, classes=part.classes
        )


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    text_field: str = "text",
    label_field: str | None = "label",
    tokenizer: Tokenizer = "word",
    vocabulary: Vocabulary | None = None,
    max_length: int = 128,
    min_freq: int = 1,
    max_size: int | None = None,
    classes: Sequence[str] | None = None,
) -> TextDataset:
    """Read a JSON-lines file (one object per line) into padded int64 token ids (B, max_length) and labels.

    Without ``vocabulary`` a new one is built from this file with ``tokenizer``, ``min_freq`` and ``max_size``;
    pass the training set's (``train.vocabulary``) for validation and test files, and its ``classes`` too so
    string labels map to the same ids. String labels become class ids in sorted order (``dataset.classes``),
    integer labels stay as written, float labels are regression targets; ``label_field=None`` reads texts only.

    Example:
        >>> train = read_jsonl("reviews_train.jsonl", tokenizer="word", max_length=64, min_freq=2)
        >>> test = read_jsonl("reviews_test.jsonl", vocabulary=train.vocabulary, classes=train.classes)
        >>> train.x.shape, train.classes
        (torch.Size([2000, 64]), ['negative', 'positive'])
    """
    if not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"read_jsonl: max_length must be a positive int, got {max_length!r}.")
    texts, labels, lines = _read_records(path, text_field, label_field)
    if vocabulary is None:
        vocabulary = Vocabulary(tokenizer=tokenizer)
        token_lists = [vocabulary.tokenize(text) for text in texts]
        vocabulary._fill(token_lists, min_freq=min_freq, max_size=max_size)
        ids = [lookup(tokens, vocabulary._ids, max_length) for tokens in token_lists]
    else:
        ids = [vocabulary.encode(text, max_length=max_length) for text in texts]
    x = _pad(ids, max_length)  # (B, max_length)
    if label_field is None:
        return TextDataset(x, vocabulary=vocabulary)
    y, class_names = _labels(labels, lines, label_field, classes, path)
    return TextDataset(x, y, vocabulary=vocabulary, classes=class_names)


def _read_records(
    path: str | os.PathLike[str], text_field: str, label_field: str | None
) -> tuple[list[str], list[Any], list[int]]:
    """The text and label of every non-blank line, with line numbers (1-based)."""
    texts: list[str] = []
    labels: list[Any] = []
    lines: list[int] = []
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as file:
            for line_number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(
                        f"{name}, line {line_number}: invalid JSON ({error.msg} at column {error.colno}); "
                        "each line must hold one JSON object."
                    ) from error
                if not isinstance(record, dict):
                    raise DataError(f"{name}, line {line_number}: expected a JSON object, got {type(record).__name__}.")
                for field in (text_field, label_field):
                    if field is not None and field not in record:
                        raise DataError(
                            f"{name}, line {line_number}: missing field {field!r} (the line has {sorted(record)}); "
                            "pass text_field=/label_field= to name other fields."
                        )
                text = record[text_field]
                if not isinstance(text, str):
                    raise DataError(
                        f"{name}, line {line_number}: field {text_field!r} must be a string, got {type(text).__name__}."
                    )
                texts.append(text)
                labels.append(None if label_field is None else record[label_field])
                lines.append(line_number)
    except FileNotFoundError as error:
        raise DataError(f"read_jsonl: no such file {name!r}.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"read_jsonl: cannot read {name!r} as UTF-8 text ({error}).") from error
    if not texts:
        raise DataError(f"{name} is empty: a JSON-lines file needs at least one record.")
    return texts, labels, lines


def _labels(
    values: list[Any], lines: list[int], field: str, classes: Sequence[str] | None, path: str | os.PathLike[str]
) -> tuple[np.ndarray, list[str] | None]:
    """Labels of one kind: class names to ids, integers (and booleans) as they are, or float targets."""
    name = os.fspath(path)
    kinds: list[str] = []
    for value, line in zip(values, lines, strict=True):
        kind = "str" if isinstance(value, str) else "int" if isinstance(value, int) else "float"
        if not isinstance(value, str | int | float):
            raise DataError(
                f"{name}, line {line}: label {field!r} must be a string or a number, got {json.dumps(value)}."
            )
        if kinds and (kind == "str") != (kinds[0] == "str"):
            raise DataError(
                f"{name}, line {line}: label {value!r} mixes strings and numbers with line {lines[0]} "
                f"({values[0]!r}); use one kind of label for the whole file."
            )
        kinds.append(kind)
    if kinds[0] != "str":
        if "float" in kinds:
            return np.array(values, dtype=np.float32), None
        return np.array([int(v) for v in values], dtype=np.int64), None
    names = sorted(set(values)) if classes is None else list(classes)
    ids = {class_name: i for i, class_name in enumerate(names)}
    y = np.empty(len(values), dtype=np.int64)
    for i, (value, line) in enumerate(zip(values, lines, strict=True)):
        if value not in ids:
            raise DataError(f"{name}, line {line}: label {value!r} is not one of classes={names}.")
        y[i] = ids[value]
    return y, names
