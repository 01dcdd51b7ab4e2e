"""Dotted version vector sets (Almeida, Baquero, Gonçalves, Preguiça, Fonte, 2012;
the ``dvvset`` of Riak), for leaderless replication (issue #9): one compact clock per
row that keeps exactly the concurrent versions — the siblings — and nothing a client
has already seen.

A clock is a list of entries ``(node, counter, values)`` sorted by node: ``node`` has
coordinated ``counter`` writes of the row, and ``values`` holds the still-live
versions among its latest ones, newest first — value i is the write numbered
``counter - i`` by that node (its *dot*). Plus ``anonymous`` values: versions written
without any causal history, kept until a later write supersedes them.

- ``join(clock)`` is the *context* a reader receives: what it has seen.
- ``update(new(context, value), clock, node)``: a write coordinated by ``node`` with
  the client's context: it supersedes every version in the context and none other
  (those stay, as siblings), and gets the next dot of ``node``.
- ``sync(a, b)``: what a replica keeps when it meets another replica's clock: every
  version either one holds that the other has not superseded.
- ``less(a, b)``: b has seen everything a has (b descends a).

Pure functions over frozen values; the values themselves are opaque here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Clock", "Entry", "equal", "join", "less", "new", "sync", "update", "values"]


@dataclass(frozen=True)
class Entry:
    node: str
    counter: int
    values: tuple[Any, ...] = ()  # live versions among the latest, newest first


@dataclass(frozen=True)
class Clock:
    entries: tuple[Entry, ...] = ()  # sorted by node
    anonymous: tuple[Any, ...] = ()


def new(context: Sequence[tuple[str, int]], value: Any) -> Clock:
    """A client's write: ``value`` after everything in ``context`` (join of a read)."""
    entries = tuple(Entry(node, counter) for node, counter in sorted(context))
    return Clock(entries, (value,))


def join(clock: Clock) -> list[tuple[str, int]]:
    """The version vector a reader gets as its context."""
    return [(e.node, e.counter) for e in clock.entries]


def values(clock: Clock) -> list[Any]:
    """Every live version: the siblings (one, unless writes were concurrent)."""
    return [v for e in clock.entries for v in e.values] + list(clock.anonymous)


def update(written: Clock, current: Clock, node: str) -> Clock:
    """``node`` coordinates the client write ``written`` (from ``new``) on a replica
    whose clock is ``current``: the result holds the new version, with a new dot of
    ``node``, and every version of ``current`` the client had not seen."""
    if len(written.anonymous) != 1:
        raise ValueError("update takes a clock made by new(context, value)")
    merged = sync(Clock(written.entries), current)
    return Clock(_event(merged.entries, node, written.anonymous[0]), merged.anonymous)


def sync(a: Clock, b: Clock) -> Clock:
    """Merge two replicas' clocks: keep every version not superseded by the other."""
    if a == b:
        return a
    if less(a, b):
        anonymous = b.anonymous
    elif less(b, a):
        anonymous = a.anonymous
    else:
        anonymous = _union(a.anonymous, b.anonymous)
    return Clock(_sync_entries(a.entries, b.entries), anonymous)


def less(a: Clock, b: Clock) -> bool:
    """True if ``b`` strictly descends ``a``: b has seen every write a has, and more."""
    return _greater(b.entries, a.entries)


def equal(a: Clock, b: Clock) -> bool:
    """Same causal history (the values may differ only if someone lied)."""
    return join(a) == join(b)


def reconcile(clock: Clock, node: str, merge: Callable[[list[Any]], Any]) -> Clock:
    """Collapse siblings into one version (``merge`` of all of them), as a write by
    ``node`` that has seen them all: last-writer-wins and similar policies."""
    return update(new(join(clock), merge(values(clock))), clock, node)


# ---- internals ----------------------------------------------------------------------


def _union(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    return a + tuple(v for v in b if v not in a)


def _event(entries: tuple[Entry, ...], node: str, value: Any) -> tuple[Entry, ...]:
    out: list[Entry] = []
    placed = False
    for entry in entries:
        if not placed and entry.node == node:
            out.append(Entry(node, entry.counter + 1, (value, *entry.values)))
            placed = True
        elif not placed and entry.node > node:
            out += [Entry(node, 1, (value,)), entry]
            placed = True
        else:
            out.append(entry)
    if not placed:
        out.append(Entry(node, 1, (value,)))
    return tuple(out)


def _sync_entries(a: tuple[Entry, ...], b: tuple[Entry, ...]) -> tuple[Entry, ...]:
    out: list[Entry] = []
    i = j = 0
    while i < len(a) and j < len(b):
        x, y = a[i], b[j]
        if x.node < y.node:
            out.append(x)
            i += 1
        elif x.node > y.node:
            out.append(y)
            j += 1
        else:
            out.append(_merge(x, y))
            i += 1
            j += 1
    return tuple(out + list(a[i:]) + list(b[j:]))


def _merge(x: Entry, y: Entry) -> Entry:
    """One node's entry from two replicas. Each knows writes 1..counter of the node;
    its values are the live ones among the last len(values). A value survives if the
    replica that knows more still holds it, or the other holds it and the first one
    never knew that write."""
    if x.counter < y.counter:
        x, y = y, x
    # x knows at least as many writes. A window of live values starts at
    # counter - len(values) + 1; everything before it is superseded, as far as that
    # replica knows.
    if x.counter - len(x.values) >= y.counter - len(y.values):
        return x  # y's live values are x's, or ones x knows were superseded
    # x still holds values that y knows were superseded: drop them.
    keep = x.counter - y.counter + len(y.values)
    return Entry(x.node, x.counter, x.values[:keep])


def _greater(a: tuple[Entry, ...], b: tuple[Entry, ...]) -> bool:
    """a has seen everything b has, and strictly more."""
    strict = False
    i = j = 0
    while i < len(a) and j < len(b):
        x, y = a[i], b[j]
        if x.node == y.node:
            if x.counter < y.counter:
                return False
            strict |= x.counter > y.counter
            i += 1
            j += 1
        elif x.node < y.node:
            strict = True  # a knows a node b does not
            i += 1
        else:
            return False  # b knows a node a does not
    if j < len(b):
        return False
    return strict or i < len(a)
