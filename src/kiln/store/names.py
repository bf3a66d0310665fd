"""Strict patterns for everything a user can name: models, aliases, runs, files, references.

Every name is checked here before the store touches a path or a query, so ``../x``, ``%2e%2e``, absolute paths,
NUL bytes and megabyte-long strings fail with a clear error and leave the store exactly as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeGuard

from ..errors import InvalidNameError

__all__ = [
    "Reference",
    "check_alias",
    "check_file_name",
    "check_name",
    "check_run_id",
    "check_sha256",
    "parse_reference",
]

# Names: letters, digits, '_', '-', and single dots between them; 1..64 characters; ASCII only (no homoglyphs).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
# Aliases start with a letter so that "name@3" (a version) and "name@prod" (an alias) can never be confused.
_ALIAS = re.compile(r"[a-z][a-z0-9_-]*")
# Files inside a package or a run: flat names like model names (also starting with '_'), so never '..' or '/'.
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
_RUN_ID = re.compile(r"[0-9a-f]{4,32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

MAX_NAME = 64
MAX_ALIAS = 32
MAX_FILE = 128
RESERVED_ALIASES = frozenset({"latest"})


def _show(value: object) -> str:
    """A short, printable rendering of a rejected value (a 10 KB name must not flood the error)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-12:]} ({len(str(value))} characters)"


def _fits(value: object, pattern: re.Pattern[str], limit: int) -> TypeGuard[str]:
    """True when ``value`` is a string of at most ``limit`` characters matching ``pattern`` in full."""
    return isinstance(value, str) and len(value) <= limit and pattern.fullmatch(value) is not None


def check_name(name: object, *, what: str = "model name") -> str:
    """Return ``name`` if it is a valid model or run name, else raise InvalidNameError.

    Example:
        >>> check_name("digits-cnn.v2")
        'digits-cnn.v2'
    """
    if not _fits(name, _NAME, MAX_NAME):
        raise InvalidNameError(
            f"invalid {what} {_show(name)}: use 1-{MAX_NAME} ASCII letters, digits, '_', '-' and single dots "
            "between them, starting with a letter or digit (e.g. 'digits-cnn')."
        )
    return name


def check_alias(alias: object) -> str:
    """Return ``alias`` if it is a valid alias (``production``, ``staging``, ...), else raise InvalidNameError."""
    if not _fits(alias, _ALIAS, MAX_ALIAS):
        raise InvalidNameError(
            f"invalid alias {_show(alias)}: use 1-{MAX_ALIAS} lowercase letters, digits, '_' and '-', starting "
            "with a letter (e.g. 'production')."
        )
    if alias in RESERVED_ALIASES:
        raise InvalidNameError(f"alias {alias!r} is reserved: 'name@latest' always means the newest version.")
    return alias


def check_file_name(name: object) -> str:
    """Return ``name`` if it is a safe relative file name inside a package or run (``weights.safetensors``)."""
    if not _fits(name, _FILE, MAX_FILE):
        raise InvalidNameError(
            f"invalid file name {_show(name)}: use 1-{MAX_FILE} ASCII letters, digits, '_', '-' and single dots "
            "between them, starting with a letter, digit or '_' (e.g. 'weights.safetensors'); no folders."
        )
    return name


def check_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a run id or an id prefix of at least 4 lowercase hex digits."""
    if not _fits(run_id, _RUN_ID, 32):
        raise InvalidNameError(
            f"invalid run id {_show(run_id)}: a run id is 32 lowercase hex digits (a prefix of 4 or more works "
            "where it is unique); list them with 'kiln runs list'."
        )
    return run_id


def check_sha256(digest: object) -> str:
    """Return ``digest`` if it is 64 lowercase hex digits."""
    if not _fits(digest, _SHA256, 64):
        raise InvalidNameError(f"invalid SHA-256 {_show(digest)}: expected 64 lowercase hex digits.")
    return digest


@dataclass(frozen=True)
class Reference:
    """A parsed model reference: ``name`` (latest), ``name@3`` (a version) or ``name@production`` (an alias)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias}" if self.alias is not None else self.name


def parse_reference(reference: object) -> Reference:
    """Parse ``name``, ``name@3``, ``name@latest`` or ``name@alias``; anything else raises InvalidNameError.

    Example:
        >>> parse_reference("digits@production")
        Reference(name='digits', version=None, alias='production')
    """
    if not isinstance(reference, str):
        raise InvalidNameError(
            f"a model reference is a string like 'digits', 'digits@3' or 'digits@production'; got {_show(reference)}."
        )
    name, at, tag = reference.partition("@")
    check_name(name)
    if not at:
        return Reference(name)
    if tag.isascii() and tag.isdigit() and len(tag) <= 9:
        version = int(tag)
        if version < 1 or tag != str(version):
            raise InvalidNameError(f"invalid version in {_show(reference)}: versions count from 1 (e.g. 'digits@3').")
        return Reference(name, version=version)
    if tag == "latest":
        return Reference(name)
    if not _fits(tag, _ALIAS, MAX_ALIAS):
        raise InvalidNameError(
            f"invalid reference {_show(reference)}: after '@' comes a version number (digits@3), 'latest' or an "
            "alias of lowercase letters, digits, '_' and '-' starting with a letter (digits@production)."
        )
    return Reference(name, alias=tag)
