"""Token streams for truncated backpropagation through time: consecutive batches continue each other, row by row.

A language model trained with TBPTT reads a long text as ``batch_size`` parallel streams, ``length`` tokens at a
time, and carries its hidden state from one batch to the next (``Model.carry`` in a custom ``train_step``). For that,
row ``b`` of batch ``i + 1`` must be the continuation of row ``b`` of batch ``i``: :func:`stream_batches` lays a
stream out so that ``fit(..., batch_size=batch_size, shuffle=False)`` serves it in that order, also on several ranks
(each rank reads streams of its own; kiln's loaders give rank ``r`` the global batches ``r, r + world, ...``).
"""

from __future__ import annotations

from typing import Any

from ..data.arrays import ArrayDataset, as_tensor
from ..distributed import world_size
from ..errors import ConfigError, DataError

__all__ = ["stream_batches"]


def stream_batches(tokens: Any, *, batch_size: int, length: int, world: int | None = None) -> ArrayDataset:
    """Cut a 1-D token stream into ``(inputs, next tokens)`` chunks of ``length`` for TBPTT, in stream order.

    The stream is split into ``world * batch_size`` equal streams (the tail that does not fill a chunk is dropped);
    ``world`` defaults to the ranks of the job. Fit the result with ``batch_size=batch_size, shuffle=False``.

    Example:
        >>> train = stream_batches(token_ids, batch_size=20, length=35)    # x, y: (chunks * 20, 35)
        >>> model.fit(train, epochs=4, batch_size=20, shuffle=False)      # a train_step carrying self.carry["hidden"]
    """
    for name, value in (("batch_size", batch_size), ("length", length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"stream_batches {name} must be a positive int, got {value!r}.")
    world = world_size() if world is None else world
    data = as_tensor(tokens, name="tokens")
    if data.ndim != 1:
        raise DataError(f"stream_batches takes a 1-D stream of token ids; got shape {tuple(data.shape)}.")
    streams = world * batch_size
    per_stream = len(data) // streams
    chunks = (per_stream - 1) // length  # each chunk's targets reach one token past it
    if chunks < 1:
        raise DataError(
            f"a stream of {len(data)} tokens is too short for {streams} streams of chunks of {length} "
            f"(it needs at least {streams * (length + 1)}); lower batch_size or length."
        )
    rows = data[: streams * per_stream].view(streams, per_stream)  # (streams, per_stream)
    x = rows[:, : chunks * length].reshape(streams, chunks, length)  # (streams, chunks, T)
    y = rows[:, 1 : chunks * length + 1].reshape(streams, chunks, length)
    # Row order chunk by chunk, each chunk's streams in order: batch g = i * world + r holds rank r's chunk i.
    return ArrayDataset(
        x.transpose(0, 1).reshape(-1, length).contiguous(), y.transpose(0, 1).reshape(-1, length).contiguous()
    )
