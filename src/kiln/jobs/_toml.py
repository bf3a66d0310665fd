"""TOML reading: ``tomllib`` (standard since Python 3.11), else the ``tomli`` backport it came from."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as _toml

__all__ = ["loads", "read_toml"]


def loads(text: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error is a ValueError (``TOMLDecodeError``) naming the line and column."""
    return _toml.loads(text)


def read_toml(path: Path, *, what: str) -> tuple[dict[str, Any], bytes]:
    """The parsed file and its raw bytes; one-line ConfigError for a missing, unreadable or malformed file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot read it ({error.strerror or error})") from None
    try:
        return _toml.loads(raw.decode("utf-8")), raw
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not UTF-8 text; a TOML file is UTF-8") from None
    except _toml.TOMLDecodeError as error:
        raise ConfigError(f"{what} {path}: invalid TOML ({error})") from None
