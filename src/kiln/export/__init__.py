"""kiln.export: model packages (safetensors weights, ONNX graph, signature, rebuild spec), registered and loaded.

Example:
    >>> from kiln.export import register_module, load
    >>> version = register_module(net, "digits", store=".kiln", example_input=x[:1])
    >>> module = load("digits@1", store=".kiln")
"""

from __future__ import annotations

from .loader import LoadedModel, load, load_package
from .register import register_module, save_package

__all__ = ["LoadedModel", "load", "load_package", "register_module", "save_package"]
