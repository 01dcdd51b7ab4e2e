"""Deterministic simulator for multi-leader replication (issue #8): the real
``core.mesh.Mesh`` on every node, a model row store that resolves conflicts with the
real ``decide``, and a simulated network and clocks. One seed decides everything.

- **safety** (``safety_steps`` events): every up node takes writes of a small shared
  key space (so concurrent writes to one row are common: insert/insert, update/update,
  update/delete); messages are delayed, reordered, lost and duplicated; partitions
  (splits, an isolated node, one-way links) come and go; nodes crash (sometimes
  half-way through applying a batch) and restart from their durable state; clocks are
  skewed, sometimes beyond the allowed maximum.
- **liveness**: the network heals, clocks agree, every node restarts; within
  ``liveness_ticks`` every node must hold every change and identical rows.

Checked on every delivery: no change applied twice; its origin's previous change and
everything its origin had applied when it wrote it are already applied here (causal
delivery: no update before its insert); no change stamped beyond the skew bound is
applied. At the end: identical rows everywhere, and each row is the write with the
highest timestamp among all writes to it — the same winner for every conflict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import random
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec

from replidb.core.hlc import HLC
from replidb.core.mesh import TOPOLOGIES, Change, Mesh, MeshConfig, MeshMessage, decide
from replidb.testing.events import EventQueue
from replidb.testing.seeds import report_seeds

__all__ = [
    "MeshSimResult",
    "MeshViolation",
    "main_mesh_sim",
    "run_mesh",
    "run_mesh_seeds",
]


class MeshViolation(Exception):
    """A safety or liveness property of the mesh failed (replay with its seed)."""


TICK = 10  # ms per node tick; the simulated clock counts milliseconds
MAX_SKEW_MS = 500
SAFETY_STEPS = 4000
LIVENESS_TICKS = 800
_Op = tuple[int, str | None, tuple[int, int, str] | None]  # key, value (None: delete), base


@dataclass(frozen=True)
class MeshParams:
    nodes: int
    topology: str
    keys: int  # size of the shared key space
    loss: float
    dup: float
    max_delay: int  # ms
    fault_rate: float  # per world tick
    write_rate: float  # per world tick
    skew_faults: bool  # some clocks drift beyond the bound in this run
    max_batch: int

    @staticmethod
    def for_seed(seed: int) -> MeshParams:
        rng = random.Random(f"mesh-params-{seed}")
        return MeshParams(
            nodes=rng.choice((3, 3, 4, 5)),
            topology=TOPOLOGIES[seed % len(TOPOLOGIES)],
            keys=rng.choice((4, 8, 16)),
            loss=rng.choice((0.0, 0.02, 0.1)),
            dup=rng.choice((0.0, 0.05, 0.2)),
            max_delay=rng.choice((2, 20, 60)),
            fault_rate=rng.choice((0.02, 0.05, 0.1)),
            write_rate=rng.choice((0.3, 1.0, 2.0)),
            skew_faults=rng.random() < 0.5,
            max_batch=rng.choice((1, 4, 256)),
        )


@dataclass
class _Node:
    """A node: durable state survives a crash, the Mesh does not."""

    id: str
    rows: dict[int, tuple[str | None, HLC]] = field(default_factory=dict)
    log: dict[str, list[Change]] = field(default_factory=dict)  # per origin
    order: list[Change] = field(default_factory=list)  # in the order applied
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    offset_ms: int = 0  # clock skew
    up: bool = True
    mesh: Mesh | None = None
    delivered: set[tuple[str, int]] = field(default_factory=set)
    conflicts: int = 0

    def scan(self, after: int, limit: int) -> list[tuple[int, Change]]:
        return [(after + 1 + i, c) for i, c in enumerate(self.order[after : after + limit])]

    def position(self, origin: str, seq: int) -> int:
        return self.positions.get((origin, seq), 0)

    def append(self, change: Change) -> None:
        self.log.setdefault(change.origin, []).append(change)
        self.order.append(change)
        self.positions[(change.origin, change.seq)] = len(self.order)

    def vector(self) -> dict[str, int]:
        return {o: len(changes) for o, changes in self.log.items()}


@dataclass
class MeshSimResult:
    seed: int
    params: MeshParams
    writes: int = 0
    deliveries: int = 0
    conflicts: int = 0
    duplicates: int = 0
    refusals: int = 0
    crashes: int = 0
    converged: bool = False
    violations: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    trace_digest: str = ""

    def summary(self) -> str:
        p = self.params
        return (
            f"seed {self.seed}: {'ok' if not self.violations else 'VIOLATION'} "
            f"nodes={p.nodes} topology={p.topology} keys={p.keys} writes={self.writes} "
            f"deliveries={self.deliveries} conflicts={self.conflicts} "
            f"duplicates={self.duplicates} refusals={self.refusals} crashes={self.crashes} "
            f"converged={self.converged}"
        )


class MeshSimulation:
    def __init__(self, seed: int, safety_steps: int, liveness_ticks: int) -> None:
        self.seed = seed
        self.params = MeshParams.for_seed(seed)
        self.rng = random.Random(f"mesh-{seed}")
        self.safety_steps = safety_steps
        self.liveness_ticks = liveness_ticks
        self.ids = [f"m{i + 1}" for i in range(self.params.nodes)]
        self.nodes = {n: _Node(n) for n in self.ids}
        self.events = EventQueue()
        self.blocked: set[tuple[str, str]] = set()
        self.loss, self.dup = self.params.loss, self.params.dup
        self.result = MeshSimResult(seed, self.params)
        self.history: dict[int, list[tuple[HLC, str | None]]] = {}  # key -> every write
        self.causal_past: dict[tuple[str, int], dict[str, int]] = {}
        self.counter = 0
        for node in self.nodes.values():
            self._start(node)
            self._schedule(self.rng.randrange(1, TICK + 1), "tick", node.id)
        self._schedule(TICK, "world", None)

    # ---- running ---------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(self.safety_steps):
            self._step()
        self._log("liveness: heal, agree on time, restart everyone")
        self.blocked.clear()
        self.loss = self.dup = 0.0
        for node in self.nodes.values():
            node.offset_ms = 0
            if not node.up:
                self._start(node)
        deadline = self.now + (self.liveness_ticks + self._catch_up_ticks()) * TICK
        while self.now < deadline and not self._converged():
            self._step(liveness=True)
        self.result.converged = self._converged()
        if not self.result.converged:
            raise MeshViolation(f"not converged after {self.liveness_ticks} ticks: "
                                     f"{self._describe()}")  # fmt: skip
        self._check_final()

    def _step(self, liveness: bool = False) -> None:
        kind, payload = self.events.pop()
        if kind == "tick":
            node = self.nodes[payload]
            if node.up and node.mesh is not None:
                node.mesh.tick(self._clock(node))
                self._drain(node)
            self._schedule(TICK, "tick", payload)
        elif kind == "deliver":
            to, message = payload
            node = self.nodes[to]
            if node.up and node.mesh is not None:
                node.mesh.step(message, self._clock(node))
                self._drain(node)
        elif kind == "world":
            if not liveness:
                self._world()
            self._schedule(TICK, "world", None)

    @property
    def now(self) -> int:
        return self.events.now

    def _schedule(self, delay: int, kind: str, payload: Any) -> None:
        self.events.schedule(delay, kind, payload)

    def _clock(self, node: _Node) -> int:
        return self.now + node.offset_ms

    def _log(self, text: str) -> None:
        self.result.trace.append(f"[{self.now}] {text}")

    # ---- nodes ---------------------------------------------------------------------

    def _start(self, node: _Node) -> None:
        last = max((c.hlc for cs in node.log.values() for c in cs), default=None)
        for _, stamp in node.rows.values():
            last = stamp if last is None or stamp > last else last
        config = MeshConfig(
            node.id,
            tuple(self.ids),
            self.params.topology,
            max_skew_ms=MAX_SKEW_MS,
            max_batch=self.params.max_batch,
        )
        node.mesh = Mesh(config, node, node.vector(), last)
        node.up = True

    def _drain(self, node: _Node, crash_after: int | None = None) -> None:
        mesh = node.mesh
        assert mesh is not None
        while mesh.has_ready():
            ready = mesh.ready()
            for number, change in enumerate(ready.deliver):
                if crash_after is not None and number == crash_after:
                    self._crash(node, f"half-way through a batch ({number} applied)")
                    return
                self._apply(node, change)
            for to, message in ready.messages:
                self._send(node.id, to, message)
            for why in ready.refused:
                self.result.refusals += 1
                self._log(f"{node.id} refused: {why}")
            mesh.advance()
        self.result.duplicates = sum(
            n.mesh.duplicates for n in self.nodes.values() if n.mesh is not None
        )

    def _write(self, node: _Node) -> None:
        mesh = node.mesh
        assert mesh is not None
        seq, stamp, deps = mesh.stamp(self._clock(node))
        ops: list[_Op] = []
        for key in sorted(self.rng.sample(range(self.params.keys), self.rng.choice((1, 1, 2)))):
            self.counter += 1
            value = None if self.rng.random() < 0.2 else f"{node.id}#{self.counter}"
            current = node.rows.get(key)
            base = (current[1].wall_ms, current[1].logical, current[1].origin) if current else None
            ops.append((key, value, base))
            node.rows[key] = (value, stamp)
            self.history.setdefault(key, []).append((stamp, value))
        change = Change(
            node.id, seq, stamp.wall_ms, stamp.logical, deps, msgspec.msgpack.encode(ops)
        )
        self.causal_past[(node.id, seq)] = node.vector()  # (its own previous ones too)
        node.append(change)
        node.delivered.add((node.id, seq))
        mesh.committed(change)
        self.result.writes += 1
        self._log(f"{node.id} writes {node.id}:{seq} at {stamp} keys {[o[0] for o in ops]}")
        mesh.advance()
        self._drain(node)

    def _apply(self, node: _Node, change: Change) -> None:
        """What storage/mesh_store.py does in one transaction, on a model."""
        name = (change.origin, change.seq)
        if name in node.delivered:
            raise MeshViolation(f"{node.id} applied {name} twice")
        have = node.vector()
        if have.get(change.origin, 0) != change.seq - 1:
            raise MeshViolation(
                f"{node.id} applied {name} with {have.get(change.origin, 0)} of its origin's"
            )
        for origin, seq in self.causal_past[name].items():
            if have.get(origin, 0) < seq:
                raise MeshViolation(
                    f"{node.id} applied {name} before {origin}:{seq}, which its origin had "
                    "applied when it wrote it (causal order broken)"
                )
        if change.wall_ms - self._clock(node) > MAX_SKEW_MS:
            raise MeshViolation(f"{node.id} applied {name}, stamped beyond the skew bound")
        for key, value, base in msgspec.msgpack.decode(change.data, type=list[_Op]):
            current = node.rows.get(key)
            wins, conflict = decide(
                current[1] if current else None, HLC(*base) if base else None, change.hlc
            )
            node.conflicts += conflict
            self.result.conflicts += conflict
            if wins:
                node.rows[key] = (value, change.hlc)
        node.append(change)
        node.delivered.add(name)
        self.result.deliveries += 1

    def _crash(self, node: _Node, how: str) -> None:
        node.up = False
        node.mesh = None
        self.result.crashes += 1
        self._log(f"{node.id} crashes {how}")

    # ---- network -------------------------------------------------------------------

    def _send(self, sender: str, to: str, message: MeshMessage) -> None:
        if (sender, to) in self.blocked or self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            delay = self.rng.randint(1, self.params.max_delay)
            if self.rng.random() < 0.02:
                delay += self.rng.randint(50, 500)  # held back: overtaken by later ones
            self._schedule(delay, "deliver", (to, message))

    # ---- the world -----------------------------------------------------------------

    def _world(self) -> None:
        rng = self.rng
        writes = 0
        while rng.random() < self.params.write_rate / (1 + self.params.write_rate):
            writes += 1
        for _ in range(writes):
            up = [n for n in self.nodes.values() if n.up]
            if up:
                self._write(rng.choice(up))
        if rng.random() < self.params.fault_rate:
            self._fault()

    def _fault(self) -> None:
        rng = self.rng
        kind = rng.choice(("split", "isolate", "one-way", "heal", "heal", "crash",
                           "restart", "restart", "skew", "crash-mid-batch"))  # fmt: skip
        node = self.nodes[rng.choice(self.ids)]
        if kind == "split":
            side = set(rng.sample(self.ids, rng.randint(1, len(self.ids) - 1)))
            self.blocked = {
                (a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)
            }
            self._log(f"partition {sorted(side)} | rest")
        elif kind == "isolate":
            self.blocked = {(a, b) for a in self.ids for b in self.ids if node.id in (a, b)}
            self._log(f"isolate {node.id}")
        elif kind == "one-way":
            other = rng.choice([n for n in self.ids if n != node.id])
            self.blocked.add((node.id, other))
            self._log(f"one-way cut {node.id} -> {other}")
        elif kind == "heal":
            self.blocked.clear()
            self._log("heal")
        elif kind == "crash" and node.up:
            self._crash(node, "between batches")
        elif kind == "restart" and not node.up:
            self._start(node)
            self._log(f"{node.id} restarts with {node.vector()}")
        elif kind == "skew":
            bound = MAX_SKEW_MS * (3 if self.params.skew_faults else 1) // 2
            node.offset_ms = rng.randint(-bound, bound)
            self._log(f"{node.id} clock offset {node.offset_ms} ms")
        elif kind == "crash-mid-batch" and node.up and node.mesh is not None:
            # Deliver what is waiting for it now, and crash part-way through applying.
            node.mesh.tick(self._clock(node))
            self._drain(node, crash_after=rng.randint(0, 2))

    # ---- checks --------------------------------------------------------------------

    def _converged(self) -> bool:
        vectors = [n.vector() for n in self.nodes.values()]
        total = {o: len(n.log.get(o, [])) for o in self.ids for n in [self.nodes[o]]}
        return all({o: v.get(o, 0) for o in self.ids} == total for v in vectors) and all(
            n.rows == self.nodes[self.ids[0]].rows for n in self.nodes.values()
        )

    def _catch_up_ticks(self) -> int:
        """Time to ship the largest backlog one batch per round trip per hop (each batch
        waits for its ack), on top of ``liveness_ticks``."""
        p = self.params
        total = {o: len(self.nodes[o].log.get(o, [])) for o in self.ids}
        missing = max(
            sum(total[o] - n.vector().get(o, 0) for o in self.ids) for n in self.nodes.values()
        )
        hops = {"all-to-all": 1, "star": 2, "ring": p.nodes - 1}[p.topology]
        round_trip = 2 * p.max_delay // TICK + 2
        return hops * (missing // p.max_batch + 1) * round_trip

    def _describe(self) -> str:
        return "; ".join(f"{n.id} {n.vector()} up={n.up}" for n in self.nodes.values())

    def _check_final(self) -> None:
        rows = self.nodes[self.ids[0]].rows
        for key, writes in sorted(self.history.items()):
            stamp, value = max(writes, key=lambda w: w[0])
            if rows.get(key) != (value, stamp):
                raise MeshViolation(
                    f"key {key} holds {rows.get(key)}, not its latest write {value} at {stamp}"
                )


def run_mesh(
    seed: int, *, safety_steps: int = SAFETY_STEPS, liveness_ticks: int = LIVENESS_TICKS
) -> MeshSimResult:
    sim = MeshSimulation(seed, safety_steps, liveness_ticks)
    try:
        sim.run()
    except MeshViolation as exc:
        sim.result.violations.append(str(exc))
        sim.result.trace.append(f"VIOLATION {exc}")
    trace = "\n".join(sim.result.trace).encode()
    sim.result.trace_digest = hashlib.sha256(trace).hexdigest()[:16]
    return sim.result


def _run_one(seed: int, keep_trace: bool) -> MeshSimResult:
    result = run_mesh(seed)
    if not keep_trace:
        result = dataclasses.replace(result, trace=result.trace[-1:] if result.violations else [])
    return result


def run_mesh_seeds(
    seeds: Iterable[int], *, workers: int = 1, keep_trace: bool = False
) -> list[MeshSimResult]:
    """Many seeds, in ``workers`` processes (the same results as one after another)."""
    seed_list = list(seeds)
    job = partial(_run_one, keep_trace=keep_trace)
    if workers <= 1 or len(seed_list) < 2:
        return [job(seed) for seed in seed_list]
    context = multiprocessing.get_context("spawn")  # (no fork of a threaded test runner)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(job, seed_list, chunksize=8))


def main_mesh_sim(seed: int | None, seeds: int = 1, verbose: bool = False) -> int:
    """CLI entry (``replidb sim --multi-leader``); 1 on a violation."""
    return report_seeds(seed, seeds, run_mesh, "replidb sim --multi-leader", verbose)
