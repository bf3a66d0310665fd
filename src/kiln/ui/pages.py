"""What every view shares: the Jinja2 environment (autoescape on), number/time formatting, errors as pages.

A view raises :class:`HttpError` (or lets a :class:`~kiln.errors.KilnError` through); the app turns it into a 4xx
page or JSON body that says what was wrong, never a traceback.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request

from ..errors import ConfigError, IntegrityError, InvalidNameError, KilnError, NotFoundError, StoreError

__all__ = [
    "HttpError",
    "as_int",
    "csv_text",
    "duration",
    "environment",
    "error_status",
    "natsort",
    "natsorted",
    "natural_key",
    "number",
    "read_body",
    "read_form",
    "size",
    "when",
]

TEMPLATES = Path(__file__).parent / "templates"


class HttpError(Exception):
    """An answer other than 200 with a message for the user: 400 for bad input, 404 for what does not exist."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_status(error: Exception) -> tuple[int, str]:
    """The HTTP status and message a failure becomes (None of them a traceback)."""
    if isinstance(error, HttpError):
        return error.status, error.message
    if isinstance(error, NotFoundError):
        return 404, str(error)
    if isinstance(error, ConfigError | InvalidNameError):
        return 400, str(error)
    if isinstance(error, StoreError) and "prefix" in str(error):  # an ambiguous run id prefix
        return 400, str(error)
    if isinstance(error, StoreError) and not isinstance(error, IntegrityError):  # e.g. deleting an aliased version
        return 409, str(error)
    if isinstance(error, KilnError):
        return 500, str(error)
    return 500, "internal error; the server log has the details."


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HttpError(413, f"the request body is larger than {limit // 1024} KiB.")
    return bytes(body)


async def read_form(request: Request, limit: int = 16 << 10) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as {field: first value}."""
    parsed = parse_qs((await read_body(request, limit)).decode("utf-8", "replace"), keep_blank_values=True,
                      max_num_fields=20)  # fmt: skip
    return {key: values[0] for key, values in parsed.items()}


def as_int(value: str | None, name: str, *, default: int, low: int, high: int) -> int:
    """Query parameter ``name`` as an integer in ``low..high``; 400 with the allowed range otherwise."""
    if value is None or value == "":
        return default
    try:
        number_ = int(value)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer in {low}..{high}; got {value[:40]!r}.") from None
    if not low <= number_ <= high:
        raise HttpError(400, f"{name} must be an integer in {low}..{high}; got {number_}.")
    return number_


# ---------------------------------------------------------------------------------------------------- formatting
def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "–"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.4g}"
    return str(value)


def size(count: int | None) -> str:
    if count is None:
        return "–"
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def shape(entry: Mapping[str, Any]) -> str:
    dims = ", ".join("N" if d is None else str(d) for d in entry.get("shape", []))
    return f"{entry.get('dtype', '?')}[{dims}]"


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that reads the numbers in a name as numbers: ``layer2`` before ``layer10`` (plain text order puts
    ``layer10`` first). The UI's charts, legends and tables use it wherever metric or layer names are listed.

    Example:
        >>> sorted(["l10", "l2", "l1.w", "L3"], key=natural_key)
        ['l1.w', 'l2', 'L3', 'l10']
    """
    parts = _DIGITS.split(text)
    return tuple((1, int(part)) if i % 2 else (0, part.casefold()) for i, part in enumerate(parts))


def natsort(mapping: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A mapping's items in :func:`natural_key` order of the keys (Jinja's ``dictsort``, numbers as numbers)."""
    return sorted(mapping.items(), key=lambda item: (natural_key(str(item[0])), str(item[0])))


def natsorted(names: Iterable[str]) -> list[str]:
    """Names in :func:`natural_key` order."""
    return sorted(names, key=lambda name: (natural_key(name), name))


def environment() -> Environment:
    """Templates from the package, every value HTML-escaped unless a template says otherwise (none do)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, duration=duration, number=number, size=size, shape=shape, natsort=natsort,
                       natsorted=natsorted)  # fmt: skip
    return env


def csv_text(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """CSV with formulas defused: a cell starting with = + - @ is prefixed with ' (spreadsheets would run it)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(header))
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
