"""What a leaderless node does in the background so replicas converge without reads
(issue #9): hinted handoff, schema, anti-entropy and tombstone purging.

- Hinted handoff: hints held here are sent to their replica every half second while
  its link is up (``handoff=True``), and dropped once it acknowledges; hints older
  than the hint window are dropped (anti-entropy repairs what they held).
- Schema: a node sends its DDL to each peer whenever the link to it comes up; a
  peer runs what it lacks, in order.
- Anti-entropy, with the next peer in turn: this node sends the Merkle leaves of the
  keys both replicate; the peer answers with its rows in the buckets that differ and
  this node sends its own back; both merge (``dvv.sync``), so both end equal.
- Tombstones older than the grace period are purged by the first replica of their
  key, only when every member answers, every replica holds exactly the same
  tombstone-only clock and nobody holds a hint for the key — so nothing that could
  bring the row back remains anywhere. The purged clock is kept a grace period more:
  late copies of what it superseded are dropped (storage/kv_store.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import msgspec

from replidb.core.merkle import MerkleTree, bucket_of
from replidb.errors import Error, ProtocolError
from replidb.transport.kv_wire import (
    KvItem,
    KvPurge,
    KvPurgeCheck,
    KvPurgeState,
    KvPush,
    KvReplicate,
    KvReply,
    KvSchema,
    KvTree,
    KvTreeDiff,
    clock_from_bytes,
)

if TYPE_CHECKING:
    from replidb.node.kv_server import KvNode

__all__ = ["Upkeep"]

log = logging.getLogger("replidb.leaderless")

_HINT_BATCH = 200
_HINT_RESEND_S = 5.0
_AE_DEPTH = 8  # 256 buckets: 4 KiB of leaves per round
_AE_BUDGET_BYTES = 4 << 20  # rows sent per round, at most (frames stop at 16 MiB)


class Upkeep:
    def __init__(self, node: KvNode) -> None:
        self.node = node
        self._hint_ops: dict[int, tuple[int, float]] = {}  # op -> (hint id, when sent)
        self._hint_sent: dict[int, float] = {}  # hint id -> when last sent
        self._schema_sent: set[str] = set()

    def on_message(
        self, peer: str, message: KvTree | KvPush | KvPurgeCheck | KvPurge | KvSchema
    ) -> None:
        node, store = self.node, self.node.store
        if isinstance(message, KvTree):
            node.send(peer, self._answer_tree(peer, message))
        elif isinstance(message, KvPush):
            self._merge(message.items)
        elif isinstance(message, KvPurgeCheck):
            keys = message.keys
            hinted = [store.hinted(k) for k in keys]
            clocks = store.clock_bytes(keys)
            purged = store.clock_bytes(keys, "replidb_kv_purged")
            node.send(peer, KvPurgeState(message.op, node.id, clocks, hinted, purged))
        elif isinstance(message, KvPurge):
            items = [(item.key, item.clock) for item in message.items]
            node.counters["tombstones_purged"] += store.purge(items, node.now_ms())
        else:
            store.run_ddl(message.schema, strict=False)
            node.send(peer, KvReply(message.op, node.id, b""))

    # ---- hinted handoff -----------------------------------------------------------

    def deliver_hints(self) -> None:
        node, store = self.node, self.node.store
        now = time.monotonic()
        expired = store.expire_hints(node.now_ms() - int(node.config.hint_window_s * 1000))
        if expired:
            node.counters["hints_expired"] += expired
            log.warning("dropped %d hints older than the hint window", expired)
        # Hand-overs unanswered for long (lost, or the link broke) are forgotten.
        stale = [op for op, (_, sent) in self._hint_ops.items() if now - sent > _HINT_RESEND_S]
        for op in stale:
            del self._hint_ops[op]
        if len(self._hint_sent) > 100_000:  # (expired hints' entries)
            self._hint_sent.clear()
        for peer, link in node.links.items():
            if not link.connected:
                continue
            for hint_id, key, clock in store.hints_for(peer, _HINT_BATCH):
                if now - self._hint_sent.get(hint_id, -1e9) < _HINT_RESEND_S:
                    continue  # in flight
                op = node.next_op()
                self._hint_ops[op] = (hint_id, now)
                self._hint_sent[hint_id] = now
                link.send(KvReplicate(op, key, clock, handoff=True))

    def on_hint_reply(self, reply: KvReply) -> bool:
        """True if ``reply`` acknowledges a hint handed over."""
        sent = self._hint_ops.pop(reply.op, None)
        if sent is None:
            return False
        hint_id, _ = sent
        if not reply.error:
            self.node.store.drop_hint(hint_id)
            self._hint_sent.pop(hint_id, None)
            self.node.counters["hints_handed_over"] += 1
        return True

    # ---- schema ---------------------------------------------------------------------

    def push_schema(self) -> None:
        node = self.node
        schema = node.store.schema()
        for peer, link in node.links.items():
            if not link.connected:
                self._schema_sent.discard(peer)
            elif peer not in self._schema_sent and schema:
                self._schema_sent.add(peer)
                link.send(KvSchema(0, node.id, schema))

    # ---- anti-entropy -----------------------------------------------------------------

    def _shared_digests(self, peer: str) -> list[tuple[bytes, bytes]]:
        node = self.node
        return [
            (key, d) for key, d in node.store.digests()
            if peer in node.preferred(key) and node.id in node.preferred(key)
        ]  # fmt: skip

    async def anti_entropy(self) -> None:
        node = self.node
        up = sorted(p for p, link in node.links.items() if link.connected)
        if not up:
            return
        node.counters["anti_entropy_rounds"] += 1
        peer = up[node.counters["anti_entropy_rounds"] % len(up)]
        shared = self._shared_digests(peer)
        leaves = MerkleTree(shared, _AE_DEPTH).level(_AE_DEPTH)
        request = KvTree(node.next_op(), node.id, _AE_DEPTH, leaves, node.store.schema())
        diff: KvTreeDiff = await node.ask(peer, request)
        node.store.run_ddl(diff.schema, strict=False)
        self._merge(diff.items)
        if diff.buckets:
            # (the keys as of the tree; their clocks as now, merged with the peer's)
            mine = self._items_in(shared, diff.buckets, _AE_DEPTH)
            node.send(peer, KvPush(request.op, node.id, mine))

    def _items_in(
        self, shared: list[tuple[bytes, bytes]], buckets: list[int], depth: int
    ) -> list[KvItem]:
        """The rows of ``shared`` keys in these buckets, up to a frame's worth: what
        does not fit is repaired by the next rounds (those buckets still differ)."""
        wanted = set(buckets)
        keys = [k for k, _ in shared if bucket_of(k, depth) in wanted]
        items, size = [], 0
        for key, clock in zip(keys, self.node.store.clock_bytes(keys), strict=True):
            size += len(key) + len(clock) + 16
            if size > _AE_BUDGET_BYTES:
                break
            items.append(KvItem(key, clock))
        return items

    def _answer_tree(self, peer: str, tree: KvTree) -> KvTreeDiff:
        if not 0 <= tree.depth <= 16 or len(tree.leaves) != 1 << tree.depth:
            raise ProtocolError(f"{peer} sent a Merkle tree of {len(tree.leaves)} leaves")
        store = self.node.store
        store.run_ddl(tree.schema, strict=False)
        shared = self._shared_digests(peer)
        mine = MerkleTree(shared, tree.depth).level(tree.depth)
        buckets = [i for i, (a, b) in enumerate(zip(mine, tree.leaves, strict=True)) if a != b]
        items = self._items_in(shared, buckets, tree.depth) if buckets else []
        return KvTreeDiff(tree.op, self.node.id, buckets, items, store.schema())

    def _merge(self, items: list[KvItem]) -> None:
        node = self.node
        for item in items:
            try:
                clock = clock_from_bytes(item.clock)
                _, changed = node.store.receive(item.key, clock, node.now_ms())
            except (Error, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                log.warning("anti-entropy could not keep a row: %s", exc)
                continue
            node.counters["anti_entropy_repairs"] += changed

    # ---- tombstones -------------------------------------------------------------------

    async def purge_tombstones(self) -> None:
        """Purge old tombstones this node initiates: those it is the first replica of,
        and any older than three grace periods (a replica that missed a purge)."""
        node, store = self.node, self.node.store
        now = node.now_ms()
        grace_ms = int(node.config.tombstone_grace_s * 1000)
        store.forget_purged(now - grace_ms)
        if node.down():
            return  # every member must answer for a purge
        keys = [
            k for k, changed in store.old_tombstones(now - grace_ms)
            if (node.preferred(k)[0] == node.id or changed < now - 3 * grace_ms)
            and not store.hinted(k)
        ]  # fmt: skip
        if not keys:
            return
        mine = store.clock_bytes(keys)
        peers = sorted(node.links)
        states: list[KvPurgeState] = await asyncio.gather(
            *(node.ask(p, KvPurgeCheck(node.next_op(), node.id, keys)) for p in peers)
        )
        for peer, state in zip(peers, states, strict=True):
            if not len(state.clocks) == len(state.hinted) == len(state.purged) == len(keys):
                raise ProtocolError(f"{peer} answered a purge check for other keys")
        purge: list[KvItem] = []
        for i, key in enumerate(keys):
            replicas = node.preferred(key)
            if any(s.hinted[i] for s in states):
                continue
            # Every other replica holds this very tombstone, or purged it already.
            if all(mine[i] in (s.clocks[i], s.purged[i])
                   for p, s in zip(peers, states, strict=True) if p in replicas):  # fmt: skip
                purge.append(KvItem(key, mine[i]))
        if not purge:
            return
        for peer in peers:
            node.send(peer, KvPurge(0, node.id, purge))
        node.counters["tombstones_purged"] += store.purge([(i.key, i.clock) for i in purge], now)
