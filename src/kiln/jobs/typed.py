"""Typed config sections: plain dataclasses are the one source of truth for reading, overriding and the schema.

A config is a tree of ``kw_only`` dataclasses (one per section, as torchtitan's ``job_config``). This module reads
a TOML/JSON mapping into that tree, checking every key and value against the field's type; parses dotted
``section.key=value`` command-line overrides against the same types; and writes the JSON Schema editors validate
with. Every error is one line that starts with the key's path::

    fit.epochs: expected an integer, got "ten"
    fit.epoch: unknown key; did you mean fit.epochs?

Field metadata (``dataclasses.field(metadata=...)``): ``help`` (the schema's description), ``path`` (a file or
folder, made absolute relative to the config file), ``choices`` (allowed strings, e.g. the loss names).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from ..errors import ConfigError

__all__ = [
    "absolute_defaults",
    "apply_overrides",
    "parse_value",
    "read_section",
    "schema_of",
    "section_fields",
    "show",
    "suggest",
]

T = TypeVar("T")


def show(value: Any) -> str:
    """A value as the error shows it: JSON (strings in double quotes), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + text[-12:]


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The closest of ``choices`` to ``word`` (a typo's likely meaning), or None."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def section_fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """Each field of the dataclass ``cls`` with its resolved type hint."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(hint)
    return typing.get_args(hint) if origin is Union or origin is types.UnionType else None


def _describe(hint: Any) -> str:
    """What a type expects, in words: 'an integer', 'one of "fp32", "bf16"', 'a list of strings'."""
    if hint is Any:
        return "any value"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if _is_section(hint):
        return "a table"
    union = _union_args(hint)
    if union is not None:
        return " or ".join(_describe(arg) for arg in union if arg is not type(None))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(show(choice) for choice in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a table"
    return str(hint)


def _convert(value: Any, hint: Any, key: str, choices: Sequence[str] | None = None) -> Any:
    """``value`` checked (and, for sections, built) against ``hint``; ConfigError names ``key`` otherwise."""
    if _is_section(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {show(value)}")
        return read_section(hint, value, key=key)
    union = _union_args(hint)
    if union is not None:
        if value is None and type(None) in union:
            return None
        for arg in union:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, choices)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {show(value)}")
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {show(value)}")
        if choices is not None and value not in choices:
            near = suggest(value, choices)
            hint_text = f"did you mean {show(near)}? " if near else ""
            raise ConfigError(f"{key}: unknown value {show(value)}; {hint_text}valid: {', '.join(choices)}")
        return value
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ConfigError(f"{key}: expected {_describe(hint)}, got {show(value)}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_describe(hint)}, got {show(value)}")
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{key}[{i}]", choices) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {show(value)}")
        _, item = typing.get_args(hint)
        return {str(k): _convert(v, item, f"{key}.{k}") for k, v in value.items()}
    raise AssertionError(f"{key}: unsupported config type {hint!r}")


def read_section(cls: type[T], data: Mapping[str, Any], *, key: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, refusing unknown keys (with a suggestion) and wrong types.

    Example:
        >>> read_section(FitSection, {"epochs": "ten"}, key="fit")
        ConfigError: fit.epochs: expected an integer, got "ten"
    """
    fields = section_fields(cls)
    prefix = f"{key}." if key else ""
    for name in data:
        if name not in fields:
            near = suggest(str(name), list(fields))
            hint = f"did you mean {prefix}{near}?" if near else f"valid keys: {', '.join(fields)}"
            raise ConfigError(f"{prefix}{name}: unknown key; {hint}")
    values: dict[str, Any] = {}
    for name, (field, hint) in fields.items():
        if name in data:
            values[name] = _convert(data[name], hint, f"{prefix}{name}", field.metadata.get("choices"))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            example = field.metadata.get("example")
            raise ConfigError(f"{prefix}{name}: missing; it is required" + (f" (e.g. {example})" if example else ""))
    return cls(**values)


def resolve_paths(cls: type, data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A copy of raw ``data`` whose path fields (metadata ``path``) are absolute, relative to ``base``."""
    fields = section_fields(cls)
    out = dict(data)
    for name, value in data.items():
        if name not in fields:
            continue
        field, hint = fields[name]
        if _is_section(hint) and isinstance(value, Mapping):
            out[name] = resolve_paths(hint, value, base)
        elif field.metadata.get("path") and isinstance(value, str) and value:
            out[name] = str((base / os.path.expanduser(value)).absolute())
        elif field.metadata.get("path") and isinstance(value, list):
            out[name] = [str((base / os.path.expanduser(v)).absolute()) if isinstance(v, str) else v for v in value]
    return out


def absolute_defaults(section: Any, base: Path) -> None:
    """Make the path fields left relative in a built section tree (their defaults, such as ".") absolute."""
    for name, (field, hint) in section_fields(type(section)).items():
        value = getattr(section, name)
        if _is_section(hint):
            absolute_defaults(value, base)
        elif field.metadata.get("path") and isinstance(value, str) and value and not os.path.isabs(value):
            setattr(section, name, str((base / value).absolute()))
        elif field.metadata.get("path") and isinstance(value, list):
            setattr(section, name, [v if os.path.isabs(v) else str((base / v).absolute()) for v in value])


# ---------------------------------------------------------------------------------------------- overrides
def parse_value(text: str, hint: Any, key: str, choices: Sequence[str] | None = None) -> Any:
    """A command-line value (``20``, ``3e-4``, ``true``, ``cosine``, ``["a", "b"]``) read against ``hint``."""
    union = _union_args(hint)
    if union is not None:
        if text.lower() in ("none", "null") and type(None) in union:
            return None
        for arg in union:
            if arg is not type(None):
                try:
                    return parse_value(text, arg, key, choices)
                except ConfigError:
                    continue
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {show(text)}")
    if hint is str or (typing.get_origin(hint) is Literal and all(isinstance(a, str) for a in typing.get_args(hint))):
        return _convert(text, hint, key, choices)
    if hint is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {show(text)}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {show(text)}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {show(text)}") from None
    value = _toml_value(text)
    if value is _INVALID:
        if hint is Any:
            return text  # a bare word given for a free-form value: a string
        raise ConfigError(f'{key}: expected {_describe(hint)} written as TOML (e.g. ["a", "b"]), got {show(text)}')
    return _convert(value, hint, key, choices)


_INVALID = object()


def _toml_value(text: str) -> Any:
    from ._toml import loads

    try:
        return loads(f"value = {text}")["value"]
    except ValueError:
        return _INVALID


def apply_overrides(
    cls: type, data: Mapping[str, Any], overrides: Sequence[str], *, resolve: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """A copy of raw ``data`` with each ``section.key=value`` of ``overrides`` applied, parsed against ``cls``.

    ``resolve`` turns the value of a path field into an absolute path (the command line's paths are relative to
    the working directory, the file's to the file). Keys inside a table-valued field (``model.config.width=64``)
    are allowed; the value is read as TOML there (a bare word is a string).

    Example:
        >>> apply_overrides(JobConfig, raw, ["fit.epochs=20", "model.lr=3e-4"])
    """
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {show(override)}: write it as section.key=value (e.g. fit.epochs=20)")
        parts = key.split(".")
        section: Any = cls
        target = out
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if section is None:  # inside a free-form table: any key
                if last:
                    target[part] = parse_value(text, Any, where)
                else:
                    target = target.setdefault(part, {})
                continue
            fields = section_fields(section)
            if part not in fields:
                near = suggest(part, list(fields))
                prefix = ".".join(parts[:depth])
                hint = (
                    f"did you mean {prefix + '.' if prefix else ''}{near}?"
                    if near
                    else f"valid keys: {', '.join(fields)}"
                )
                raise ConfigError(f"{where}: unknown key; {hint}")
            field, hint_type = fields[part]
            if last:
                value = parse_value(text, hint_type, where, field.metadata.get("choices"))
                if field.metadata.get("path") and resolve is not None and isinstance(value, str) and value:
                    value = resolve(value)
                target[part] = value
            elif _is_section(hint_type):
                section, target = hint_type, target.setdefault(part, {})
            elif typing.get_origin(hint_type) is dict:
                section, target = None, target.setdefault(part, {})
            else:
                raise ConfigError(f"{where}: is {_describe(hint_type)}, not a table; set it as {where}=VALUE")
            if not isinstance(target, dict):
                raise ConfigError(f"{where}: expected a table in the config, got {show(target)}")
    return out


# ---------------------------------------------------------------------------------------------- JSON Schema
def _schema_type(hint: Any, choices: Sequence[str] | None) -> dict[str, Any]:
    if _is_section(hint):
        return schema_of(hint)
    union = _union_args(hint)
    if union is not None:
        options = [_schema_type(arg, choices) for arg in union if arg is not type(None)]
        if type(None) in union:
            options.append({"type": "null"})
        return options[0] if len(options) == 1 else {"anyOf": options}
    origin = typing.get_origin(hint)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint in simple:
        schema: dict[str, Any] = {"type": simple[hint]}
        if hint is str and choices is not None:
            schema["enum"] = list(choices)
        return schema
    if hint is Any:
        return {}
    if origin is Literal:
        return {"enum": list(typing.get_args(hint))}
    if origin is list:
        return {"type": "array", "items": _schema_type(typing.get_args(hint)[0], choices)}
    if origin is dict:
        item = _schema_type(typing.get_args(hint)[1], None)
        return {"type": "object", **({"additionalProperties": item} if item else {})}
    raise AssertionError(f"unsupported config type {hint!r}")


def schema_of(cls: type) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12 subset) of the section ``cls``: properties, types, defaults, required."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, (field, hint) in section_fields(cls).items():
        prop = _schema_type(hint, field.metadata.get("choices"))
        if "help" in field.metadata:
            prop = {"description": field.metadata["help"], **prop}
        if field.default is not dataclasses.MISSING:
            prop["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            made = field.default_factory()
            if not dataclasses.is_dataclass(made):
                prop["default"] = made
        else:
            required.append(name)
        properties[name] = prop
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    schema: dict[str, Any] = {
        "type": "object",
        "description": doc,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema
