"""Callbacks that write files: metrics logs (CSV / JSONL) and best/last weight checkpoints."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._atomic import atomic_path
from ..distributed import is_rank_zero
from .callbacks import Callback, _Monitor

if TYPE_CHECKING:
    from .state import TrainState

__all__ = ["MetricsLogger", "ModelCheckpoint", "save_weights"]


def save_weights(module: Any, path: str | Path) -> None:
    """Write a module's state_dict as safetensors, atomically (shared tensors are de-duplicated safely)."""
    from safetensors.torch import save_model

    with atomic_path(path) as tmp:
        save_model(module, str(tmp))


class MetricsLogger(Callback):
    """Append one row per epoch to a ``.csv`` or ``.jsonl`` file (flushed each epoch, so a crash loses nothing).

    Example:
        >>> model.fit(train, epochs=10, callbacks=[MetricsLogger("runs/metrics.csv")])
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.suffix not in (".csv", ".jsonl"):
            from ..errors import ConfigError

            raise ConfigError(f"MetricsLogger path must end in .csv or .jsonl, got {str(path)!r}.")
        self._fields: list[str] | None = None

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        if not is_rank_zero():
            return
        row = {"epoch": epoch, "step": model.global_step, **logs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as handle:
            if self.path.suffix == ".jsonl":
                handle.write(json.dumps(row) + "\n")
                return
            if self._fields is None:
                self._fields = list(row)
                if handle.tell() == 0:
                    csv.writer(handle).writerow(self._fields)
            csv.writer(handle).writerow([row.get(field, "") for field in self._fields])


class ModelCheckpoint(Callback):
    """Save the module's weights (safetensors, atomic) as ``best.safetensors`` and/or ``last.safetensors``.

    ``best`` tracks ``monitor`` ("val_loss" by default; mode inferred from the name) and is only rewritten when
    it improves.

    Example:
        >>> best = ModelCheckpoint("checkpoints", monitor="val_accuracy")
        >>> model.fit(train, epochs=20, validation=val, callbacks=[best])
    """

    def __init__(self, directory: str | Path, *, monitor: str = "val_loss", mode: str = "auto",
                 save_best: bool = True, save_last: bool = True) -> None:
        self.directory = Path(directory)
        self._monitor = _Monitor(monitor, mode)
        self.save_best, self.save_last = save_best, save_last
        self.best_epoch: int | None = None

    @property
    def best(self) -> float:
        return self._monitor.best

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        if not is_rank_zero():
            return
        if self.save_last:
            save_weights(model.module, self.directory / "last.safetensors")
        if self.save_best:
            value = self._monitor.value(logs)
            if not math.isnan(value) and self._monitor.improved(value):
                self._monitor.best, self.best_epoch = value, epoch
                save_weights(model.module, self.directory / "best.safetensors")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self._monitor.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._monitor.best, self.best_epoch = float(state["best"]), state["best_epoch"]
