"""Custom conflict resolvers for multi-leader tables (``--resolve TABLE=custom:NAME``).

A resolver receives the table's name and the two conflicting versions of a row, as
dicts of column -> value (None for a deleted row), the older first by hybrid
timestamp, and returns the row to keep (a dict with every column, the key unchanged)
or None to delete it. Every node calls it with the same pair in the same order, so a
deterministic resolver gives every node the same row; with three or more concurrent
writes the merges happen in different orders on different nodes, so a resolver must
also be commutative and associative (a merge: a max, a sum of increments, a union)
for the nodes to converge. Register resolvers in a module and name it to
``replidb serve --resolvers MODULE``::

    from replidb.multileader import register_resolver

    @register_resolver("max_stock")
    def max_stock(table, older, newer):
        if older is None or newer is None:
            return older or newer   # a delete loses against an update
        return {**newer, "stock": max(older["stock"], newer["stock"])}
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["RESOLVERS", "Resolver", "load_resolvers", "register_resolver"]

Resolver = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], dict[str, Any] | None]

RESOLVERS: dict[str, Resolver] = {}


def register_resolver(name: str) -> Callable[[Resolver], Resolver]:
    """Decorator: make ``function`` available as ``custom:NAME``."""
    if not name.isidentifier():
        raise ValueError(f"resolver name {name!r} must be an identifier")

    def register(function: Resolver) -> Resolver:
        RESOLVERS[name] = function
        return function

    return register


def load_resolvers(modules: list[str]) -> dict[str, Resolver]:
    """Import each module (which registers its resolvers); every resolver known."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"cannot import resolver module {module!r}: {exc}") from None
    return dict(RESOLVERS)
