"""Paired runs for train_overhead.py: kiln's fit and the hand-written loop take turns, epoch by epoch, in one process.

Separate processes on a shared machine run at different moments, and other people's work moves the speed of a whole
run by tens of percent (also in CPU time: a busy sibling hyperthread or shared cache slows every instruction). Here
one process trains two identical copies of the network: ``kiln.Model.fit`` trains one, and a callback at the end of
each kiln epoch trains the twin for one epoch with the hand-written loop over its own DataLoader. Neighbouring epochs
see the same machine, so the ratio of their times is a far steadier measure of kiln's cost than a ratio of two runs.

``pair:loop`` is the A/A calibration: the timed side is the same hand-written loop as the twin, so its ratio shows
what the method itself reads where both sides do identical work (ideally 1.000).

The kiln epoch is timed from the end of the twin's previous epoch to the end of kiln's epoch, so it includes all of
kiln's work between epochs (logs, History, the progress display); the callback is the last one fit calls. The first
epoch of each is warm-up. The result is one ``RESULT {json}`` line with the per-epoch ratios loop time ÷ kiln time
(above 1: kiln is faster), in CPU time (``time.process_time``) and wall time.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from types import ModuleType
from typing import Any


def run_paired(config: str, model: str, common: ModuleType, *, threads: int) -> None:
    """Train ``model`` with kiln ``config`` and, between its epochs, a twin with the hand-written loop."""
    import torch
    import torch.nn.functional as F
    import torch_models as M
    from train_overhead_run import fit_kiln

    import kiln

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = M.tensors(model)
    built = M.build(model)
    # Both sides get a copy, so neither keeps the original's memory layout (which alone can move speed by percents).
    net, twin = copy.deepcopy(built), copy.deepcopy(built)
    del built
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=common.LR)
    twin_loader = M.loader(x_train, y_train)

    def hand_epoch(net: Any, optimizer: Any, loader: Any) -> None:
        net.train()
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            optimizer.step()

    def loop_epoch() -> None:
        hand_epoch(twin, twin_optimizer, twin_loader)

    class TakeTurns(kiln.Callback):
        """At the end of every kiln epoch: stop kiln's clock, run one twin epoch on its own clock, restart kiln's."""

        def __init__(self) -> None:
            self.mark: tuple[float, float] | None = None
            self.kiln: list[tuple[float, float]] = []  # (wall s, CPU s) per timed epoch
            self.loop: list[tuple[float, float]] = []

        def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
            now = (time.perf_counter(), time.process_time())
            if self.mark is not None:
                self.kiln.append((now[0] - self.mark[0], now[1] - self.mark[1]))
            loop_epoch()
            done = (time.perf_counter(), time.process_time())
            if self.mark is not None:
                self.loop.append((done[0] - now[0], done[1] - now[1]))
            self.mark = done

    turns = TakeTurns()
    if config == "kiln:loop":  # the A/A calibration: the timed side is the same hand-written loop as the twin
        own_optimizer, own_loader = torch.optim.Adam(net.parameters(), lr=common.LR), M.loader(x_train, y_train)
        for epoch in range(common.EPOCHS):
            hand_epoch(net, own_optimizer, own_loader)
            turns.on_epoch_end(None, epoch, {})
    else:
        fit_kiln(config, net, x_train, y_train, common, [turns])
    steps = common.STEPS_PER_EPOCH
    result = {
        "framework": "pair",
        "mode": config.split(":")[1],
        "model": model,
        "pairs": len(turns.kiln),
        "wall_ratios": [loop[0] / kiln_[0] for kiln_, loop in zip(turns.kiln, turns.loop, strict=True)],
        "cpu_ratios": [loop[1] / kiln_[1] for kiln_, loop in zip(turns.kiln, turns.loop, strict=True)],
        "kiln_cpu_steps_per_s": statistics.median(steps / cpu for _, cpu in turns.kiln),
        "loop_cpu_steps_per_s": statistics.median(steps / cpu for _, cpu in turns.loop),
        "test_acc": M.accuracy(net, x_test, y_test),
        "twin_test_acc": M.accuracy(twin, x_test, y_test),
        "threads": torch.get_num_threads(),
        "stdout_tty": sys.stdout.isatty(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def run_alternating(config: str, model: str, common: ModuleType, *, threads: int, blocks: int = 4) -> None:
    """Whole fits of kiln and of the loop in one process, each on a fresh copy, in the order kiln, loop, loop, kiln.

    A cross-check of the epoch pairs: each side pays its whole fit (setup, warm-up epoch, everything between epochs)
    and every fit allocates its model anew, so no side keeps a memory layout that happens to be faster; the ABBA order
    cancels a steady drift. One ratio per block: (loop time of its two fits) ÷ (kiln time of its two fits).
    """
    import torch
    import torch.nn.functional as F
    import torch_models as M
    from train_overhead_run import fit_kiln

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = M.tensors(model)
    built = M.build(model)
    trained: dict[str, Any] = {}

    def kiln_fit() -> tuple[float, float]:
        net = copy.deepcopy(built)
        start = (time.perf_counter(), time.process_time())
        fit_kiln(config, net, x_train, y_train, common, [])
        trained["kiln"] = net
        return time.perf_counter() - start[0], time.process_time() - start[1]

    def loop_fit() -> tuple[float, float]:
        net = copy.deepcopy(built)
        start = (time.perf_counter(), time.process_time())
        optimizer = torch.optim.Adam(net.parameters(), lr=common.LR)
        loader = M.loader(x_train, y_train)
        net.train()
        for _ in range(common.EPOCHS):
            for xb, yb in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(xb), yb)
                loss.backward()
                optimizer.step()
        trained["loop"] = net
        return time.perf_counter() - start[0], time.process_time() - start[1]

    kiln_fit(), loop_fit()  # warm-up: first-call costs (imports, allocator growth) land on neither side
    wall, cpu, kiln_cpu, loop_cpu = [], [], [], []
    for _ in range(blocks):
        k1, l1, l2, k2 = kiln_fit(), loop_fit(), loop_fit(), kiln_fit()
        wall.append((l1[0] + l2[0]) / (k1[0] + k2[0]))
        cpu.append((l1[1] + l2[1]) / (k1[1] + k2[1]))
        kiln_cpu += [k1[1], k2[1]]
        loop_cpu += [l1[1], l2[1]]
    steps = common.EPOCHS * common.STEPS_PER_EPOCH
    result = {
        "framework": "abba",
        "mode": config.split(":")[1],
        "model": model,
        "pairs": blocks,
        "wall_ratios": wall,
        "cpu_ratios": cpu,
        "kiln_cpu_steps_per_s": steps / statistics.median(kiln_cpu),
        "loop_cpu_steps_per_s": steps / statistics.median(loop_cpu),
        "test_acc": M.accuracy(trained["kiln"], x_test, y_test),
        "twin_test_acc": M.accuracy(trained["loop"], x_test, y_test),
        "threads": torch.get_num_threads(),
        "stdout_tty": sys.stdout.isatty(),
    }
    print("RESULT " + json.dumps(result), flush=True)
