"""Deterministic simulator for leaderless replication (issue #9): the real client
operations (``core.leaderless``), real dotted version vectors and hash ring, replicas
with a model store, a simulated network with delays, loss and partitions, crashes,
hinted handoff and Merkle-tree anti-entropy. One seed decides everything.

Clients read a key and write a new value (or a deletion) with the context they read;
some write blind, making siblings. Outcomes are recorded: a write is acknowledged,
failed (nothing was sent to a coordinator) or unknown (possibly applied).

Checked (``check_history``, also usable on histories recorded elsewhere):
- with strict quorums and R + W > N, a read that starts after a write was
  acknowledged returns it or a version that causally follows it;
- at the end, after healing, hinted handoff and anti-entropy, all N replicas of each
  key hold the same clock, and every acknowledged write is among its siblings or
  causally superseded by one of them (a deletion included: deleted rows never come
  back unless a later write put them back).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from replidb.core import dvv
from replidb.core.hashring import HashRing
from replidb.core.leaderless import (
    CoordPut,
    Get,
    ReadOp,
    Replicate,
    Reply,
    WriteOp,
    coordinate,
    receive,
    superseded_by_purge,
)
from replidb.core.merkle import MerkleTree, bucket_of
from replidb.testing.events import EventQueue
from replidb.testing.seeds import report_seeds

__all__ = [
    "Event",
    "LeaderlessResult",
    "check_history",
    "main_leaderless_sim",
    "run_leaderless",
    "stale_reads",
]

TICK = 10
SAFETY_STEPS = 3000
HINT_WINDOW = 2000  # time units a hint is kept
# A key whose replicas all hold the same tombstone-only clock, with no hint for it
# anywhere, is purged once its clock has not changed for this long: longer than any
# message can still be on its way (a late copy of an older write would otherwise
# bring the deleted row back).
TOMBSTONE_GRACE = 1000
SLOW_WRITES = 0.1  # reads whose write back comes after a pause longer than the grace


@dataclass(frozen=True)
class Params:
    nodes: int
    n: int
    r: int
    w: int
    sloppy: bool
    keys: int
    clients: int
    loss: float
    max_delay: int
    fault_rate: float

    @staticmethod
    def for_seed(seed: int, r: int | None = None, w: int | None = None) -> Params:
        rng = random.Random(f"leaderless-params-{seed}")
        nodes = rng.choice((3, 4, 5))
        n = 3
        quorum = n // 2 + 1
        return Params(
            nodes=nodes,
            n=n,
            r=quorum if r is None else r,
            w=quorum if w is None else w,
            sloppy=rng.random() < 0.3,
            keys=rng.choice((2, 4, 8)),
            clients=rng.choice((2, 3, 4)),
            loss=rng.choice((0.0, 0.02, 0.1)),
            max_delay=rng.choice((2, 20, 50)),
            fault_rate=rng.choice((0.02, 0.05, 0.1)),
        )


@dataclass
class Event:
    """One client operation in the history."""

    kind: str  # "read" | "write"
    key: bytes
    start: int
    end: int = -1
    outcome: str = "pending"  # ok | failed | unknown
    value: Any = None  # write: the value written (None: a deletion)
    tag: str = ""  # write: unique name of the value
    context_tags: frozenset[str] = frozenset()  # write: what its context had seen
    seen: tuple[str, ...] = ()  # read: the sibling tags returned


@dataclass
class _Replica:
    id: str
    store: dict[bytes, dvv.Clock] = field(default_factory=dict)
    hints: list[tuple[str, bytes, dvv.Clock, int]] = field(default_factory=list)
    up: bool = True
    purged: dict[bytes, tuple[dvv.Clock, int]] = field(default_factory=dict)  # (clock, when)
    incarnation: int = 0  # a new one after every purge: dots never repeat

    @property
    def actor(self) -> str:
        return f"{self.id}.{self.incarnation}"


@dataclass
class LeaderlessResult:
    seed: int
    params: Params
    ops: int = 0
    writes_ok: int = 0
    reads_ok: int = 0
    unknown: int = 0
    siblings_seen: int = 0
    repairs: int = 0
    hints_handed: int = 0
    ae_repairs: int = 0
    purged: int = 0
    violations: list[str] = field(default_factory=list)
    stale: int = 0  # reads missing an earlier acknowledged write (expected if R + W <= N)
    trace: list[str] = field(default_factory=list)

    def summary(self) -> str:
        p = self.params
        return (
            f"seed {self.seed}: {'ok' if not self.violations else 'VIOLATION'} "
            f"nodes={p.nodes} N={p.n} R={p.r} W={p.w} sloppy={p.sloppy} ops={self.ops} "
            f"writes_ok={self.writes_ok} reads_ok={self.reads_ok} unknown={self.unknown} "
            f"siblings={self.siblings_seen} read_repairs={self.repairs} "
            f"hints={self.hints_handed} ae={self.ae_repairs} purged={self.purged} "
            f"stale_reads={self.stale}"
        )


class _Client:
    def __init__(self, number: int) -> None:
        self.id = f"c{number}"
        self.op: WriteOp | ReadOp | None = None
        self.event: Event | None = None
        self.last_progress = 0
        self.timeouts = 0
        self.pending_write: tuple[bytes, list[tuple[str, int]], frozenset[str]] | None = None
        self.not_before = 0  # a slow client: its write waits until then


class LeaderlessSimulation:
    def __init__(self, seed: int, params: Params, steps: int) -> None:
        self.seed, self.params, self.steps = seed, params, steps
        self.rng = random.Random(f"leaderless-{seed}")
        self.ids = [f"r{i + 1}" for i in range(params.nodes)]
        self.ring = HashRing(self.ids, vnodes=16)
        self.replicas = {n: _Replica(n) for n in self.ids}
        self.clients = [_Client(i) for i in range(params.clients)]
        self.keys = [f"k{i}".encode() for i in range(params.keys)]
        self.history: list[Event] = []
        self.result = LeaderlessResult(seed, params)
        self.events = EventQueue()
        self._ops = 0
        self.blocked: set[str] = set()  # replicas the clients cannot reach
        self.cut: set[tuple[str, str]] = set()  # replica links down (handoff, AE)
        self.loss = params.loss
        self.changed_at: dict[bytes, int] = {}
        self.purged_tags: dict[bytes, set[str]] = {}
        self.purges: dict[bytes, list[tuple[int, set[str]]]] = {}
        for client in self.clients:
            self._schedule(self.rng.randint(1, TICK), "client", client)
        self._schedule(TICK, "world", None)

    # ---- running ---------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(self.steps):
            self._step()
        self._log("liveness: heal, restart, hand over hints, anti-entropy")
        self.blocked.clear()
        self.cut.clear()
        self.loss = 0.0
        for replica in self.replicas.values():
            replica.up = True
        for _ in range(400):  # let clients finish; hints travel with the world ticks
            self._step(liveness=True)
            if all(c.op is None for c in self.clients) and not self._hints():
                break
        for _ in range(4):
            self._anti_entropy(all_pairs=True)
        self._check_converged()
        violations = check_history(self.history, self.params, self._final_values(), self.purges)
        self.result.violations.extend(violations)
        self.result.stale = len(stale_reads(self.history, self.purges))

    def _step(self, liveness: bool = False) -> None:
        if not self.events:
            return
        kind, payload = self.events.pop()
        if kind == "client":
            if not liveness:
                self._client_turn(payload)
        elif kind == "to-replica":
            self._at_replica(*payload)
        elif kind == "to-client":
            self._at_client(*payload)
        elif kind == "world":
            self._world(liveness)
            self._schedule(TICK, "world", None)

    @property
    def now(self) -> int:
        return self.events.now

    def _schedule(self, delay: int, kind: str, payload: Any) -> None:
        self.events.schedule(delay, kind, payload)

    def _log(self, text: str) -> None:
        self.result.trace.append(f"[{self.now}] {text}")

    def _delay(self) -> int:
        return self.rng.randint(1, self.params.max_delay)

    # ---- clients -------------------------------------------------------------------

    def _client_turn(self, client: _Client) -> None:
        if client.op is None:
            self._begin(client)
        elif self.now - client.last_progress > 12 * TICK:
            client.timeouts += 1
            client.last_progress = self.now
            out = client.op.timeout()
            self._send_all(client, out)
            if client.op.done:
                self._finish(client)
        self._schedule(TICK, "client", client)

    def _begin(self, client: _Client) -> None:
        self._ops += 1
        p = self.params
        if client.pending_write is not None:
            if self.now < client.not_before:
                return  # thinking: its context may outlive a purge of the key
            key, context, seen = client.pending_write
            client.pending_write = None
            value = None if self.rng.random() < 0.2 else f"v{self._ops}"
            tag = f"{'del' if value is None else value}#{self._ops}"
            op: WriteOp | ReadOp = WriteOp(self._ops, key, (tag, value), context, self.ring,
                                           p.n, p.w, p.sloppy)  # fmt: skip
            event = Event("write", key, self.now, value=value, tag=tag, context_tags=seen)
        else:
            key = self.rng.choice(self.keys)
            op = ReadOp(self._ops, key, self.ring, p.n, p.r)
            event = Event("read", key, self.now)
        client.op, client.event, client.last_progress, client.timeouts = op, event, self.now, 0
        self.history.append(event)
        self.result.ops += 1
        self._send_all(client, op.start())
        if op.done:
            self._finish(client)

    def _send_all(self, client: _Client, out: list[tuple[str, Any]]) -> None:
        for node, message in out:
            if node in self.blocked or self.rng.random() < self.loss:
                continue
            self._schedule(self._delay(), "to-replica", (node, message, client))

    def _at_client(self, client: _Client, reply: Reply) -> None:
        op = client.op
        if op is None or reply.op != op.op:
            return
        client.last_progress = self.now
        self._send_all(client, op.on_reply(reply))
        if op.done:
            self._finish(client)

    def _finish(self, client: _Client) -> None:
        op, event = client.op, client.event
        assert op is not None and event is not None
        event.end = self.now
        if isinstance(op, WriteOp):
            if op.ok:
                event.outcome = "ok"
                self.result.writes_ok += 1
            elif op.clock is None and not op._tried:
                event.outcome = "failed"
            else:
                event.outcome = "unknown"  # the coordinator may have stored it
                self.result.unknown += 1
        else:
            event.outcome = "ok" if op.ok else "failed"
            if op.ok:
                self.result.reads_ok += 1
                event.seen = tuple(sorted(tag for tag, _ in dvv.values(op.clock or dvv.Clock())))
                self.result.siblings_seen += len(event.seen) > 1
                self.result.repairs += any(c != op.clock for c in op.replies.values())
                if self.rng.random() < 0.8:  # read-modify-write; else blind next time
                    context = op.context if self.rng.random() < 0.85 else []
                    seen = _covered(op.clock) if context else frozenset()
                    client.pending_write = (op.key, context, seen)
                    slow = self.rng.random() < SLOW_WRITES
                    pause = self.rng.randint(TOMBSTONE_GRACE, 3 * TOMBSTONE_GRACE)
                    client.not_before = self.now + pause if slow else 0
        client.op = client.event = None

    # ---- replicas ------------------------------------------------------------------

    def _at_replica(self, node: str, message: Any, client: _Client | None) -> None:
        replica = self.replicas[node]
        if not replica.up:
            return
        key = message.key
        before = replica.store.get(key)
        purged = replica.purged.get(key, (None, 0))[0]
        if isinstance(message, CoordPut):
            replica.store[key] = coordinate(before, message, replica.actor)
        elif isinstance(message, Replicate):
            if before is not None or not superseded_by_purge(message.clock, purged):
                incoming = message.clock if purged is None else dvv.sync(message.clock, purged)
                replica.store[key] = receive(replica.store.get(key), incoming)
            if message.hint_for:
                replica.hints.append((message.hint_for, key, message.clock, self.now))
        elif not isinstance(message, Get):
            raise TypeError(message)
        if replica.store.get(key) != before:
            self.changed_at[key] = self.now
        reply = Reply(message.op, node, key, replica.store.get(key, dvv.Clock()))
        if client is None:
            self._hint_delivered(node, reply)
        elif node not in self.blocked and self.rng.random() >= self.loss:
            self._schedule(self._delay(), "to-client", (client, reply))

    def _hints(self) -> int:
        return sum(len(r.hints) for r in self.replicas.values())

    def _hand_over(self) -> None:
        for replica in self.replicas.values():
            if not replica.up:
                continue
            replica.hints = [h for h in replica.hints if self.now - h[3] <= HINT_WINDOW]
            for target, key, clock, _ in replica.hints:
                if (replica.id, target) not in self.cut and self.replicas[target].up:
                    message = Replicate(-1, key, clock)
                    self._schedule(self._delay(), "to-replica", (target, message, None))

    def _hint_delivered(self, target: str, reply: Reply) -> None:
        """``target`` answered a handed-over hint: drop every hint for it that its
        clock now includes."""
        for replica in self.replicas.values():
            kept = [
                h for h in replica.hints
                if not (h[0] == target and h[1] == reply.key
                        and dvv.sync(reply.clock, h[2]) == reply.clock)
            ]  # fmt: skip
            self.result.hints_handed += len(replica.hints) - len(kept)
            replica.hints = kept

    def _anti_entropy(self, all_pairs: bool = False) -> None:
        live = [n for n in self.ids if self.replicas[n].up]
        pairs = [(a, b) for a in live for b in live if a < b and (a, b) not in self.cut]
        if not all_pairs and pairs:
            pairs = [self.rng.choice(pairs)]
        for a, b in pairs:
            shared = [
                k for k in self.keys if {a, b} <= set(self.ring.preference_list(k, self.params.n))
            ]
            ra, rb = self.replicas[a], self.replicas[b]
            tree_a = MerkleTree(((k, _digest(ra.store.get(k))) for k in shared), depth=4)
            tree_b = MerkleTree(((k, _digest(rb.store.get(k))) for k in shared), depth=4)
            buckets = set(tree_a.diff(tree_b))
            for key in shared:
                if bucket_of(key, 4) in buckets:
                    merged = receive(ra.store.get(key), rb.store.get(key, dvv.Clock()))
                    if ra.store.get(key) != merged or rb.store.get(key) != merged:
                        self.result.ae_repairs += 1
                        self.changed_at[key] = self.now
                    ra.store[key] = rb.store[key] = merged

    def _purge(self, grace: int = TOMBSTONE_GRACE) -> None:
        """Drop keys deleted everywhere: every preferred replica up and holding the
        same tombstone-only clock, no hint for the key, unchanged for ``grace``."""
        hinted = {h[1] for r in self.replicas.values() for h in r.hints}
        for key in self.keys:
            replicas = [self.replicas[n] for n in self.ring.preference_list(key, self.params.n)]
            clocks = [r.store.get(key) for r in replicas]
            first = clocks[0]
            if (
                first is None
                or key in hinted
                or not all(r.up for r in replicas)
                or any(c != first for c in clocks)
                or any(value is not None for _, value in dvv.values(first))
                or self.now - self.changed_at.get(key, 0) <= grace
            ):
                continue
            tags = {tag for tag, _ in dvv.values(first)}
            self.purged_tags.setdefault(key, set()).update(tags)
            self.purges.setdefault(key, []).append((self.now, tags))
            for replica in self.replicas.values():
                if replica.store.pop(key, None) is not None:
                    replica.purged[key] = (first, self.now)
                    replica.incarnation = self.result.purged + 1  # a new actor: dots never repeat
            self.result.purged += 1
        for replica in self.replicas.values():  # purged clocks are kept a grace period
            replica.purged = {
                k: (c, t) for k, (c, t) in replica.purged.items() if self.now - t <= grace
            }

    # ---- the world -----------------------------------------------------------------

    def _world(self, liveness: bool) -> None:
        self._hand_over()
        if self.rng.random() < 0.05:
            self._anti_entropy()
        self._purge()
        if liveness or self.rng.random() >= self.params.fault_rate:
            return
        rng = self.rng
        node = rng.choice(self.ids)
        kind = rng.choice(("crash", "restart", "restart", "unreachable", "heal", "cut"))
        if kind == "crash":
            self.replicas[node].up = False
        elif kind == "restart":
            self.replicas[node].up = True
        elif kind == "unreachable":
            self.blocked.add(node)
        elif kind == "heal":
            self.blocked.clear()
            self.cut.clear()
        else:
            other = rng.choice([n for n in self.ids if n != node])
            self.cut |= {(node, other), (other, node)}
        self._log(f"{kind} {node}")

    # ---- checks --------------------------------------------------------------------

    def _check_converged(self) -> None:
        for key in self.keys:
            clocks = [
                self.replicas[n].store.get(key)
                for n in self.ring.preference_list(key, self.params.n)
            ]
            if any(c != clocks[0] for c in clocks):
                self.result.violations.append(f"replicas of {key!r} differ after anti-entropy")

    def _final_values(self) -> dict[bytes, tuple[set[str], set[str]]]:
        """Per key: the tags of the final siblings, and of every purged tombstone."""
        final = {}
        for key in self.keys:
            holder = self.replicas[self.ring.preference_list(key, self.params.n)[0]]
            live = {tag for tag, _ in dvv.values(holder.store.get(key, dvv.Clock()))}
            final[key] = (live, self.purged_tags.get(key, set()))
        return final


def _digest(clock: dvv.Clock | None) -> bytes:
    return repr(clock).encode()


def _covered(clock: dvv.Clock | None) -> frozenset[str]:
    """The tags of the values a clock shows (its context also covers what those
    superseded, which the checker follows through each write's own context)."""
    return frozenset(tag for tag, _ in dvv.values(clock or dvv.Clock()))


def _pasts(history: list[Event]) -> dict[str, frozenset[str]]:
    """Each written value's causal past: what its context had seen, transitively."""
    past: dict[str, frozenset[str]] = {}
    for event in sorted((e for e in history if e.kind == "write"), key=lambda e: e.start):
        closure = set(event.context_tags)
        for tag in event.context_tags:
            closure |= past.get(tag, frozenset())
        past[event.tag] = frozenset(closure)
    return past


def _covers(past: dict[str, frozenset[str]], tags: Any, tag: str) -> bool:
    return any(t == tag or tag in past.get(t, frozenset()) for t in tags)


def stale_reads(
    history: list[Event], purges: dict[bytes, list[tuple[int, set[str]]]] | None = None
) -> list[str]:
    """Reads that started after a write of their key was acknowledged and returned
    neither it nor anything causally after it (R + W > N with strict quorums: none).
    ``purges``: per key, (when, tombstone tags) of each purge; what a purged deletion
    superseded is gone for every read that ends after that purge (one under way
    meanwhile may be answered either way)."""
    past = _pasts(history)

    def buried(key: bytes, at: int) -> set[str]:
        tags = [t for when, ts in (purges or {}).get(key, []) if when < at for t in ts]
        return set(tags).union(*(past.get(t, frozenset()) for t in tags))

    acked = [e for e in history if e.kind == "write" and e.outcome == "ok"]
    found = []
    for read in (e for e in history if e.kind == "read" and e.outcome == "ok"):
        missing = [
            write for write in acked
            if write.key == read.key and write.end < read.start
            and write.tag not in buried(read.key, read.end)
            and not _covers(past, read.seen, write.tag)
        ]  # fmt: skip
        if missing:  # one line per stale read, however many writes it missed
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            found.append(
                f"read of {read.key!r} at {read.start} returned {list(read.seen)}, "
                f"missing {missing[0].tag} acknowledged at {missing[0].end}{more}"
            )
    return found


def check_history(
    history: list[Event],
    params: Params,
    final: dict[bytes, tuple[set[str], set[str]]],
    purges: dict[bytes, list[tuple[int, set[str]]]] | None = None,
) -> list[str]:
    """The per-key consistency checker (usable on recorded histories): stale reads
    when quorums promise none; acknowledged writes missing from the final state (the
    final siblings, or tombstones purged after every replica had them); and versions
    that came back after a deletion that superseded them was purged."""
    strict = not params.sloppy and params.r + params.w > params.n
    problems = stale_reads(history, purges) if strict else []
    past = _pasts(history)
    deletions = {e.tag for e in history if e.kind == "write" and e.value is None}
    for write in (e for e in history if e.kind == "write" and e.outcome == "ok"):
        live, purged = final.get(write.key, (set(), set()))
        if not _covers(past, live | purged, write.tag):
            problems.append(f"acknowledged {write.tag} on {write.key!r} is lost: {sorted(live)}")
    for key, (live, purged) in final.items():
        # A purged deletion must stay deleted: what it superseded may not return.
        buried = set(purged).union(*(past.get(t, frozenset()) for t in purged))
        back = (live & buried) - deletions  # (a tombstone coming back shows no row)
        if back:
            problems.append(f"{sorted(back)} on {key!r} came back after its deletion was purged")
    return problems[:20]


def run_leaderless(
    seed: int, steps: int = SAFETY_STEPS, r: int | None = None, w: int | None = None
) -> LeaderlessResult:
    sim = LeaderlessSimulation(seed, Params.for_seed(seed, r, w), steps)
    sim.run()
    return sim.result


def main_leaderless_sim(
    seed: int | None, seeds: int = 1, verbose: bool = False, r: int | None = None,
    w: int | None = None,
) -> int:  # fmt: skip
    """CLI entry (``replidb sim --leaderless``); 1 on a violation."""
    rw = f" --rw {r},{w}" if r is not None and w is not None else ""
    return report_seeds(
        seed, seeds, lambda s: run_leaderless(s, r=r, w=w), f"replidb sim --leaderless{rw}",
        verbose,
    )  # fmt: skip
