"""The dynamic batcher: requests queue on the event loop, one inference thread runs them a batch at a time.

While the model runs a batch (ONNX Runtime and torch release the GIL), the event loop keeps parsing requests, so
under load the next batch is waiting when the model frees up: batches form without any added delay. With
``max_delay_s > 0`` an idle model also waits up to that long for a fuller batch. The queue is bounded (a full
queue raises :class:`QueueFull`, answered 503), every request has a deadline (:class:`RequestTimeout`, 504), and a
batch that fails is retried one request at a time so that only the request that broke it fails.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .metrics import Metrics

__all__ = ["Batcher", "InferenceFailed", "QueueFull", "RequestTimeout"]

logger = logging.getLogger(__name__)

Run = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


class RequestTimeout(Exception):
    """The request was not answered within its timeout."""


class InferenceFailed(Exception):
    """The model raised on this request (the traceback is logged, never sent)."""


class _Item:
    __slots__ = ("arrays", "future", "key", "size", "timer")

    def __init__(self, arrays: tuple[np.ndarray, ...], future: asyncio.Future[list[np.ndarray]]) -> None:
        self.arrays = arrays
        self.future = future
        self.size = int(arrays[0].shape[0])
        self.key = tuple((a.shape[1:], a.dtype.str) for a in arrays)  # only equal keys concatenate
        self.timer: asyncio.TimerHandle | None = None


class Batcher:
    """Queue requests, run them in batches of up to ``max_batch_size`` samples on one inference thread.

    Example:
        >>> batcher = Batcher(runner, max_batch_size=64, max_delay_s=0.0, max_queue=1024, timeout_s=10.0)
        >>> batcher.start()                          # inside the running event loop
        >>> outputs = await batcher.submit((np.zeros((1, 64), np.float32),))
        >>> await batcher.close()
    """

    def __init__(
        self,
        run: Run,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        timeout_s: float,
        metrics: Metrics | None = None,
        on_thread_start: Callable[[], None] | None = None,
    ) -> None:
        self.run = run
        self.max_batch_size, self.max_delay_s = max_batch_size, max_delay_s
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.metrics = metrics or Metrics()
        self._on_thread_start = on_thread_start
        self._queue: deque[_Item] = deque()
        self._queued_samples = 0
        self._busy = False
        self._pending: asyncio.Handle | asyncio.TimerHandle | None = None
        self._jobs: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the inference thread; call from the event loop that will submit."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._work, name="kiln-inference", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Wait until every queued request is answered, then stop the inference thread."""
        if self._thread is None or self._idle is None:
            return
        while self._queue or self._busy:
            self._idle.clear()
            await self._idle.wait()
        self._jobs.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    def submit(self, arrays: tuple[np.ndarray, ...]) -> asyncio.Future[list[np.ndarray]]:
        """Queue one request (arrays in signature order, batch first); the future gets its output arrays."""
        loop = self._loop
        if loop is None or self._thread is None:
            raise RuntimeError("Batcher.submit before start(): the server is not ready")
        if len(self._queue) >= self.max_queue:
            self.metrics.error("queue_full")
            raise QueueFull
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        item = _Item(arrays, future)
        item.timer = loop.call_at(loop.time() + self.timeout_s, _expire, future)
        self._queue.append(item)
        self._queued_samples += item.size
        if self._pending is None and not self._busy:
            if self.max_delay_s > 0 and self._queued_samples < self.max_batch_size:
                self._pending = loop.call_at(loop.time() + self.max_delay_s, self._dispatch)
            else:
                self._pending = loop.call_soon(self._dispatch)
        elif isinstance(self._pending, asyncio.TimerHandle) and self._queued_samples >= self.max_batch_size:
            self._pending.cancel()  # the batch is full: no reason to wait out the delay
            self._pending = loop.call_soon(self._dispatch)
        return future

    # ---------------------------------------------------------------- event loop side
    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        samples = 0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # timed out while queued: drop it, it costs no model time
                self._queue.popleft()
                self._queued_samples -= item.size
                continue
            if batch and (samples + item.size > self.max_batch_size or item.key != batch[0].key):
                break
            self._queue.popleft()
            self._queued_samples -= item.size
            batch.append(item)
            samples += item.size
        return batch

    def _dispatch(self) -> None:
        self._pending = None
        if self._busy:
            return
        batch = self._take()
        if not batch:
            self._check_idle()
            return
        self._busy = True
        self._jobs.put(batch)

    def _complete(self, batch: list[_Item], results: list[Any], seconds: float) -> None:
        self._busy = False
        self.metrics.batch(sum(item.size for item in batch), seconds)
        for item, result in zip(batch, results, strict=True):
            if item.timer is not None:
                item.timer.cancel()
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                self.metrics.error("inference")
                item.future.set_exception(InferenceFailed())
            else:
                item.future.set_result(result)
        if self._queue and self._pending is None:
            assert self._loop is not None
            self._pending = self._loop.call_soon(self._dispatch)
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._queue and not self._busy and self._idle is not None:
            self._idle.set()

    # ---------------------------------------------------------------- inference thread
    def _work(self) -> None:
        if self._on_thread_start is not None:
            self._on_thread_start()
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            started = time.perf_counter()
            results = self._infer(batch)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._complete, batch, results, time.perf_counter() - started)

    def _infer(self, batch: list[_Item]) -> list[Any]:
        if len(batch) == 1:
            return [self._run_one(batch[0])]
        try:
            count = len(batch[0].arrays)
            joined = [np.concatenate([item.arrays[i] for item in batch]) for i in range(count)]
            outputs = self._checked(self.run(joined), sum(item.size for item in batch))
        except Exception:
            logger.warning("a batch of %d requests failed; retrying them one by one", len(batch), exc_info=True)
            return [self._run_one(item) for item in batch]
        results, start = [], 0
        for item in batch:
            results.append([out[start : start + item.size] for out in outputs])
            start += item.size
        return results

    def _run_one(self, item: _Item) -> Any:
        try:
            return self._checked(self.run(list(item.arrays)), item.size)
        except Exception as error:
            logger.exception("the model failed on a request of %d samples", item.size)
            return error

    @staticmethod
    def _checked(outputs: list[np.ndarray], samples: int) -> list[np.ndarray]:
        for out in outputs:
            if out.ndim == 0 or int(out.shape[0]) != samples:
                raise ValueError(f"the model returned shape {tuple(out.shape)} for a batch of {samples} samples")
        return outputs


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(RequestTimeout())
