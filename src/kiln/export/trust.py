"""Which code a package may name: a package is data, and nothing it names is imported unless it is trusted.

A package's ``spec.json`` names the factory that rebuilds its module for the torch runtime
(``"mypkg.nets:Net"``). Importing that module runs its import-time code and calling the factory runs more, so a
package from somewhere else could run anything (``"os:system"``). kiln imports a factory only when it is:

1. kiln's own (the ``nn.Sequential`` describer),
2. declared by an installed distribution under the entry-point group ``kiln.factories`` (installing a package is
   the user's decision to trust it; reading entry points imports nothing), or
3. named by the user at load time: ``trust=["mypkg"]`` (``--trust mypkg`` on the command line, ``KILN_TRUST`` for
   servers) trusts the module ``mypkg`` and everything below it (``mypkg.nets``), not ``mypkgevil``.

Everything else is refused by name, before ``importlib`` sees it. The same trust list admits ONNX operator domains
other than the standard ones (see :mod:`kiln.store.onnx_check`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from ..errors import ConfigError, IntegrityError, KilnError, TrustError

if TYPE_CHECKING:
    from ..store import ModelVersion, Store

__all__ = [
    "ENTRY_POINT_GROUP",
    "FACTORY_PATTERN",
    "FactoryTrust",
    "check_factory",
    "check_trust",
    "env_trust",
    "require_trusted",
    "trusted_by",
    "version_trust",
]

ENTRY_POINT_GROUP = "kiln.factories"
# kiln.export.sequential.FACTORY, spelled out: this module stays free of torch (the server's ONNX path uses it).
KILN_FACTORIES = frozenset({"kiln.export.sequential:sequential"})
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", re.ASCII)
FACTORY_PATTERN = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", re.ASCII)


def check_trust(trust: Iterable[str] | str | None) -> tuple[str, ...]:
    """``trust`` as a tuple of dotted module names; ConfigError for anything else (a typo must not trust more)."""
    if trust is None:
        return ()
    if isinstance(trust, str):
        raise ConfigError(f"trust must be a list of module names, e.g. trust=[{trust!r}]; got the string {trust!r}.")
    names = tuple(trust)
    for name in names:
        if not isinstance(name, str) or not _DOTTED.fullmatch(name):
            raise ConfigError(f"trust entries are dotted module names such as 'mypkg' or 'mypkg.nets'; got {name!r}.")
    return names


def check_factory(path: object, *, label: str) -> str:
    """``path`` when it is a string of the form ``package.module:function``; IntegrityError otherwise."""
    if not isinstance(path, str) or not FACTORY_PATTERN.fullmatch(path):
        raise IntegrityError(f"{label}: the package's factory {path!r} is not of the form 'package.module:function'.")
    return path


def env_trust() -> tuple[str, ...]:
    """The modules ``KILN_TRUST`` names (comma-separated), for servers started by a process supervisor."""
    raw = os.environ.get("KILN_TRUST", "")
    return check_trust(part.strip() for part in raw.split(",") if part.strip())


def _entry_point_factories() -> list[tuple[str, str]]:
    """(value, distribution) for every ``kiln.factories`` entry point; reads metadata only, imports nothing."""
    found = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry.dist.name if entry.dist is not None else "an installed distribution"
        found.append((entry.value.replace(" ", ""), dist))
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def trusted_by(factory: str, trust: Sequence[str] = ()) -> str | None:
    """Why ``factory`` (``"pkg.mod:name"``) may be imported, or None when nothing trusts it.

    Example:
        >>> trusted_by("kiln.export.sequential:sequential")
        "kiln's own"
        >>> trusted_by("mypkg.nets:Net", ["mypkg"]), trusted_by("os:system", ["mypkg"])
        ("trust=['mypkg']", None)
    """
    if factory in KILN_FACTORIES:
        return "kiln's own"
    module = factory.partition(":")[0]
    for prefix in trust:
        if _under(module, prefix):
            return f"trust=[{prefix!r}]"
    for value, dist in _entry_point_factories():
        if value == factory or (":" not in value and _under(module, value)):
            return f"entry point {ENTRY_POINT_GROUP} of {dist}"
    return None


def require_trusted(factory: str, trust: Sequence[str], *, label: str) -> None:
    """Raise TrustError, naming the factory and every way to trust it, unless :func:`trusted_by` finds a reason."""
    if trusted_by(factory, trust) is None:
        module = factory.partition(":")[0]
        top = module.split(".")[0]
        raise TrustError(
            f"{label} names the factory {factory!r}, which is not trusted here, so kiln will not import or call it "
            f"(a package is data; importing a module runs its code). If you trust the code of {module!r}, load with "
            f"trust=[{top!r}] (command line: --trust {top}; servers: KILN_TRUST={top}), or declare it under the "
            f"{ENTRY_POINT_GROUP!r} entry point of an installed distribution. Or use runtime='onnx', which runs "
            "the package's ONNX graph and imports nothing."
        )


@dataclass(frozen=True)
class FactoryTrust:
    """What a version's spec names as its factory (None: ONNX only, or a malformed spec) and why it is trusted."""

    reference: str
    factory: str | None
    trusted_by: str | None
    problem: str | None = None

    @property
    def untrusted(self) -> bool:
        return self.factory is not None and self.trusted_by is None

    def describe(self) -> str:
        if self.problem is not None:
            return f"{self.reference}: factory unreadable ({self.problem})"
        if self.factory is None:
            return f"{self.reference}: no factory (onnxruntime only)"
        verdict = f"trusted ({self.trusted_by})" if self.trusted_by else "untrusted (loads with onnxruntime only)"
        return f"{self.reference}: factory {self.factory} {verdict}"


def version_trust(store: Store, versions: Iterable[ModelVersion], trust: Sequence[str] = ()) -> list[FactoryTrust]:
    """For each version, its factory and whether this environment trusts it; reads ``spec.json``, imports nothing.

    Example:
        >>> [t.describe() for t in version_trust(store, store.versions("digits"))]
        ['digits@1: factory kiln.export.sequential:sequential trusted (kiln's own)']
    """
    found = []
    for version in versions:
        try:
            spec = json.loads(bytes(store.read(version, "spec.json")))
            factory = spec.get("module") if isinstance(spec, dict) else None
            if factory is not None:
                check_factory(factory, label=version.reference)
        except (KilnError, ValueError) as error:
            found.append(FactoryTrust(version.reference, None, None, problem=str(error)))
            continue
        found.append(FactoryTrust(version.reference, factory, trusted_by(factory, trust) if factory else None))
    return found
