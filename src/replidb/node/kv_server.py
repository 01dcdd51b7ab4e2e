"""A leaderless node (``replidb serve --topology leaderless``, issue #9): a replica of
the keys the hash ring gives it, a coordinator for clients that do not coordinate
themselves, and the background work that keeps replicas converging.

- Replica requests (``KvGet``/``KvCoordPut``/``KvReplicate``) are answered from the
  local store, whether they come from a client's connection or a peer's link.
- ``KvRequest`` and SQL writes are coordinated here with the same driver the Python
  client uses (replidb/kv_coordinator.py); SQL reads are local.
- In the background (node/kv_upkeep.py): hinted handoff, schema, anti-entropy and
  tombstone purging.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from replidb.core import dvv, leaderless
from replidb.core.hashring import HashRing
from replidb.errors import (
    BadRequest,
    Error,
    InternalError,
    OutcomeUnknown,
    ProtocolError,
)
from replidb.kv_coordinator import Outcome, handoff, run_read, run_write
from replidb.node.kv_upkeep import Upkeep
from replidb.node.runtime import (
    Tasks,
    answer_when_ready,
    refuse_other_layouts,
    serve_connection,
)
from replidb.storage.executor import NeedsWrite
from replidb.storage.kv_store import KvStore, RowWrite
from replidb.transport import wire
from replidb.transport.framing import DEFAULT_MAX_FRAME, frame, read_message
from replidb.transport.kv_wire import (
    KvCoordPut,
    KvGet,
    KvPurge,
    KvPurgeCheck,
    KvPurgeState,
    KvPush,
    KvReplicate,
    KvReply,
    KvRequest,
    KvResult,
    KvSchema,
    KvTree,
    KvTreeDiff,
    clock_from_bytes,
    clock_to_bytes,
    decode_key,
    present_rows,
)
from replidb.transport.peer import PeerLink, split_address

__all__ = ["KvNode", "KvNodeConfig"]

log = logging.getLogger("replidb.leaderless")

_EMPTY_CLOCK = clock_to_bytes(dvv.Clock())
_HINT_EVERY_S = 0.5
_ASK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class KvNodeConfig:
    node_id: str
    data_dir: Path
    listen: str
    peers: dict[str, str]  # id -> address, every other node
    replicas: int = 3  # N (at most the cluster size)
    vnodes: int = 64
    r: int = 0  # default quorums; 0: a majority of N
    w: int = 0
    lww: tuple[str, ...] = ()
    hint_window_s: float = 3600.0
    anti_entropy_s: float = 5.0  # 0: off
    tombstone_grace_s: float = 60.0
    phase_timeout_s: float = 1.0  # how long a coordinator waits for replicas
    max_frame: int = DEFAULT_MAX_FRAME

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted([self.node_id, *self.peers]))

    @property
    def n(self) -> int:
        return min(self.replicas, len(self.nodes))

    @property
    def read_quorum(self) -> int:
        return self.r or self.n // 2 + 1

    @property
    def write_quorum(self) -> int:
        return self.w or self.n // 2 + 1


class KvNode:
    def __init__(self, config: KvNodeConfig) -> None:
        self.config = config
        self.id = config.node_id
        config.data_dir.mkdir(parents=True, exist_ok=True)
        others = ("replidb.db", "data.db", "mesh.db")
        refuse_other_layouts(config.data_dir, "a leaderless", others)
        self.store = KvStore(config.data_dir / "kv.db", self.id, self.now_ms(), config.lww)
        self.ring = HashRing(config.nodes, config.vnodes)
        self.links = {
            peer: PeerLink(self.id, peer, address, own_address=config.listen)
            for peer, address in sorted(config.peers.items())
        }
        self.counters: Counter[str] = Counter()
        # Operation numbers start anywhere: a late answer to a number used before a
        # restart must not land in a new operation (answers also carry their key).
        self._ops = itertools.count(int.from_bytes(os.urandom(6), "big"))
        self._inboxes: dict[int, asyncio.Queue[KvReply]] = {}
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._prefs: dict[bytes, list[str]] = {}
        self.upkeep = Upkeep(self)
        self._tasks = Tasks()
        self._server: asyncio.base_events.Server | None = None
        self._started = time.monotonic()
        self.failed: BaseException | None = None  # (never set: failures are retried)
        self.stopped = asyncio.Event()

    # ---- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        host, port = split_address(self.config.listen)
        self._server = await asyncio.start_server(self._on_connection, host, port)
        for link in self.links.values():
            link.start()
        upkeep = self.upkeep
        self._tasks.spawn(self._every(_HINT_EVERY_S, upkeep.deliver_hints))
        self._tasks.spawn(self._every(0.2, upkeep.push_schema))
        if self.config.anti_entropy_s > 0:
            self._tasks.spawn(self._every(self.config.anti_entropy_s, upkeep.anti_entropy))
        grace = self.config.tombstone_grace_s
        self._tasks.spawn(self._every(min(max(grace / 4, 0.2), 10.0), upkeep.purge_tombstones))
        c = self.config
        log.info(
            "started (leaderless): listening on %s, peers %s, N=%d R=%d W=%d, %d keys here",
            c.listen, ",".join(f"{p}={a}" for p, a in sorted(c.peers.items())) or "none",
            c.n, c.read_quorum, c.write_quorum, self.store.count(),
        )  # fmt: skip

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._tasks.cancel_all()
        for link in self.links.values():
            await link.stop()
        self.store.close()
        log.info("stopped")

    async def _every(self, seconds: float, work: Any) -> None:
        """Run ``work`` every ``seconds``; a failure is logged and the next round tries
        again (each round's changes are their own transactions: nothing half-done)."""
        name = work.__name__.replace("_", " ")
        while True:
            await asyncio.sleep(seconds)
            try:
                result = work()
                if asyncio.iscoroutine(result):
                    await result
            except (Error, TimeoutError) as exc:
                log.warning("%s: %s", name, exc)
            except Exception:
                log.exception("%s failed; trying again next round", name)

    def next_op(self) -> int:
        return next(self._ops)

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def preferred(self, key: bytes) -> list[str]:
        found = self._prefs.get(key)
        if found is None:
            if len(self._prefs) > 200_000:
                self._prefs.clear()
            found = self._prefs[key] = self.ring.preference_list(key, self.config.n)
        return found

    def down(self) -> frozenset[str]:
        return frozenset(p for p, link in self.links.items() if not link.connected)

    def send(self, node: str, message: wire.Message) -> None:
        if node == self.id:
            if isinstance(message, KvGet | KvCoordPut | KvReplicate):
                reply = self.serve_replica(message)
                asyncio.get_running_loop().call_soon(self._on_reply, reply)
            return
        link = self.links.get(node)
        if link is not None and link.connected:
            link.send(message)

    # ---- connections ---------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await serve_connection(
            reader, writer, self.config.max_frame, self._peer_loop, self._client_loop, log
        )

    async def _peer_loop(self, hello: wire.Hello, reader: asyncio.StreamReader) -> None:
        peer = hello.node_id
        if peer == self.id or peer not in self.links:
            raise ProtocolError(f"a peer introduced itself as {peer!r}, not a member")
        while (message := await read_message(reader, self.config.max_frame)) is not None:
            try:
                self._on_peer_message(peer, message)
            except ProtocolError:
                raise  # (it ends the link, in serve_connection)
            except (Error, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                log.warning("could not serve %s from %s: %s", type(message).__name__, peer, exc)

    def _on_peer_message(self, peer: str, message: wire.Message) -> None:
        if isinstance(message, KvGet | KvCoordPut | KvReplicate):
            self.send(peer, self.serve_replica(message))
        elif isinstance(message, KvReply):
            self._on_reply(message)
        elif isinstance(message, KvTreeDiff | KvPurgeState):
            self._answer_waiter(message.op, message)
        elif isinstance(message, KvTree | KvPush | KvPurgeCheck | KvPurge | KvSchema):
            self.upkeep.on_message(peer, message)
        else:
            raise ProtocolError(f"{peer} sent {type(message).__name__} on a leaderless link")

    def _on_reply(self, reply: KvReply) -> None:
        if self.upkeep.on_hint_reply(reply):
            return
        inbox = self._inboxes.get(reply.op)
        if inbox is not None:
            inbox.put_nowait(reply)
        else:
            self._answer_waiter(reply.op, reply)

    def _answer_waiter(self, op: int, message: wire.Message) -> None:
        """The answer to a request sent with ``ask`` (if still awaited)."""
        waiter = self._waiters.get(op)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    async def _client_loop(
        self, first: wire.Message, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        message: wire.Message | None = first
        while message is not None:
            if isinstance(message, KvGet | KvCoordPut | KvReplicate):
                writer.write(frame(self.serve_replica(message)))
            elif isinstance(message, KvRequest):
                self._tasks.spawn(answer_when_ready(self.coordinate(message), writer))
            elif isinstance(message, wire.Execute):
                self._tasks.spawn(answer_when_ready(self.execute(message), writer))
            elif isinstance(message, wire.StatusRequest):
                writer.write(frame(wire.StatusReply(message.id, self.status())))
            else:
                raise ProtocolError(
                    f"a client sent {type(message).__name__}, which a leaderless node "
                    "does not serve"
                )
            message = await read_message(reader, self.config.max_frame)

    # ---- the replica ---------------------------------------------------------------

    def serve_replica(self, message: KvGet | KvCoordPut | KvReplicate) -> KvReply:
        key = message.key
        try:
            self.store.check_key(key)
            if isinstance(message, KvGet):
                clock = self.store.clock(key)
                data = clock_to_bytes(clock) if clock is not None else _EMPTY_CLOCK
                return KvReply(message.op, self.id, key, data)
            if isinstance(message, KvCoordPut):
                clock = self.store.coordinate(
                    key, message.context, message.row, self.now_ms(), message.use_current,
                    message.wid,
                )  # fmt: skip
                return KvReply(message.op, self.id, key, clock_to_bytes(clock))
            incoming = clock_from_bytes(message.clock)
            if message.hint_for and message.hint_for != self.id:
                self.store.add_hint(message.hint_for, key, incoming, self.now_ms())
                self.counters["hints_stored"] += 1
                return KvReply(message.op, self.id, key, message.clock)
            clock, _ = self.store.receive(key, incoming, self.now_ms())
            return KvReply(message.op, self.id, key, clock_to_bytes(clock))
        except Error as exc:
            return KvReply(message.op, self.id, key, error=exc.message, error_kind=exc.kind)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            why = f"undecodable key or clock: {exc}"
            return KvReply(message.op, self.id, key, error=why, error_kind=BadRequest.kind)

    # ---- coordinating ---------------------------------------------------------------

    def _new_inbox(self) -> tuple[int, asyncio.Queue[KvReply]]:
        op = self.next_op()
        inbox: asyncio.Queue[KvReply] = asyncio.Queue()
        self._inboxes[op] = inbox
        return op, inbox

    async def write(
        self, key: bytes, row: dict[str, Any] | None, context: list[tuple[str, int]] | None,
        w: int = 0, sloppy: bool = False,
    ) -> None:  # fmt: skip
        w = _check_quorum("W", w or self.config.write_quorum, self.config.n)
        op_id, inbox = self._new_inbox()
        op = leaderless.WriteOp(
            op_id, key, row, context or [], self.ring, self.config.n, w, sloppy, self.down()
        )
        outcome = Outcome()
        try:
            wid = os.urandom(8).hex()
            timeout = self.config.phase_timeout_s
            await run_write(op, self.send, inbox, timeout, outcome, context is None, wid)
        finally:
            self._tasks.spawn(self._after_write(op, inbox, outcome))

    async def _after_write(
        self, op: leaderless.WriteOp, inbox: asyncio.Queue[KvReply], outcome: Outcome
    ) -> None:
        try:
            hinted = await handoff(op, self.send, inbox, outcome, self.config.phase_timeout_s)
            self.counters["hinted_writes"] += bool(hinted)
        finally:
            self._inboxes.pop(op.op, None)

    async def read(self, key: bytes, r: int = 0) -> tuple[list[dict[str, Any]], list[Any]]:
        r = _check_quorum("R", r or self.config.read_quorum, self.config.n)
        op_id, inbox = self._new_inbox()
        op = leaderless.ReadOp(op_id, key, self.ring, self.config.n, r)
        try:
            outcome = await run_read(op, self.send, inbox, self.config.phase_timeout_s)
        finally:
            self._inboxes.pop(op_id, None)
        self.counters["read_repairs"] += outcome.repairs
        assert op.clock is not None
        lww = decode_key(key)[0] in self.config.lww
        return present_rows(op.clock, lww), op.context

    async def coordinate(self, request: KvRequest) -> KvResult:
        """A client's key read or write, coordinated here."""
        try:
            if request.kind == "get":
                key = self.store.key(request.table, list(request.key))
                rows, context = await self.read(key, request.r)
                return KvResult(request.id, rows, context)
            if request.kind == "put":
                if request.row is None:
                    raise BadRequest("put needs a row (use delete to delete)")
                key = self.store.key_of(request.table, request.row)
            elif request.kind == "delete":
                key = self.store.key(request.table, list(request.key))
            else:
                raise BadRequest(f"unknown request kind {request.kind!r}: get, put or delete")
            given = list(request.context) if request.has_context else None
            await self.write(key, request.row, given, request.w, request.sloppy)
            return KvResult(request.id)
        except Error as exc:
            return KvResult(request.id, error_kind=exc.kind, error=exc.message)
        except (TypeError, ValueError, OverflowError) as exc:  # a value no row can hold
            return KvResult(request.id, error_kind=BadRequest.kind, error=f"bad request: {exc}")

    async def execute(self, request: wire.Execute) -> wire.ExecuteReply:
        """SQL: reads from this replica's rows; writes captured here, then coordinated
        as key writes (each row its own), DDL run here and pushed to every node."""
        try:
            if request.dry_run or request.expect:
                raise BadRequest(
                    "interactive transactions need a single-leader cluster; a leaderless "
                    "cluster writes each row on its own quorum"
                )
            try:
                results = self.store.execute_read(request.statements)
            except NeedsWrite:
                results, rows, ddl = self.store.capture_write(request.statements)
                if ddl:
                    await self._schema_change(ddl)
                elif rows:
                    await self._write_rows(rows)
            return wire.ExecuteReply(request.id, results, node=self.id)
        except Error as exc:
            return wire.ExecuteReply(
                request.id, error_kind=exc.kind, error=exc.message, node=self.id
            )
        except Exception as exc:  # a bug: answer, log it, keep serving
            log.exception("internal error serving a request")
            return wire.ExecuteReply(
                request.id, error_kind=InternalError.kind, error=f"internal error: {exc}",
                node=self.id,
            )  # fmt: skip

    async def _write_rows(self, rows: list[RowWrite]) -> None:
        writes = [self.write(self.store.key(table, pk), row, None) for table, pk, row in rows]
        failures = [r for r in await asyncio.gather(*writes, return_exceptions=True) if r]
        if not failures:
            return
        for failure in failures:
            if not isinstance(failure, Error):
                raise failure
        first = failures[0]
        assert isinstance(first, Error)
        if len(failures) == len(rows) and not isinstance(first, OutcomeUnknown):
            raise first
        raise OutcomeUnknown(
            f"{len(failures)} of the {len(rows)} rows written may not have reached their "
            f"write quorum ({first.message}); the others did"
        )

    async def _schema_change(self, ddl: list[str]) -> None:
        self.store.run_ddl(ddl, strict=True)
        schema = self.store.schema()
        waits = []
        for peer, link in self.links.items():
            if link.connected:
                request = KvSchema(self.next_op(), self.id, schema)
                waits.append(self.ask(peer, request, self.config.phase_timeout_s))
        # Nodes that do not answer now get it when their link comes up (_push_schema).
        await asyncio.gather(*waits, return_exceptions=True)

    async def ask(self, peer: str, message: Any, timeout: float = _ASK_TIMEOUT_S) -> Any:
        """Send a request with an op id to a peer and wait for its answer."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[message.op] = future
        try:
            self.send(peer, message)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiters.pop(message.op, None)

    # ---- status ----------------------------------------------------------------------

    def status(self) -> wire.NodeStatus:
        c = self.config
        keys = self.store.count()
        failed, last_failure = self.store.tables.failures()
        return wire.NodeStatus(
            id=self.id,
            address=c.listen,
            role="replica",
            term=0,
            leader=None,
            leader_address=None,
            last_index=keys,
            commit_index=keys,
            applied_index=keys,
            peers=dict(c.peers),
            topology="leaderless",
            uptime_s=round(time.monotonic() - self._started, 3),
            peers_connected=sorted(p for p, link in self.links.items() if link.connected),
            durability=f"a write is acknowledged once W={c.write_quorum} of its N={c.n} "
            f"replicas hold it; reads ask R={c.read_quorum} (keys), or this replica (SQL)",
            kv_replicas=c.n,
            kv_vnodes=c.vnodes,
            kv_r=c.read_quorum,
            kv_w=c.write_quorum,
            kv_keys=keys,
            kv_hints=self.store.hint_counts(),
            kv_lww=sorted(c.lww),
            kv_counters=dict(sorted({**self.counters, "schema_failures": failed}.items())),
            refused=f"schema from another node failed here: {last_failure}" if failed else "",
        )


def _check_quorum(name: str, value: int, n: int) -> int:
    if not 1 <= value <= n:
        raise BadRequest(f"{name}={value} must be between 1 and N={n}")
    return value
