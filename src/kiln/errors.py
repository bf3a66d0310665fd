"""The exceptions kiln raises on purpose.

Every error says what was passed, what is allowed and how to fix it. Users catch `KilnError` for anything kiln
raises deliberately; the subclasses also derive from the builtin a caller would expect (ValueError, OSError, ...).
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "IntegrityError",
    "InvalidNameError",
    "KilnError",
    "NonFiniteLossError",
    "NotFoundError",
    "ShapeError",
    "StoreError",
    "TrustError",
]


class KilnError(Exception):
    """Base class of every error kiln raises deliberately."""


class ConfigError(KilnError, ValueError):
    """An argument has a value kiln does not accept (an unknown loss name, a negative batch size, ...)."""


class DataError(KilnError, ValueError):
    """Data could not be read or has the wrong form (empty dataset, corrupt file, mismatched lengths)."""


class ShapeError(KilnError, ValueError):
    """Model outputs and targets (or inputs and a signature) have incompatible shapes."""


class NonFiniteLossError(KilnError, FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(KilnError, OSError):
    """A checkpoint could not be written, or one being loaded is missing, corrupt or incompatible."""


class StoreError(KilnError):
    """A store operation failed: unknown model or version, invalid name, conflicting write."""


class IntegrityError(StoreError):
    """Stored bytes do not match their recorded SHA-256, or a file holds content kiln refuses to load (pickle)."""


class InvalidNameError(StoreError, ValueError):
    """A model name, alias, reference or file name does not match kiln's strict pattern (checked before any I/O)."""


class NotFoundError(StoreError, LookupError):
    """A model, version, alias or run that the store does not hold."""


class TrustError(KilnError, PermissionError):
    """A package names code (a factory module, an ONNX operator domain) that nothing trusts, so kiln will not run it.

    The message names what was refused and how to trust it (``trust=[...]``, ``--trust``, ``KILN_TRUST``) or load
    the package's ONNX graph instead (``runtime="onnx"``).
    """
