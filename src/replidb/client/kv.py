"""Key reads and writes on a leaderless cluster (issue #9), coordinated by the client
itself — it talks to each row's replicas directly — or, with ``via="node"``, by the
first reachable node.

    import replidb
    kv = replidb.kv_connect("127.0.0.1:7101,127.0.0.1:7102")
    kv.put("users", {"id": 1, "name": "ada"}, w=2)
    read = kv.get("users", 1, r=2)
    read.rows        # every sibling (concurrent writes), [] if absent or deleted
    kv.put("users", {"id": 1, "name": "ada l."}, context=read.context)  # resolves them
    kv.delete("users", 1)

A put or delete without ``context`` overwrites what its coordinating replica holds;
concurrent writes elsewhere still become siblings. ``context=[]`` writes blind (a
sibling of everything). Errors: ``Unavailable`` (nothing written / too few answers),
``OutcomeUnknown`` (written on fewer than W replicas: it may or may not survive),
``BadRequest`` (no such table, no primary key, bad quorum).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from replidb.client.transport import Channel, LinkError, parse_addresses, probe_status
from replidb.core import leaderless
from replidb.core.hashring import HashRing
from replidb.errors import (
    BadRequest,
    Conflict,
    Error,
    InterfaceError,
    OutcomeUnknown,
    Unavailable,
    error_from_kind,
)
from replidb.kv_coordinator import Outcome, handoff, run_read, run_write
from replidb.transport import wire
from replidb.transport.framing import frame, read_message
from replidb.transport.kv_wire import (
    TABLE_INFO_SQL,
    KvReply,
    KvRequest,
    KvResult,
    encode_key,
    key_columns,
    normalize_key,
    present_rows,
)
from replidb.transport.peer import split_address

__all__ = ["KvClient", "KvRead", "kv_connect"]

Context = Sequence[tuple[str, int]]


@dataclass(frozen=True)
class KvRead:
    rows: list[dict[str, Any]]  # the live siblings; [] if absent or deleted
    context: list[tuple[str, int]]  # give it back with a write that resolves them

    @property
    def row(self) -> dict[str, Any] | None:
        """The row, None if absent; Conflict if concurrent writes left siblings."""
        if len(self.rows) > 1:
            raise Conflict(
                f"{len(self.rows)} concurrent versions (siblings): write the resolved row "
                "with context=read.context"
            )
        return self.rows[0] if self.rows else None


def kv_connect(addresses: str | Sequence[str], **options: Any) -> KvClient:
    return KvClient(addresses, **options)


class _Replica:
    """The client's connection to one replica; replies go to ``on_reply``."""

    def __init__(self, address: str, on_reply: Any) -> None:
        self.address = address
        self._on_reply = on_reply
        self._writer: asyncio.StreamWriter | None = None

    async def ensure(self, timeout: float) -> bool:
        if self._writer is not None and not self._writer.is_closing():
            return True
        host, port = split_address(self.address)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            return False
        self._writer = writer
        asyncio.get_running_loop().create_task(self._read(reader, writer))
        return True

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (message := await read_message(reader)) is not None:
                if isinstance(message, KvReply):
                    self._on_reply(message)
        except (Error, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None

    def send(self, message: wire.Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame(message))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class KvClient:
    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        via: str = "client",
        r: int | None = None,
        w: int | None = None,
        timeout: float = 10.0,
        replica_timeout: float = 1.0,
    ) -> None:
        if via not in ("client", "node"):
            raise InterfaceError(f"via={via!r}: 'client' (coordinate here) or 'node'")
        if not timeout > 0 or not replica_timeout > 0:
            raise InterfaceError("timeout and replica_timeout must be positive (seconds)")
        self._closed = False
        self.addresses = parse_addresses(addresses)
        self.via = via
        self.timeout = float(timeout)
        self.replica_timeout = float(replica_timeout)
        status = self._first_status()
        if status.topology != "leaderless":
            raise BadRequest(
                f"{status.address} runs a {status.topology} cluster: key reads and writes "
                "need --topology leaderless"
            )
        self.members = {status.id: status.address, **status.peers}
        self.n = status.kv_replicas
        self.ring = HashRing(sorted(self.members), status.kv_vnodes)
        self.r = self._quorum("r", r if r is not None else status.kv_r)
        self.w = self._quorum("w", w if w is not None else status.kv_w)
        self.lww = frozenset(status.kv_lww)
        self._tables: dict[str, _Table] = {}
        self._ids = itertools.count(int.from_bytes(os.urandom(6), "big"))
        self._inboxes: dict[int, asyncio.Queue[KvReply]] = {}
        self._pending: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._replicas = {
            node: _Replica(address, self._on_reply) for node, address in self.members.items()
        }

    # ---- the API -------------------------------------------------------------------

    def get(self, table: str, key: Any, r: int | None = None) -> KvRead:
        pk = self._key(table, key)
        r = self._quorum("r", r if r is not None else self.r)
        if self.via == "node":
            result = self._request(KvRequest(0, "get", table, pk, r=r), write=False)
            return KvRead(list(result.rows), [tuple(c) for c in result.context])  # type: ignore[misc]
        read: KvRead = self._run(self._read(encode_key(table, pk), r, table in self.lww))
        return read

    def put(
        self, table: str, row: dict[str, Any], context: Context | KvRead | None = None,
        w: int | None = None, sloppy: bool = False,
    ) -> None:  # fmt: skip
        if not isinstance(row, dict):
            raise InterfaceError(f"a row is a dict of column values, not {type(row).__name__}")
        info = self._table(table)
        unknown = [c for c in row if c not in info.columns]
        if unknown:
            raise BadRequest(f"table {table} has no column {unknown[0]}")
        for column, value in row.items():
            if value is not None and not isinstance(value, int | float | str | bytes):
                raise InterfaceError(f"column {column}: {value!r} is not a value SQLite stores")
        missing = [c for c in info.key if c not in row]
        if missing:
            raise BadRequest(f"the row for {table} lacks its primary key {', '.join(missing)}")
        pk = self._key(table, [row[c] for c in info.key])
        self._write(table, pk, {**row, **dict(zip(info.key, pk, strict=True))}, context, w, sloppy)

    def delete(
        self, table: str, key: Any, context: Context | KvRead | None = None,
        w: int | None = None, sloppy: bool = False,
    ) -> None:  # fmt: skip
        self._write(table, self._key(table, key), None, context, w, sloppy)

    def close(self) -> None:
        """Wait (briefly) for hints still being left, then close every connection."""
        if self._closed:
            return
        self._closed = True

        async def finish() -> None:
            if self._pending:
                await asyncio.wait(self._pending, timeout=self.replica_timeout * 2)
            for replica in self._replicas.values():
                replica.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(finish(), self._loop).result(self.timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> KvClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------

    def _write(
        self, table: str, pk: list[Any], row: dict[str, Any] | None,
        context: Context | KvRead | None, w: int | None, sloppy: bool,
    ) -> None:  # fmt: skip
        if isinstance(context, KvRead):
            context = context.context
        ctx = None if context is None else [(str(n), int(c)) for n, c in context]
        w = self._quorum("w", w if w is not None else self.w)
        if self.via == "node":
            kind = "put" if row is not None else "delete"
            request = KvRequest(0, kind, table, pk, row, ctx or [], ctx is not None, w=w,
                                sloppy=sloppy)  # fmt: skip
            self._request(request, write=True)
            return
        self._run(self._write_async(encode_key(table, pk), row, ctx, w, sloppy))

    def _quorum(self, name: str, value: int) -> int:
        if not 1 <= value <= self.n:
            raise BadRequest(f"{name}={value} must be between 1 and N={self.n}")
        return value

    def _key(self, table: str, key: Any) -> list[Any]:
        """The key's values as every replica stores them (normalized by affinity)."""
        values = list(key) if isinstance(key, list | tuple) else [key]
        info = self._table(table)
        if len(values) != len(info.key):
            raise BadRequest(
                f"{table}'s primary key is ({', '.join(info.key)}): {len(info.key)} value(s), "
                f"got {len(values)}"
            )
        for value in values:
            if not isinstance(value, int | str | bytes | float) or isinstance(value, bool):
                raise InterfaceError(f"a key value is int, str, bytes or float, not {value!r}")
        return normalize_key(values, info.affinities)

    def _table(self, table: str) -> _Table:
        found = self._tables.get(table)
        if found is None:
            reply = self._call(wire.Execute(0, [wire.Statement(TABLE_INFO_SQL, [table])]))
            if not isinstance(reply, wire.ExecuteReply):
                raise Unavailable(f"expected a query result, got {type(reply).__name__}")
            if reply.error_kind:
                raise error_from_kind(reply.error_kind, reply.error or "")
            info = reply.results[0].rows
            names, affinities = key_columns(table, info)
            found = _Table(frozenset(str(row[0]) for row in info), names, affinities)
            self._tables[table] = found
        return found

    def _first_status(self) -> wire.NodeStatus:
        errors = []
        for address in self.addresses:
            try:
                return probe_status(address, self.timeout)
            except Error as exc:
                errors.append(str(exc))
        raise Unavailable("no node answered: " + "; ".join(errors))

    def _call(self, request: Any, write: bool = False) -> wire.Message:
        """One request to the first node that answers. A write that reached a node
        is not sent to another (it would be coordinated twice): OutcomeUnknown."""
        errors = []
        for address in self.addresses:
            deadline = time.monotonic() + self.timeout
            try:
                channel = Channel(address, connect_timeout=min(self.timeout, 2.0))
            except LinkError as exc:
                errors.append(str(exc))
                continue
            try:
                request = type(request)(**{**_fields(request), "id": next(self._ids)})
                return channel.call(request, deadline)
            except LinkError as exc:
                if write and exc.sent:
                    raise OutcomeUnknown(f"{exc}: the write may or may not have been made")
                errors.append(str(exc))
            finally:
                channel.close()
        raise Unavailable("no node answered: " + "; ".join(errors))

    def _request(self, request: KvRequest, write: bool) -> KvResult:
        reply = self._call(request, write)
        if not isinstance(reply, KvResult):
            raise Unavailable(f"expected a key result, got {type(reply).__name__}")
        if reply.error_kind:
            raise error_from_kind(reply.error_kind, reply.error or "")
        return reply

    def _run(self, coro: Any) -> Any:
        if self._closed:
            coro.close()
            raise InterfaceError("the key-value client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            # Each phase has its own timeout; this only guards against a stuck loop.
            return future.result(self.timeout + 4 * self.replica_timeout * self.n)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise OutcomeUnknown("no outcome before the deadline") from None

    def _on_reply(self, reply: KvReply) -> None:
        inbox = self._inboxes.get(reply.op)
        if inbox is not None:
            inbox.put_nowait(reply)

    def _send(self, node: str, message: wire.Message) -> None:
        replica = self._replicas.get(node)
        if replica is not None:
            replica.send(message)

    async def _connect(self, key: bytes) -> frozenset[str]:
        """Connect to every node (replicas, and stand-ins for a sloppy quorum); the
        unreachable ones."""
        del key
        walk = sorted(self.members)
        ok = await asyncio.gather(*(self._replicas[n].ensure(self.replica_timeout) for n in walk))
        return frozenset(n for n, up in zip(walk, ok, strict=True) if not up)

    def _inbox(self) -> tuple[int, asyncio.Queue[KvReply]]:
        op = next(self._ids)
        self._inboxes[op] = asyncio.Queue()
        return op, self._inboxes[op]

    async def _read(self, key: bytes, r: int, lww: bool) -> KvRead:
        await self._connect(key)
        op_id, inbox = self._inbox()
        op = leaderless.ReadOp(op_id, key, self.ring, self.n, r)
        try:
            await run_read(op, self._send, inbox, self.replica_timeout)
        finally:
            self._inboxes.pop(op_id, None)
        assert op.clock is not None
        return KvRead(present_rows(op.clock, lww), op.context)

    async def _write_async(
        self, key: bytes, row: dict[str, Any] | None, context: list[tuple[str, int]] | None,
        w: int, sloppy: bool,
    ) -> None:  # fmt: skip
        down = await self._connect(key)
        op_id, inbox = self._inbox()
        op = leaderless.WriteOp(op_id, key, row, context or [], self.ring, self.n, w, sloppy, down)
        outcome = Outcome()
        try:
            wid = os.urandom(8).hex()  # the same on every coordinator tried
            timeout = self.replica_timeout
            await run_write(op, self._send, inbox, timeout, outcome, context is None, wid)
        finally:
            task = asyncio.get_running_loop().create_task(self._handoff(op, inbox, outcome))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _handoff(
        self, op: leaderless.WriteOp, inbox: asyncio.Queue[KvReply], outcome: Outcome
    ) -> None:
        try:
            await handoff(op, self._send, inbox, outcome, self.replica_timeout)
        finally:
            self._inboxes.pop(op.op, None)


@dataclass(frozen=True)
class _Table:
    columns: frozenset[str]
    key: list[str]  # primary key columns, in key order
    affinities: list[str]


def _fields(struct: Any) -> dict[str, Any]:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}
