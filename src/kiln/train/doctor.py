"""The gradient doctor: looks at gradients, updates, activations and the loss on sampled steps and names what is wrong.

Between looks the doctor costs two list appends per batch. A look (steps 0, 1, 2, 4, ..., ``early`` and then every
``every`` steps) measures per-layer gradient norms, weight norms, the update/weight ratio of the step that follows,
and, through forward hooks that exist only for that one step, the fraction of ReLU units that never fire.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..distributed import is_rank_zero
from ..errors import ConfigError
from .activations import ActivationWatch, _ForwardHook
from .callbacks import Callback
from .doctor_record import DoctorRecord, choose_layers
from .findings import (
    _RELUS,
    KINDS,
    Finding,
    _exploding_finding,
    _Layer,
    _loss_spike_finding,
    _nonfinite_gradient_finding,
    _nonfinite_loss_finding,
    _Remedies,
    _run_remedies,
    _vanishing_finding,
)
from .updates import UpdateMeter

if TYPE_CHECKING:
    from .state import TrainState

__all__ = ["KINDS", "Finding", "GradientDoctor"]

logger = logging.getLogger("kiln.doctor")


class GradientDoctor(Callback):
    """Watch training on sampled steps and report vanishing or exploding gradients, loss spikes, dead ReLUs and NaN/Inf.

    Each finding is reported once: printed with the progress output (rank 0 only; ``print_findings``), logged to the
    ``kiln.doctor`` logger when logging is configured, appended to ``model.history.diagnostics`` and to
    ``doctor.findings``. A healthy model produces none.

    When the fit is tracked (``fit(run=...)``, a Model with a store, or a :class:`TrackingCallback`), the run keeps
    them too: the findings as the artifact ``doctor.json`` (written at the start, on each new finding and at the end),
    and the update/weight ratio of ``record_layers`` layers as metrics ``update_ratio/<layer>`` at each look (see
    :mod:`kiln.train.doctor_record`). ``kiln ui`` shows both on the run page.

    What it looks for, on looks at steps 0, 1, 2, 4, ... ``early`` and then every ``every`` steps:

    - vanishing: layers whose gradient norm stays below ``vanish_ratio`` times the largest layer's for ``patience``
      looks in a row;
    - exploding: a total gradient norm above ``explode_factor`` times the median of the healthy looks so far and
      above every one of them, while the loss is not falling (norms also grow while a small initialisation wakes up);
    - loss spikes: a batch loss above ``spike_factor`` times the running median and above the loss at the start;
    - dead ReLUs: ``nn.ReLU`` modules where at least ``dead_fraction`` of the units gave zero for every sample on
      ``patience`` looks in a row (forward hooks, only on the step of a look; off in ``mode="graph"``);
    - non-finite gradients (naming the layer nearest the output, where they start) and a non-finite loss.

    Gradients are read after unscaling and clipping. Under fp16 loss scaling an overflow is normal (the scaler skips
    that step), so non-finite gradients are reported only when they persist for three looks.

    ``print_findings``: True prints each finding, False never writes to the terminal (the findings still reach
    ``history.diagnostics``, a tracked run, and the ``kiln.doctor`` logger's handlers if you configured some), None
    (the default) prints when ``fit(verbose=...)`` is on. ``record_layers``: how many layers' update/weight ratios a
    tracked run logs (default 12, spread evenly over the depth, first and last included; 0 for none), or a list of
    layer names as ``module.named_modules()`` spells them.

    Example:
        >>> doctor = GradientDoctor(every=100)   # default 50
        >>> history = model.fit(train, epochs=5, callbacks=[doctor])
        >>> for finding in history.diagnostics:
        ...     print(finding.kind, finding.layers, finding.remedies[0])
    """

    def __init__(
        self,
        *,
        every: int = 50,
        early: int = 16,
        vanish_ratio: float = 1e-3,
        explode_factor: float = 10.0,
        spike_factor: float = 10.0,
        dead_fraction: float = 0.5,
        patience: int = 2,
        clip_percentile: float = 90.0,
        activations: bool = True,
        print_findings: bool | None = None,
        record_layers: int | Sequence[str] = 12,
    ) -> None:
        for name, value in (("every", every), ("patience", patience)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"GradientDoctor {name} must be a positive int, got {value!r}.")
        if not isinstance(early, int) or early < 0:
            raise ConfigError(f"GradientDoctor early must be an int >= 0, got {early!r}.")
        if not 0 < vanish_ratio < 1:
            raise ConfigError(f"GradientDoctor vanish_ratio must be in (0, 1), got {vanish_ratio!r}.")
        for name, factor in (("explode_factor", explode_factor), ("spike_factor", spike_factor)):
            if not factor > 1:
                raise ConfigError(f"GradientDoctor {name} must be > 1, got {factor!r}.")
        if not 0 < dead_fraction <= 1:
            raise ConfigError(f"GradientDoctor dead_fraction must be in (0, 1], got {dead_fraction!r}.")
        if not 0 < clip_percentile <= 100:
            raise ConfigError(f"GradientDoctor clip_percentile must be in (0, 100], got {clip_percentile!r}.")
        if isinstance(record_layers, str) or not (
            (isinstance(record_layers, int) and not isinstance(record_layers, bool) and record_layers >= 0)
            or (isinstance(record_layers, Sequence) and all(isinstance(name, str) for name in record_layers))
        ):
            raise ConfigError(
                f"GradientDoctor record_layers must be an int >= 0 or a list of layer names, got {record_layers!r}."
            )
        self.every, self.early, self.patience = every, early, patience
        self.vanish_ratio, self.explode_factor, self.spike_factor = vanish_ratio, explode_factor, spike_factor
        self.dead_fraction, self.clip_percentile = dead_fraction, clip_percentile
        self.activations, self.print_findings = activations, print_findings
        self.record_layers = record_layers if isinstance(record_layers, int) else list(record_layers)
        self._early = frozenset([0, *(2**k for k in range(early.bit_length()) if 2**k <= early)])
        self.findings: list[Finding] = []
        self.stats: dict[str, Any] = {}
        self._loaded = False
        self._watch = ActivationWatch()  # forward hooks on the step of a look, forward order, dead ReLU streaks
        self._reset()

    def _reset(self) -> None:
        self._reported: set[str] = set()
        self._healthy_norms: deque[float] = deque(maxlen=256)  # total gradient norm of looks without trouble
        self._loss_window: deque[float] = deque(maxlen=128)
        self._initial_loss: float | None = None
        self._vanishing: set[str] | None = None
        self._vanishing_streak = 0
        self._nonfinite_streak = 0
        self._watch.reset()
        self._first_look: int | None = None
        self._last_update_ratios: dict[str, float] = {}
        self._layers: list[_Layer] = []
        self._losses: list[torch.Tensor] = []
        self._loss_steps: list[int] = []
        self._seen = 0
        self._next_event = 0
        self._params: list[torch.Tensor] = []
        self._owners: list[int] = []
        self._pending_total: float | None = None
        self._updates = UpdateMeter()
        self._weight_norms: dict[int, float] = {}
        self._record: DoctorRecord | None = None  # the tracked run's, found on the first epoch start
        self._record_checked = False
        self._unsaved = False  # findings the record does not hold yet
        self._ratio_layers: frozenset[int] = frozenset()

    # ------------------------------------------------------------------ hooks of the loop
    def on_fit_start(self, model: TrainState) -> None:
        if not self._loaded:  # a fresh diagnosis per fit, unless resuming from load_state_dict
            self.findings = []
            self._reset()
        elif model.history is not None:  # resumed: the run's History lists what was found before the restart
            model.history.diagnostics.extend(self.findings)
        self._loaded = False
        self._record, self._record_checked, self._unsaved = None, False, True
        root = model.module
        if isinstance(root, nn.parallel.DistributedDataParallel):  # names as the user's module spells them
            root = root.module
        self._layers = []
        for name, module in root.named_modules():
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if params:
                self._layers.append(_Layer(name or "(root)", module, params))
        self._root = root
        self._params = [param for layer in self._layers for param in layer.params]
        self._owners = [index for index, layer in enumerate(self._layers) for _ in layer.params]
        for layer in self._layers:
            layer.order_hook = self._order_hook(layer.name)
        relus: list[tuple[nn.Module, _ForwardHook]] = [
            (module, self._relu_hook(name or "(root)"))
            for name, module in root.named_modules()
            if isinstance(module, _RELUS)
        ]
        self._seen = self._next_event = model.global_step
        hooks = self.activations and model.fit_config.get("mode", "eager") != "graph"
        if model.fit_config.get("strategy") == "fsdp":  # sharded parameters: per-layer norms would be per shard
            logger.info("the gradient doctor checks only the loss under strategy='fsdp'")
            self._layers, relus, hooks, self._params, self._owners = [], [], False, [], []
        names = [layer.name for layer in self._layers]  # none under fsdp: no ratios to choose from
        self._ratio_layers = frozenset(choose_layers(names, self.record_layers) if names else ())
        self._watch.attach(self._layers, relus, enabled=hooks)

    def on_epoch_start(self, model: TrainState, epoch: int) -> None:
        if not self._record_checked:  # every on_fit_start ran: a tracking callback has opened its run by now
            self._record_checked = True
            if getattr(model, "run_id", None) is not None and is_rank_zero():
                from .tracking import tracked_run  # imported by the tracking callback already; untracked: no store

                run = tracked_run(model)
                self._record = None if run is None else DoctorRecord(run)
            self._save()  # an empty list says the doctor is watching; after a resume, what it found before
        # Hooks for the first look go in here rather than in on_fit_start, after every callback's on_fit_start ran,
        # so that an averaging callback's deep copy of the module never carries them.
        if self._watch.enabled and not self._watch.installed and self._is_look(model.global_step):
            self._install_hooks()

    def on_before_optimizer_step(self, model: TrainState, step: int) -> None:
        if step % self.every and step not in self._early:
            return
        self._look(model, step)
        if self._unsaved:
            self._save()

    def on_train_batch_end(self, model: TrainState, step: int, loss: torch.Tensor) -> None:
        self._losses.append(loss)
        self._loss_steps.append(self._seen)  # the batch ran on the weights after this many steps
        self._seen = step
        if step < self._next_event:
            return
        if self._updates.pending and step > self._updates.step:
            self._after_look(model)
            if self._unsaved:
                self._save()
        if self._watch.enabled and not self._watch.installed and self._is_look(step):
            self._install_hooks()
        self._next_event = self._next_look(step + 1)

    def on_fit_end(self, model: TrainState) -> None:
        self._watch.remove()
        self._updates.clear()
        self._check_losses(model)
        self._save()  # also after a crash: the findings that explain it
        self._record = None

    # ------------------------------------------------------------------ sampling
    def _is_look(self, step: int) -> bool:
        return step % self.every == 0 or step in self._early

    def _next_look(self, step: int) -> int:
        candidates = [s for s in self._early if s >= step]
        return min([-(-step // self.every) * self.every, *candidates])

    # ------------------------------------------------------------------ forward hooks (steps of a look only)
    # ActivationWatch does the work; these stay so a subclass can wrap them (benchmarks/doctor_overhead.py times them).
    def _install_hooks(self) -> None:
        self._watch.install()

    def _order_hook(self, name: str) -> _ForwardHook:
        return self._watch.order_hook(name)

    def _relu_hook(self, name: str) -> _ForwardHook:
        return self._watch.relu_hook(name)

    # ------------------------------------------------------------------ a look
    def _look(self, model: TrainState, step: int) -> None:
        self._watch.remove()
        self._next_event = step + 1
        weights, owners = self._params, self._owners
        maybe = [param.grad for param in weights]
        if any(grad is None or grad.is_sparse for grad in maybe):  # unused parameters, sparse embeddings
            present = [i for i, grad in enumerate(maybe) if grad is not None]
            weights, owners = [weights[i] for i in present], [owners[i] for i in present]
            maybe = [grad.coalesce().values() if grad.is_sparse else grad for grad in maybe if grad is not None]
        grads = cast(list[torch.Tensor], maybe)
        if not grads:
            return
        if self._first_look is None:
            self._first_look = step
        with torch.no_grad():
            norms = torch.stack(torch._foreach_norm([*grads, *weights])).tolist()  # one transfer for all of them
        self._updates.start(weights, owners, step)
        grad_sq: dict[int, float] = {}
        weight_sq: dict[int, float] = {}
        for owner, grad_norm, weight_norm in zip(owners, norms[: len(owners)], norms[len(owners) :], strict=True):
            grad_sq[owner] = grad_sq.get(owner, 0.0) + grad_norm**2
            weight_sq[owner] = weight_sq.get(owner, 0.0) + weight_norm**2
        layer_norms = {index: math.sqrt(value) for index, value in grad_sq.items()}
        weight_norms = self._weight_norms = {index: math.sqrt(value) for index, value in weight_sq.items()}
        total = math.sqrt(sum(grad_sq.values()))
        self.stats = {
            "step": step,
            "total_grad_norm": total,
            "grad_norms": {self._layers[index].name: norm for index, norm in layer_norms.items()},
            "weight_norms": {self._layers[index].name: norm for index, norm in weight_norms.items()},
            "update_ratios": self._last_update_ratios,
        }
        if self._check_nonfinite(model, step, layer_norms, weight_norms):
            return
        self._pending_total = total  # judged after the step, beside the loss of this batch
        self._check_vanishing(model, step, layer_norms)
        self._check_dead(model, step)

    def _after_look(self, model: TrainState) -> None:
        """After the step of a look: its update/weight ratios, and whether its gradient norm was exploding."""
        ratios = self._updates.finish(self._weight_norms)
        self.stats["update_ratios"] = self._last_update_ratios = {self._layers[i].name: r for i, r in ratios.items()}
        if self._record is not None and self._ratio_layers:
            chosen = {self._layers[i].name: r for i, r in ratios.items() if i in self._ratio_layers}
            # at the step count after that update: the x of the batch loss of the same batch
            self._record.log_ratios(chosen, step=self._updates.step + 1, epoch=model.epoch)
        self._check_losses(model)  # includes the loss of the look's batch, the newest in the window
        total, self._pending_total = self._pending_total, None
        if total is None:
            return
        losses = list(self._loss_window)
        rising = len(losses) > 1 and losses[-1] >= statistics.median(losses[:-1])
        if not self._check_exploding(model, self._updates.step, total, rising):
            self._healthy_norms.append(total)

    # ------------------------------------------------------------------ checks
    def _check_nonfinite(
        self, model: TrainState, step: int, layer_norms: dict[int, float], weight_norms: dict[int, float]
    ) -> bool:
        bad = [index for index, norm in layer_norms.items() if not math.isfinite(norm)]
        if not bad:
            self._nonfinite_streak = 0
            return False
        self._nonfinite_streak += 1
        if model.precision.scaler is not None and self._nonfinite_streak < 3:
            return True  # loss scaling overflows now and then by design; the scaler skips the step
        ranks = self._watch.forward_ranks()
        bad.sort(key=lambda index: ranks[self._layers[index].name])
        bad_weights = [self._layers[index].name for index, norm in weight_norms.items() if not math.isfinite(norm)]
        if bad_weights and self._reported_nonfinite():
            return True  # the consequence of a source already reported: NaN weights spread to every layer
        layers = [self._layers[index] for index in bad]
        every_layer = len(bad) == len(layer_norms)
        remedies = self._remedies(model)
        finding = _nonfinite_gradient_finding(step, layers, layer_norms[bad[-1]], every_layer, bad_weights, remedies)
        self._report(model, f"nonfinite:{layers[-1].name}", finding)
        return True

    def _check_losses(self, model: TrainState) -> None:
        if not self._losses:
            return
        values = torch.stack(self._losses).float().cpu().tolist()
        steps, self._losses, self._loss_steps = self._loss_steps, [], []
        window = self._loss_window
        median = statistics.median(window) if len(window) >= 10 else None
        spikes: list[tuple[int, float]] = []
        for step, value in zip(steps, values, strict=True):
            if not math.isfinite(value):
                self._report_nonfinite_loss(model, step, value)
                continue
            if (
                median is not None
                and self._initial_loss is not None
                and value > self.spike_factor * median
                and value > self._initial_loss
            ):
                spikes.append((step, value))
            window.append(value)
            if self._initial_loss is None and len(window) == 10:
                self._initial_loss = statistics.median(window)
        if not spikes or median is None or self._initial_loss is None:
            return
        step, value = max(spikes, key=lambda item: item[1])
        finding = _loss_spike_finding(
            step, value, median, len(window), self._initial_loss, len(spikes), self._remedies(model)
        )
        self._report(model, "loss_spike", finding)

    def _report_nonfinite_loss(self, model: TrainState, step: int, value: float) -> None:
        if self._reported_nonfinite():
            return  # already reported at its source (or as an earlier non-finite loss)
        with torch.no_grad():
            params = [p for layer in self._layers for p in layer.params]
            norms = torch.stack(torch._foreach_norm(params)).float().cpu().tolist() if params else []
        bad, position = [], 0
        for layer in self._layers:
            if not all(math.isfinite(n) for n in norms[position : position + len(layer.params)]):
                bad.append(layer.name)
            position += len(layer.params)
        self._report(model, "nonfinite:loss", _nonfinite_loss_finding(step, value, bad, self._remedies(model)))

    def _check_exploding(self, model: TrainState, step: int, total: float, rising: bool) -> bool:
        history = self._healthy_norms
        if not history:
            return False
        median, top = statistics.median(history), max(history)
        # Gradients also grow while a network wakes up from a small initialisation; then the loss is falling.
        if not (total > self.explode_factor * median and total > top and rising):
            return False
        largest = sorted(((norm, name) for name, norm in self.stats["grad_norms"].items()), reverse=True)[:3]
        ratios, remedies = self._last_update_ratios, self._remedies(model)
        finding = _exploding_finding(step, total, median, top, len(history), largest, ratios, remedies)
        self._report(model, "exploding", finding)
        return True

    def _check_vanishing(self, model: TrainState, step: int, layer_norms: dict[int, float]) -> None:
        positive = {index: norm for index, norm in layer_norms.items() if norm > 0}  # exact zeros: dead units
        top = max(positive.values(), default=0.0)
        low = {self._layers[index].name for index, norm in positive.items() if norm < self.vanish_ratio * top}
        if self._vanishing is not None and low & self._vanishing:
            self._vanishing, self._vanishing_streak = low & self._vanishing, self._vanishing_streak + 1
        else:
            self._vanishing, self._vanishing_streak = (low or None), (1 if low else 0)
        if self._vanishing_streak < self.patience or self._vanishing is None:
            return
        ranks = self._watch.forward_ranks()
        names = sorted(self._vanishing, key=lambda name: ranks[name])
        norms = self.stats["grad_norms"]
        last = max(norms, key=lambda name: ranks[name])
        finding = _vanishing_finding(
            step, names, norms, top, last, self.vanish_ratio, self._vanishing_streak, self._root
        )
        self._report(model, "vanishing", finding)

    def _check_dead(self, model: TrainState, step: int) -> None:
        found = self._watch.check_dead(
            step,
            dead_fraction=self.dead_fraction,
            patience=self.patience,
            first_look=self._first_look,
            remedies=lambda: self._remedies(model),
        )
        for name, finding in found:
            self._report(model, f"dead_relu:{name}", finding)

    def _reported_nonfinite(self) -> bool:
        return any(key.startswith("nonfinite:") for key in self._reported)

    # ------------------------------------------------------------------ remedies
    def _remedies(self, model: TrainState) -> _Remedies:
        """The remedies that quote this run: its healthy gradient norms, learning rate, length and precision."""
        return _run_remedies(
            healthy_norms=self._healthy_norms,
            clip_percentile=self.clip_percentile,
            lr=float(model.optimizer.param_groups[0]["lr"]),
            total_steps=max(model.steps_per_epoch * int(model.fit_config.get("epochs", 1)), 1),
            precision=model.precision.name,
            root=self._root,
        )

    # ------------------------------------------------------------------ reporting and state
    def _report(self, model: TrainState, key: str, finding: Finding) -> None:
        if key in self._reported:
            return
        self._reported.add(key)
        self.findings.append(finding)
        self._unsaved = True  # stored with the run after this look (one write for all the look's findings)
        if model.history is not None:
            model.history.diagnostics.append(finding)
        if not is_rank_zero():
            return
        text = str(finding)
        show = self.print_findings if self.print_findings is not None else bool(model.fit_config.get("verbose", 1))
        if show:
            # A finding belongs in the progress output the user is watching, beside the ProgressBar's epoch lines
            # (inside a live rich bar, rich moves printed lines above the bar).
            print(text, flush=True)
        # Only to handlers the user configured: with none, logging's last resort would print it to stderr, a second
        # time when shown and against print_findings=False when not.
        if logger.hasHandlers():
            logger.warning(text)

    def _save(self) -> None:
        """Store the findings with the tracked run, if there is one (the flag stays up until a write succeeds)."""
        if self._record is None or self._record.save_findings(self.findings):
            self._unsaved = False

    def state_dict(self) -> dict[str, Any]:
        return {
            "reported": sorted(self._reported),
            "healthy_norms": list(self._healthy_norms),
            "loss_window": list(self._loss_window),
            "initial_loss": self._initial_loss,
            "findings": [finding.to_dict() for finding in self.findings],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reported = set(state["reported"])
        self._healthy_norms = deque((float(v) for v in state["healthy_norms"]), maxlen=256)
        self._loss_window = deque((float(v) for v in state["loss_window"]), maxlen=128)
        self._initial_loss = None if state["initial_loss"] is None else float(state["initial_loss"])
        self.findings = [Finding(**finding) for finding in state["findings"]]
        self._loaded = True
