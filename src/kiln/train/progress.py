"""The progress display: a live rich bar on a terminal, one plain line per epoch elsewhere, nothing off rank 0."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from ..distributed import is_rank_zero
from .callbacks import Callback

if TYPE_CHECKING:
    import torch

    from .state import TrainState

__all__ = ["ProgressBar", "format_logs"]


def format_logs(logs: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.4g}" for key, value in logs.items())


class ProgressBar(Callback):
    """Shows loss, metrics and throughput while ``fit`` runs.

    On a terminal the bar is redrawn at most ``refresh_per_second`` times (no background thread, so it never
    competes with the training loop); when output is not a terminal it prints one line per epoch; on ranks other
    than 0 it prints nothing. ``fit(verbose=0)`` turns it off.

    Example:
        >>> model.fit(train, epochs=5, callbacks=[ProgressBar(refresh_per_second=2)], verbose=0)
    """

    def __init__(self, *, refresh_per_second: float = 8.0, live: bool | None = None) -> None:
        self.interval = 1.0 / refresh_per_second
        self.live = live
        self._progress: Any = None
        self._task: Any = None
        self._next = 0.0
        self._steps = 0
        self._samples_per_step = 0
        self._epoch_start = 0.0
        self.enabled = True

    def on_fit_start(self, model: TrainState) -> None:
        self.enabled = is_rank_zero()
        if not self.enabled:
            return
        live = sys.stdout.isatty() if self.live is None else self.live
        self._samples_per_step = model.fit_config.get("batch_size", 0)
        if live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), auto_refresh=False, transient=False,
            )
            self._progress.start()

    def on_epoch_start(self, model: TrainState, epoch: int) -> None:
        if not self.enabled:
            return
        self._steps = 0
        self._epoch_start = time.perf_counter()
        self._next = self._epoch_start + self.interval
        if self._progress is not None:
            label = f"{epoch + 1}/{model.fit_config.get('epochs', '?')}"
            # One task for the whole fit, reset each epoch: every redraw renders each task, so a task per epoch
            # would make redraws (and the training loop waiting on them) slower epoch after epoch.
            if self._task is None:
                self._task = self._progress.add_task("train", total=model.steps_per_epoch, epoch=label, info="")
            else:
                self._progress.reset(self._task, total=model.steps_per_epoch, epoch=label, info="")

    def on_train_batch_end(self, model: TrainState, step: int, loss: torch.Tensor) -> None:
        self._steps += 1
        if self._progress is None:
            return
        now = time.perf_counter()
        if now < self._next:
            return
        self._next = now + self.interval
        rate = self._steps * self._samples_per_step / max(now - self._epoch_start, 1e-9)
        self._progress.update(self._task, completed=self._steps, info=f"loss {float(loss):.4g}  {rate:,.0f} samples/s")
        self._progress.refresh()

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        if not self.enabled:
            return
        seconds = time.perf_counter() - self._epoch_start
        rate = self._steps * self._samples_per_step / max(seconds, 1e-9)
        summary = f"{format_logs(logs)}  {seconds:.1f}s  {rate:,.0f} samples/s"
        line = f"epoch {epoch + 1}/{model.fit_config.get('epochs', '?')}  {summary}"
        if self._progress is not None:
            self._progress.update(self._task, completed=self._steps, info="")
            self._progress.console.print(line, highlight=False)  # finished epochs scroll above the live bar
        else:
            print(line, flush=True)

    def on_fit_end(self, model: TrainState) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress, self._task = None, None
