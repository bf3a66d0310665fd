"""``kiln models rollback``: move an alias back to the version it pointed at before, from the alias history.

The history is read as a stack of holders: a promotion pushes the new version; a move back to the holder before
the current one (an earlier rollback, or the same promote by hand) pops. So rolling back twice after promoting
1, 2, 3 gives 2 then 1, not 2 then 3. Removing the alias empties the stack. The rollback itself is one ordinary
promotion, so it is recorded in the alias history like any other move (``kiln models show NAME``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import NotFoundError, StoreError
from ..store import AliasMove, Store
from ..store.names import check_alias, check_name

__all__ = ["RollbackResult", "holders", "rollback"]


@dataclass(frozen=True)
class RollbackResult:
    """An alias moved back: ``name@alias`` from ``previous`` (the holder before) to ``version``."""

    name: str
    alias: str
    version: int
    previous: int


def holders(moves: Sequence[AliasMove], alias: str) -> list[int]:
    """The stack of versions ``alias`` went through, oldest first, with undone promotions popped."""
    stack: list[int] = []
    for move in moves:
        if move.alias != alias:
            continue
        if move.new_version is None:
            stack = []
        elif len(stack) >= 2 and stack[-2] == move.new_version:
            stack.pop()
        elif not stack or stack[-1] != move.new_version:
            stack.append(move.new_version)
    return stack


def rollback(
    name: str, *, alias: str = "production", store: Store | str | os.PathLike[str] | None = None
) -> RollbackResult:
    """Point ``name@alias`` back at its previous holder and return what moved.

    Example:
        >>> rollback("digits", alias="production", store=".kiln")
        RollbackResult(name='digits', alias='production', version=3, previous=4)
    """
    check_name(name)
    check_alias(alias)
    opened = store if isinstance(store, Store) else Store(store, create=False)
    stack = holders(opened.alias_history(name), alias)
    current = opened.version(f"{name}@{alias}").version  # NotFoundError names the missing model or alias
    if len(stack) < 2 or stack[-1] != current:
        raise StoreError(
            f"{name}@{alias} has no earlier holder to roll back to (its history: "
            f"{' -> '.join(map(str, stack)) or 'none'}); point it with kiln models promote"
        )
    target = stack[-2]
    try:
        opened.version(f"{name}@{target}")
    except NotFoundError:
        raise StoreError(
            f"cannot roll {name}@{alias} back to version {target}: that version was deleted; point it "
            f"with kiln models promote {name} VERSION {alias}"
        ) from None
    moved_from = opened.promote(name, target, alias)
    return RollbackResult(name, alias, target, moved_from if moved_from is not None else current)
