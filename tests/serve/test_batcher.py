"""The dynamic batcher with a plain numpy model: batches form, bad requests stay alone, limits hold."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from kiln.serve.batcher import Batcher, InferenceFailed, QueueFull, RequestTimeout

from .conftest import run


class Doubler:
    """Doubles its input; records batch sizes; raises on any negative sample; can be held at a gate."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        assert self.gate.wait(timeout=10)
        x = arrays[0]
        self.sizes.append(int(x.shape[0]))
        if (x < 0).any():
            raise ValueError("negative input")
        return [x * 2]


def make(model: Doubler, **options) -> Batcher:
    settings = {"max_batch_size": 64, "max_delay_s": 0.0, "max_queue": 1024, "timeout_s": 5.0, **options}
    return Batcher(model, **settings)


def sample(value: float, rows: int = 1) -> tuple[np.ndarray, ...]:
    return (np.full((rows, 3), value, dtype=np.float32),)


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    model = Doubler()

    async def main() -> list[list[np.ndarray]]:
        batcher = make(model)
        batcher.start()
        model.gate.clear()  # hold the first batch so that the rest queue up behind it
        futures = [batcher.submit(sample(i, rows=1 + i % 3)) for i in range(40)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(*futures)
        await batcher.close()
        return results

    results = run(main())
    for i, (out,) in enumerate(results):
        assert out.shape == (1 + i % 3, 3) and np.all(out == 2 * i)
    assert max(model.sizes) > 1, model.sizes
    assert sum(model.sizes) == sum(1 + i % 3 for i in range(40))
    assert all(size <= 64 for size in model.sizes)


def test_a_failing_request_fails_alone():
    model = Doubler()

    async def main() -> list[object]:
        batcher = make(model)
        batcher.start()
        model.gate.clear()
        futures = [batcher.submit(sample(-1.0 if i == 5 else float(i))) for i in range(10)]
        model.gate.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close()
        return results

    results = run(main())
    assert isinstance(results[5], InferenceFailed)
    for i, result in enumerate(results):
        if i != 5:
            assert isinstance(result, list) and np.all(result[0] == 2 * i)
    assert model.sizes[0] > 1 and model.sizes.count(1) >= model.sizes[0]  # the batch failed, then ran one by one


def test_full_queue_raises_and_timeouts_expire():
    model = Doubler()

    async def main() -> tuple[int, list[object]]:
        batcher = make(model, max_queue=4, timeout_s=0.2, max_batch_size=1)
        batcher.start()
        model.gate.clear()
        futures, refused = [], 0
        for i in range(10):
            try:
                futures.append(batcher.submit(sample(float(i))))
            except QueueFull:
                refused += 1
        results = await asyncio.gather(*futures, return_exceptions=True)  # all time out: the model is held
        model.gate.set()
        await batcher.close()
        return refused, results

    refused, results = run(main())
    assert refused >= 5
    assert all(isinstance(r, RequestTimeout) for r in results)


def test_max_delay_waits_for_a_fuller_batch_and_a_full_batch_goes_at_once():
    model = Doubler()

    async def main() -> None:
        batcher = make(model, max_delay_s=0.05, max_batch_size=8)
        batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = batcher.submit(sample(1.0))
        await asyncio.sleep(0.01)
        second = batcher.submit(sample(2.0))
        await asyncio.gather(first, second)
        assert loop.time() - started >= 0.045  # waited out the delay for company
        started = loop.time()
        await asyncio.gather(*[batcher.submit(sample(3.0)) for _ in range(8)])
        assert loop.time() - started < 0.045  # full: no waiting
        await batcher.close()

    run(main())
    assert model.sizes == [2, 8]


def test_requests_larger_than_a_batch_run_alone_and_shapes_never_mix():
    model = Doubler()

    async def main() -> None:
        batcher = make(model, max_batch_size=4)
        batcher.start()
        model.gate.clear()
        big = batcher.submit(sample(1.0, rows=10))
        other = batcher.submit((np.ones((1, 5), np.float32),))  # another per-sample shape: its own batch
        small = batcher.submit(sample(2.0))
        model.gate.set()
        (out,) = await big
        assert out.shape == (10, 3)
        await asyncio.gather(other, small)
        await batcher.close()

    run(main())
    assert 10 in model.sizes


def test_submit_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="before start"):
        make(Doubler()).submit(sample(1.0))
