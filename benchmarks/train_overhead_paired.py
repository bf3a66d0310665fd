"""Paired runs for train_overhead.py: kiln's fit and the hand-written loop take turns, epoch by epoch, in one process.

Separate processes on a shared machine run at different moments, and other people's work moves the speed of a whole
run by tens of percent (also in CPU time: a busy sibling hyperthread or shared cache slows every instruction). Here
one process trains two identical copies of the network: ``kiln.Model.fit`` trains one, and a callback at the end of
each kiln epoch trains the twin for one epoch with the hand-written loop over its own DataLoader. Neighbouring epochs
see the same machine, so the ratio of their times is a far steadier measure of kiln's cost than a ratio of two runs.

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
    net = M.build(model)
    twin = copy.deepcopy(net)  # the same initial weights
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=common.LR)
    twin_loader = M.loader(x_train, y_train)

    def loop_epoch() -> None:
        twin.train()
        for xb, yb in twin_loader:
            twin_optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(twin(xb), yb)
            loss.backward()
            twin_optimizer.step()

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
