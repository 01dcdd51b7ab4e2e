"""The asyncio runtime of one node: it owns the clock (ticks), the sockets, and the
database, and drives the pure replica with them.

One TCP port serves peers and clients alike: a connection whose first frame is
``Hello`` is a peer's outbound link (we receive on it; our replies go out on our own
link to that peer); anything else is a client. Every input is followed by ``_drive``,
which handles the replica's Ready batches in the order the core documents.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from replidb.core import (
    Append,
    AppendReply,
    CommitPolicy,
    Config,
    Replica,
    Role,
    RoleChanged,
    VoteReply,
    VoteRequest,
)
from replidb.core.membership import Membership, MembershipBusy, decode_membership
from replidb.core.messages import SnapshotOffer, TimeoutNow
from replidb.core.policy import guarantee, parse_policy
from replidb.errors import (
    BadRequest,
    Error,
    InternalError,
    NotLeader,
    OutcomeUnknown,
    ProtocolError,
    SQLError,
    Unavailable,
)
from replidb.node.acks import AckTracker
from replidb.node.changes import ChangeFeed
from replidb.node.group_commit import GroupCommit
from replidb.node.progress import CatchUpReporter
from replidb.node.reads import ReadGate, bound_of
from replidb.node.retention import compaction_point
from replidb.node.runtime import Tasks, answer_when_ready, serve_connection
from replidb.node.snapshots import SnapshotFetcher, SnapshotSource
from replidb.node.snapshots import answer as answer_fetch
from replidb.storage import NeedsWrite, open_store
from replidb.storage.sqlite_store import WriteOutcome, WriteRequest
from replidb.transport import wire
from replidb.transport.framing import DEFAULT_MAX_FRAME, frame, read_message
from replidb.transport.peer import PeerLink, split_address

__all__ = ["Node", "NodeConfig"]

CORE_MESSAGES = (VoteRequest, VoteReply, Append, AppendReply, TimeoutNow, SnapshotOffer)
log = logging.getLogger("replidb.node")


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    listen: str
    # id -> address of the other members at bootstrap; once the log holds a membership
    # change (replidb join/remove), the log's membership and addresses win.
    peers: dict[str, str]
    tick_ms: int = 50
    heartbeat_ms: int = 100
    election_timeout_ms: int = 1000
    policy: CommitPolicy = field(default_factory=lambda: CommitPolicy("async"))
    on_sync_timeout: str = "block"  # or "degrade": fall back to async, visibly
    sync_timeout_ms: int = 2000
    max_frame: int = DEFAULT_MAX_FRAME
    request_timeout_s: float = 5.0
    seed: int | None = None
    learners: tuple[str, ...] = ()  # non-voting members (read replicas)
    stream: str = "logical"  # statement | wal | logical | mixed (storage/base.py)
    row_images: str = "minimal"  # full: every UPDATE logs its whole row (partial replicas)
    page_size: int = 4096  # wal stream: must match the leader's
    subscribe: tuple[str, ...] = ()  # partial replica: table specs (storage/subscription.py)
    max_log_entries: int = 100_000  # retention cap (node/retention.py)
    max_log_bytes: int = 1 << 30
    snapshot_chunk_bytes: int = 1 << 20
    debug_peer_delay_ms: int = 0  # fault injection: hold every peer message this long

    def core_config(self) -> Config:
        return Config(
            node_id=self.node_id,
            peers=tuple(self.peers),
            election_ticks=max(2, self.election_timeout_ms // self.tick_ms),
            heartbeat_ticks=max(1, self.heartbeat_ms // self.tick_ms),
            policy=self.policy,
            learners=self.learners,
        )


# Requests that surely write skip the attempt to serve them as reads (a prepare on the
# read-only connection, refused): 2% of a busy leader's time.
_WRITES = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


def _parse_sync(text: str) -> CommitPolicy | None:
    """A transaction's own commit policy, if it names one."""
    if not text:
        return None
    try:
        return parse_policy(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.id = config.node_id
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(
            config.data_dir, config.stream, config.row_images, config.page_size, config.subscribe
        )
        self._noted_commit = 0  # the commit index the store last heard of
        snapshots = config.data_dir / "snapshots"
        self._snapshot_source = SnapshotSource(
            self.store,
            snapshots,
            log,
            max_age_entries=max(1, config.max_log_entries // 2),
            chunk_size=config.snapshot_chunk_bytes,
            committed_index=lambda: self.replica.commit_index,
        )
        self._fetcher = SnapshotFetcher(config.node_id, snapshots, log)
        self._fetching: asyncio.Task[None] | None = None
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(8), "big")
        self.replica = Replica(
            config.core_config(),
            self.store,
            self.store.hard_state(),
            self.store.applied_index(),
            random.Random(seed),
        )
        self.links: dict[str, PeerLink] = {}
        self._heard: dict[str, str] = {}  # addresses peers announced in their Hello
        self._membership: Membership | None = None  # the one the links were made for
        self._running = False
        self._sync_links()
        self.acks = AckTracker(
            config.policy, config.on_sync_timeout, config.sync_timeout_ms / 1000, log
        )
        # forward id -> (the leader it went to, the reply to come)
        self._forwards: dict[int, tuple[str, asyncio.Future[wire.ExecuteReply]]] = {}
        self._ids = itertools.count(1)
        self._tasks = Tasks()
        self._server: asyncio.base_events.Server | None = None
        self._started = time.monotonic()
        self._catch_up = CatchUpReporter(log)
        self.reads = ReadGate()
        self.changes = ChangeFeed(
            config.node_id,
            self.store,
            config.stream,
            lambda: (self.replica.applied_index, self.replica.commit_index),
            log,
        )
        self._floors_term = 0  # the term in which we last raised id floors
        self._group: GroupCommit[wire.Execute, tuple[WriteOutcome, int, int]] = GroupCommit(
            self._run_group
        )
        self.failed: BaseException | None = None
        self.stopped = asyncio.Event()

    @property
    def durability(self) -> str:
        return str(guarantee(self.config.policy, len(self.replica.voters)))

    # ---- membership and peer links ---------------------------------------------

    def _address_of(self, node: str | None) -> str | None:
        if node is None:
            return None
        if node == self.id:
            return self.config.listen
        return (
            self.replica.membership.address(node)
            or self.config.peers.get(node)
            or self._heard.get(node)
        )

    def _link(self, node: str) -> PeerLink | None:
        """The link to ``node``, made on first use if we know where it listens (a node
        outside our membership may still need an answer: a leader we have not yet seen
        added, a candidate, a member being removed)."""
        link = self.links.get(node)
        if link is None:
            address = self._address_of(node)
            if address is None:
                return None
            link = PeerLink(
                self.id,
                node,
                address,
                on_change=self._on_link_change,
                own_address=self.config.listen,
            )
            self.links[node] = link
            if self._running:
                link.start()
        return link

    def _sync_links(self) -> None:
        """Links to every member of the membership in force; none to former members."""
        membership = self.replica.membership
        if membership is self._membership:
            return
        if self._membership is not None:
            log.info(
                "membership: voters %s; learners %s%s",
                ",".join(membership.voters),
                ",".join(membership.learners) or "none",
                "" if self.replica.is_member else " (this node is no longer a member)",
            )
        self._membership = membership
        for node in self.replica.peers:
            self._link(node)
        for node in [n for n in self.links if n not in membership.members]:
            link = self.links.pop(node)
            if self._running:
                self._spawn(link.stop())

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        host, port = split_address(self.config.listen)
        self._server = await asyncio.start_server(self._on_connection, host, port)
        self._running = True
        for link in self.links.values():
            link.start()
        self._spawn(self._ticker())
        self._spawn(self._compactor())
        hard = self.store.hard_state()
        log.info(
            "started: listening on %s, peers %s, log at index %d (term %d), applied %d, "
            "commit policy %s (%s), stream %s%s",
            self.config.listen,
            ",".join(f"{p}={self._address_of(p)}" for p in self.replica.peers) or "none",
            self.store.last_index(),
            hard.term,
            self.store.applied_index(),
            self.config.policy,
            self.durability,
            self.config.stream,
            f", subscribed to {'; '.join(self.config.subscribe)}" if self.config.subscribe else "",
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._tasks.cancel_all()
        for link in self.links.values():
            await link.stop()
        self.acks.fail_all("the node is shutting down")
        self.reads.fail_all()
        self.store.close()
        log.info("stopped")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    def _fatal(self, exc: BaseException) -> None:
        log.critical("stopping: %s", exc)
        self.failed = exc
        self.stopped.set()

    # ---- the replica loop ------------------------------------------------------

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_ms / 1000
        next_tick = loop.time()
        while True:
            next_tick += interval
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            self.replica.tick()
            self._drive()
            self.acks.check(self.replica, time.monotonic())

    def _drive(self) -> None:
        """Handle Ready batches: persist, send, apply, acknowledge, then advance."""
        replica = self.replica
        try:
            while replica.has_ready():
                ready = replica.ready()
                if ready.hard_state or ready.truncate_from is not None or ready.entries:
                    if (
                        ready.truncate_from is not None
                        and ready.truncate_from <= self.store.applied_index()
                    ):
                        log.warning(
                            "rolling back applied entries from index %d "
                            "(kept in replidb_discarded)",
                            ready.truncate_from,
                        )
                    self.store.persist(ready.hard_state, ready.truncate_from, ready.entries)
                sent_ms = int(time.time() * 1000)
                for to, message in ready.messages:
                    link = self._link(to)
                    if link is not None:
                        if isinstance(message, Append):
                            message = msgspec.structs.replace(message, sent_ms=sent_ms)
                        link.send(message)
                if ready.committed:
                    self.store.apply(ready.committed)
                    self._catch_up.applied(ready.committed[-1].index, replica.leader_commit)
                    self.reads.applied(ready.committed[-1].index)
                if ready.read_states:
                    self.reads.released(ready.read_states)
                if ready.committed or ready.truncate_from is not None:
                    self.changes.applied()
                if replica.commit_index > self._noted_commit:
                    self._noted_commit = replica.commit_index
                    self.store.note_committed(self._noted_commit)
                for event in ready.events:
                    self._on_role_changed(event)
                if ready.snapshot_from is not None:
                    self._fetch_snapshot(ready.snapshot_from)
                replica.advance(ready)
                self._sync_links()
            self.acks.check(replica, time.monotonic())
        except Exception as exc:  # storage failed or diverged: stop rather than serve wrong data
            self._fatal(exc)

    # ---- log retention and snapshots ---------------------------------------------

    async def _compactor(self) -> None:
        """Once a second: forget committed log entries beyond the retention cap."""
        while True:
            await asyncio.sleep(1.0)
            entries, size = self.store.log_stats()
            safe = min(self.replica.commit_index, self.store.applied_index())
            in_use = self._snapshot_source.in_use_index
            upto = compaction_point(
                self.store.first_index(),
                safe,
                self.config.max_log_entries,
                self.config.max_log_bytes,
                entries,
                size,
            )
            if in_use is not None:
                upto = min(upto, in_use)  # a follower continues from that snapshot
            if upto > 0:
                try:
                    removed = self.store.compact(upto)
                except Exception as exc:  # storage failed: stop rather than serve wrong data
                    self._fatal(exc)
                    return
                log.info("log compacted up to index %d (%d entries)", upto, removed)

    def _fetch_snapshot(self, leader: str) -> None:
        if self._fetching is not None and not self._fetching.done():
            return  # one transfer at a time; the leader keeps offering
        address = self._address_of(leader)
        if address is None:
            return
        self._fetching = asyncio.get_running_loop().create_task(self._install_from(address))

    async def _install_from(self, address: str) -> None:
        try:
            info = await self._fetcher.fetch(address)
        except Error as exc:
            log.warning("snapshot transfer from %s failed: %s (will retry)", address, exc)
            return
        replica = self.replica
        if not replica.wants_snapshot(info.index, info.term):
            log.info(
                "snapshot at %d not installed: our commit (%d) or our log (to %d) already holds it",
                info.index,
                replica.commit_index,
                replica.last_index,
            )
            return
        await self._snapshot_source.settle()  # a snapshot being made reads the file
        try:
            membership = bytes.fromhex(info.membership)
            discarded = self.store.install_snapshot(
                info.path, info.index, info.term, replica.commit_index, membership
            )
        except Unavailable as exc:  # a reader holds the file: the next offer retries
            log.warning("cannot install snapshot at %d yet: %s", info.index, exc)
            return
        except Exception as exc:
            self._fatal(exc)
            return
        replica.restore_snapshot(
            info.index,
            info.term,
            decode_membership(membership) if membership else replica.membership_at(info.index),
        )
        log.info(
            "installed snapshot at index %d (term %d)%s",
            info.index,
            info.term,
            f"; {discarded} applied write(s) kept in replidb_discarded" if discarded else "",
        )
        self._drive()

    def _on_role_changed(self, event: RoleChanged) -> None:
        leader = event.leader or "unknown"
        log.info("role %s, term %d, leader %s", event.role.value, event.term, leader)
        if event.role is not Role.LEADER:
            self.acks.fail_all(f"this node lost leadership (term {event.term})")
        # Writes forwarded to a leader we no longer follow may or may not have landed;
        # say so now (the client retries them exactly-once) instead of at the deadline.
        for leader, future in self._forwards.values():
            if leader != event.leader and not future.done():
                future.set_exception(
                    OutcomeUnknown(f"leader {leader} was replaced while it had the write")
                )

    def _on_link_change(self, peer: str, connected: bool) -> None:
        log.info("peer %s %s", peer, "regained" if connected else "lost")
        if not connected and peer == self.replica.leader:
            self.replica.leader_unreachable()
            self._drive()

    # ---- connections -----------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await serve_connection(
            reader, writer, self.config.max_frame, self._peer_loop, self._client_loop, log
        )

    async def _peer_loop(self, hello: wire.Hello, reader: asyncio.StreamReader) -> None:
        # Any node may talk to us: one we do not know yet may be a member added by a
        # membership change we have not received. Only members count for anything
        # (the core decides); the address lets us answer it.
        peer = hello.node_id
        if peer == self.id:
            raise ProtocolError(f"a peer introduced itself with our own id {peer!r}")
        if hello.address:
            self._heard[peer] = hello.address
        loop = asyncio.get_running_loop()
        delay = self.config.debug_peer_delay_ms / 1000
        while (message := await read_message(reader, self.config.max_frame)) is not None:
            if isinstance(message, CORE_MESSAGES):
                if message.sender != peer:
                    raise ProtocolError(f"{peer} sent a message signed {message.sender}")
            elif not isinstance(message, wire.Forward | wire.ForwardReply):
                raise ProtocolError(f"{peer} sent {type(message).__name__} on a peer link")
            if delay:
                # Fault injection: every message arrives late (added latency, same order),
                # so tests can hold a replica deliberately behind.
                loop.call_later(delay, self._on_peer_message, message)
            else:
                self._on_peer_message(message)

    def _on_peer_message(self, message: wire.Message) -> None:
        if isinstance(message, CORE_MESSAGES):
            self.replica.step(message)
            if isinstance(message, Append) and message.sender == self.replica.leader:
                sent = message.sent_ms / 1000 if message.sent_ms else time.time()
                self.reads.heard_from_leader(message.commit, self.replica.applied_index, sent)
            self._drive()
        elif isinstance(message, wire.Forward):
            self._spawn(self._serve_forward(message))
        elif isinstance(message, wire.ForwardReply):
            _, future = self._forwards.get(message.id, (None, None))
            if future is not None and not future.done():
                future.set_result(message.reply)

    async def _client_loop(
        self, first: wire.Message, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        message: wire.Message | None = first
        while message is not None:
            if isinstance(message, wire.Execute):
                self._spawn(answer_when_ready(self.execute(message), writer))
            elif isinstance(message, wire.StatusRequest):
                writer.write(frame(wire.StatusReply(message.id, self.status())))
            elif isinstance(message, wire.TransferLeader):
                self._spawn(answer_when_ready(self.transfer_leadership(message), writer))
            elif isinstance(message, wire.ChangeMembership):
                self._spawn(answer_when_ready(self.change_membership(message), writer))
            elif isinstance(message, wire.SnapshotFetch):
                await answer_fetch(self._snapshot_source, message, writer)
            elif isinstance(message, wire.ChangesRequest):
                await self.changes.serve(message, writer)
                return  # a change stream has the connection to itself
            else:
                raise ProtocolError(f"a client sent {type(message).__name__}")
            message = await read_message(reader, self.config.max_frame)

    async def change_membership(self, request: wire.ChangeMembership) -> wire.MembershipReply:
        """One membership change (core/membership.py), answered once it is committed.
        Asking again for a change already made answers at once: join and remove can be
        retried after any failure."""
        replica = self.replica

        def refuse(kind: str, text: str) -> wire.MembershipReply:
            return wire.MembershipReply(
                request.id,
                error_kind=kind,
                error=text,
                leader_address=self._address_of(replica.leader),
            )

        if replica.role is not Role.LEADER:
            return refuse(NotLeader.kind, f"{self.id} is not the leader")
        current = replica.membership
        op, node = request.op, request.node
        done = (
            (op == "add-learner" and node in current.members)
            or (op == "promote" and node in current.voters)
            or (op == "remove" and node not in current.members)
        )
        if done:
            index = replica.membership_index
            if index > replica.commit_index:
                return refuse(Unavailable.kind, "the change is still being committed; retry")
            return wire.MembershipReply(
                request.id, list(current.voters), list(current.learners), index
            )
        try:
            if op == "add-learner":
                if not request.address:
                    raise ValueError(f"{node} needs an address (HOST:PORT) to be added")
                split_address(request.address)
                new = current.with_learner(node, request.address)
            elif op == "promote":
                new = current.promoted(node)
            elif op == "remove":
                new = current.without(node)
            else:
                raise ValueError(f"unknown membership change {op!r}: add-learner, promote, remove")
            entry = replica.propose_membership(new)
        except MembershipBusy as exc:
            return refuse(Unavailable.kind, f"{exc}; retry shortly")
        except ValueError as exc:
            return refuse(BadRequest.kind, str(exc))
        log.info(
            "membership change proposed at index %d: %s", entry.index, current.describe_change(new)
        )
        self._drive()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s
        while loop.time() < deadline:
            if replica.commit_index >= entry.index:
                if replica.log.term(entry.index) in (entry.term, 0):  # (0: compacted)
                    return wire.MembershipReply(
                        request.id, list(new.voters), list(new.learners), entry.index
                    )
                break  # a new leader replaced it: it did not happen
            await asyncio.sleep(self.config.tick_ms / 1000)
        return refuse(
            OutcomeUnknown.kind,
            f"the change at index {entry.index} did not commit in time; "
            "ask again to learn whether it took effect",
        )

    async def transfer_leadership(self, request: wire.TransferLeader) -> wire.TransferReply:
        """Planned switchover: the core stops taking writes, catches the target up and
        tells it to campaign; we answer once it leads (or the transfer is abandoned)."""
        replica = self.replica
        if replica.role is not Role.LEADER:
            leader = replica.leader
            return wire.TransferReply(
                request.id,
                leader,
                NotLeader.kind,
                f"{self.id} is not the leader",
                self._address_of(leader),
            )
        if request.target == self.id:
            return wire.TransferReply(request.id, self.id)
        try:
            replica.transfer_leadership(request.target)
        except ValueError as exc:
            return wire.TransferReply(request.id, self.id, "bad_request", str(exc))
        log.info("transferring leadership to %s", request.target)
        self._drive()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self.config.election_timeout_ms / 1000 + 1
        while loop.time() < deadline:
            if replica.role is not Role.LEADER and replica.leader is not None:
                return wire.TransferReply(request.id, replica.leader)
            if replica.role is Role.LEADER and replica.transferee is None:
                break  # abandoned by the core: the target did not take over in time
            await asyncio.sleep(self.config.tick_ms / 1000)
        return wire.TransferReply(
            request.id,
            replica.leader,
            Unavailable.kind,
            f"{request.target} did not take over within an election timeout; {self.id} still leads",
        )

    async def _serve_forward(self, forward: wire.Forward) -> None:
        reply = await self.execute(forward.request, allow_forward=False)
        link = self.links.get(forward.origin)
        if link is not None:
            link.send(wire.ForwardReply(forward.id, reply))

    # ---- requests --------------------------------------------------------------

    async def execute(self, request: wire.Execute, allow_forward: bool = True) -> wire.ExecuteReply:
        """Serve reads here; send writes to the leader (or run them, if we lead)."""
        try:
            if not self.replica.is_member:
                # Its data only gets staler: send the client to the members.
                raise Unavailable(f"{self.id} was removed from the cluster; use another node")
            level = request.consistency or "any"
            leads = self.replica.role is Role.LEADER
            if not request.dry_run and level in ("leader", "linearizable") and not leads:
                return await self._write(request, allow_forward)  # a read, run by the leader
            surely_writes = bool(request.statements) and _WRITES.match(request.statements[0].sql)
            if not request.dry_run and not surely_writes:
                await self._read_gate(level, request.min_position)
                try:
                    results = self.store.execute_read(request.statements)
                    return wire.ExecuteReply(
                        request.id,
                        results,
                        node=self.id,
                        term=self.replica.term,
                        position=self.replica.applied_index,
                    )
                except NeedsWrite:
                    pass
                except SQLError:
                    # A follower may not have applied the table yet; only the leader's
                    # answer is authoritative, so ask it before calling the SQL wrong.
                    if self.replica.role is Role.LEADER or not allow_forward:
                        raise
            return await self._write(request, allow_forward)
        except Error as exc:
            leader_address = exc.leader_address if isinstance(exc, NotLeader) else None
            return wire.ExecuteReply(
                request.id,
                error_kind=exc.kind,
                error=exc.message,
                leader_address=leader_address,
                node=self.id,
            )
        except Exception as exc:  # a bug: answer, log it, keep serving
            log.exception("internal error serving a request")
            return wire.ExecuteReply(
                request.id,
                error_kind=InternalError.kind,
                error=f"internal error: {exc}",
                node=self.id,
            )

    async def _read_gate(self, level: str, position: int) -> None:
        """Wait, or redirect, until this node may serve a read at ``level``
        (node/reads.py)."""
        if level == "session":
            await self._wait_applied(position)
        elif level == "linearizable":  # (we lead: followers forwarded it)
            timeout = self.config.request_timeout_s
            index = await self.reads.confirm(self.replica, self._drive, timeout)
            await self._wait_applied(index)
        elif (bound := bound_of(level)) is not None:
            lag = self.reads.staleness(self.replica, time.time())
            if lag > bound:
                leader = self.replica.leader
                raise NotLeader(
                    f"{self.id} may be {lag:.2f}s behind, over the bound of {bound:g}s: "
                    "read at the leader",
                    self._address_of(leader) if leader != self.id else None,
                )

    async def _wait_applied(self, position: int) -> None:
        """Session consistency: answer only once this node has applied ``position``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s
        while self.replica.applied_index < position:
            if loop.time() >= deadline:
                raise Unavailable(
                    f"{self.id} has applied up to {self.replica.applied_index}, the session "
                    f"has seen {position}; try another node"
                )
            await asyncio.sleep(self.config.tick_ms / 1000 / 5)

    async def _write(self, request: wire.Execute, allow_forward: bool) -> wire.ExecuteReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s
        while not self.replica.can_propose():
            leader = self.replica.leader
            if leader is not None and leader != self.id:
                if not allow_forward:
                    raise NotLeader(f"{self.id} is not the leader", self._address_of(leader))
                link = self._link(leader)
                if link is not None and link.connected:
                    return await self._forward(request, leader, deadline)
            # No leader, or one we cannot reach (it may have died: an election is
            # coming). Waiting here answers the client one round trip after the new
            # leader is known, instead of at its next retry.
            if loop.time() >= deadline:
                raise Unavailable(
                    f"no reachable leader within {self.config.request_timeout_s}s; retry shortly"
                )
            await asyncio.sleep(self.config.tick_ms / 1000)
        if request.term > self.replica.term:
            # Fencing: the client has already seen a newer leader than us.
            raise NotLeader(
                f"{self.id} is at term {self.replica.term} but the client has seen term "
                f"{request.term}"
            )
        policy = _parse_sync(request.sync)
        outcome, index, term = await self._group.submit(request)
        if outcome.data is None and not outcome.duplicate:  # changed nothing (or dry run)
            return wire.ExecuteReply(
                request.id,
                outcome.results,
                node=self.id,
                term=term,
                position=self.replica.applied_index,
            )
        future = self.acks.wait_for(
            index, term, policy, time.monotonic(), outcome.needs_commit or outcome.duplicate
        )
        self._drive()
        self.acks.check(self.replica, time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
        except TimeoutError:
            self.acks.forget(future)
            raise OutcomeUnknown(
                f"write at index {index} not acknowledged under {policy or self.config.policy} "
                f"within {self.config.request_timeout_s}s"
            ) from None
        return wire.ExecuteReply(
            request.id, outcome.results, node=self.id, index=index, term=term, position=index
        )

    def _run_group(
        self, requests: list[wire.Execute]
    ) -> list[tuple[WriteOutcome, int, int] | Error]:
        """Execute a group of client writes in one transaction and propose each one
        that changed something (node/group_commit.py); per request, its outcome with
        its log index and term, or its error."""
        replica = self.replica
        if not replica.can_propose():  # leadership moved while the group waited
            leader = replica.leader if replica.leader != self.id else None
            return [
                NotLeader(
                    f"{self.id} lost leadership before the write ran", self._address_of(leader)
                )
                for _ in requests
            ]
        term, first = replica.term, replica.next_index()
        if self._floors_term != term:
            # Before our first write: allocate above every id the previous leader
            # could have handed out (storage/rowid_guard.py).
            raised = self.store.raise_rowid_floors()
            self._floors_term = term
            if raised:
                log.info("raised the id floor of %d table(s) to their leases", raised)
        batch = [
            WriteRequest(r.statements, r.client_id, r.seq, r.dry_run, r.expect, r.expect_count)
            for r in requests
        ]
        results: list[tuple[WriteOutcome, int, int] | Error] = []
        expected = first
        for outcome in self.store.execute_batch(batch, term, first):
            if isinstance(outcome, Error):
                results.append(outcome)
                continue
            index = outcome.index  # (a duplicate: the original's)
            if outcome.data is not None:
                index = replica.propose_applied(outcome.data).index
                if index != expected:
                    raise InternalError(f"log position moved from {expected} to {index}")
                expected += 1
            results.append((outcome, index, term))
        proposed = expected > first
        if proposed:
            self.changes.applied()
            self._drive()  # one Append per follower for the whole group
        return results

    async def _forward(
        self, request: wire.Execute, leader: str, deadline: float
    ) -> wire.ExecuteReply:
        link = self.links[leader]
        forward_id = next(self._ids)
        future: asyncio.Future[wire.ExecuteReply] = asyncio.get_running_loop().create_future()
        self._forwards[forward_id] = (leader, future)
        link.send(wire.Forward(forward_id, self.id, request))
        try:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise OutcomeUnknown(f"leader {leader} did not answer the forwarded write") from None
        finally:
            self._forwards.pop(forward_id, None)
        # Tell the client where the leader is, so that its next write goes straight
        # there instead of through us (a hop and a follower's CPU per write).
        leader_address = reply.leader_address or self._address_of(leader)
        return msgspec.structs.replace(reply, id=request.id, leader_address=leader_address)

    # ---- status ----------------------------------------------------------------

    def status(self) -> wire.NodeStatus:
        replica = self.replica
        leader = replica.leader
        leader_address = self._address_of(leader)
        return wire.NodeStatus(
            id=self.id,
            address=self.config.listen,
            role=(
                "removed"
                if not replica.is_member
                else "learner"
                if replica.is_learner and replica.role is not Role.LEADER
                else replica.role.value
            ),
            term=replica.term,
            leader=leader,
            leader_address=leader_address,
            last_index=replica.last_index,
            commit_index=replica.commit_index,
            applied_index=replica.applied_index,
            peers={p: self._address_of(p) or "" for p in replica.peers},
            policy=str(self.config.policy),
            stream=self.config.stream,
            subscription="; ".join(self.config.subscribe),
            first_index=self.store.first_index(),
            needs_snapshot=replica.snapshot_peers(),
            snapshot=self._fetcher.progress,
            durability=self.durability,
            degraded=self.acks.degraded,
            degradations=self.acks.degradations,
            discarded=self.store.discarded_count(),
            uptime_s=round(time.monotonic() - self._started, 3),
            peers_connected=sorted(p for p, link in self.links.items() if link.connected),
            match_index={p: replica.match_index(p) for p in replica.peers}
            if replica.role is Role.LEADER
            else {},
            voters=list(replica.membership.voters),
            learners=list(replica.membership.learners),
            member=replica.is_member,
            write_groups=self._group.groups,
            grouped_writes=self._group.items,
        )
