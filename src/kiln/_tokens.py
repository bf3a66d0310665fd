"""Word and character tokenizers and the token-id lookup, torch-free: one implementation for training and serving.

:class:`kiln.data.Vocabulary` encodes training text with these functions, and the server's text preprocessing
(:mod:`kiln.export.preprocess`) encodes request text with the same ones, so the ids a model was trained on and the
ids it is served cannot drift apart. Only the standard library and numpy: the server's ONNX path imports this
without torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["PAD_ID", "PAD_TOKEN", "TOKENIZERS", "UNK_ID", "UNK_TOKEN", "char_tokens", "lookup", "pad_ids",
           "word_tokens"]  # fmt: skip

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
_WORD = re.compile(r"\w+|[^\w\s]")


def word_tokens(text: str) -> list[str]:
    """Lowercased words, with each punctuation mark a token of its own.

    Example:
        >>> word_tokens("The striker scored!")
        ['the', 'striker', 'scored', '!']
    """
    return _WORD.findall(text.lower())


def char_tokens(text: str) -> list[str]:
    """Every character, as it is."""
    return list(text)


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"word": word_tokens, "char": char_tokens}


def lookup(tokens: Iterable[str], ids: Mapping[str, int], max_length: int | None = None) -> list[int]:
    """The id of each token (``UNK_ID`` for a token ``ids`` lacks), the first ``max_length`` of them."""
    found = [ids.get(token, UNK_ID) for token in tokens]
    return found if max_length is None else found[:max_length]


def pad_ids(sequences: Sequence[Sequence[int]], max_length: int) -> np.ndarray:
    """An int64 (B, max_length) array: each sequence cut to ``max_length`` and padded with ``PAD_ID`` at the end."""
    ids = np.full((len(sequences), max_length), PAD_ID, dtype=np.int64)  # (B, max_length)
    for row, sequence in enumerate(sequences):
        kept = sequence[:max_length]
        ids[row, : len(kept)] = kept
    return ids
