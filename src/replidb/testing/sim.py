"""Deterministic cluster simulator (in the style of FoundationDB's and TigerBeetle's VOPR).

The real ``core.Replica`` runs against a simulated network, clock and storage. One
seed decides everything: every random choice comes from a ``random.Random`` derived
from it, time is a counter, there are no threads, and nodes are visited in sorted
order, so the same seed gives a byte-identical trace.

A run has two phases:

- **safety**: ``safety_steps`` events under faults — message delay, loss,
  duplication and reordering; partitions (random splits, one node isolated, one-way
  links) and heals; crashes (between batches or in the middle of one) and restarts;
  pauses (a node stops, then resumes with stale beliefs); clients writing to whichever
  node can take a write.
- **liveness**: the network heals and stops losing messages, every node restarts;
  within ``liveness_ticks`` (plus the time to ship the longest log one batch per round
  trip) a new write must commit and be acknowledged to its client, and the cluster
  must converge. Then every acknowledged write missing from the final state must be
  in ``replidb_discarded`` on the node that acknowledged it (whatever the policy).

Membership runs (``--membership``, a separate seed space: ``sim_membership.py``) add
spare nodes and have the leader add, promote and remove members between the faults.
Runs with ``--reads`` also ask leaders for linearizable reads (``sim_reads.py``).

The checkers in ``checkers.py`` run after every event. A step is one event: a node's
clock tick, one message delivery, or one "world" tick (faults and client writes),
each followed by handling the touched node's ``Ready`` batches — or, for a delivery
and with a seeded probability, not yet: a real runtime may read several messages
before it handles one batch, so the node catches up at its next tick.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import multiprocessing
import random
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import NoReturn

from replidb.core.messages import Append, Entry, EntryKind, PeerMessage, Role, VoteRequest
from replidb.core.policy import CommitPolicy, guarantee, parse_policy
from replidb.core.replica import Config, Ready, Replica
from replidb.testing.checkers import InvariantViolation, SafetyChecker
from replidb.testing.memory import MemoryStorage
from replidb.testing.seeds import report_seeds
from replidb.testing.sim_membership import MembershipDriver
from replidb.testing.sim_reads import ReadDriver

__all__ = ["SimResult", "Simulation", "main_sim", "run", "run_seeds"]

TICK = 10  # time units per nominal clock tick; network delays are drawn in these units
SAFETY_STEPS = 3000
LIVENESS_TICKS = 400
# Where a crash in the middle of handling a Ready can strike (before each part).
_CUT_POINTS = ("hard state", "truncate", "append", "send", "apply", "ack")


@dataclass(frozen=True)
class Params:
    """Everything about a run's shape and fault rates, drawn from the seed."""

    nodes: int  # voters
    election_ticks: int
    heartbeat_ticks: int
    max_batch_entries: int
    max_apply_entries: int
    policy: CommitPolicy
    loss: float  # probability a message is dropped
    dup: float  # probability a message is delivered twice
    max_delay: int  # time units; a delivery takes 1..max_delay (so messages reorder)
    long_delay: float  # probability a message is held back for several ticks
    fault_rate: float  # probability of a fault on each world tick
    propose_rate: float  # client writes per world tick (geometric)
    defer_ready: float  # probability a node takes more input before handling its Ready
    # Non-voting members (one, in a third of the seeds): they replicate and apply the
    # log but never campaign, vote or count for a majority. Drawn last, so a seed
    # without one keeps the shape it had before learners existed.
    learners: tuple[str, ...] = ()
    # Log compaction (half the seeds, drawn after learners for the same reason): after
    # each Ready a node forgets committed entries older than this many, so lagging or
    # restarted followers must be brought back by snapshot. None: never compact.
    compact_keep: int | None = None
    # Membership runs only: nodes that start outside the cluster (they may be added),
    # and how often per world tick the leader is asked for a membership change.
    spares: int = 0
    change_rate: float = 0.0

    @staticmethod
    def draw(rng: random.Random, membership: bool = False) -> Params:
        nodes = rng.choice((3, 5))
        policies = ["async", "quorum", "all", "semi-sync:1"] + (
            ["semi-sync:2"] if nodes == 5 else []
        )
        params = Params(
            nodes=nodes,
            election_ticks=rng.randint(8, 14),
            heartbeat_ticks=rng.randint(1, 3),
            max_batch_entries=rng.choice((2, 8, 64)),
            max_apply_entries=rng.choice((1, 8, 1024)),
            policy=parse_policy(rng.choice(policies)),
            loss=rng.choice((0.0, 0.01, 0.05, 0.15)),
            dup=rng.choice((0.0, 0.02, 0.1)),
            max_delay=rng.randint(2, 2 * TICK),
            long_delay=rng.choice((0.0, 0.01, 0.05)),
            fault_rate=rng.choice((0.02, 0.05, 0.15)),
            propose_rate=rng.uniform(0.2, 0.8),
            defer_ready=rng.choice((0.0, 0.0, 0.3, 0.7)),
        )
        if rng.random() < 1 / 3:
            # Any position, so a learner is sometimes the first peer in sorted order.
            learner = f"n{rng.randint(1, nodes + 1)}"
            params = dataclasses.replace(params, learners=(learner,))
        if rng.random() < 0.5:
            params = dataclasses.replace(params, compact_keep=rng.choice((0, 2, 8, 30)))
        if membership:
            # Only policies whose promise does not depend on how many vote: the voter
            # count changes during the run.
            params = dataclasses.replace(
                params,
                policy=parse_policy(rng.choice(("async", "quorum", "all"))),
                spares=rng.randint(1, 2),
                change_rate=rng.choice((0.02, 0.05, 0.1)),
            )
        return params

    @staticmethod
    def for_seed(seed: int, membership: bool = False) -> Params:
        """The parameters a run of ``seed`` draws (its first random stream)."""
        return Params.draw(random.Random(random.Random(seed).getrandbits(64)), membership)

    def ids(self) -> list[str]:
        """Every node, in sorted order: the initial voters and learners, then spares."""
        return [f"n{i}" for i in range(1, self.nodes + len(self.learners) + self.spares + 1)]

    def initial_members(self) -> list[str]:
        return self.ids()[: self.nodes + len(self.learners)]

    def acks_must_survive(self) -> bool:
        """Does the policy promise that acknowledged writes survive failover? The
        checkers then hold it to that promise. Only the voters (``nodes``) count:
        learners neither elect a leader nor acknowledge a write."""
        return guarantee(self.policy, self.nodes).safe


@dataclass
class SimNode:
    id: str
    storage: MemoryStorage
    replica: Replica | None
    period: int  # time units between clock ticks: 9..11, timers run at slightly different rates
    seeds: random.Random  # seeds the Random of each incarnation of the replica
    paused_until: int = 0
    crash_cut: int | None = None  # crash while handling the next Ready, before this part
    pending: list[Entry] = field(default_factory=list)  # proposed, not yet acknowledged
    settled: bool = True  # False while the replica has input whose Ready is not handled
    fetching: bool = False  # a snapshot transfer to this node is under way


@dataclass(frozen=True)
class _Tick:
    node: str


@dataclass(frozen=True)
class _Deliver:
    sender: str
    to: str
    msg: PeerMessage


@dataclass(frozen=True)
class _World:
    pass


@dataclass(frozen=True)
class _SnapshotDone:
    """A snapshot transfer from ``source`` to ``node`` finishes (or fails) now."""

    source: str
    node: str
    replica: int  # id() of the replica that asked: a restart in between cancels it


_Event = _Tick | _Deliver | _World | _SnapshotDone


class _Crashed(Exception):
    """The node crashed in the middle of handling a Ready: stop there."""


@dataclass
class SimResult:
    seed: int
    nodes: int  # voters
    policy: str
    steps: int
    ticks: int
    trace: list[str]
    trace_digest: str
    writes: int  # proposals accepted by a leader
    acked: int  # writes acknowledged to the client
    acked_lost: int  # acknowledged writes missing from the final log (async may lose some)
    committed: int  # length of the committed sequence at the end
    leaders_elected: int
    crashes: int
    max_batches_in_flight: int  # most non-empty Appends one leader had in flight to one node
    converged: bool
    violations: list[str]
    # Elections started, so that needless ones can be told apart from leaders_elected:
    terms: int = 0  # the highest term any node reached (each real campaign opens one)
    campaigns: int = 0  # real campaigns whose vote requests were sent (term raised)
    pre_votes: int = 0  # pre-candidacies whose pre-vote requests were sent
    discarded: int = 0  # rolled-back writes kept in the nodes' replidb_discarded, in all
    rolled_back: int = 0  # applied entries rolled back by truncations, in all
    faults: dict[str, int] = field(default_factory=dict)  # kind -> count (see _inject_fault)
    learners: tuple[str, ...] = ()  # non-voting members (in addition to ``nodes`` voters)
    learners_led: int = 0  # terms in which a learner was leader (a checker forbids any)
    learner_applied: int = 0  # entries the learners had applied at the end, in all
    snapshots: int = 0  # snapshots installed (seeds with log compaction)
    membership_changes: int = 0  # CONFIG entries in the final committed sequence
    reads_served: int = 0  # linearizable reads confirmed (runs with reads)
    reads_refused: int = 0  # ... and refused because their leader stepped down
    final_members: tuple[str, ...] = ()  # membership runs: the converged membership

    def summary(self) -> str:
        status = "ok" if not self.violations else "VIOLATION"
        return (
            f"seed {self.seed}: {status} nodes={self.nodes} policy={self.policy} "
            f"steps={self.steps} ticks={self.ticks} writes={self.writes} acked={self.acked} "
            f"acked_lost={self.acked_lost} committed={self.committed} "
            f"leaders={self.leaders_elected} crashes={self.crashes} "
            f"max_batches_in_flight={self.max_batches_in_flight} "
            f"terms={self.terms} campaigns={self.campaigns} pre_votes={self.pre_votes} "
            f"discarded={self.discarded}"
            + (f" learners={','.join(self.learners)}" if self.learners else "")
            + (f" snapshots={self.snapshots}" if self.snapshots else "")
            + (
                f" reads={self.reads_served} refused={self.reads_refused}"
                if self.reads_served or self.reads_refused
                else ""
            )
            + (
                f" membership_changes={self.membership_changes} "
                f"members={','.join(self.final_members)}"
                if self.membership_changes
                else ""
            )
        )


class Simulation:
    def __init__(
        self,
        seed: int,
        safety_steps: int,
        liveness_ticks: int,
        membership: bool = False,
        reads: bool = False,
    ) -> None:
        master = random.Random(seed)
        # Independent streams, so that e.g. one more fault does not shift every delay.
        self.params = Params.draw(random.Random(master.getrandbits(64)), membership)
        self._net = random.Random(master.getrandbits(64))
        self._faults = random.Random(master.getrandbits(64))
        self._client = random.Random(master.getrandbits(64))
        self._runtime = random.Random(master.getrandbits(64))  # when Readies get handled
        self.seed = seed
        self.safety_steps = safety_steps
        self.liveness_ticks = liveness_ticks
        p = self.params
        ids = p.ids()
        members = p.initial_members()
        # Membership runs check learners by what each node's own membership says
        # (sim_membership.py): a learner there may be promoted and then vote.
        self.learners = frozenset(() if membership else p.learners)
        self.configs = {
            node: Config(
                node_id=node,
                # A spare starts as a learner of the initial cluster: it never
                # campaigns and waits to be added (as ``replidb serve --join`` does).
                peers=tuple(peer for peer in members if peer != node),
                election_ticks=p.election_ticks,
                heartbeat_ticks=p.heartbeat_ticks,
                max_batch_entries=p.max_batch_entries,
                max_apply_entries=p.max_apply_entries,
                policy=p.policy,
                learners=p.learners if node in members else (*p.learners, node),
            )
            for node in ids
        }

        self.nodes = [
            SimNode(
                node,
                MemoryStorage(),
                None,
                TICK + master.randint(-1, 1),
                random.Random(master.getrandbits(64)),
            )
            for node in ids
        ]
        self.by_id = {node.id: node for node in self.nodes}
        self.checker = SafetyChecker(seed, ids, p.acks_must_survive(), learners=self.learners)
        self.trace: list[str] = []
        self._queue: list[tuple[int, int, _Event]] = []
        self._seq = 0
        self.now = 0
        self.step = 0
        self.loss, self.dup, self.long_delay = p.loss, p.dup, p.long_delay
        self._blocked: set[tuple[str, str]] = set()  # (from, to) links that drop messages
        self.liveness = False
        self._live_first_write = 0  # writes numbered above this were made while healed
        self._live_scan = 0  # how far the committed sequence was searched for them
        self.live_write_committed = False
        # And a client was told it succeeded (if its leader is deposed before it can
        # say so, the outcome is unknown and the client writes again).
        self.live_write_acked = False
        self.writes = 0
        self.crashes = 0
        self.campaigns = 0
        self.pre_votes = 0
        self.faults: dict[str, int] = {}  # kind -> how many happened (restarts included)
        self.rolled_back = 0
        self.snapshots = 0
        self.converged = False
        self._touched: set[str] = set()  # nodes whose state the current step may change
        self._traced_commit = 0
        # Non-empty Appends in the network per (sender, receiver, term): the leader
        # promises one batch in flight per follower (plus duplicates and retries).
        self._batches: dict[tuple[str, str, int], int] = {}
        self.max_batches_in_flight = 0
        self._log(
            f"start nodes={p.nodes} policy={p.policy} election={p.election_ticks} "
            f"heartbeat={p.heartbeat_ticks} loss={p.loss} dup={p.dup} "
            f"delay<={p.max_delay} faults={p.fault_rate:.3f} batch={p.max_batch_entries} "
            f"apply={p.max_apply_entries} defer={p.defer_ready}"
            + (f" learners={','.join(p.learners)}" if p.learners else "")
            + (f" compact_keep={p.compact_keep}" if p.compact_keep is not None else "")
        )
        for node in self.nodes:
            self._start(node)
            self._schedule(master.randrange(node.period), _Tick(node.id))
        self._schedule(TICK, _World())
        # Drawn last, so runs without membership changes are the ones they were before.
        self.changes = MembershipDriver(self, random.Random(master.getrandbits(64)))
        self.reads = ReadDriver(self, random.Random(master.getrandbits(64)), reads)

    # ---- driver --------------------------------------------------------------------

    def run(self) -> None:
        while self.step < self.safety_steps:
            self._one_step()
        self._begin_liveness()
        deadline = self.now + (self.liveness_ticks + self._catch_up_ticks()) * TICK
        while not self.converged:
            if self.now > deadline:
                if not self.live_write_committed:
                    reason = "no write committed"
                elif not self.live_write_acked:
                    reason = "no write acknowledged"
                else:
                    reason = f"not converged: {SafetyChecker.not_converged(self.nodes)}"
                self.checker.fail(
                    "-", f"liveness: no convergence by tick {deadline // TICK}: {reason}"
                )
            self._one_step()
        if self.params.acks_must_survive() and self.checker.lost_acks():
            self.checker.fail("-", f"{self.checker.lost_acks()} acknowledged writes lost")
        # Whatever the policy: a lost acknowledged write is in replidb_discarded.
        self.checker.check_discarded(self.nodes)

    def _one_step(self) -> None:
        self.now, _, event = heapq.heappop(self._queue)
        self.step += 1
        self.checker.step = self.step
        if isinstance(event, _Tick):
            self._on_tick(self.by_id[event.node])
        elif isinstance(event, _Deliver):
            self._on_deliver(event)
        elif isinstance(event, _SnapshotDone):
            self._on_snapshot_done(event)
        else:
            self._on_world()
        # (Also the nodes restarted between steps, when the liveness phase begins.)
        self.checker.after_step(self.nodes, self._touched)
        self._touched.clear()

    def _schedule(self, delay: int, event: _Event) -> None:
        self._seq += 1  # unique tie-breaker: events never compare with each other
        heapq.heappush(self._queue, (self.now + delay, self._seq, event))

    def _log(self, text: str) -> None:
        self.trace.append(f"{self.step} @{self.now} {text}")

    def _core_error(self, node: str, exc: Exception) -> NoReturn:
        """Any exception out of the core (or a storage contract breach) is a violation.
        (Plain try/except at each call: a context manager per call cost 10% of a run.)"""
        if isinstance(exc, InvariantViolation | _Crashed):
            raise exc
        self.checker.fail(node, f"{type(exc).__name__}: {exc}")

    # ---- events --------------------------------------------------------------------

    def pick_leader(self, rng: random.Random) -> SimNode | None:
        """A node that leads and is not paused (where a client's request would land),
        chosen with ``rng``; None if there is none."""
        leaders = [
            n
            for n in self.nodes
            if n.replica is not None
            and n.replica.role is Role.LEADER
            and self.now >= n.paused_until
        ]
        return rng.choice(leaders) if leaders else None

    def _on_tick(self, node: SimNode) -> None:
        self._schedule(node.period, _Tick(node.id))
        if node.replica is None or self.now < node.paused_until:
            return
        self._touched.add(node.id)
        try:
            node.replica.tick()
        except Exception as exc:
            self._core_error(node.id, exc)
        self._drain(node)

    def _on_deliver(self, event: _Deliver) -> None:
        node = self.by_id[event.to]
        if node.replica is not None and self.now < node.paused_until:
            # A paused process reads its socket later: the message is still in flight.
            self._schedule(node.paused_until - self.now + 1, event)
            return
        if isinstance(event.msg, Append) and event.msg.entries:
            self._batches[event.sender, event.to, event.msg.term] -= 1
        if node.replica is None or (event.sender, event.to) in self._blocked:
            return
        self._touched.add(node.id)
        try:
            node.replica.step(event.msg)
        except Exception as exc:
            self._core_error(node.id, exc)
        if self._runtime.random() < self.params.defer_ready:
            # Like a runtime that reads several messages before one Ready: exercises
            # the core's handling of many inputs per batch. Its next tick drains it.
            node.settled = False
            return
        self._drain(node)

    def _on_snapshot_done(self, event: _SnapshotDone) -> None:
        """The transfer completes if both ends are up and can talk; the snapshot is the
        source's committed prefix, the only state it may hand out."""
        node, source = self.by_id[event.node], self.by_id[event.source]
        node.fetching = False
        replica, giver = node.replica, source.replica
        if replica is None or id(replica) != event.replica or giver is None:
            return  # one end crashed: the next offer starts over
        if {(event.source, event.node), (event.node, event.source)} & self._blocked:
            return
        index = min(giver.commit_index, source.storage.applied_index)
        if index < source.storage.first - 1:
            return  # nothing it can hand out
        term = source.storage.log[index - 1].term if index else 0
        if not replica.wants_snapshot(index, term):
            return  # nothing newer than what it has
        self._touched.add(node.id)
        log = source.storage.log[:index]
        rolled_back = node.storage.install_snapshot(log, source.storage.applied[:index])
        self.snapshots += 1
        self.rolled_back += len(rolled_back)
        self._log(
            f"{node.id} installs a snapshot at {index} from {source.id}"
            + (f", rolls back {len(rolled_back)} applied" if rolled_back else "")
        )
        try:
            replica.restore_snapshot(index, log[-1].term if log else 0, giver.membership_at(index))
        except Exception as exc:
            self._core_error(node.id, exc)
        self._drain(node)

    def _on_world(self) -> None:
        self._schedule(TICK, _World())
        if len(self.checker.committed) != self._traced_commit:  # progress, once per tick
            self._traced_commit = len(self.checker.committed)
            self._log(f"committed {self._traced_commit}")
        if not self.liveness:
            if self._faults.random() < self.params.fault_rate:
                self._inject_fault()
            if self.params.change_rate:
                self.changes.maybe_change()
            self.reads.maybe_read()
        elif self._check_live_write() and self.live_write_acked:
            self.converged = SafetyChecker.not_converged(self.nodes) is None
            return  # converging: no more client writes
        budget = 3
        while budget and self._client.random() < self.params.propose_rate:
            budget -= 1
            self._propose()

    # ---- the caller's side of the Ready contract -------------------------------------

    def _drain(self, node: SimNode) -> None:
        self._touched.add(node.id)
        try:
            for _ in range(10_000):
                replica = node.replica
                if replica is None or not replica.has_ready():
                    node.settled = True
                    return
                ready = replica.ready()
                self._handle(node, replica, ready)
                replica.advance(ready)
            self.checker.fail(node.id, "Ready batches never run out")
        except _Crashed:
            return
        except InvariantViolation:
            raise
        except Exception as exc:  # from the core, or a storage contract breach
            self._core_error(node.id, exc)

    def _cut(self, node: SimNode, part: int) -> NoReturn:
        """Crash ``node`` before this part of handling its Ready (``node.crash_cut``)."""
        self._crash(node, f"while handling a Ready, before {_CUT_POINTS[part]}")
        raise _Crashed

    def _handle(self, node: SimNode, replica: Replica, ready: Ready) -> None:
        storage, check = node.storage, self.checker
        cut = -1 if node.crash_cut is None else node.crash_cut  # fixed until it strikes
        if cut == 0:
            self._cut(node, 0)
        if ready.hard_state is not None:
            check.on_hard_state(node.id, storage.hard_state, ready.hard_state)
            storage.save_hard_state(ready.hard_state)
        if cut == 1:
            self._cut(node, 1)
        if ready.truncate_from is not None:
            check.on_truncate(node.id, ready.truncate_from, ready.entries, storage)
            dropped = len(storage.log) - ready.truncate_from + 1
            rolled_back = storage.truncate(ready.truncate_from)
            check.on_truncated(node.id, storage)
            self.rolled_back += len(rolled_back)
            self._log(
                f"{node.id} truncates {dropped} from {ready.truncate_from}, "
                f"rolls back {len(rolled_back)} applied"
            )
        if cut == 2:
            self._cut(node, 2)
        for entry in ready.entries:
            check.on_persist(node.id, entry)
        storage.append(ready.entries)
        if cut == 3:
            self._cut(node, 3)
        requests: set[VoteRequest] = set()  # one per campaign, sent to every peer
        learner = node.id in self.learners
        for to, msg in ready.messages:
            if learner:
                check.on_send(node.id, to, msg)
            if isinstance(msg, VoteRequest):
                requests.add(msg)
            self._send(node.id, to, msg)
        for request in requests:
            if request.pre_vote:
                self.pre_votes += 1
            else:
                self.campaigns += 1
        if cut == 4:
            self._cut(node, 4)
        for entry in ready.committed:
            storage.apply(entry)
        if cut == 5:
            self._cut(node, 5)
        if node.pending:
            self._acknowledge(node, replica, ready.acked_index)
        keep = self.params.compact_keep
        if keep is not None:
            # Only committed, applied entries may go (a leader applies ahead of commit).
            upto = min(replica.commit_index, storage.applied_index) - keep
            if upto >= storage.first:
                storage.compact(upto)
        if ready.read_states:
            self.reads.on_read_states(node, ready.read_states)
        if ready.snapshot_from is not None and not node.fetching:
            node.fetching = True
            delay = self._net.randint(1, 3 * self.params.max_delay)
            self._schedule(delay, _SnapshotDone(ready.snapshot_from, node.id, id(replica)))
        for event in ready.events:
            self._log(f"{node.id} {event.role.value} term={event.term} leader={event.leader}")

    def _acknowledge(self, node: SimNode, replica: Replica, acked_index: int) -> None:
        keep: list[Entry] = []
        for write in node.pending:
            if replica.role is not Role.LEADER or write.term != replica.term:
                continue  # the leader moved on: the outcome is unknown, never "failed"
            if write.index <= acked_index:
                self.checker.on_ack(node.id, write, node.storage)
                self._log(f"{node.id} acks {write.data.decode()} at {write.index}")
                if self.liveness and int(write.data[1:]) > self._live_first_write:
                    self.live_write_acked = True
            else:
                keep.append(write)
        node.pending = keep

    # ---- network -------------------------------------------------------------------

    def _send(self, sender: str, to: str, msg: PeerMessage) -> None:
        net = self._net
        if (sender, to) in self._blocked or net.random() < self.loss:
            return
        copies = 2 if net.random() < self.dup else 1
        for _ in range(copies):
            delay = net.randint(1, self.params.max_delay)
            if net.random() < self.long_delay:
                delay += net.randint(TICK, 5 * TICK)
            self._schedule(delay, _Deliver(sender, to, msg))
            if isinstance(msg, Append) and msg.entries:
                key = (sender, to, msg.term)
                self._batches[key] = count = self._batches.get(key, 0) + 1
                self.max_batches_in_flight = max(self.max_batches_in_flight, count)

    # ---- faults --------------------------------------------------------------------

    def _inject_fault(self) -> None:
        rng = self._faults
        up = [n for n in self.nodes if n.replica is not None]
        down = [n for n in self.nodes if n.replica is None]
        kind = rng.choices(
            ("crash", "restart", "split", "isolate", "oneway", "heal", "pause"),
            weights=(3, 4, 2, 2, 1, 3, 2),
        )[0]
        voters_down = sum(1 for n in down if n.id not in self.learners)
        if voters_down > self.params.nodes // 2 and rng.random() < 0.5:
            kind = "restart"  # bias towards a working majority, without forcing one
        ids = [n.id for n in self.nodes]
        if kind == "crash" and up:
            node = self._victim(up)
            if rng.random() < 0.5:
                self._crash(node, "")
            else:
                node.crash_cut = rng.randrange(len(_CUT_POINTS))
        elif kind == "restart" and down:
            self._restart(rng.choice(down))
        elif kind == "split":
            side = [node for node in ids if rng.random() < 0.5]
            self._partition(kind, side, [node for node in ids if node not in side])
        elif kind == "isolate":
            one = self._victim(up).id if up else rng.choice(ids)
            self._partition(kind, [one], [node for node in ids if node != one])
        elif kind == "oneway":
            a, b = rng.sample(ids, 2)
            self._blocked.add((a, b))
            self._fault(kind, f"link {a}->{b} drops")
        elif kind == "heal":
            self._blocked.clear()
            self._fault(kind, "heal")
        elif kind == "pause" and up:
            node = self._victim(up)
            ticks = rng.randint(1, 3 * self.params.election_ticks)
            node.paused_until = self.now + ticks * TICK
            self._fault(kind, f"pause {node.id} for {ticks} ticks")

    def _fault(self, kind: str, text: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1
        self._log(f"fault: {text}")

    def _victim(self, up: list[SimNode]) -> SimNode:
        """Half the time aim at a leader: failovers are where replication bugs live."""
        leaders = [n for n in up if n.replica is not None and n.replica.role is Role.LEADER]
        if leaders and self._faults.random() < 0.5:
            return self._faults.choice(leaders)
        return self._faults.choice(up)

    def _partition(self, kind: str, side: list[str], other: list[str]) -> None:
        self._blocked.clear()
        for a in side:
            for b in other:
                self._blocked.update(((a, b), (b, a)))
        self._fault(kind, f"partition {side} | {other}")

    def _crash(self, node: SimNode, how: str) -> None:
        assert node.replica is not None
        self._touched.add(node.id)
        # A leader that lived only inside the interrupted batch still counts.
        self.checker.observe_role(node.id, node.replica.role, node.replica.term)
        node.replica = None  # and with it whatever it had not yet persisted
        node.settled = True
        node.pending = []  # their outcome is unknown to the clients
        node.crash_cut = None
        node.paused_until = 0
        self.crashes += 1
        self._fault("crash mid-Ready" if how else "crash", f"crash {node.id} {how}".rstrip())

    def _start(self, node: SimNode) -> None:
        storage = node.storage
        node.replica = Replica(
            self.configs[node.id],
            storage,
            storage.hard_state,
            storage.applied_index,
            random.Random(node.seeds.getrandbits(64)),
        )

    def _restart(self, node: SimNode) -> None:
        self._start(node)
        self._touched.add(node.id)
        self.faults["restart"] = self.faults.get("restart", 0) + 1
        storage = node.storage
        self._log(
            f"restart {node.id} term={storage.hard_state.term} "
            f"last={storage.last_index()} applied={storage.applied_index}"
        )

    # ---- clients -------------------------------------------------------------------

    def _propose(self) -> None:
        ready = [
            n
            for n in self.nodes
            if n.replica is not None
            and self.now >= n.paused_until
            and n.replica.can_propose()
            # Once healed, the client waits for its writes to commit (a closed loop), so
            # the cluster can drain its backlog instead of racing an endless stream.
            and not (self.liveness and n.replica.commit_index < n.replica.last_index)
        ]
        if not ready:
            return
        node = self._client.choice(ready)
        replica = node.replica
        assert replica is not None
        if node.id in self.learners:  # (the checkers would already have objected)
            self.checker.fail(node.id, "a client write went to a learner")
        self.writes += 1
        data = b"w%d" % self.writes
        # The caller executes the write and logs it atomically before telling the core.
        entry = Entry(replica.term, replica.next_index(), EntryKind.WRITE, data)
        self.checker.on_persist(node.id, entry)
        self._touched.add(node.id)
        try:
            node.storage.write_applied(entry)
            proposed = replica.propose_applied(data)
        except Exception as exc:
            self._core_error(node.id, exc)
        if proposed != entry:
            self.checker.fail(node.id, f"propose_applied returned {proposed!r}, not {entry!r}")
        node.pending.append(entry)
        self._log(f"{node.id} writes {data.decode()} at {entry.index} term={entry.term}")
        self._drain(node)

    # ---- liveness ------------------------------------------------------------------

    def _begin_liveness(self) -> None:
        self.liveness = True
        self._blocked.clear()
        self.loss = self.dup = self.long_delay = 0.0
        self._live_first_write = self.writes
        self._log("liveness: heal, no loss, restart all")
        for node in self.nodes:
            node.paused_until = 0
            node.crash_cut = None
            if node.replica is None:
                self._restart(node)

    def _catch_up_ticks(self) -> int:
        """Time to ship the longest log one batch per round trip to a node that has none
        of it: the leader keeps one batch in flight per follower, so that bounds speed."""
        longest = max(len(node.storage.log) for node in self.nodes)
        batches = -(-longest // self.params.max_batch_entries)
        return batches * (2 * self.params.max_delay // TICK + 1)

    def _check_live_write(self) -> bool:
        """Has a write made after the heal been committed?"""
        committed = self.checker.committed
        while not self.live_write_committed and self._live_scan < len(committed):
            data = committed[self._live_scan].data
            self._live_scan += 1
            if data.startswith(b"w") and int(data[1:]) > self._live_first_write:
                self.live_write_committed = True
                self._log(f"liveness: {data.decode()} committed")
        return self.live_write_committed

    # ---- result --------------------------------------------------------------------

    def result(self, violations: list[str]) -> SimResult:
        if not violations:  # the final state, so that equal digests mean equal outcomes
            self._log(f"end committed={len(self.checker.committed)} acked={self.checker.acks}")
            for node in self.nodes:
                storage, replica = node.storage, node.replica
                commit = replica.commit_index if replica is not None else "-"
                self._log(
                    f"end {node.id} term={storage.hard_state.term} last={storage.last_index()} "
                    f"commit={commit} applied={storage.applied_index} "
                    f"discarded={len(storage.discarded)}"
                )
        digest = hashlib.sha256("\n".join(self.trace).encode()).hexdigest()
        return SimResult(
            seed=self.seed,
            nodes=self.params.nodes,
            policy=str(self.params.policy),
            steps=self.step,
            ticks=self.now // TICK,
            trace=self.trace,
            trace_digest=digest,
            writes=self.writes,
            acked=self.checker.acks,
            acked_lost=self.checker.lost_acks(),
            committed=len(self.checker.committed),
            leaders_elected=len(self.checker.leaders),
            crashes=self.crashes,
            max_batches_in_flight=self.max_batches_in_flight,
            converged=self.converged,
            violations=violations,
            terms=max(node.storage.hard_state.term for node in self.nodes),
            campaigns=self.campaigns,
            pre_votes=self.pre_votes,
            discarded=sum(len(node.storage.discarded) for node in self.nodes),
            rolled_back=self.rolled_back,
            faults=dict(sorted(self.faults.items())),
            learners=self.params.learners,
            learners_led=sum(1 for n in self.checker.leaders.values() if n in self.learners),
            learner_applied=sum(
                len(node.storage.applied) for node in self.nodes if node.id in self.learners
            ),
            snapshots=self.snapshots,
            membership_changes=sum(1 for e in self.checker.committed if e.kind == EntryKind.CONFIG),
            final_members=self.changes.final_members(),
            reads_served=self.reads.served,
            reads_refused=self.reads.refused,
        )


def run(
    seed: int,
    *,
    safety_steps: int = SAFETY_STEPS,
    liveness_ticks: int = LIVENESS_TICKS,
    raise_on_violation: bool = False,
    membership: bool = False,
    reads: bool = False,
) -> SimResult:
    """Run one seed (of the membership seed space with ``membership``). A violation is
    raised, or recorded in ``SimResult.violations``."""
    sim = Simulation(seed, safety_steps, liveness_ticks, membership, reads)
    try:
        sim.run()
    except InvariantViolation as exc:
        sim.trace.append(f"VIOLATION {exc}")
        if raise_on_violation:
            raise
        return sim.result([str(exc)])
    return sim.result([])


def run_seeds(
    seeds: Iterable[int],
    *,
    workers: int = 1,
    keep_trace: bool = True,
    membership: bool = False,
    reads: bool = False,
) -> list[SimResult]:
    """Run many seeds, in ``workers`` processes; the results (in seed order) are the
    same as one ``run`` after another, since every seed is independent. Without
    ``keep_trace`` the traces are dropped (their digests stay): 500 traces are
    hundreds of megabytes, and they would be copied from the worker processes."""
    seed_list = list(seeds)
    job = partial(_run_one, keep_trace=keep_trace, membership=membership, reads=reads)
    if workers <= 1 or len(seed_list) < 2:
        return [job(seed) for seed in seed_list]
    # spawn, not fork: the caller (a test runner) may have threads that a fork would
    # copy mid-lock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        chunk = max(1, min(16, len(seed_list) // (4 * workers)))
        return list(pool.map(job, seed_list, chunksize=chunk))


def _run_one(
    seed: int, keep_trace: bool, membership: bool = False, reads: bool = False
) -> SimResult:
    result = run(seed, membership=membership, reads=reads)
    if not keep_trace:
        result.trace = result.trace[-1:] if result.violations else []
    return result


def main_sim(
    seed: int | None,
    seeds: int = 1,
    verbose: bool = False,
    membership: bool = False,
    reads: bool = False,
) -> int:
    """CLI entry (``replidb sim``): run ``seeds`` seeds from ``seed``; 1 on a violation."""
    flag = (" --membership" if membership else "") + (" --reads" if reads else "")
    return report_seeds(
        seed, seeds, lambda s: run(s, membership=membership, reads=reads),
        f"replidb sim{flag}", verbose,
    )  # fmt: skip
