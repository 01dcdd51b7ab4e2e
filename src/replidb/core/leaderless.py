"""Leaderless (Dynamo-style) replication, issue #9: the client's side of one read or
write, as pure state machines, and what a replica does with each message.

Every key lives on N replicas (``core.hashring``); each keeps one dotted version vector
set per key (``core.dvv``): the concurrent versions — siblings — and nothing older.

- **Write** (``WriteOp``): the client sends the value and the context it read to one
  preferred replica, which *coordinates*: it stamps a new dot (``dvv.update``) and
  answers with the resulting clock; the client sends that clock to the other N - 1
  (``Replicate``), and the write succeeds once W replicas hold it (the coordinator
  counts). A coordinator that does not answer is replaced by the next preferred one.
  With ``sloppy``, replicas that do not answer in time are replaced by the next live
  nodes past the preference list, which keep the clock as a *hint* for the missing
  replica and hand it over when it returns; a strict quorum counts preferred
  replicas only.
- **Read** (``ReadOp``): ask all N, and once R have answered, merge their clocks
  (``dvv.sync``); every answering replica that is behind the merge gets it back
  (*read repair*), and the read returns only once those repairs are acknowledged, so
  a later quorum read cannot see less (monotonic reads). It returns the siblings and
  the context for a write that resolves them.
- A deletion is a write of a tombstone value (None): it supersedes what its context
  saw, conflicts like any write, and reads treat a tombstone-only result as absent.
  Purging a tombstone forgets the key's counters, so a replica that purged must
  coordinate as a new actor afterwards (dots never repeat: a context read before the
  purge would cover a write made after it), and must drop late copies of what the
  tombstone superseded (``superseded_by_purge``).

No I/O, no clock: the caller delivers messages and calls ``timeout()`` when it gives
up waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from replidb.core import dvv
from replidb.core.hashring import HashRing

__all__ = [
    "CoordPut",
    "Get",
    "ReadOp",
    "Replicate",
    "Reply",
    "WriteOp",
    "coordinate",
    "present",
    "receive",
    "superseded_by_purge",
]


@dataclass(frozen=True)
class Get:
    op: int
    key: bytes


@dataclass(frozen=True)
class CoordPut:
    op: int
    key: bytes
    context: tuple[tuple[str, int], ...]
    value: Any  # None: a deletion (tombstone)


@dataclass(frozen=True)
class Replicate:
    op: int
    key: bytes
    clock: dvv.Clock
    hint_for: str = ""  # held for this replica, which was down (sloppy quorum)


@dataclass(frozen=True)
class Reply:
    """A replica's answer to any of the above: its clock for the key after the request."""

    op: int
    sender: str
    key: bytes
    clock: dvv.Clock


# ---- the replica's side --------------------------------------------------------------


def coordinate(current: dvv.Clock | None, put: CoordPut, node: str) -> dvv.Clock:
    """The clock a coordinating replica stores (and answers) for a client's write."""
    return dvv.update(dvv.new(list(put.context), put.value), current or dvv.Clock(), node)


def receive(current: dvv.Clock | None, clock: dvv.Clock) -> dvv.Clock:
    """What a replica keeps when another replica's clock for the key arrives."""
    return clock if current is None else dvv.sync(current, clock)


def superseded_by_purge(clock: dvv.Clock, purged: dvv.Clock | None) -> bool:
    """A copy of the key arriving after its tombstone was purged that the tombstone
    had already superseded (a late replicate, a read repair begun before the purge):
    dropped, or it would bring the deleted row back."""
    return purged is not None and (dvv.less(clock, purged) or dvv.equal(clock, purged))


def present(clock: dvv.Clock) -> list[Any]:
    """The live values a reader sees: the siblings, tombstones left out."""
    return [v for v in dvv.values(clock) if v is not None]


# ---- the client's side ---------------------------------------------------------------


@dataclass
class WriteOp:
    op: int
    key: bytes
    value: Any
    context: Sequence[tuple[str, int]]
    ring: HashRing
    n: int
    w: int
    sloppy: bool = False
    down: frozenset[str] = frozenset()  # nodes the client believes down
    done: bool = False
    ok: bool = False
    clock: dvv.Clock | None = None
    coordinator: str = ""
    acked: set[str] = field(default_factory=set)  # replicas (or stand-ins) holding it
    _tried: list[str] = field(default_factory=list)
    _sent: dict[str, str] = field(default_factory=dict)  # node -> for whom

    def start(self) -> list[tuple[str, Any]]:
        return self._coordinate()

    def _preferred(self) -> list[str]:
        return self.ring.preference_list(self.key, self.n)

    def _coordinate(self) -> list[tuple[str, Any]]:
        for node in self._preferred():
            if node not in self._tried and node not in self.down:
                self._tried.append(node)
                self.coordinator = node
                return [(node, CoordPut(self.op, self.key, tuple(self.context), self.value))]
        self.done = True  # nobody left to coordinate: failed (nothing was written)
        return []

    def on_reply(self, reply: Reply) -> list[tuple[str, Any]]:
        if self.done:
            return []
        if self.clock is None:
            if reply.sender != self.coordinator:
                return []
            self.clock = reply.clock
            self.acked.add(reply.sender)
            out = [
                (node, Replicate(self.op, self.key, self.clock))
                for node in self._preferred()
                if node != self.coordinator
            ]
            self._sent = {node: node for node, _ in out}
            return self._finish(out)
        if reply.sender in self._sent:
            self.acked.add(reply.sender)
        return self._finish([])

    def _finish(self, out: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        preferred = set(self._preferred())
        counted = self.acked if self.sloppy else self.acked & preferred
        if len(counted) >= self.w:
            self.done = self.ok = True
        return out

    def timeout(self) -> list[tuple[str, Any]]:
        """Waited long enough: try another coordinator, or (sloppy) stand-ins."""
        if self.done:
            return []
        if self.clock is None:
            return self._coordinate()
        if not self.sloppy:
            self.done = True  # strict: too few preferred replicas answered
            return []
        missing = [n for n in self._preferred() if n not in self.acked]
        down = set(missing) | set(self.down)
        out: list[tuple[str, Any]] = []
        for node, for_whom in self.ring.sloppy_list(self.key, self.n, down):
            if node != for_whom and node not in self._sent:
                self._sent[node] = for_whom
                out.append((node, Replicate(self.op, self.key, self.clock, for_whom)))
        if not out:
            self.done = True
        return out


@dataclass
class ReadOp:
    op: int
    key: bytes
    ring: HashRing
    n: int
    r: int
    done: bool = False
    ok: bool = False
    clock: dvv.Clock | None = None  # the merged result
    replies: dict[str, dvv.Clock] = field(default_factory=dict)
    _repairing: set[str] = field(default_factory=set)

    def start(self) -> list[tuple[str, Any]]:
        return [
            (node, Get(self.op, self.key)) for node in self.ring.preference_list(self.key, self.n)
        ]

    def on_reply(self, reply: Reply) -> list[tuple[str, Any]]:
        if self.done:
            return []
        if self.clock is not None:  # a repair acknowledged (or a late answer)
            self._repairing.discard(reply.sender)
            if reply.sender not in self.replies:
                self.replies[reply.sender] = reply.clock
            self.done = self.ok = not self._repairing
            return []
        self.replies[reply.sender] = reply.clock
        if len(self.replies) < self.r:
            return []
        merged = dvv.Clock()
        for clock in self.replies.values():
            merged = dvv.sync(merged, clock)
        self.clock = merged
        stale = [node for node, clock in sorted(self.replies.items()) if clock != merged]
        self._repairing = set(stale)
        self.done = self.ok = not stale
        return [(node, Replicate(self.op, self.key, merged)) for node in stale]

    def timeout(self) -> list[tuple[str, Any]]:
        self.done = True  # too few answers, or repairs unacknowledged: not ok
        return []

    @property
    def values(self) -> list[Any]:
        return present(self.clock) if self.clock is not None else []

    @property
    def context(self) -> list[tuple[str, int]]:
        return dvv.join(self.clock) if self.clock is not None else []
