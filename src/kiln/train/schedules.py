"""Learning-rate schedules: warmup followed by cosine, linear, step, exponential or reduce-on-plateau decay.

kiln schedules are pure functions of the optimizer step (plus, for plateau, a little state), so they resume exactly.
Any torch ``LRScheduler`` works too; it is stepped once per epoch (``ReduceLROnPlateau`` with the monitored value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["KINDS", "LRSchedule", "ScheduleRunner", "make_schedule"]

KINDS = ("constant", "cosine", "linear", "step", "exponential", "plateau")


@dataclass
class LRSchedule:
    """A learning-rate schedule: ``kind`` plus its settings (all keyword-only).

    Steps count optimizer steps; ``step_size`` for the "step" kind and the "exponential" decay count epochs.

    Example:
        >>> model.fit(train, epochs=20, lr_schedule=LRSchedule("cosine", warmup_steps=100, min_lr=1e-5))
        >>> model.fit(train, epochs=20, lr_schedule=LRSchedule("plateau", monitor="val_loss", patience=2))
    """

    kind: str = "cosine"
    warmup_steps: int = field(default=0, kw_only=True)
    min_lr: float = field(default=0.0, kw_only=True)
    step_size: int = field(default=10, kw_only=True)
    gamma: float = field(default=0.1, kw_only=True)
    monitor: str = field(default="val_loss", kw_only=True)
    patience: int = field(default=3, kw_only=True)
    factor: float = field(default=0.1, kw_only=True)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"lr_schedule kind {self.kind!r} is not known; use one of {list(KINDS)}.")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")


class ScheduleRunner:
    """Applies an :class:`LRSchedule` to an optimizer's param groups, step by step."""

    def __init__(self, schedule: LRSchedule, optimizer: torch.optim.Optimizer, *, total_steps: int,
                 steps_per_epoch: int) -> None:
        self.schedule, self.optimizer = schedule, optimizer
        self.total_steps, self.steps_per_epoch = max(total_steps, 1), max(steps_per_epoch, 1)
        self.base_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.step_count = 0
        self.plateau_scale, self.plateau_best, self.plateau_wait = 1.0, math.inf, 0
        self._apply()

    def multiplier(self, step: int) -> float:
        """The factor applied to each base learning rate after ``step`` optimizer steps."""
        s = self.schedule
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        progress = min((step - s.warmup_steps) / max(self.total_steps - s.warmup_steps, 1), 1.0)
        epoch = step // self.steps_per_epoch
        if s.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if s.kind == "linear":
            return 1.0 - progress
        if s.kind == "step":
            return s.gamma ** (epoch // s.step_size)
        if s.kind == "exponential":
            return s.gamma**epoch
        if s.kind == "plateau":
            return self.plateau_scale
        return 1.0

    def _apply(self) -> None:
        factor = self.multiplier(self.step_count)
        s = self.schedule
        decaying = self.step_count >= s.warmup_steps and s.kind in ("cosine", "linear")
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            # Warmup ramps from ~0 to the base lr; cosine/linear then decay to min_lr; the others floor at min_lr.
            if self.step_count < s.warmup_steps:
                group["lr"] = base * factor
            elif decaying:
                group["lr"] = s.min_lr + (base - s.min_lr) * factor
            else:
                group["lr"] = max(base * factor, s.min_lr)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def epoch_end(self, logs: dict[str, float]) -> None:
        if self.schedule.kind != "plateau":
            return
        value = logs.get(self.schedule.monitor)
        if value is None:
            raise ConfigError(f"plateau schedule monitors {self.schedule.monitor!r}, which is not in the epoch logs "
                              f"{sorted(logs)}; pass validation= to fit or set monitor='loss'.")
        if value < self.plateau_best:
            self.plateau_best, self.plateau_wait = value, 0
        else:
            self.plateau_wait += 1
            if self.plateau_wait > self.schedule.patience:
                self.plateau_scale *= self.schedule.factor
                self.plateau_wait = 0
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "plateau_scale": self.plateau_scale,
                "plateau_best": self.plateau_best, "plateau_wait": self.plateau_wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_wait = int(state["plateau_wait"])
        self._apply()


class _TorchSchedulerRunner:
    """Steps a user's torch scheduler once per epoch (ReduceLROnPlateau with the monitored value)."""

    def __init__(self, scheduler: Any, monitor: str = "val_loss") -> None:
        self.scheduler, self.monitor = scheduler, monitor

    def step(self) -> None:
        pass

    def epoch_end(self, logs: dict[str, float]) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(logs.get(self.monitor, logs["loss"]))
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def make_schedule(spec: Any, optimizer: torch.optim.Optimizer, *, total_steps: int,
                  steps_per_epoch: int) -> ScheduleRunner | _TorchSchedulerRunner | None:
    """Build the runner for ``fit(lr_schedule=...)``: None, a kind name, an LRSchedule, or a torch scheduler."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = LRSchedule(spec)
    if isinstance(spec, LRSchedule):
        return ScheduleRunner(spec, optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    if callable(spec) and not hasattr(spec, "step"):
        spec = spec(optimizer)
    if hasattr(spec, "step") and hasattr(spec, "state_dict"):
        return _TorchSchedulerRunner(spec)
    raise ConfigError(
        f"lr_schedule={spec!r} is not supported; pass a kind name {list(KINDS)}, a kiln.LRSchedule, a torch "
        "LR scheduler built on model.optimizer, or a function optimizer -> scheduler."
    )
