"""Change data capture: the node's log as a stream of row changes (issue #6).

A consumer connects (``wire.ChangesRequest``) and receives ``wire.ChangesBatch``es of
Debezium-style events (op ``c``/``u``/``d``, before, after, source position, commit
time, transaction id), in log order, at least once. A node streams what it has
applied: a follower, what is committed; the leader, also its own writes that are
acknowledged but not yet committed (under ``async`` that is when the client hears
"ok") — which a failover may discard.

Positions are ``(term, index)`` (plus the change's sequence number inside the
transaction). A consumer resumes by sending the positions it received that it does
not know to be committed (the client keeps that window; otherwise just its last one).
The node compares them with its own log: from the first one that is not there, the
consumer's history diverged from the cluster's, and the first batch says so
(``resume_from``): the consumer retracts what it received from there and the node
streams the cluster's history from that index. The same check runs while streaming,
so a node that rolls back entries it already sent (an ex-leader) says so too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from replidb.core import EntryKind
from replidb.errors import BadRequest
from replidb.storage.base import NodeStore
from replidb.stream.logical import DDL, Replay, RowChange, decode_record, row_changes
from replidb.transport import wire
from replidb.transport.framing import frame

__all__ = ["ChangeFeed", "events_of"]

_BATCH_ENTRIES = 256
_OPS = {"INSERT": "c", "UPDATE": "u", "DELETE": "d"}


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return value


def _image(values: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if values is None else {k: _json(v) for k, v in values.items()}


def events_of(
    node: str, term: int, index: int, data: bytes, tables: frozenset[str]
) -> list[wire.ChangeEvent]:
    """The row changes of one logged write, as events (DDL and replidb's own
    bookkeeping tables are not data changes and are left out)."""
    record = decode_record(data)
    ts_ms = record.commit_ms
    out: list[wire.ChangeEvent] = []
    for item in row_changes(record):
        if isinstance(item, DDL):
            continue
        if isinstance(item, Replay):
            raise BadRequest(
                f"entry {index} is a statement-format write: change data capture needs "
                "row changes (--stream logical)"
            )
        change: RowChange = item
        if change.table.startswith("replidb_") or (tables and change.table.lower() not in tables):
            continue
        out.append(
            wire.ChangeEvent(
                op=_OPS[change.op],
                table=change.table,
                key=_image(change.key) or {},
                before=_image(change.before),
                # (a minimal UPDATE image holds the changed columns: add the key)
                after=None if change.after is None else _image({**change.key, **change.after}),
                node=node,
                term=term,
                index=index,
                seq=len(out),
                ts_ms=ts_ms,
            )
        )
    return out


class ChangeFeed:
    """Serves change streams from ``store``; ``position`` gives (applied, commit)."""

    def __init__(
        self,
        node_id: str,
        store: NodeStore,
        stream: str,
        position: Callable[[], tuple[int, int]],
        log: logging.Logger,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.stream = stream
        self.position = position
        self.log = log
        # Set (and replaced by a fresh one) whenever the node applies or rolls back: a
        # stream takes the current one before it looks at the log, so a change between
        # its look and its wait still wakes it. (One shared event that each stream
        # cleared could lose a wake-up to another stream's clear.)
        self._moved = asyncio.Event()

    def applied(self) -> None:
        """The node applied or rolled back entries: wake the followers of the feed."""
        self._moved.set()
        self._moved = asyncio.Event()

    async def serve(self, request: wire.ChangesRequest, writer: asyncio.StreamWriter) -> None:
        try:
            if self.stream not in ("logical",):
                raise BadRequest(
                    f"this cluster ships {self.stream!r} records: change data capture "
                    "needs row changes (--stream logical)"
                )
            await self._stream(request, writer)
        except BadRequest as exc:
            writer.write(frame(wire.ChangesBatch(request.id, error=exc.message)))
        except (ConnectionError, OSError):
            pass

    async def _stream(self, request: wire.ChangesRequest, writer: asyncio.StreamWriter) -> None:
        tables = frozenset(t.lower() for t in request.tables)
        store = self.store
        known = sorted((index, term) for index, term in request.known)
        while True:
            moved = self._moved
            verdict = self._verdict(known)
            if verdict != "undecided":
                break
            # This node does not hold those positions yet, nor anything committed in
            # their place: wait until it catches up or commits past them.
            await _wait(moved)
        resume = verdict if isinstance(verdict, int) else None
        first = store.first_index()
        if resume is not None:
            next_index = resume
        elif request.start:
            next_index = request.start
        else:
            next_index = known[-1][0] + 1 if known else 1
        if next_index < first:
            raise BadRequest(
                f"position {next_index - 1} was compacted away on {self.node_id} (its log "
                f"starts at {first}): start the feed again from a backup's position"
            )
        sent: list[tuple[int, int]] = []  # (index, term) streamed, not known committed
        header = wire.ChangesBatch(request.id, resume_from=resume or 0)
        writer.write(frame(header))
        while True:
            moved = self._moved
            applied, commit = self.position()
            # Entries we sent that this node has since rolled back: say so.
            gone = next((i for i, t in sent if store.term(i) != t), None)
            if gone is not None:
                sent = [(i, t) for i, t in sent if i < gone]
                next_index = gone
                writer.write(frame(wire.ChangesBatch(request.id, resume_from=gone)))
            sent = [(i, t) for i, t in sent if i > commit]
            if next_index <= applied:
                hi = min(applied, next_index + _BATCH_ENTRIES - 1)
                events: list[wire.ChangeEvent] = []
                for entry in store.entries(next_index, hi, 1 << 22):
                    if entry.kind == EntryKind.WRITE:
                        events += events_of(
                            self.node_id, entry.term, entry.index, entry.data, tables
                        )
                    if entry.index > commit:
                        sent.append((entry.index, entry.term))
                    next_index = entry.index + 1
                writer.write(frame(wire.ChangesBatch(request.id, events=events, commit=commit)))
                await writer.drain()
                continue
            if not request.follow:
                writer.write(frame(wire.ChangesBatch(request.id, commit=commit, end=True)))
                await writer.drain()
                return
            if not await _wait(moved):
                # (a heartbeat: the consumer learns the commit index moved on)
                writer.write(frame(wire.ChangesBatch(request.id, commit=commit)))
                await writer.drain()

    def _verdict(self, known: list[tuple[int, int]]) -> int | str:
        """ "same" if this node's log holds every known position; the first one it
        committed something else at (the consumer's history diverged there); or
        "undecided" while it neither holds one nor has committed past it."""
        commit = self.position()[1]
        for index, term in known:
            if not term or self.store.term(index) == term:
                continue
            return index if index <= commit else "undecided"
        return "same"


async def _wait(moved: asyncio.Event) -> bool:
    """Wait up to a second for ``moved`` (the node applied or rolled back something)."""
    try:
        await asyncio.wait_for(moved.wait(), 1.0)
    except TimeoutError:
        return False
    return True
