"""Metric resolution: names become torchmetrics objects, built on the first batch once the output shape is known.

torchmetrics is imported only when a metric is used: it costs most of a second to import.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["METRICS", "MetricSet"]

METRICS = ("accuracy", "f1", "precision", "recall", "auroc", "mse", "mae", "r2")


def _classification(name: str, output: torch.Tensor) -> Any:
    from torchmetrics import classification as c

    classes = output.shape[-1] if output.ndim >= 2 else 1
    if classes == 1:
        binary = {"accuracy": c.BinaryAccuracy, "f1": c.BinaryF1Score, "precision": c.BinaryPrecision,
                  "recall": c.BinaryRecall, "auroc": c.BinaryAUROC}
        return binary[name]()
    multi = {"accuracy": c.MulticlassAccuracy, "f1": c.MulticlassF1Score, "precision": c.MulticlassPrecision,
             "recall": c.MulticlassRecall, "auroc": c.MulticlassAUROC}
    kwargs = {} if name == "auroc" else {"average": "micro" if name == "accuracy" else "macro"}
    return multi[name](num_classes=classes, **kwargs)


def _regression(name: str) -> Any:
    from torchmetrics import regression as r

    return {"mse": r.MeanSquaredError, "mae": r.MeanAbsoluteError, "r2": r.R2Score}[name]()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class MetricSet:
    """The metrics of one Model: updated batch by batch in evaluation, computed and reset at the end."""

    def __init__(self, specs: Any) -> None:
        specs = [] if specs is None else list(specs.items()) if isinstance(specs, dict) else list(specs)
        self._pending: list[tuple[str, Any]] = []
        for spec in specs:
            name, value = spec if isinstance(spec, tuple) else (None, spec)
            if isinstance(value, str):
                if value not in METRICS:
                    raise ConfigError(f"unknown metric {value!r}; valid names: {list(METRICS)}, or pass a "
                                      "torchmetrics.Metric object.")
                self._pending.append((name or value, value))
            elif hasattr(value, "update") and hasattr(value, "compute"):
                self._pending.append((name or _snake(type(value).__name__), value))
            else:
                raise ConfigError(f"metric {value!r} is neither a name {list(METRICS)} nor a torchmetrics.Metric.")
        self.metrics: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return bool(self._pending)

    def _build(self, output: torch.Tensor, device: torch.device) -> dict[str, Any]:
        built = {}
        for name, value in self._pending:
            if isinstance(value, str):
                value = _regression(value) if value in ("mse", "mae", "r2") else _classification(value, output)
            built[name] = value.to(device)
        return built

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        if self.metrics is None:
            self.metrics = self._build(output, output.device)
        if output.ndim >= 3 and target.ndim == output.ndim - 1 and target.shape == output.shape[:-1]:
            output, target = output.reshape(-1, output.shape[-1]), target.reshape(-1)  # (B*T, C), (B*T,)
        elif output.ndim == target.ndim + 1 and output.shape[-1] == 1:
            output = output.squeeze(-1)
        for metric in self.metrics.values():
            metric.update(output.float(), target)

    def compute(self) -> dict[str, float]:
        if self.metrics is None:
            return {}
        results = {}
        for name, metric in self.metrics.items():
            results[name] = float(metric.compute())
            metric.reset()
        return results
