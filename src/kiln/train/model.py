"""kiln.Model: wrap a plain torch.nn.Module and train, evaluate and predict with one readable loop."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..data.arrays import ArrayDataset, as_tensor
from ..data.loader import Loader, make_loader
from ..errors import ConfigError, DataError, ShapeError
from .callbacks import Callback, History
from .loop import FitLoop, FitOptions, call, split_batch
from .losses import Loss, resolve_loss
from .metrics import MetricSet
from .optim import needs_closure, resolve_optimizers, sparse_gradients
from .precision import Precision
from .progress import ProgressBar
from .state import Schedule
from .step_methods import StepMethods
from .steps import StepControl, build_schedules, check_step_options, evaluate_steps
from .strategy import convert_sync_batchnorm, fully_shard_module, is_sharded, resolve_strategy, wrap

__all__ = ["Model", "default_device", "seed_everything"]

logger = logging.getLogger(__name__)


def default_device() -> torch.device:
    """CUDA if available, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (all devices') random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _first_input(data: Any) -> Any:
    """One row of inputs from ``data`` (shape (1, ...)), or None when it cannot be taken cheaply."""
    try:
        if isinstance(data, tuple) and len(data) == 2:
            data = ArrayDataset(*data)
        if isinstance(data, ArrayDataset):
            x, _ = data.take(slice(0, 1))
            return x
        if hasattr(data, "__getitem__") and hasattr(data, "__len__") and len(data):
            x, _ = split_batch(data[0])
            return tuple(t.unsqueeze(0) for t in x) if isinstance(x, tuple | list) else torch.as_tensor(x)[None]
    except Exception:
        return None
    return None


def _run_name(module: torch.nn.Module) -> str:
    return type(module).__name__.lower()


class Model(StepMethods):
    """A torch.nn.Module with a loss, an optimizer and metrics: ``fit``, ``evaluate``, ``predict``.

    ``loss``, ``optimizer`` and ``metrics`` take names or objects: torch losses and optimizers, torchmetrics
    metrics. The module moves to ``device`` ("auto": CUDA, then MPS, then CPU) when the Model is built. During
    ``fit`` the Model is what every callback hook receives, typed as :class:`kiln.train.state.TrainState`.

    ``optimizer`` may also be a dict of several optimizers by name, each training the parameters of a submodule:
    ``{"generator": ("adam", {"lr": 2e-4, "params": "generator"}), "discriminator": (...)}`` (or return that dict
    from a ``configure_optimizers()`` method). A subclass that overrides ``train_step`` (and ``eval_step``) writes
    its own step with ``self.backward(loss)`` and ``self.step(name)``; fit keeps the rest (docs/custom_step.md).

    Example:
        >>> model = kiln.Model(net, loss="cross_entropy", optimizer="adamw", lr=1e-3, metrics=["accuracy"])
        >>> history = model.fit(train, epochs=10, batch_size=64, validation=val)
        >>> model.evaluate(val)
        {'loss': 0.08, 'accuracy': 0.97}
        >>> model.predict(x_new).argmax(-1)
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        loss: Any = None,
        optimizer: Any = "adamw",
        lr: float | None = None,
        optimizer_options: dict[str, Any] | None = None,
        metrics: Sequence[Any] | dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        kernels: str = "auto",
        store: Any = None,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"Model wraps a torch.nn.Module; got {type(module).__name__}.")
        self.device = default_device() if device == "auto" else torch.device(device)
        self.module = module.to(self.device)
        if kernels not in ("auto", "on", "off"):
            raise ConfigError(f"kernels must be 'auto', 'on' or 'off', got {kernels!r}.")
        self.loss = None if loss is None else resolve_loss(loss)
        if kernels == "on" or (kernels == "auto" and self.device.type == "cuda"):
            self._use_fused_kernels(loss, force=kernels == "on")
        if type(self).configure_optimizers is not Model.configure_optimizers:
            optimizer = self.configure_optimizers()
        self._optimizer_spec = (optimizer, lr, optimizer_options or {})
        self._optimizers = resolve_optimizers(optimizer, self.module, lr=lr, options=optimizer_options or {},
                                              allow_fused=not sparse_gradients(module))
        self.optimizer = next(iter(self._optimizers.values()))  # the first; the only one in most models
        self.metrics = MetricSet(metrics)
        self.history: History | None = None
        self.fit_config: dict[str, Any] = {}
        self.fit_status = "new"
        self.stop_training = False
        self.epoch = 0
        self.global_step = 0
        self.steps_per_epoch = 0
        self.precision = Precision("fp32", self.device)
        self.schedule: Schedule | None = None  # the learning-rate schedule of the current (or last) fit
        self._schedules: dict[str, Schedule] = {}  # every optimizer's, by the optimizer's name
        self.carry: dict[str, Any] = {}  # what a train_step keeps between batches: detached after each, reset per epoch
        self._control: StepControl | None = None  # during fit, what backward() and step() use
        self._forward: Any = None  # during fit, what the built-in train_step calls forward on
        self.averaged: torch.nn.Module | None = None  # set by EMA/SWA: evaluate, predict and export use it
        self.store = store
        self.run_id: str | None = None  # set by run tracking
        self.data_fingerprint: str | None = None
        self.train_data: Any = None
        self.train_loader: Loader | None = None
        self.example_input: Any = None  # one input batch of the last fit: fixes the signature on register
        self.weights_epoch: int | None = None  # the epoch whose end the weights are from, when not the last one
        self._graph: Any = None  # the torch.compile wrapper of module, built on first use

    @property
    def optimizers(self) -> Mapping[str, torch.optim.Optimizer]:
        """Every optimizer by name: ``{"default": optimizer}`` for one, else the names of ``optimizer={...}``."""
        return self._optimizers

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """The learning-rate schedule of each optimizer by the optimizer's name; empty without ``lr_schedule``."""
        return self._schedules

    def _use_fused_kernels(self, loss: Any, *, force: bool) -> None:
        """Swap norms and the cross-entropy loss for kiln's fused kernels where they are faster (CUDA + Triton)."""
        from .. import kernels

        kernels.apply(self.module, device=self.device, force=force)
        fused = kernels.fused_loss(loss, self.device, force=force) if loss is not None else None
        if fused is not None:
            self.loss = Loss(fused, "cross_entropy")  # keeps the first-batch checks and (B, T, C) handling

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.module.parameters())
        return f"Model({type(self.module).__name__}, params={params:,}, device={self.device})"

    # ------------------------------------------------------------------ training
    def fit(
        self,
        data: Any,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        validation: Any = None,
        callbacks: Sequence[Callback] = (),
        precision: str = "fp32",
        mode: str = "eager",
        clip_grad_norm: float | None = None,
        accumulate: int = 1,
        lr_schedule: Any = None,
        seed: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int | None = None,
        on_nonfinite: str = "stop",
        checkpoint: str | Path | None = None,
        checkpoint_every: int | str = "epoch",
        keep_checkpoints: int = 3,
        resume: str | Path | None = None,
        strategy: str = "auto",
        sync_batchnorm: bool = False,
        run: str | None = None,
        doctor: bool | Callback = True,
        verbose: int | str = "auto",
        profile: Any = False,
    ) -> History:
        """Train for ``epochs`` over ``data`` and return the History of per-epoch logs.

        ``data`` is an ArrayDataset, an ``(x, y)`` tuple of arrays, a torch Dataset of ``(x, y)`` items or an
        iterable of ``(x, y)`` batches. ``batch_size`` is per process (per rank under torchrun). ``precision`` is
        "fp32", "bf16" or "fp16" (with loss scaling); ``mode="graph"`` trains through ``torch.compile``.
        ``accumulate`` sums gradients over that many batches per optimizer step; ``clip_grad_norm`` clips the
        global gradient norm. ``lr_schedule`` is a kind name, a ``kiln.LRSchedule`` or a torch scheduler.
        ``on_nonfinite``: "stop" raises NonFiniteLossError naming the epoch and batch; "skip" drops such batches
        (built-in step only). With several optimizers, ``lr_schedule`` is one spec for each or a dict by name.
        ``checkpoint`` is a directory for exact-resume checkpoints, written every ``checkpoint_every`` optimizer
        steps (or at each epoch's end with "epoch"), keeping the newest ``keep_checkpoints``. ``resume`` is a
        checkpoint file or "latest" (the newest in ``checkpoint``; none there yet means a fresh start), so the same
        script both starts and continues a run. ``strategy``: "auto" (DDP when launched by torchrun with several
        ranks), "ddp", "fsdp" (FSDP2 ``fully_shard``) or "none"; ``sync_batchnorm`` computes BatchNorm statistics
        over all ranks' batches. ``run`` names the run this fit is recorded as in the Model's store (or the
        default store, ``$KILN_HOME`` or ``./.kiln``). ``doctor`` runs the gradient doctor (True: the default
        ``kiln.GradientDoctor()``; or pass a configured one; False turns it off). ``verbose``: "auto" (a live bar
        on a terminal, a line per epoch otherwise), 1, or 0 for silence. ``profile``: True or a
        ``kiln.ProfileOptions(steps=20, skip_first=5)`` runs torch.profiler over that window of steps and prints time
        per step by phase, the top operators and peak memory, keeping the Chrome trace (see kiln.train.profiler).

        Example:
            >>> history = model.fit(train, epochs=10, batch_size=64, validation=val, lr_schedule="cosine", seed=0)
            >>> model.fit(train, epochs=10, checkpoint="ckpt", checkpoint_every=100, resume="latest")
        """
        custom = self._custom_train_step()
        if self.loss is None and not custom:
            raise ConfigError("fit needs a loss: build the Model with loss='cross_entropy' (or another name, "
                              "a torch loss module or a function), or override train_step.")
        for name, value in (("epochs", epochs), ("accumulate", accumulate)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}.")
        if mode not in ("eager", "graph"):
            raise ConfigError(f"mode must be 'eager' or 'graph' (torch.compile), got {mode!r}.")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ConfigError(f"clip_grad_norm must be a positive number or None, got {clip_grad_norm!r}.")
        if on_nonfinite not in ("stop", "skip"):
            raise ConfigError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}.")
        if checkpoint_every != "epoch" and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ConfigError(f"checkpoint_every must be 'epoch' or a positive number of steps, got "
                              f"{checkpoint_every!r}.")
        stepping = custom or len(self._optimizers) > 1 or needs_closure(self.optimizer)
        if stepping:
            check_step_options(self, custom, on_nonfinite=on_nonfinite, mode=mode, strategy=strategy,
                               accumulate=accumulate, precision=precision)
        if resume is not None and resume != "latest" and checkpoint is None:
            checkpoint = Path(resume).parent
        if seed is not None:
            seed_everything(seed)
        distributed.init()
        strategy = resolve_strategy(strategy)
        rank, world = (distributed.rank(), distributed.world_size()) if strategy != "none" else (0, 1)
        data_seed = seed if seed is not None else self._shared_seed()
        loader = make_loader(data, batch_size, shuffle=shuffle, seed=data_seed, drop_last=drop_last,
                             num_workers=num_workers, pin_memory=self.device.type == "cuda", rank=rank, world=world)
        self.precision = Precision(precision, self.device)
        forward = self._prepare_strategy(strategy, sync_batchnorm, mode, stepping=stepping)
        if custom and validation is not None and type(self).eval_step is Model.eval_step and self.loss is None:
            raise ConfigError("fit(validation=...) with a custom train_step and no loss needs an eval_step returning "
                              "what to report, e.g. {'mse': F.mse_loss(self.module(x), y)}.")
        val_loader = None if validation is None else self._eval_loader(validation, batch_size)  # after sharding
        self.steps_per_epoch = len(loader)
        optimizer_steps = -(-self.steps_per_epoch // accumulate) * epochs
        schedules = build_schedules(lr_schedule, self._optimizers, total_steps=optimizer_steps,
                                    steps_per_epoch=max(self.steps_per_epoch // accumulate, 1))
        several = len(self._optimizers) > 1
        self.fit_config = {
            "epochs": epochs, "batch_size": batch_size,
            "optimizer": {k: type(o).__name__ for k, o in self._optimizers.items()} if several
            else type(self.optimizer).__name__,
            "lr": {k: o.param_groups[0]["lr"] for k, o in self._optimizers.items()} if several
            else self.optimizer.param_groups[0]["lr"], "precision": self.precision.name, "mode": mode,
            "clip_grad_norm": clip_grad_norm, "accumulate": accumulate, "seed": seed,
            "lr_schedule": repr(lr_schedule) if lr_schedule is not None else None, "device": str(self.device),
            "strategy": strategy, "world_size": world, "global_batch_size": batch_size * world * accumulate,
            "verbose": verbose,
        }
        if world > 1 and distributed.is_rank_zero():
            logger.info("training on %d ranks (%s): batch_size %d per rank, global batch %d", world, strategy,
                        batch_size, batch_size * world * accumulate)
        self.history, self.weights_epoch = History(), None
        self._schedules, self.schedule = schedules, next(iter(schedules.values()), None)
        self.train_data, self.train_loader, self.example_input = data, loader, _first_input(data)
        show = verbose == "auto" or bool(verbose)
        all_callbacks: list[Callback] = [self.history, *([ProgressBar()] if show else []), *callbacks]
        if doctor is not False:
            from .doctor import GradientDoctor

            if isinstance(doctor, Callback):
                all_callbacks.append(doctor)
            elif not any(isinstance(cb, GradientDoctor) for cb in callbacks):
                all_callbacks.append(GradientDoctor())
        if profile is not False:
            from .profiler import Profiler

            all_callbacks.append(Profiler.from_option(profile, store=self.store))  # before tracking's on_fit_end
        if run is not None or self.store is not None:
            from .tracking import TrackingCallback

            all_callbacks.append(TrackingCallback(self.store, run or _run_name(self.module)))
        options = FitOptions(
            epochs=epochs, batch_size=batch_size, clip_grad_norm=clip_grad_norm, accumulate=accumulate,
            on_nonfinite=on_nonfinite, data_seed=data_seed, checkpoint=None if checkpoint is None else Path(checkpoint),
            checkpoint_every=None if checkpoint_every == "epoch" else int(checkpoint_every),
            keep_checkpoints=keep_checkpoints,
        )
        control = None
        if stepping:
            control = StepControl(self, optimizers=self._optimizers, schedules=schedules, precision=self.precision,
                                  accumulate=accumulate, clip_grad_norm=clip_grad_norm, callbacks=all_callbacks,
                                  sync=strategy == "ddp")
        loop = FitLoop(self, loader, val_loader, forward, schedules, all_callbacks, options, control)
        self.stop_training, self.fit_status, self.epoch, self.global_step = False, "running", 0, 0
        self.carry = {}
        self._control, self._forward = control, forward
        try:
            if resume is not None:
                loop.resume(resume)
            loop.run()
        finally:
            self._control = None
        return self.history

    def _to_device(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(self.device, non_blocking=True)
        if isinstance(value, tuple | list):
            return type(value)(self._to_device(v) for v in value)
        return value

    def _graph_module(self) -> Any:
        if self._graph is None:
            self._graph = torch.compile(self.module)
        return self._graph

    def _shared_seed(self) -> int:
        """A random data seed that every rank agrees on (rank 0's, broadcast)."""
        seed = torch.randint(0, 2**31 - 1, (1,))
        if distributed.is_distributed():
            torch.distributed.broadcast(seed, src=0)
        return int(seed.item())

    def _prepare_strategy(self, strategy: str, sync_batchnorm: bool, mode: str, *, stepping: bool = False) -> Any:
        """Wrap or shard the module for ``strategy``; returns what the loop calls forward on."""
        if sync_batchnorm and strategy != "none":
            convert_sync_batchnorm(self.module, self.device)
        if stepping and strategy == "ddp":
            # The step path averages gradients itself before each optimizer step (kiln.train.steps), so that a
            # train_step may call any submodule; like DDP, every rank starts from rank 0's weights.
            for tensor in [*self.module.parameters(), *self.module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)
            return self._graph_module() if mode == "graph" else self.module
        if strategy == "fsdp" and not is_sharded(self.module):
            spec, lr, options = self._optimizer_spec
            entries = spec.values() if isinstance(spec, Mapping) else [spec]
            if any(isinstance(entry, torch.optim.Optimizer) for entry in entries):
                raise ConfigError("strategy='fsdp' rebuilds the optimizer on the sharded parameters: pass the "
                                  "optimizer by name or class (with lr= and optimizer_options=), not as an object.")
            fully_shard_module(self.module, param_dtype=self.precision.dtype)
            self._optimizers = resolve_optimizers(spec, self.module, lr=lr, options=options,
                                                  allow_fused=not sparse_gradients(self.module))
            self.optimizer = next(iter(self._optimizers.values()))
            self.precision = Precision(self.precision.name, self.device, autocast=False)
        if strategy == "ddp":
            wrapped = wrap(self.module, strategy, self.device)
            return torch.compile(wrapped) if mode == "graph" else wrapped
        return self._graph_module() if mode == "graph" else self.module

    # ------------------------------------------------------------------ inference
    @property
    def inference_module(self) -> torch.nn.Module:
        """The module evaluate, predict and export run: the averaged weights when EMA/SWA is on."""
        return self.averaged if self.averaged is not None else self.module

    def _shards_evaluation(self) -> bool:
        """Ranks split evaluation data, except under FSDP, whose forward is a collective every rank must join."""
        return distributed.is_distributed() and not is_sharded(self.module)

    def _eval_loader(self, data: Any, batch_size: int, *, shard: bool = True) -> Loader:
        shard = shard and self._shards_evaluation()
        rank, world = (distributed.rank(), distributed.world_size()) if shard else (0, 1)
        return make_loader(data, batch_size, shuffle=False, num_workers=None, pin_memory=self.device.type == "cuda",
                           rank=rank, world=world, even=False)

    def evaluate(self, data: Any, *, batch_size: int = 256) -> dict[str, float]:
        """Loss and metrics over ``data`` (same forms as ``fit``), in eval mode without gradients.

        Example:
            >>> model.evaluate(test)
            {'loss': 0.081, 'accuracy': 0.975}
        """
        return self._evaluate(self._eval_loader(data, batch_size))

    @torch.inference_mode()
    def _evaluate(self, loader: Loader) -> dict[str, float]:
        if type(self).eval_step is not Model.eval_step:
            return evaluate_steps(self, loader, shard=self._shards_evaluation())
        module = self.inference_module
        module.eval()
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for batch in loader.epoch(0):
            x, y = split_batch(batch)
            x, y = self._to_device(x), self._to_device(y)
            with self.precision.autocast():
                output = call(module, x)
            if y is None:
                raise DataError("evaluate needs targets: the data has inputs only. Use predict for inputs alone.")
            n = len(y)
            if self.loss is not None:
                total += self.loss(output, y).double() * n
            if self.metrics:
                self.metrics.update(output, y)
            count += n
        if self._shards_evaluation():  # every rank evaluated its share of the rows
            sums = distributed.all_reduce_sum(torch.stack([total, torch.tensor(float(count), dtype=torch.float64,
                                                                                device=self.device)]))
            total, count = sums[0], int(sums[1])
        results = {"loss": float(total) / max(count, 1)} if self.loss is not None else {}
        results.update(self.metrics.compute())
        return results

    @torch.inference_mode()
    def predict(self, data: Any, *, batch_size: int = 256) -> Any:
        """Model outputs for ``data`` (a tensor, numpy array, dataset or batches), concatenated on the CPU.

        Example:
            >>> probabilities = model.predict(x_test).softmax(-1)   # (N, C)
        """
        if isinstance(data, torch.Tensor | np.ndarray):
            data = ArrayDataset(as_tensor(data, name="x"))
        loader = self._eval_loader(data, batch_size, shard=False)  # every rank predicts all of data
        module = self.inference_module
        module.eval()
        outputs: list[Any] = []
        for batch in loader.epoch(0):
            x, _ = split_batch(batch)
            with self.precision.autocast():
                outputs.append(call(module, self._to_device(x)))
        if not outputs:
            raise DataError("predict got no data.")
        if isinstance(outputs[0], torch.Tensor):
            return torch.cat([o.float().cpu() if o.is_floating_point() else o.cpu() for o in outputs])
        if isinstance(outputs[0], tuple | list):
            return type(outputs[0])(torch.cat([o[i].cpu() for o in outputs]) for i in range(len(outputs[0])))
        raise ShapeError(f"predict cannot concatenate model outputs of type {type(outputs[0]).__name__}.")

    # ------------------------------------------------------------------ tuning
    def find_lr(self, data: Any, *, start: float = 1e-7, end: float = 1.0, steps: int = 100, **options: Any) -> Any:
        """The learning-rate range test: returns ``.lrs``, ``.losses`` and ``.suggestion``; the Model is unchanged.

        ``options`` (batch_size, smoothing, diverge, seed, run, plot) are those of :func:`kiln.train.lr_finder.find_lr`.

        Example:
            >>> result = model.find_lr(train, start=1e-7, end=1, steps=100, plot="lr_find.png")
            >>> model.optimizer.param_groups[0]["lr"] = result.suggestion
        """
        from .lr_finder import find_lr

        return find_lr(self, data, start=start, end=end, steps=steps, **options)

    # ------------------------------------------------------------------ registry
    def register(self, name: str, *, store: Any = None, example_input: Any = None, **options: Any) -> Any:
        """Publish the trained module (averaged weights when EMA/SWA is on) as the next version of ``name``.

        The package holds safetensors weights, an ONNX graph where the module exports, the signature fixed by
        ``example_input`` (default: one input row of the last fit's data) and lineage to the run. ``options`` go
        to :func:`kiln.export.register_module` (factory, config, preprocessing, description, tags, ...).

        Example:
            >>> model.fit(train, epochs=10, validation=val, run="digits-cnn")
            >>> version = model.register("digits", description="small CNN")
        """
        from ..export import register_module

        example = example_input if example_input is not None else self.example_input
        if example is None:
            raise ConfigError("register needs example_input= (one batch of inputs) when fit has not run on data "
                              "kiln can take a row from.")
        metrics = options.pop("metrics", None)
        if metrics is None and self.history is not None:
            logs, epochs = self.history.history, self.history.epochs
            if self.weights_epoch in epochs:  # the weights are an earlier epoch's (EarlyStopping(restore_best=True))
                row = epochs.index(self.weights_epoch)
                metrics = {k: v[row] for k, v in logs.items() if k != "lr" and len(v) == len(epochs)}
            else:
                metrics = {k: v[-1] for k, v in logs.items() if k != "lr" and v}
        return register_module(self.inference_module, name, store=store if store is not None else self.store,
                               example_input=example, metrics=metrics, run_id=self.run_id,
                               data_fingerprint=self.data_fingerprint, **options)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(),
                "optimizers": {name: optimizer.state_dict() for name, optimizer in self._optimizers.items()},
                "precision": self.precision.state_dict(), "epoch": self.epoch, "global_step": self.global_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        saved = state["optimizers"] if "optimizers" in state else {next(iter(self._optimizers)): state["optimizer"]}
        for name, optimizer in self._optimizers.items():
            optimizer.load_state_dict(saved[name])
        self.precision.load_state_dict(state["precision"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])

