"""The learning-rate range test (Leslie Smith, 2015): train briefly while the learning rate grows exponentially.

The loss falls slowly at tiny rates, fast at good ones, then blows up. :func:`find_lr` records the curve, smooths it
(an exponential moving average with bias correction), stops once the smoothed loss exceeds ``diverge`` times its
best, and reads two rates off the curve: the steepest descent of the smoothed loss (``steepest``) and the rate an
order of magnitude below the minimum (``minimum_tenth``). The ``suggestion`` is the lower of the two: the steepest
descent, but never closer than a factor of ten to the minimum, past which the loss turns (the smoothed curve lags
the raw one, so its steepest point can sit right at the edge of divergence).

Training happens on the Model's own module and optimizer; their state (weights, buffers, gradients, optimizer state
and hyperparameters, loss scaler, train/eval modes) and the random generators are saved first and restored bit for
bit afterwards, also when the test raises.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..data.loader import make_loader
from ..errors import ConfigError, DataError
from .loop import call, split_batch
from .state import TrainState

__all__ = ["LRFinderResult", "find_lr"]

logger = logging.getLogger(__name__)


class _Trainee(TrainState, Protocol):
    """What the range test needs of ``kiln.Model`` (typed so, as the loop does, without importing it)."""

    store: Any

    @property
    def loss(self) -> Any: ...

    def _to_device(self, value: Any) -> Any: ...


@dataclass(frozen=True)
class LRFinderResult:
    """The curve of a learning-rate range test and the rates it suggests.

    ``lrs`` and ``losses`` hold one entry per step taken (fewer than asked when the loss diverged), ``smoothed`` the
    bias-corrected moving average of ``losses``. ``steepest`` is the rate of steepest descent of the smoothed loss
    (before its minimum), ``minimum_tenth`` a tenth of the rate at the minimum; ``suggestion`` is the lower of them.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    steepest: float
    minimum_tenth: float
    diverged: bool
    run_id: str | None = None
    figure: Any = field(default=None, repr=False, compare=False)

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Draw loss against learning rate (log axis) with both suggestions marked; save to ``path`` when given.

        Example:
            >>> result.plot("lr_find.png")
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("plotting the LR finder needs matplotlib: pip install 'kiln[tune]'.") from error
        figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        axes.plot(self.lrs, self.losses, color="0.75", linewidth=1, label="batch loss")
        axes.plot(self.lrs, self.smoothed, color="C0", linewidth=2, label="smoothed")
        for lr, name, color in ((self.steepest, "steepest", "C3"), (self.minimum_tenth, "minimum / 10", "C2")):
            axes.axvline(lr, color=color, linestyle="--", linewidth=1, label=f"{name}: {lr:.2e}")
        axes.plot(
            [self.suggestion],
            [_at(self.lrs, self.smoothed, self.suggestion)],
            "o",
            color="black",
            label=f"suggestion: {self.suggestion:.2e}",
        )
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss")
        finite = [v for v in (*self.losses, *self.smoothed) if math.isfinite(v)]
        low, high = min(finite), self.smoothed[0] * 1.3  # the descent fills the plot; the blow-up leaves it
        axes.set_ylim(low - 0.05 * (high - low), high)
        axes.legend(loc="upper left", fontsize="small")
        axes.set_title("learning-rate range test" + (" (stopped: diverged)" if self.diverged else ""))
        figure.tight_layout()
        if path is not None:
            figure.savefig(path)
            plt.close(figure)
        return figure


def _check(start: float, end: float, steps: int, smoothing: float, diverge: float) -> None:
    if not (isinstance(start, int | float) and isinstance(end, int | float) and 0 < start < end < math.inf):
        raise ConfigError(f"find_lr needs 0 < start < end (e.g. start=1e-7, end=1); got start={start!r}, end={end!r}.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 5:
        raise ConfigError(f"steps must be an int of at least 5 (e.g. 100); got {steps!r}.")
    if not 0 <= smoothing < 1:
        raise ConfigError(f"smoothing must be in [0, 1) (e.g. 0.98); got {smoothing!r}.")
    if not diverge > 1:
        raise ConfigError(f"diverge must be a factor above 1 (e.g. 4.0); got {diverge!r}.")


def _save(model: _Trainee) -> dict[str, Any]:
    """Everything the test changes, copied: restored by :func:`_restore` bit for bit."""
    module = model.module
    return {
        "module": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in module.parameters()],
        "modes": [m.training for m in module.modules()],
        "optimizer": copy.deepcopy(model.optimizer.state_dict()),
        "precision": copy.deepcopy(model.precision.state_dict()),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None,
    }


def _restore(model: _Trainee, saved: dict[str, Any]) -> None:
    module = model.module
    module.load_state_dict(saved["module"])
    with torch.no_grad():
        for param, grad in zip(module.parameters(), saved["grads"], strict=True):
            param.grad = grad
    for submodule, training in zip(module.modules(), saved["modes"], strict=True):
        submodule.training = training
    model.optimizer.load_state_dict(saved["optimizer"])
    model.precision.load_state_dict(saved["precision"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def _at(lrs: list[float], values: list[float], lr: float) -> float:
    """The value at the recorded rate nearest ``lr`` (on a log scale)."""
    nearest = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / lr)))
    return values[nearest]


def _batches(loader: Any) -> Iterator[Any]:
    """Batches of ``loader``, epoch after epoch, for as long as they are asked for."""
    epoch = 0
    while True:
        produced = False
        for batch in loader.epoch(epoch):
            produced = True
            yield batch
        if not produced:
            raise DataError("find_lr got no batches from the data.")
        epoch += 1


def _suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """(steepest descent before the minimum, a tenth of the rate at the minimum) of a smoothed curve."""
    lowest = int(np.argmin(smoothed))
    minimum_tenth = float(lrs[lowest]) / 10
    skip = max(1, len(lrs) // 10)  # the first points are noise: the average is still warming up
    stop = max(lowest, skip + 2)
    if stop - skip < 2:
        return minimum_tenth, minimum_tenth
    slope = np.gradient(smoothed[: stop + 1], np.log(lrs[: stop + 1]))  # d loss / d log(lr)
    steepest = skip + int(np.argmin(slope[skip:stop]))
    return float(lrs[steepest]), minimum_tenth


def find_lr(
    model: _Trainee,
    data: Any,
    *,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 100,
    batch_size: int = 32,
    smoothing: float = 0.98,
    diverge: float = 4.0,
    seed: int = 0,
    run: str | None = None,
    plot: bool | str | os.PathLike[str] = False,
) -> LRFinderResult:
    """Run the learning-rate range test on ``model`` over ``data`` and restore the model exactly afterwards.

    The rate grows from ``start`` to ``end`` over ``steps`` optimizer steps (geometrically; several parameter groups
    keep their ratios). The test stops early once the smoothed loss exceeds ``diverge`` times its lowest value or a
    loss is not finite. With ``run`` (or a Model built with ``store=``) the curve is recorded as a run's metric
    series ``lr``, ``loss`` and ``smoothed_loss`` (step = test step) plus ``suggested_lr``, so the dashboard plots it.
    ``plot=True`` draws the curve (``result.figure``); a path also saves it there (and as the run's artifact
    ``lr_find.png`` when recording).

    Example:
        >>> result = model.find_lr(train, start=1e-7, end=1, steps=100)
        >>> result.suggestion, result.steepest, result.minimum_tenth
        (0.0739, 0.351, 0.0739)
        >>> model.optimizer.param_groups[0]["lr"] = result.suggestion
    """
    _check(start, end, steps, smoothing, diverge)
    if model.loss is None:
        raise ConfigError("find_lr needs a loss: build the Model with loss='cross_entropy' (or another loss).")
    if len(model.optimizers) != 1:
        raise ConfigError(
            f"find_lr tests one optimizer; this Model has {len(model.optimizers)} "
            f"({', '.join(model.optimizers)}). Run it on a Model with one optimizer."
        )
    loader = make_loader(
        data, batch_size, shuffle=True, seed=seed, drop_last=False, pin_memory=model.device.type == "cuda"
    )
    groups = model.optimizer.param_groups
    base = [float(g["lr"]) for g in groups]
    ratios = [b / base[0] for b in base] if base[0] > 0 and all(b > 0 for b in base) else [1.0] * len(groups)
    saved = _save(model)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    diverged = False
    try:
        torch.manual_seed(seed)
        model.module.train()
        average, best = 0.0, math.inf
        for i, batch in zip(range(steps), _batches(loader), strict=False):
            lr = start * (end / start) ** (i / (steps - 1))
            for group, ratio in zip(groups, ratios, strict=True):
                group["lr"] = lr * ratio
            value = _step(model, batch)
            lrs.append(lr)
            losses.append(value)
            if not math.isfinite(value):
                smoothed.append(math.inf)
                diverged = True
                break
            average = smoothing * average + (1 - smoothing) * value
            smooth = average / (1 - smoothing ** (i + 1))
            smoothed.append(smooth)
            best = min(best, smooth)
            if smooth > diverge * best:
                diverged = True
                break
    finally:
        _restore(model, saved)
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    if len(finite) < 3:
        raise ConfigError(
            f"find_lr: the loss diverged after {len(losses)} step(s), at lr {lrs[-1]:.3g}; start "
            "lower (start=) or check the data and loss."
        )
    steepest, minimum_tenth = _suggest(np.array([lrs[i] for i in finite]), np.array([smoothed[i] for i in finite]))
    suggestion = min(steepest, minimum_tenth)
    logger.info(
        "find_lr: %d steps%s; steepest descent at lr %.3g, minimum / 10 at %.3g: suggesting %.3g",
        len(lrs),
        " (stopped: diverged)" if diverged else "",
        steepest,
        minimum_tenth,
        suggestion,
    )
    result = LRFinderResult(lrs, losses, smoothed, suggestion, steepest, minimum_tenth, diverged)
    path = None if isinstance(plot, bool) else plot
    figure = result.plot(path) if plot is not False else None
    run_id = None
    if run is not None or model.store is not None:
        run_id = _record(model, result, run, batch_size=batch_size, plot=path)
    return LRFinderResult(lrs, losses, smoothed, suggestion, steepest, minimum_tenth, diverged, run_id, figure)


def _step(model: _Trainee, batch: Any) -> float:
    x, y = split_batch(batch)
    x, y = model._to_device(x), model._to_device(y)
    optimizer, precision, loss_fn = model.optimizer, model.precision, model.loss
    assert loss_fn is not None
    with precision.autocast():
        loss = loss_fn(call(model.module, x), y)
    value = float(loss.detach())
    if math.isfinite(value):
        precision.backward(loss)
        precision.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return value


def _record(
    model: _Trainee, result: LRFinderResult, run: str | None, *, batch_size: int, plot: str | os.PathLike[str] | None
) -> str:
    """Record the curve as a run of the Model's store (or the default store); returns the run's id."""
    from ..store import Store

    store = model.store if isinstance(model.store, Store) else Store(model.store)
    name = run or f"{type(model.module).__name__.lower()}-lr-find"
    params = {
        "start": result.lrs[0],
        "end": result.lrs[-1],
        "steps": len(result.lrs),
        "batch_size": batch_size,
        "optimizer": type(model.optimizer).__name__,
    }
    with store.start_run(name, params=params, tags={"kind": "lr_find"}) as tracked:
        for step, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed, strict=True)):
            tracked.log({"lr": lr, "loss": loss, "smoothed_loss": smooth}, step=step)
        tracked.log(
            {
                "suggested_lr": result.suggestion,
                "steepest_lr": result.steepest,
                "minimum_tenth_lr": result.minimum_tenth,
            },
            step=len(result.lrs) - 1,
        )
        if plot is not None:
            tracked.flush()
            tracked.log_artifact("lr_find.png", Path(plot))
    return tracked.id
