"""The step API of ``kiln.Model``: the methods a subclass overrides or calls to write its own training step.

``train_step`` / ``eval_step`` are what a subclass overrides; ``backward`` / ``step`` are what they call;
``configure_optimizers`` builds several optimizers in the subclass. ``kiln.Model`` inherits them from here (this is
not a second class for users to subclass), so that model.py stays the fit / evaluate / predict loop it was; the
machinery behind ``backward`` and ``step`` is :class:`kiln.train.steps.StepControl`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError, DataError
from .loop import call, split_batch
from .optim import needs_closure

if TYPE_CHECKING:
    from .metrics import MetricSet
    from .steps import StepControl

__all__ = ["StepMethods"]


class StepMethods:
    """``kiln.Model``'s step API (see :meth:`train_step`); documented on, and used through, ``kiln.Model``."""

    # Set by kiln.Model.__init__ and fit.
    module: torch.nn.Module
    loss: Any
    metrics: MetricSet
    optimizer: torch.optim.Optimizer
    device: torch.device
    carry: dict[str, Any]
    _optimizers: Mapping[str, torch.optim.Optimizer]
    _control: StepControl | None
    _forward: Any

    @property
    def inference_module(self) -> torch.nn.Module:
        raise NotImplementedError

    def configure_optimizers(self) -> Any:
        """Override to build the optimizers in the subclass: return what ``optimizer=`` takes (a name, an optimizer,
        or a dict of them by name); it replaces the ``optimizer`` argument. Runs once, when the Model is built.

        Example:
            >>> def configure_optimizers(self):
            ...     return {"generator": ("adam", {"lr": 2e-4, "params": "generator"}),
            ...             "discriminator": torch.optim.SGD(self.module.discriminator.parameters(), lr=0.01)}
        """
        return None

    def _custom_train_step(self) -> bool:
        return type(self).train_step is not StepMethods.train_step

    # ------------------------------------------------------------------ the step (override for a custom one)
    def train_step(self, batch: Any) -> dict[str, Any]:
        """One training batch: forward, loss, ``self.backward(loss)``, ``self.step(...)``; returns what to log.

        Override it for a training step of your own (a GAN, several losses, a hidden state carried between batches):
        ``batch`` is on the Model's device and the step runs under the fit's autocast. Call ``self.backward(loss)``
        (loss scaling and ``accumulate`` apply) and ``self.step(name)`` for each optimizer (clipping, schedules and
        the callbacks' ``on_before_optimizer_step`` apply; between accumulation boundaries it does nothing). Return a
        dict of numbers or one-element tensors: each is averaged over the epoch into the fit's logs (and the run);
        ``"loss"`` (else the first value) is what the batch callbacks see. ``self.carry`` keeps state between batches:
        fit detaches its tensors after every batch and empties it at every epoch's start; checkpoints hold it.

        This default is kiln's supervised step, for several optimizers (one backward, each steps) and for optimizers
        that step through a closure (L-BFGS).

        Example:
            >>> class GAN(kiln.Model):
            ...     def train_step(self, batch):
            ...         real, _ = batch
            ...         fake = self.module.generator(torch.randn(len(real), 8, device=self.device))
            ...         d = self.module.discriminator
            ...         d_loss = bce(d(real), 1) + bce(d(fake.detach()), 0)
            ...         self.backward(d_loss, "discriminator")
            ...         self.step("discriminator")
            ...         g_loss = bce(d(fake), 1)
            ...         self.backward(g_loss, "generator")
            ...         self.step("generator")
            ...         return {"d_loss": d_loss, "g_loss": g_loss}
        """
        x, y = split_batch(batch)
        loss_fn, forward = self.loss, self._forward if self._forward is not None else self.module
        assert loss_fn is not None
        if needs_closure(self.optimizer):
            losses: list[torch.Tensor] = []

            def closure() -> torch.Tensor:
                loss = loss_fn(call(forward, x), y)
                self.backward(loss)
                losses.append(loss.detach())
                return loss

            self.step(closure=closure)
            return {"loss": losses[0]}  # the loss before the step, as in the built-in step
        loss = loss_fn(call(forward, x), y)
        self.backward(loss)
        for name in self._optimizers:
            self.step(name)
        return {"loss": loss}

    def eval_step(self, batch: Any) -> dict[str, Any]:
        """One evaluation batch (no gradients, eval mode, autocast): returns numbers to average over the data.

        Override it with ``train_step`` when the built-in evaluation (``loss`` and ``metrics`` on ``module(x)``) does
        not fit the model. ``evaluate`` and ``fit(validation=...)`` then report the batch-size-weighted mean of each
        value (``val_<name>`` in fit's logs). This default returns the loss and updates the metrics.

        Example:
            >>> def eval_step(self, batch):
            ...     x, y = batch
            ...     return {"mse": F.mse_loss(self.module(x), y)}
        """
        x, y = split_batch(batch)
        if y is None:
            raise DataError("evaluate needs targets: the data has inputs only. Use predict for inputs alone.")
        output = call(self.inference_module, x)
        if self.metrics:
            self.metrics.update(output, y)
        return {} if self.loss is None else {"loss": self.loss(output, y)}

    def backward(self, loss: torch.Tensor, optimizer: str | None = None) -> None:
        """Backward pass of ``loss`` inside ``train_step``, with the fit's loss scaling and accumulation.

        ``optimizer`` names the optimizer whose parameters receive gradients (the others' are left untouched, as a
        generator's loss must leave the discriminator's gradients alone); None: every parameter.

        Example:
            >>> self.backward(g_loss, "generator")
        """
        if self._control is None:
            raise ConfigError("backward() is for train_step while fit runs; outside fit call loss.backward().")
        self._control.backward(loss, optimizer)

    def step(self, optimizer: str | None = None, *, closure: Callable[[], torch.Tensor] | None = None) -> bool:
        """Step the optimizer named ``optimizer`` (None: the only one) inside ``train_step``; True if it stepped.

        Gradients are averaged over ranks (under torchrun), unscaled and clipped as fit was asked, the callbacks'
        ``on_before_optimizer_step`` run (once per batch), then the optimizer steps, its gradients are cleared and
        its schedule advances. Between accumulation boundaries it does nothing and returns False. ``closure``
        (forward, ``self.backward(loss)``, return loss) is for optimizers that re-evaluate the loss (L-BFGS); kiln
        clears the gradients before each evaluation.

        Example:
            >>> self.step("discriminator")
        """
        if self._control is None:
            raise ConfigError("step() is for train_step while fit runs; outside fit call optimizer.step().")
        return self._control.step(optimizer, closure)
