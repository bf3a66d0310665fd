"""Record a ``fit`` as a run in a kiln store: parameters, system info, sampled batch loss, epoch logs, status.

The per-step cost is a counter and, every ``every`` steps, keeping a reference to the (detached) loss tensor and
reading the monotonic clock: no ``.item()``, no device sync, no database write. Buffered losses are turned into
numbers with one ``stack`` and written in one transaction per ``flush_steps`` samples, once ``flush_seconds`` have
passed, and at every epoch end. Each of those writes is also the run's heartbeat, so a long epoch still tells the
store its run is alive (see :mod:`kiln.store.runs`). None of them waits for a database that cannot be reached (a
PostgreSQL store restarting): training goes on, the rows stay in memory and are written once it answers; only the
run's end waits for it.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..distributed import is_rank_zero
from ..errors import ConfigError, DataError
from ..store import Run, Store
from ..store.names import check_name
from ..store.runs import STATUSES
from .callbacks import Callback

if TYPE_CHECKING:
    from .state import TrainState

__all__ = ["TrackingCallback", "fingerprint", "tracked_run"]

# The runs the TrackingCallbacks of this process are recording, by id: between a tracked fit's on_fit_start and
# on_fit_end, on rank zero. Other callbacks reach the run through tracked_run(model) rather than knowing the tracker.
_RECORDING: dict[str, Run] = {}


def tracked_run(model: TrainState) -> Run | None:
    """The run a :class:`TrackingCallback` is recording this fit into; None when the fit is not tracked (or off rank 0).

    How another callback adds to a tracked fit's run without holding the tracking callback: the gradient doctor
    stores its findings and update/weight ratios through it. Valid from the first ``on_epoch_start`` (every
    ``on_fit_start`` has run by then) until the tracking callback's ``on_fit_end``.

    Example:
        >>> run = tracked_run(model)
        >>> if run is not None:
        ...     run.log({"my_metric": 1.0}, step=model.global_step)
    """
    run_id = getattr(model, "run_id", None)
    return None if run_id is None else _RECORDING.get(run_id)


def _hash_tensor(digest: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{tensor.dtype}:{tuple(tensor.shape)};".encode())
    if tensor.numel():
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)


def fingerprint(dataset: Any) -> str:
    """A SHA-256 that changes whenever the data does: ``"sha256:<hex>"``.

    In-memory datasets (an ArrayDataset, a tensor, or a tuple of tensors/arrays) hash every tensor's dtype,
    shape and bytes. File datasets (anything with ``files``/``paths``, a directory or a file path) hash the
    sorted relative paths with their sizes and modification times (cheap: contents are not read).

    Example:
        >>> fingerprint(ArrayDataset(x, y))
        'sha256:3f1c...'
    """
    digest = hashlib.sha256()
    tensors = _tensors_of(dataset)
    if tensors is not None:
        digest.update(b"kiln.tensors/1;")
        for tensor in tensors:
            _hash_tensor(digest, tensor)
        return f"sha256:{digest.hexdigest()}"
    files = _files_of(dataset)
    if files is None:
        raise ConfigError(
            f"cannot fingerprint a {type(dataset).__name__}: pass an ArrayDataset, tensors or arrays, a directory, "
            "or a dataset with a 'files' or 'paths' list."
        )
    digest.update(b"kiln.files/1;")
    root = os.path.commonpath([str(p) for p in files]) if files else ""
    for path in sorted(files):
        try:
            stat = path.stat()
        except OSError as error:
            raise DataError(f"fingerprint: cannot stat {path}: {error}.") from error
        digest.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _tensors_of(dataset: Any) -> list[torch.Tensor] | None:
    x = getattr(dataset, "x", None)
    if x is not None and hasattr(dataset, "take"):  # an ArrayDataset
        y = getattr(dataset, "y", None)
        return [*(x if isinstance(x, tuple) else (x,)), *(() if y is None else (y,))]
    items = dataset if isinstance(dataset, tuple | list) else (dataset,)
    if all(isinstance(item, torch.Tensor) or hasattr(item, "__array_interface__") for item in items):
        return [torch.as_tensor(item) for item in items]
    return None


def _files_of(dataset: Any) -> list[Path] | None:
    if isinstance(dataset, str | os.PathLike):
        root = Path(dataset)
        if root.is_dir():
            return [p for p in root.rglob("*") if p.is_file()]
        if root.is_file():
            return [root]
        raise DataError(f"fingerprint: {root} does not exist.")
    for attribute in ("files", "paths"):
        listed = getattr(dataset, attribute, None)
        if listed is not None:
            return [Path(p) for p in listed]
    return None


class TrackingCallback(Callback):
    """Record a ``fit`` into ``store`` as a run named ``run_name``; sets ``model.run_id`` when fit starts.

    Params are ``model.fit_config`` plus ``params``. The batch loss is sampled every ``every`` steps and written
    every ``flush_steps`` samples or ``flush_seconds``, whichever comes first (each write is the run's heartbeat);
    epoch logs (loss, val_*, lr) are recorded at each epoch's last step. The run ends "finished", "failed" or
    "killed" as ``model.fit_status`` says. Only rank zero records.

    Example:
        >>> tracking = TrackingCallback(Store(), "digits-mlp", params={"hidden": 128})
        >>> model.fit(train, epochs=5, callbacks=[tracking])
        >>> Store().run(model.run_id).latest["val_accuracy"]
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str] | None,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        data: Any = None,
        every: int = 10,
        flush_steps: int = 500,
        flush_seconds: float = 30.0,
    ) -> None:
        check_name(run_name, what="run name")
        if not isinstance(every, int) or every < 1 or not isinstance(flush_steps, int) or flush_steps < 1:
            raise ConfigError(f"every and flush_steps must be positive ints; got {every!r} and {flush_steps!r}.")
        seconds_ok = isinstance(flush_seconds, int | float) and not isinstance(flush_seconds, bool)
        if not seconds_ok or not 0 <= flush_seconds < math.inf:
            raise ConfigError(f"flush_seconds must be a finite number >= 0 (e.g. 30.0); got {flush_seconds!r}.")
        self._store_arg, self.run_name = store, run_name
        self.params, self.tags, self.data = dict(params or {}), dict(tags or {}), data
        self.every, self.flush_steps, self.flush_seconds = every, flush_steps, float(flush_seconds)
        self._flush_due = 0.0  # monotonic time of the next time-based write
        self.run: Run | None = None
        self._resume_id: str | None = None
        self._losses: list[torch.Tensor] = []
        self._steps: list[int] = []
        self._epoch = 0
        self._step = 0

    @property
    def store(self) -> Store:
        if not isinstance(self._store_arg, Store):
            self._store_arg = Store(self._store_arg)
        return self._store_arg

    def on_fit_start(self, model: TrainState) -> None:
        if not is_rank_zero():
            return
        data = self.data if self.data is not None else getattr(model, "train_data", None)
        data_fingerprint = getattr(model, "data_fingerprint", None)
        if data_fingerprint is None and data is not None:
            try:
                data_fingerprint = fingerprint(data)
            except (ConfigError, DataError):  # data kiln cannot fingerprint (a plain iterable): record none
                data_fingerprint = None
        params = {**getattr(model, "fit_config", {}), **self.params}
        if data_fingerprint is not None:
            params["data_fingerprint"] = data_fingerprint
            model.data_fingerprint = data_fingerprint
        if self._resume_id is not None:  # fit resumed from a checkpoint: keep logging into the same run
            self.run = self.store.resume_run(self._resume_id)
        else:
            self.run = self.store.start_run(self.run_name, params=params, tags=self.tags, system=_torch_info(model))
        model.run_id = self.run.id
        _RECORDING[self.run.id] = self.run
        self._losses, self._steps, self._step = [], [], 0
        self._flush_due = time.monotonic() + self.flush_seconds

    def on_epoch_start(self, model: TrainState, epoch: int) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, model: TrainState, step: int, loss: torch.Tensor) -> None:
        self._step = step
        if self.run is None or step % self.every:
            return
        self._losses.append(loss)
        self._steps.append(step)
        if len(self._losses) >= self.flush_steps:
            self._flush_losses()
        elif time.monotonic() >= self._flush_due:  # a long epoch: write now, which is also the run's heartbeat
            self._flush_losses()
            self.run.flush(wait=False)  # an unreachable store holds up no training step

    def _flush_losses(self) -> None:
        self._flush_due = time.monotonic() + self.flush_seconds
        if self.run is None or not self._losses:
            return
        values = torch.stack(self._losses).float().cpu().tolist()  # one sync for the whole buffer
        epoch = self._epoch
        self.run.log_rows(("batch_loss", step, value, epoch) for step, value in zip(self._steps, values, strict=True))
        self._losses, self._steps = [], []

    def on_epoch_end(self, model: TrainState, epoch: int, logs: dict[str, float]) -> None:
        if self.run is None:
            return
        self._flush_losses()
        step = max(self._step, int(getattr(model, "global_step", 0)))
        numbers = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
        self.run.log({**numbers, "epoch": float(epoch)}, step=step, epoch=epoch)
        self.run.flush(wait=False)

    def on_fit_end(self, model: TrainState) -> None:
        if self.run is None:
            return
        status = getattr(model, "fit_status", "finished")
        try:
            self._flush_losses()
        finally:
            _RECORDING.pop(self.run.id, None)
            self.run.finish(status if status in STATUSES[1:] else "failed")

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": None if self.run is None else self.run.id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_id = state.get("run_id")


def _torch_info(model: Any) -> dict[str, Any]:
    device = getattr(model, "device", None)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "device": str(device) if device is not None else "cpu",
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name()
    return info
