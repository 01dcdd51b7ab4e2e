"""Multi-leader replication (issue #8): one node's part of the mesh, as a pure state
machine.

Every node takes writes locally. Each committed local transaction becomes a
``Change`` tagged with its origin, the origin's next sequence number, a hybrid
logical clock timestamp (core/hlc.py) and its dependencies — the origin's applied
vector when it committed — and travels to the other nodes, which apply it.

Inputs: ``stamp``/``committed`` (a local write), ``step(message, now_ms)``,
``tick(now_ms)``. Output: ``ready()``, one batch the caller handles in this order —
apply ``deliver`` durably (each change's rows, the change itself into the node's mesh
log, and the applied vector, in one transaction), then send ``messages`` — and then
calls ``advance()``, which sends what the applied changes made newly available.

Rules this module owns:

- Exactly once: a node applies change (origin, seq) only when its applied vector
  holds seq - 1 for that origin; anything at or below it is a duplicate, dropped.
- Causal delivery: a change is applied only once every one of its dependencies is, so
  an update never applies before the insert it depends on, however links reorder.
  Changes that arrive early wait in a bounded buffer (overflow is dropped: the
  sender resends everything not acknowledged).
- Topologies decide who sends to whom and what: ``all-to-all`` — every node sends its
  own changes to every other; ``star`` — leaves send their own changes to the hub,
  which forwards everything to every leaf; ``ring`` — each node sends everything to
  its successor. A change is never sent back to its origin, and a receiver drops what
  it already has, so nothing loops. In a ring, a dead node stops the flow past it
  until it returns (docs/multi-leader.md).
- Flow: a node sends in the order it applied changes itself (its mesh log), so a
  receiver can apply a batch as it comes: the dependencies of each change precede it
  (sending origin by origin livelocked a star and a ring on a small batch size: a
  batch of changes whose dependencies were never in it). Per link, one batch in
  flight; the receiver answers every batch with its applied vector (an ack), which is
  also how a sender learns, after either side restarts, where to resume. A batch not
  acknowledged within ``resend_ticks`` is sent again from the first change the
  receiver lacks. Idle links carry an empty batch every ``heartbeat_ticks``.
- Clock skew: every message carries the sender's physical clock. A message whose
  clock differs from ours by more than ``max_skew_ms`` is refused (named in
  ``Ready.refused``, not acknowledged), and so is a change stamped further than that
  ahead of our clock: its timestamp would win every last-writer-wins conflict.
- Conflicts (``decide``): a remote row change conflicts when the row's current
  version here is not the version its origin overwrote (someone else wrote the row
  concurrently); whether or not it conflicts, it wins if its timestamp is the larger
  — (wall, logical, origin) totally orders them — so every node keeps the same row.

No I/O, no clock (time is passed in), no randomness; peers are visited in sorted order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from replidb.core.hlc import HLC, HybridClock

__all__ = [
    "TOPOLOGIES",
    "Change",
    "ChangeAck",
    "ChangeBatch",
    "Mesh",
    "MeshConfig",
    "MeshLogReader",
    "MeshMessage",
    "MeshReady",
    "decide",
    "forwards",
    "out_links",
]

TOPOLOGIES = ("all-to-all", "star", "ring")


class Change(msgspec.Struct, frozen=True, array_like=True):
    """One committed transaction of ``origin``, as it travels and is logged."""

    origin: str
    seq: int
    wall_ms: int
    logical: int
    deps: dict[str, int]  # the origin's applied vector when it committed (others only)
    data: bytes  # the row changes, opaque here (storage/mesh_store.py)

    @property
    def hlc(self) -> HLC:
        return HLC(self.wall_ms, self.logical, self.origin)


class ChangeBatch(msgspec.Struct, frozen=True, tag="ml_changes"):
    sender: str
    sent_ms: int  # the sender's physical clock (skew check)
    changes: tuple[Change, ...] = ()


class ChangeAck(msgspec.Struct, frozen=True, tag="ml_ack"):
    sender: str
    sent_ms: int
    applied: dict[str, int]  # the sender's applied vector


MeshMessage = ChangeBatch | ChangeAck


class MeshLogReader(Protocol):
    """The node's mesh log: every change it applied (its own and others'), numbered in
    the order it applied them (positions 1, 2, ...)."""

    def scan(self, after: int, limit: int) -> list[tuple[int, Change]]:
        """Up to ``limit`` (position, change) pairs after position ``after``."""
        ...

    def position(self, origin: str, seq: int) -> int:
        """Where change (origin, seq) is in the log (0 if it is not)."""
        ...


def out_links(node: str, nodes: Sequence[str], topology: str, hub: str) -> list[str]:
    """The nodes ``node`` sends changes to."""
    ordered = sorted(nodes)
    if topology == "all-to-all":
        return [n for n in ordered if n != node]
    if topology == "star":
        return [n for n in ordered if n != node] if node == hub else [hub]
    if topology == "ring":
        return [ordered[(ordered.index(node) + 1) % len(ordered)]] if len(ordered) > 1 else []
    raise ValueError(f"unknown topology {topology!r}: choose {', '.join(TOPOLOGIES)}")


def forwards(node: str, origin: str, to: str, topology: str, hub: str) -> bool:
    """Does ``node`` send ``origin``'s changes to ``to``?"""
    if origin == to:
        return False  # never back to where it came from
    if topology == "all-to-all" or (topology == "star" and node != hub):
        return origin == node
    return True  # the hub of a star, and every node of a ring, pass everything on


def decide(current: HLC | None, base: HLC | None, incoming: HLC) -> tuple[bool, bool]:
    """For one remote row change: (does it win, is it a conflict). ``current``: the
    row's version here (None: never written); ``base``: the version the origin
    overwrote; ``incoming``: the change's own timestamp."""
    return current is None or incoming > current, current != base


@dataclass(frozen=True)
class MeshConfig:
    node_id: str
    nodes: tuple[str, ...]  # every node of the mesh, this one included
    topology: str = "all-to-all"
    hub: str = ""  # star only; default: the first node in sorted order
    max_skew_ms: int = 500
    heartbeat_ticks: int = 2
    resend_ticks: int = 10
    max_batch: int = 256
    max_pending: int = 10_000

    @property
    def star_hub(self) -> str:
        return self.hub or sorted(self.nodes)[0]


@dataclass(frozen=True)
class MeshReady:
    deliver: tuple[Change, ...]
    messages: tuple[tuple[str, MeshMessage], ...]
    refused: tuple[str, ...]  # why messages or changes were refused (clock skew)


@dataclass
class _Link:
    """What we know of one node we send to."""

    known: bool = False  # has it told us its applied vector since we (re)started?
    acked: dict[str, int] = field(default_factory=dict)
    cursor: int = 0  # our log position up to which it has been sent what it lacks
    in_batch: dict[str, int] = field(default_factory=dict)  # per origin, the last sent
    inflight: bool = False
    waited: int = 0  # ticks since the batch in flight left
    idle: int = 0  # ticks since anything left


class Mesh:
    def __init__(
        self,
        config: MeshConfig,
        log: MeshLogReader,
        applied: dict[str, int] | None = None,
        last_hlc: HLC | None = None,
    ) -> None:
        if config.topology not in TOPOLOGIES:
            raise ValueError(
                f"unknown topology {config.topology!r}: choose {', '.join(TOPOLOGIES)}"
            )
        if config.node_id not in config.nodes:
            raise ValueError(f"{config.node_id!r} is not one of the mesh's nodes")
        self.config = config
        self.id = config.node_id
        self._log = log
        self.applied: dict[str, int] = {n: 0 for n in sorted(config.nodes)}
        self.applied.update(applied or {})
        self.clock = HybridClock(self.id, config.max_skew_ms, last_hlc)
        hub = config.star_hub
        self._links = {  # (idle from the start: the first tick asks where each one is)
            n: _Link(idle=config.heartbeat_ticks)
            for n in out_links(self.id, config.nodes, config.topology, hub)
        }
        self._pending: dict[str, dict[int, Change]] = {}
        self._deliver: list[Change] = []
        self._messages: list[tuple[str, MeshMessage]] = []
        self._refused: list[str] = []
        self._now_ms = 0
        self.duplicates = 0  # changes received that were already applied
        self.refusals = 0

    # ---- local writes ------------------------------------------------------------

    def stamp(self, now_ms: int) -> tuple[int, HLC, dict[str, int]]:
        """For a local transaction about to run: its (seq, timestamp, dependencies)."""
        self._now_ms = now_ms
        deps = {o: s for o, s in self.applied.items() if o != self.id and s > 0}
        return self.applied[self.id] + 1, self.clock.tick(now_ms), deps

    def committed(self, change: Change) -> None:
        """The caller stored our local ``change`` (rows, log, vector) durably."""
        if change.origin != self.id or change.seq != self.applied[self.id] + 1:
            raise ValueError(
                f"local change {change.origin}:{change.seq} is not the next one "
                f"({self.id}:{self.applied[self.id] + 1})"
            )
        self.applied[self.id] = change.seq

    # ---- network and time ----------------------------------------------------------

    def step(self, message: MeshMessage, now_ms: int) -> None:
        self._now_ms = now_ms
        skew = message.sent_ms - now_ms
        if abs(skew) > self.config.max_skew_ms:
            self._refuse(
                f"{message.sender}'s clock is {abs(skew)} ms "
                f"{'ahead of' if skew > 0 else 'behind'} ours (more than the allowed "
                f"{self.config.max_skew_ms} ms): its messages are refused until the "
                "clocks agree"
            )
            return
        if isinstance(message, ChangeBatch):
            self._on_batch(message, now_ms)
        else:
            self._on_ack(message)

    def tick(self, now_ms: int) -> None:
        self._now_ms = now_ms
        for to, link in sorted(self._links.items()):
            link.idle += 1
            if link.inflight:
                link.waited += 1
                if link.waited >= self.config.resend_ticks:  # presumed lost: again
                    link.inflight = False
                    self._rewind(to, link)
            if not self._send(to, link) and link.idle >= self.config.heartbeat_ticks:
                self._emit(to, ChangeBatch(self.id, now_ms))
        self._deliver_ready(now_ms)

    def advance(self) -> None:
        """After the caller handled a Ready: pass on what is newly applied."""
        for to, link in sorted(self._links.items()):
            self._send(to, link)

    def has_ready(self) -> bool:
        return bool(self._deliver or self._messages or self._refused)

    def ready(self) -> MeshReady:
        ready = MeshReady(tuple(self._deliver), tuple(self._messages), tuple(self._refused))
        self._deliver, self._messages, self._refused = [], [], []
        return ready

    @property
    def pending(self) -> int:
        """Changes received early, waiting for their dependencies."""
        return sum(len(p) for p in self._pending.values())

    def link_state(self) -> dict[str, dict[str, int]]:
        """Per node we send to: what it has acknowledged (status)."""
        return {to: dict(link.acked) for to, link in sorted(self._links.items())}

    # ---- internals ----------------------------------------------------------------

    def _refuse(self, why: str) -> None:
        self.refusals += 1
        self._refused.append(why)

    def _emit(self, to: str, message: MeshMessage) -> None:
        self._messages.append((to, message))
        link = self._links.get(to)
        if link is not None:
            link.idle = 0

    def _on_batch(self, batch: ChangeBatch, now_ms: int) -> None:
        for change in batch.changes:
            if self.applied.get(change.origin, 0) >= change.seq:
                self.duplicates += 1
                continue
            ahead = change.wall_ms - now_ms
            if ahead > self.config.max_skew_ms:
                self._refuse(
                    f"change {change.origin}:{change.seq} is stamped {ahead} ms ahead of "
                    f"our clock (more than {self.config.max_skew_ms} ms): refused for now"
                )
                continue
            waiting = self._pending.setdefault(change.origin, {})
            if change.seq not in waiting and self.pending < self.config.max_pending:
                waiting[change.seq] = change
        self._deliver_ready(now_ms)
        # Answer with what we hold once this Ready is applied (the caller's order).
        self._messages.append((batch.sender, ChangeAck(self.id, now_ms, dict(self.applied))))

    def _on_ack(self, ack: ChangeAck) -> None:
        link = self._links.get(ack.sender)
        if link is None:
            return  # we do not send to it (a ring's successor is answered, not fed)
        for origin, seq in ack.applied.items():
            if seq > link.acked.get(origin, 0):
                link.acked[origin] = seq
        if not link.known:  # (after a restart, of either side): resume where it is
            link.known = True
            self._rewind(ack.sender, link)
        elif link.inflight and all(link.acked.get(o, 0) >= s for o, s in link.in_batch.items()):
            link.inflight = False
            link.waited = 0
        self._send(ack.sender, link)

    def _rewind(self, to: str, link: _Link) -> None:
        """Send again from the first change ``to`` lacks."""
        config = self.config
        starts = [
            self._log.position(origin, link.acked.get(origin, 0) + 1)
            for origin, have in self.applied.items()
            if have > link.acked.get(origin, 0)
            and forwards(self.id, origin, to, config.topology, config.star_hub)
        ]
        firsts = [p for p in starts if p > 0]
        link.cursor = min(firsts) - 1 if firsts else self._end()

    def _end(self) -> int:
        return sum(self.applied.values())  # every applied change is in the log once

    def _send(self, to: str, link: _Link) -> bool:
        """Send ``to`` the next batch it lacks, if none is in flight; True if sent."""
        if not link.known or link.inflight:
            return False
        config = self.config
        changes: list[Change] = []
        # Scan a bounded stretch: a log mostly of changes this link does not carry
        # (all-to-all forwards only our own) is skipped a stretch per call.
        for position, change in self._log.scan(link.cursor, config.max_batch * 8):
            link.cursor = position
            if change.seq > link.acked.get(change.origin, 0) and forwards(
                self.id, change.origin, to, config.topology, config.star_hub
            ):
                changes.append(change)
                if len(changes) >= config.max_batch:
                    break
        if not changes:
            return False
        link.inflight = True
        link.waited = 0
        link.in_batch = {}
        for change in changes:
            link.in_batch[change.origin] = change.seq
        self._emit(to, ChangeBatch(self.id, self._now_ms, tuple(changes)))
        return True

    def _deliver_ready(self, now_ms: int) -> None:
        progress = True
        while progress:
            progress = False
            for origin in sorted(self._pending):
                waiting = self._pending[origin]
                for seq in [s for s in waiting if s <= self.applied.get(origin, 0)]:
                    del waiting[seq]  # delivered meanwhile (another copy)
                change = waiting.get(self.applied.get(origin, 0) + 1)
                if change is None or any(
                    self.applied.get(o, 0) < s for o, s in change.deps.items()
                ):
                    continue
                if change.wall_ms - now_ms > self.config.max_skew_ms:
                    continue  # (our clock stepped back since it arrived)
                self.clock.receive(change.hlc, now_ms)
                del waiting[change.seq]
                self.applied[origin] = change.seq
                self._deliver.append(change)
                progress = True
        self._pending = {o: w for o, w in self._pending.items() if w}
