"""A multi-leader node (``replidb serve --topology multi-leader``, issue #8): the
asyncio runtime around ``core.mesh.Mesh`` and ``storage.mesh_store.MeshStore``.

Every node takes reads and writes from its clients locally. A write runs at once in
the local database, stamped by the mesh (origin, sequence number, HLC, dependencies);
the client's answer does not wait for any other node — that is the point, and the
price: two nodes may accept conflicting writes, which are resolved when they meet
(docs/multi-leader.md). The mesh's Ready is handled in its order: apply the delivered
changes (each in one transaction with its log entry), send, then ``advance``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replidb.core.mesh import ChangeAck, ChangeBatch, Mesh, MeshConfig
from replidb.errors import BadRequest, Error, InternalError, ProtocolError
from replidb.node.runtime import (
    Tasks,
    answer_when_ready,
    refuse_other_layouts,
    serve_connection,
)
from replidb.storage.executor import NeedsWrite
from replidb.storage.mesh_store import MeshStore, Resolver
from replidb.transport import wire
from replidb.transport.framing import DEFAULT_MAX_FRAME, frame, read_message
from replidb.transport.peer import PeerLink, split_address

__all__ = ["MeshNode", "MeshNodeConfig"]

log = logging.getLogger("replidb.mesh")

_REFUSAL_LOG_EVERY_S = 5.0


@dataclass(frozen=True)
class MeshNodeConfig:
    node_id: str
    data_dir: Path
    listen: str
    peers: dict[str, str]  # id -> address, every other node
    links: str = "all-to-all"  # all-to-all | star | ring
    hub: str = ""
    max_skew_ms: int = 500
    tick_ms: int = 50
    resolution: dict[str, str] = field(default_factory=dict)  # table -> lww|record|custom:X
    default_resolution: str = "lww"
    resolvers: dict[str, Resolver] = field(default_factory=dict)
    id_stride: int = 16
    max_frame: int = DEFAULT_MAX_FRAME
    clock_offset_ms: int = 0  # fault injection: this node's clock runs off by this much
    # Fault injection: node ids listed in this file (one line, comma-separated) are cut
    # off — nothing is sent to them and what they send is ignored — a partition.
    cut_file: Path | None = None

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted([self.node_id, *self.peers]))


class MeshNode:
    def __init__(self, config: MeshNodeConfig) -> None:
        self.config = config
        self.id = config.node_id
        nodes = config.nodes
        offset = nodes.index(self.id) + 1
        config.data_dir.mkdir(parents=True, exist_ok=True)
        refuse_other_layouts(config.data_dir, "a multi-leader", ("replidb.db", "data.db"))
        self.store = MeshStore(
            config.data_dir / "mesh.db",
            self.id,
            offset,
            config.id_stride,
            config.resolution,
            config.default_resolution,
            config.resolvers,
        )
        ticks_per_s = max(1, 1000 // config.tick_ms)
        self.mesh = Mesh(
            MeshConfig(
                self.id,
                nodes,
                config.links,
                config.hub,
                config.max_skew_ms,
                heartbeat_ticks=max(1, ticks_per_s // 5),
                resend_ticks=max(2, ticks_per_s),
            ),
            self.store,
            self.store.applied(),
            self.store.last_hlc(),
        )
        self.links = {
            peer: PeerLink(self.id, peer, address, own_address=config.listen)
            for peer, address in sorted(config.peers.items())
        }
        self.last_refusal = ""
        self.cut: frozenset[str] = frozenset()
        self._refusals_logged: dict[str, float] = {}
        self._tasks = Tasks()
        self._server: asyncio.base_events.Server | None = None
        self._started = time.monotonic()
        self.failed: BaseException | None = None
        self.stopped = asyncio.Event()

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.config.clock_offset_ms

    # ---- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        host, port = split_address(self.config.listen)
        self._server = await asyncio.start_server(self._on_connection, host, port)
        for link in self.links.values():
            link.start()
        self._spawn(self._ticker())
        log.info(
            "started (multi-leader, %s links): listening on %s, peers %s, applied %s, "
            "conflict resolution %s%s",
            self.config.links,
            self.config.listen,
            ",".join(f"{p}={a}" for p, a in sorted(self.config.peers.items())) or "none",
            self.mesh.applied,
            self.config.default_resolution,
            "".join(f", {t}={p}" for t, p in sorted(self.config.resolution.items())),
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._tasks.cancel_all()
        for link in self.links.values():
            await link.stop()
        self.store.close()
        log.info("stopped")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    async def _ticker(self) -> None:
        interval = self.config.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._read_cut()
            self.mesh.tick(self.now_ms())
            self._drive()

    def _read_cut(self) -> None:
        path = self.config.cut_file
        if path is None:
            return
        try:
            text = path.read_text()
        except OSError:
            text = ""
        cut = frozenset(n.strip() for n in text.split(",") if n.strip())
        if cut != self.cut:
            log.warning("fault injection: cut off from %s", ",".join(sorted(cut)) or "nobody")
            self.cut = cut

    def _drive(self) -> None:
        """Handle the mesh's Ready batches: apply, send, then advance."""
        mesh = self.mesh
        try:
            while mesh.has_ready():
                ready = mesh.ready()
                for change in ready.deliver:
                    found = self.store.apply_remote(change)
                    if found:
                        log.info(
                            "%d conflict(s) resolved applying %s:%d", found, change.origin,
                            change.seq,
                        )  # fmt: skip
                for to, message in ready.messages:
                    link = self.links.get(to)
                    if link is not None and to not in self.cut:
                        link.send(message)
                for why in ready.refused:
                    self._note_refusal(why)
                mesh.advance()
        except Exception as exc:  # storage failed: stop rather than diverge
            log.critical("stopping: %s", exc)
            self.failed = exc
            self.stopped.set()

    def _note_refusal(self, why: str) -> None:
        self.last_refusal = why
        now = time.monotonic()
        if now - self._refusals_logged.get(why, -1e9) >= _REFUSAL_LOG_EVERY_S:
            self._refusals_logged[why] = now
            log.warning("refused: %s", why)

    # ---- connections ---------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await serve_connection(
            reader, writer, self.config.max_frame, self._peer_loop, self._client_loop, log
        )

    async def _peer_loop(self, hello: wire.Hello, reader: asyncio.StreamReader) -> None:
        peer = hello.node_id
        if peer == self.id:
            raise ProtocolError(f"a peer introduced itself with our own id {peer!r}")
        while (message := await read_message(reader, self.config.max_frame)) is not None:
            if not isinstance(message, ChangeBatch | ChangeAck):
                raise ProtocolError(f"{peer} sent {type(message).__name__} on a mesh link")
            if message.sender != peer:
                raise ProtocolError(f"{peer} sent a message signed {message.sender}")
            if peer in self.cut:
                continue
            self.mesh.step(message, self.now_ms())
            self._drive()

    async def _client_loop(
        self, first: wire.Message, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        message: wire.Message | None = first
        while message is not None:
            if isinstance(message, wire.Execute):
                self._tasks.spawn(answer_when_ready(self.execute(message), writer))
            elif isinstance(message, wire.StatusRequest):
                writer.write(frame(wire.StatusReply(message.id, self.status())))
            else:
                raise ProtocolError(
                    f"a client sent {type(message).__name__}, which a multi-leader node "
                    "does not serve"
                )
            message = await read_message(reader, self.config.max_frame)

    # ---- requests -----------------------------------------------------------------

    async def execute(self, request: wire.Execute) -> wire.ExecuteReply:
        """Reads and writes, both here: this node is a leader."""
        try:
            if request.dry_run or request.expect:
                raise BadRequest(
                    "interactive transactions need a single-leader cluster; in multi-leader "
                    "send each transaction's statements in one request"
                )
            try:
                results = self.store.execute_read(request.statements)
            except NeedsWrite:
                results = self._write(request)
            return wire.ExecuteReply(
                request.id, results, node=self.id, position=sum(self.mesh.applied.values())
            )
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

    def _write(self, request: wire.Execute) -> list[wire.StatementResult]:
        seq, stamp, deps = self.mesh.stamp(self.now_ms())
        results, change = self.store.execute_local(
            request.statements, seq, stamp, deps, request.client_id, request.seq
        )
        if change is not None:
            self.mesh.committed(change)
            self.mesh.advance()
            self._drive()
        return results

    def status(self) -> wire.NodeStatus:
        mesh = self.mesh
        applied = dict(mesh.applied)
        return wire.NodeStatus(
            id=self.id,
            address=self.config.listen,
            role="leader",
            term=0,
            leader=None,
            leader_address=None,
            last_index=sum(applied.values()),
            commit_index=sum(applied.values()),
            applied_index=sum(applied.values()),
            peers=dict(self.config.peers),
            topology="multi-leader",
            uptime_s=round(time.monotonic() - self._started, 3),
            peers_connected=sorted(p for p, link in self.links.items() if link.connected),
            durability="a write is acknowledged once this node has it; it reaches the "
            "others when they can be reached (conflicts: "
            + ", ".join(
                [f"{t} {p}" for t, p in sorted(self.config.resolution.items())]
                + [f"{self.config.default_resolution} elsewhere"]
            )
            + ")",
            mesh_links=self.config.links,
            mesh_applied=applied,
            mesh_pending=mesh.pending,
            conflicts=self.store.conflicts,
            refused=self.last_refusal,
        )
