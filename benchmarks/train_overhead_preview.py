"""A proposed change to kiln's live progress bar, tried from outside src/ by train_overhead.py (kiln:array-tty-bar).

kiln's ProgressBar adds one rich task per epoch and keeps them all on screen, so every redraw re-renders every
finished epoch: the cost of a redraw grows with the epoch count, and the bar also redraws at every epoch's start and
end however short the epoch is. This callback keeps the same information with a cost that does not grow: one task,
reset at each epoch's start without a redraw; each finished epoch's summary printed as a plain line above the bar;
and every redraw, epoch lines included, limited to ``refresh_per_second``.

Example:
    >>> model.fit(train, epochs=5, callbacks=[ConstantCostProgressBar()], verbose=0)
"""

from __future__ import annotations

import time
from typing import Any

import kiln


class ConstantCostProgressBar(kiln.Callback):
    """A live bar of one row whose redraws are at most ``refresh_per_second``, whatever the epoch length."""

    def __init__(self, *, refresh_per_second: float = 8.0) -> None:
        self.interval = 1.0 / refresh_per_second
        self._progress: Any = None
        self._task: Any = None
        self._next = 0.0
        self._steps = 0
        self._epoch_start = 0.0
        self._pending: list[str] = []
        self._samples_per_step = 0

    def on_fit_start(self, model: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._samples_per_step = model.fit_config.get("batch_size", 0)
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            auto_refresh=False,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=model.steps_per_epoch, epoch="", info="")

    def on_epoch_start(self, model: Any, epoch: int) -> None:
        self._steps = 0
        self._epoch_start = time.perf_counter()
        label = f"{epoch + 1}/{model.fit_config.get('epochs', '?')}"
        self._progress.update(self._task, total=model.steps_per_epoch, completed=0, epoch=label, info="")

    def on_train_batch_end(self, model: Any, step: int, loss: Any) -> None:
        self._steps += 1
        now = time.perf_counter()
        if now >= self._next:
            rate = self._steps * self._samples_per_step / max(now - self._epoch_start, 1e-9)
            self._draw(now, f"loss {float(loss):.4g}  {rate:,.0f} samples/s")

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        seconds = time.perf_counter() - self._epoch_start
        rate = self._steps * self._samples_per_step / max(seconds, 1e-9)
        metrics = "  ".join(f"{key} {value:.4g}" for key, value in logs.items())
        self._pending.append(
            f"epoch {epoch + 1}/{model.fit_config.get('epochs', '?')}  {metrics}  {seconds:.1f}s  {rate:,.0f} samples/s"
        )
        now = time.perf_counter()
        if now >= self._next:
            self._draw(now, "")

    def _draw(self, now: float, info: str) -> None:
        self._next = now + self.interval
        if self._pending:  # printing above a live display redraws it once, whatever the number of lines
            self._progress.console.print("\n".join(self._pending), highlight=False)
            self._pending.clear()
        self._progress.update(self._task, completed=self._steps, info=info)
        self._progress.refresh()

    def on_fit_end(self, model: Any) -> None:
        if self._progress is None:
            return
        if self._pending:
            self._progress.console.print("\n".join(self._pending), highlight=False)
            self._pending.clear()
        self._progress.stop()
        self._progress = None
