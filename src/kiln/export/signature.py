"""A module's signature: the names, dtypes and shapes of its inputs and outputs, batch dimension dynamic."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError, ShapeError

__all__ = ["as_inputs", "as_outputs", "input_names", "make_signature"]


def as_inputs(example_input: Any) -> tuple[torch.Tensor, ...]:
    """The example input as a tuple of tensors (one tensor, a tuple/list of tensors, or numpy arrays)."""
    items = tuple(example_input) if isinstance(example_input, tuple | list) else (example_input,)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            try:
                item = torch.as_tensor(item)
            except (TypeError, ValueError, RuntimeError) as error:
                raise ConfigError(
                    f"example_input[{i}] must be a tensor or array; got {type(item).__name__}."
                ) from error
        if item.dim() == 0:
            raise ShapeError(f"example_input[{i}] is a scalar; pass a batch, e.g. x[:1] with shape (1, ...).")
        out.append(item)
    if not out:
        raise ConfigError("example_input is empty; pass one batch of inputs, e.g. x_train[:1].")
    return tuple(out)


def as_outputs(output: Any) -> tuple[torch.Tensor, ...]:
    """The module's output as a tuple of tensors; anything else is refused with the type that was returned."""
    items = tuple(output) if isinstance(output, tuple | list) else (output,)
    if not items or not all(isinstance(item, torch.Tensor) for item in items):
        raise ConfigError(
            f"a registered module's forward must return a tensor or a tuple of tensors; it returned "
            f"{type(output).__name__}. Wrap it in a module that returns tensors."
        )
    return items


def input_names(module: torch.nn.Module, count: int) -> list[str]:
    """Names of the first ``count`` positional parameters of ``module.forward`` (``input_<i>`` if unnamed)."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= count and not any(p.kind == p.VAR_POSITIONAL for p in parameters[:count]):
        return positional[:count]
    return [f"input_{i}" for i in range(count)]


def output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _spec(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    shape: list[int | None] = [None, *tensor.shape[1:]]  # None: the dynamic batch dimension
    return {"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": shape}


def make_signature(inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], names: Sequence[str]) -> dict:
    """``{"inputs": [...], "outputs": [...]}``, each entry ``{"name", "dtype", "shape"}`` with shape[0] None.

    Example:
        >>> make_signature([torch.zeros(1, 64)], [torch.zeros(1, 10)], ["x"])
        {'inputs': [{'name': 'x', 'dtype': 'float32', 'shape': [None, 64]}], 'outputs': [...]}
    """
    batch = {int(t.shape[0]) if t.dim() else -1 for t in (*inputs, *outputs)}
    if len(batch) != 1:
        raise ShapeError(
            f"inputs and outputs must share the batch (first) dimension to be served in batches; got input shapes "
            f"{[tuple(t.shape) for t in inputs]} and output shapes {[tuple(t.shape) for t in outputs]}."
        )
    return {
        "inputs": [_spec(name, t) for name, t in zip(names, inputs, strict=True)],
        "outputs": [_spec(name, t) for name, t in zip(output_names(len(outputs)), outputs, strict=True)],
    }
