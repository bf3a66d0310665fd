"""``fit(profile=...)``: torch.profiler over a window of training steps, and the table people read first.

The window opens after ``skip_first`` batches (warm-up: allocator, caches, lazy modules) and covers ``steps``
batches. Inside it, kiln marks where each step's time goes with hooks that exist only during the window (forward
pre/post hooks on the module, a gradient hook on its output, the optimizers' step pre/post hooks), so every step is
split into data loading (from the previous batch's end to the forward), forward (and the loss), backward, optimizer
step and the rest (callbacks, schedule); torch.profiler records the operators and memory over the same window. At
its end the report is printed (time per step by phase, the top operators by self time, peak memory), the Chrome trace
is written (open it in https://ui.perfetto.dev or chrome://tracing) and, when the fit is tracked, stored as the run's
artifact ``profile_trace.json``. Outside the window the callback costs one integer comparison per batch; without
``profile`` it is not there at all.

On CUDA each mark synchronises the device (only inside the window), so that the phases hold the GPU's time rather
than the time to queue kernels.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..distributed import is_rank_zero
from ..errors import ConfigError, KilnError
from .callbacks import Callback

if TYPE_CHECKING:
    from .state import TrainState

__all__ = ["PHASES", "ProfileOptions", "ProfileReport", "Profiler"]

logger = logging.getLogger(__name__)

PHASES = ("data", "forward", "backward", "optimizer", "other")
ARTIFACT = "profile_trace.json"


@dataclass(frozen=True, kw_only=True)
class ProfileOptions:
    """Which steps to profile and where the Chrome trace goes.

    ``steps`` batches are profiled after ``skip_first`` batches. ``trace`` is the trace file to write (default:
    ``./kiln-profile-<time>.json`` when the fit is not tracked; a tracked fit keeps it as a run artifact only).
    ``top`` operators are listed; ``memory`` records allocations (peak memory).

    Example:
        >>> model.fit(train, epochs=1, profile=kiln.ProfileOptions(steps=20, skip_first=5))
    """

    steps: int = 20
    skip_first: int = 5
    trace: str | Path | None = None
    top: int = 15
    memory: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "top"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ProfileOptions.{name} must be a positive int; got {value!r}.")
        if not isinstance(self.skip_first, int) or isinstance(self.skip_first, bool) or self.skip_first < 0:
            raise ConfigError(f"ProfileOptions.skip_first must be an int >= 0; got {self.skip_first!r}.")


@dataclass(frozen=True)
class ProfileReport:
    """What the profiled window showed; ``str(report)`` is the printed table.

    ``step_ms`` holds the mean milliseconds per step of each phase (and "total", their sum); ``operators`` the top
    operators as (name, calls, self milliseconds over the window, share of all operators' self time).
    """

    steps: int
    device: str
    step_ms: dict[str, float]
    operators: list[tuple[str, int, float, float]]
    peak_memory_bytes: int | None
    trace: Path | None = None
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        total = self.step_ms.get("total", 0.0) or 1e-9
        lines = [f"kiln profile: {self.steps} steps on {self.device}, mean time per step "
                 f"{self.step_ms.get('total', 0.0):.3f} ms"]  # fmt: skip
        lines += [f"  {phase:<10} {self.step_ms[phase]:9.3f} ms  {100 * self.step_ms[phase] / total:5.1f} %"
                  for phase in PHASES]  # fmt: skip
        lines.append(f"top {len(self.operators)} operators by self time (over the {self.steps} steps):")
        width = max([len(name) for name, *_ in self.operators] + [8])
        lines.append(f"  {'operator':<{width}}  {'calls':>7}  {'self ms':>10}  {'share':>6}")
        lines += [f"  {name:<{width}}  {calls:7d}  {ms:10.3f}  {100 * share:5.1f} %"
                  for name, calls, ms, share in self.operators]  # fmt: skip
        if self.peak_memory_bytes is not None:
            lines.append(f"peak memory: {self.peak_memory_bytes / 2**20:.1f} MiB")
        if self.trace is not None:
            lines.append(f"Chrome trace: {self.trace} (open in https://ui.perfetto.dev)")
        if self.run_id is not None:
            lines.append(f"stored as artifact {ARTIFACT} of run {self.run_id}")
        lines += self.notes
        return "\n".join(lines)


class _Marks:
    """Wall-clock marks of each profiled step, set by hooks that live only inside the window."""

    def __init__(self, model: TrainState) -> None:
        self.model, self.cuda = model, model.device.type == "cuda"
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.handles: list[Any] = []

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.model.device)
        return time.perf_counter()

    def mark(self, name: str, *, first: bool = True) -> None:
        if not first or name not in self.current:
            self.current[name] = self.now()

    def attach(self) -> None:
        module = self.model.module

        def before_forward(module: torch.nn.Module, args: Any) -> None:
            if module.training:  # evaluation at an epoch's end is not a training step
                self.mark("forward")

        def after_forward(module: torch.nn.Module, args: Any, output: Any) -> None:
            if not module.training:
                return
            self.mark("forward_end", first=False)
            tensors = output if isinstance(output, tuple | list) else (output,)
            grad = next((t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad), None)
            if grad is not None:
                grad.register_hook(self._backward_started)

        self.handles += [module.register_forward_pre_hook(before_forward), module.register_forward_hook(after_forward)]
        for optimizer in self.model.optimizers.values():
            self.handles.append(optimizer.register_step_pre_hook(lambda *_: self.mark("optimizer")))
            self.handles.append(optimizer.register_step_post_hook(lambda *_: self.mark("optimizer_end", first=False)))

    def _backward_started(self, grad: torch.Tensor) -> None:
        self.mark("backward")

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def end_step(self) -> None:
        self.current["end"] = self.now()
        self.steps.append(self.current)
        self.current = {"start": self.current["end"]}

    def phases(self) -> dict[str, float]:
        """Mean milliseconds per step of each phase (they add up to the total); a missing mark takes the next's time."""
        per_phase: dict[str, list[float]] = {phase: [] for phase in (*PHASES, "total")}
        for step in self.steps:
            end = step["end"]
            forward = step.get("forward", end)
            backward = step.get("backward", step.get("forward_end", end))
            optimizer = step.get("optimizer", end)
            optimizer_end = step.get("optimizer_end", optimizer)
            start = step.get("start", forward)
            spans = {
                "data": forward - start, "forward": backward - forward, "backward": optimizer - backward,
                "optimizer": optimizer_end - optimizer, "other": end - optimizer_end, "total": end - start,
            }  # fmt: skip
            for phase, seconds in spans.items():
                per_phase[phase].append(max(seconds, 0.0) * 1000)
        return {phase: statistics.fmean(values) if values else 0.0 for phase, values in per_phase.items()}


class Profiler(Callback):
    """Profile ``steps`` training batches after ``skip_first`` with torch.profiler; ``fit(profile=...)`` adds one.

    ``report`` holds the :class:`ProfileReport` once the window closed. ``store`` is where a tracked fit's run lives
    (the Model's store; None: the default store).

    Example:
        >>> profiler = Profiler(ProfileOptions(steps=20, skip_first=5))
        >>> model.fit(train, epochs=1, callbacks=[profiler])
        >>> profiler.report.step_ms["forward"]
    """

    def __init__(self, options: ProfileOptions | None = None, *, store: Any = None) -> None:
        self.options = options or ProfileOptions()
        self.store = store
        self.report: ProfileReport | None = None
        self._batches = 0
        self._start_at = self.options.skip_first
        self._stop_at = self.options.skip_first + self.options.steps
        self._profile: Any = None
        self._marks: _Marks | None = None
        self._model: TrainState | None = None

    @classmethod
    def from_option(cls, profile: bool | ProfileOptions, *, store: Any = None) -> Profiler:
        """The Profiler for ``fit(profile=...)``: True takes the default options."""
        if profile is True:
            return cls(store=store)
        if isinstance(profile, ProfileOptions):
            return cls(profile, store=store)
        raise ConfigError(f"profile must be True, False or a kiln.ProfileOptions(...); got {profile!r}.")

    def on_fit_start(self, model: TrainState) -> None:
        self._model, self._batches, self.report = model, 0, None
        if self._start_at == 0:
            self._open(model)

    def on_epoch_start(self, model: TrainState, epoch: int) -> None:
        if self._marks is not None:  # the step after an epoch's end starts now, not before the evaluation
            self._marks.current = {"start": self._marks.now()}

    def on_train_batch_end(self, model: TrainState, step: int, loss: torch.Tensor) -> None:
        self._batches += 1
        if self._batches < self._start_at or self._batches > self._stop_at:
            return  # outside the window: this comparison is all the callback costs
        if self._batches == self._start_at:
            self._open(model)
            return
        assert self._marks is not None and self._profile is not None
        self._marks.end_step()
        if self._batches == self._stop_at:
            self._close(model)  # stopping closes the last step's range in the trace
        else:
            self._profile.step()

    def on_fit_end(self, model: TrainState) -> None:
        if self._profile is not None:  # the fit ended inside the window: report the steps it covered
            self._close(model)

    def _open(self, model: TrainState) -> None:
        from torch.profiler import ProfilerAction, ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if model.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
            torch.cuda.reset_peak_memory_stats(model.device)
        self._marks = _Marks(model)
        self._marks.attach()
        # A schedule that always records: with one, torch marks every step (ProfilerStep#N) in the trace.
        self._profile = profile(activities=activities, profile_memory=self.options.memory, record_shapes=False,
                                schedule=lambda step: ProfilerAction.RECORD)  # fmt: skip
        self._profile.start()
        self._marks.current = {"start": self._marks.now()}

    def _close(self, model: TrainState) -> None:
        assert self._marks is not None and self._profile is not None
        marks, prof = self._marks, self._profile
        self._marks, self._profile = None, None
        marks.detach()
        prof.stop()
        if not marks.steps:
            return
        with tempfile.TemporaryDirectory(prefix="kiln-profile-") as directory:
            written = Path(directory) / ARTIFACT
            prof.export_chrome_trace(str(written))
            peak = _peak_memory(model, written) if self.options.memory else None
            run_id = self._store_trace(model, written)
            trace = self._keep_trace(written, tracked=run_id is not None)
        self.report = ProfileReport(
            steps=len(marks.steps), device=str(model.device), step_ms=marks.phases(),
            operators=_top_operators(prof, self.options.top, cuda=model.device.type == "cuda"),
            peak_memory_bytes=peak, trace=trace, run_id=run_id,
        )  # fmt: skip
        if is_rank_zero():
            _show(self.report)

    def _store_trace(self, model: TrainState, path: Path) -> str | None:
        if model.run_id is None or not is_rank_zero():
            return None
        from ..store import Store

        try:
            store = self.store if isinstance(self.store, Store) else Store(self.store)
            store.log_artifact(model.run_id, ARTIFACT, path)
        except KilnError as error:  # e.g. the run lives in another store than the one given here
            logger.warning("could not store the profile trace with run %s: %s", model.run_id, error)
            return None
        return model.run_id

    def _keep_trace(self, written: Path, *, tracked: bool) -> Path | None:
        target = self.options.trace
        if target is None and tracked:
            return None
        path = Path(target) if target is not None else Path(f"kiln-profile-{time.strftime('%Y%m%d-%H%M%S')}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(written.read_bytes())
        return path.absolute()


def _top_operators(prof: Any, top: int, *, cuda: bool) -> list[tuple[str, int, float, float]]:
    """The ``top`` operators by self time (device time on CUDA): (name, calls, self ms, share of the total)."""
    attribute = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(getattr(e, attribute) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, attribute), reverse=True)[:top]
    return [(e.key, int(e.count), getattr(e, attribute) / 1000, getattr(e, attribute) / total) for e in ranked]


def _peak_memory(model: TrainState, trace: Path) -> int | None:
    """Peak bytes allocated: the device's high-water mark on CUDA; on the CPU, the most the tensors allocated
    inside the window held at once (the trace's memory events)."""
    if model.device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(model.device))
    try:
        document = json.loads(trace.read_text())
    except (OSError, ValueError):
        return None
    events = document.get("traceEvents", []) if isinstance(document, dict) else document
    totals = [e["args"].get("Total Allocated", 0) for e in events if e.get("name") == "[memory]" and "args" in e]
    return int(max(totals)) if totals else None


def _show(report: ProfileReport) -> None:
    from rich.console import Console

    Console(highlight=False, soft_wrap=True).print(str(report), markup=False)
    logger.info("profiled %d steps: %.3f ms per step", report.steps, report.step_ms.get("total", 0.0))
