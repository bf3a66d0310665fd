"""kiln.export: model packages (safetensors weights, ONNX graph, signature, rebuild spec), registered and loaded.

Example:
    >>> from kiln.export import register_module, load
    >>> version = register_module(net, "digits", store=".kiln", example_input=x[:1])
    >>> module = load("digits@1", store=".kiln")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the real names, for type checkers; at run time __getattr__ imports them on first use
    from .loader import LoadedModel, load, load_package
    from .register import register_module, save_package

# Imported on first use, like kiln's top level: the server's ONNX path uses kiln.export.trust and must not pay for
# (or need) torch, which the loader and the package writer import.
_EXPORTS = {
    "LoadedModel": "kiln.export.loader",
    "load": "kiln.export.loader",
    "load_package": "kiln.export.loader",
    "register_module": "kiln.export.register",
    "save_package": "kiln.export.register",
}

__all__ = ["LoadedModel", "load", "load_package", "register_module", "save_package"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
