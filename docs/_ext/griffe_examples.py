"""Griffe extension for the API site: kiln's docstrings head their doctest blocks ``Example:`` (STYLE.md), which the
Google parser knows only in the plural; read them as ``Examples:`` so ``>>>`` lines render as code. Sphinx roles
(``:class:`X```) render as code."""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):`~?([\w.]+)`")  # Sphinx roles read as code


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(r"`\1`", _EXAMPLE.sub(r"\1Examples:", obj.docstring.value))
