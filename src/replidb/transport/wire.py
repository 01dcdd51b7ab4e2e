"""Everything that crosses a socket: peer (core) messages plus client and status
requests, as msgspec Structs encoded with msgpack, one per length-prefixed frame.

Evolution rule: new fields get defaults, so an older reader ignores them and a newer
reader fills them in. Tags never change meaning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec

from replidb.core.mesh import ChangeAck, ChangeBatch
from replidb.core.messages import (
    Append,
    AppendReply,
    SnapshotOffer,
    TimeoutNow,
    VoteReply,
    VoteRequest,
)
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
)

__all__ = [
    "ChangeEvent",
    "ChangeMembership",
    "ChangesBatch",
    "ChangesRequest",
    "Execute",
    "ExecuteReply",
    "Forward",
    "ForwardReply",
    "Hello",
    "MembershipReply",
    "Message",
    "NodeStatus",
    "SnapshotChunk",
    "SnapshotFetch",
    "Statement",
    "StatementResult",
    "StatusReply",
    "StatusRequest",
    "TransferLeader",
    "TransferReply",
    "decode",
    "encode",
    "results_digest",
]

Value = None | int | float | str | bytes


class Hello(msgspec.Struct, frozen=True, tag="hello"):
    """First frame a node sends on a connection it opened to a peer."""

    node_id: str
    address: str = ""  # where the sender listens: a peer we do not know yet can answer


class Statement(msgspec.Struct, frozen=True, array_like=True):
    sql: str
    params: list[Any] | dict[str, Any] | None = None


class Execute(msgspec.Struct, frozen=True, tag="execute"):
    """Run ``statements`` as one atomic transaction.

    ``client_id``/``seq`` make a retried write exactly-once: the leader remembers the
    last sequence number each client wrote. ``dry_run`` executes and rolls back
    (a read that must see the caller's own not-yet-committed writes)."""

    id: int
    statements: list[Statement]
    client_id: str = ""
    seq: int = 0
    dry_run: bool = False
    consistency: str = "any"
    sync: str = ""  # this transaction's commit policy; "" = the cluster's
    min_position: int = 0  # consistency "session": serve only once this index is applied
    term: int = 0  # the highest term this client has seen (fencing of stale leaders)
    # An interactive transaction's commit: the results of its first ``expect_count``
    # statements, as the client saw them (results_digest). The leader commits only if
    # running them now gives the same, else Conflict (client/connection.py).
    expect: str = ""
    expect_count: int = 0


class StatementResult(msgspec.Struct, frozen=True, array_like=True):
    columns: list[str]
    rows: list[list[Any]]
    rowcount: int = -1
    lastrowid: int | None = None


class ExecuteReply(msgspec.Struct, frozen=True, tag="execute_reply"):
    id: int
    results: list[StatementResult] = []
    error_kind: str | None = None
    error: str | None = None
    leader_address: str | None = None
    node: str = ""
    index: int = 0  # log index of the write, 0 for a read
    term: int = 0
    position: int = 0  # the log position this answer reflects (the session token)


class Forward(msgspec.Struct, frozen=True, tag="forward"):
    """A follower passes a client's write to the leader over the peer link."""

    id: int
    origin: str
    request: Execute


class ForwardReply(msgspec.Struct, frozen=True, tag="forward_reply"):
    id: int
    reply: ExecuteReply


class StatusRequest(msgspec.Struct, frozen=True, tag="status"):
    id: int


class NodeStatus(msgspec.Struct, frozen=True):
    id: str
    address: str
    role: str
    term: int
    leader: str | None
    leader_address: str | None
    last_index: int
    commit_index: int
    applied_index: int
    peers: dict[str, str]  # id -> address, every other member
    policy: str = "async"
    topology: str = "single-leader"
    stream: str = "logical"
    uptime_s: float = 0.0
    peers_connected: list[str] = []
    match_index: dict[str, int] = {}  # leader only: what each follower holds
    durability: str = ""  # does the commit policy survive failover here, and why
    discarded: int = 0  # transactions this node rolled back, kept in replidb_discarded
    degraded: bool = False  # sync acknowledgements timed out: acknowledging as async
    degradations: int = 0
    subscription: str = ""  # a partial replica: the tables, rows and columns it takes
    first_index: int = 1  # the oldest log entry this node still holds
    needs_snapshot: list[str] = []  # leader only: followers behind the retained log
    snapshot: str = ""  # a follower installing a snapshot: its progress
    voters: list[str] = []  # the membership this node uses (core/membership.py)
    learners: list[str] = []
    member: bool = True  # False once this node has been removed from the cluster
    write_groups: int = 0  # group commit (node/group_commit.py): transactions run ...
    grouped_writes: int = 0  # ... and the client writes they held
    # multi-leader (node/mesh_server.py)
    mesh_links: str = ""  # all-to-all | star | ring
    mesh_applied: dict[str, int] = {}  # origin -> the changes of it applied here
    mesh_pending: int = 0  # changes received early, waiting for their dependencies
    conflicts: int = 0  # conflicts this node detected and resolved
    refused: str = ""  # the latest refusal (clock skew), if any
    # leaderless (node/kv_server.py)
    kv_replicas: int = 0  # N: replicas per key
    kv_vnodes: int = 0  # virtual nodes per member on the hash ring
    kv_r: int = 0  # the default read and write quorums
    kv_w: int = 0
    kv_keys: int = 0  # keys (live or tombstones) held here
    kv_hints: dict[str, int] = {}  # hints held here, per replica they are for
    kv_lww: list[str] = []  # tables where the latest write wins (no siblings)
    kv_counters: dict[str, int] = {}  # read repairs, hints handed over, AE repairs, ...


class StatusReply(msgspec.Struct, frozen=True, tag="status_reply"):
    id: int
    status: NodeStatus


class TransferLeader(msgspec.Struct, frozen=True, tag="transfer_leader"):
    """Ask the leader to hand leadership to ``target`` (a planned switchover)."""

    id: int
    target: str


class TransferReply(msgspec.Struct, frozen=True, tag="transfer_reply"):
    id: int
    leader: str | None = None  # who leads once the transfer ended
    error_kind: str | None = None
    error: str | None = None
    leader_address: str | None = None


class SnapshotFetch(msgspec.Struct, frozen=True, tag="snapshot_fetch"):
    """A follower asks the leader for the bytes of a snapshot from ``offset`` on.
    ``snapshot_id`` empty: whatever snapshot the leader has (it makes one if needed);
    otherwise the one being resumed — the leader answers from 0 with its current
    snapshot if that one is gone. ``min_index``: when the leader picks a snapshot, none
    older than this (capped at its commit index) — a backup asks with the commit index
    it saw, so it holds every write committed before it began."""

    id: int
    node: str
    snapshot_id: str = ""
    offset: int = 0
    min_index: int = 0


class SnapshotChunk(msgspec.Struct, frozen=True, tag="snapshot_chunk"):
    """``data`` is bytes ``offset .. offset+len(data)`` of snapshot ``snapshot_id``
    (a consistent copy of the leader's database at log position ``index``/``term``),
    ``crc32`` its checksum; ``total`` and ``sha256`` describe the whole file."""

    id: int
    snapshot_id: str = ""
    index: int = 0
    term: int = 0
    total: int = 0
    sha256: str = ""
    offset: int = 0
    data: bytes = b""
    crc32: int = 0
    error: str | None = None
    membership: str = ""  # hex: the membership in force at ``index`` (core/membership.py)


class ChangesRequest(msgspec.Struct, frozen=True, tag="changes"):
    """Open a change stream (node/changes.py) after the positions ``known`` (the
    consumer's unconfirmed window, ``(index, term)``; term 0: do not check), or at
    index ``start`` if given; only ``tables`` if given; ``follow``: keep streaming."""

    id: int
    known: list[tuple[int, int]] = []
    start: int = 0
    tables: list[str] = []
    follow: bool = False


class ChangeEvent(msgspec.Struct, frozen=True, array_like=True):
    op: str  # c (create), u (update), d (delete)
    table: str
    key: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    node: str  # the node that streamed it
    term: int
    index: int  # the log position of its transaction
    seq: int  # its place in that transaction
    ts_ms: int  # when the leader committed the transaction (0: not recorded)

    def envelope(self) -> dict[str, Any]:
        """The Debezium-style JSON envelope ``replidb changes`` prints."""
        return {
            "op": self.op,
            "before": self.before,
            "after": self.after,
            "source": {
                "node": self.node,
                "table": self.table,
                "term": self.term,
                "index": self.index,
                "seq": self.seq,
                "position": f"{self.term}:{self.index}",
            },
            "ts_ms": self.ts_ms,
            "transaction": {"id": f"{self.term}:{self.index}", "order": self.seq},
        }


class ChangesBatch(msgspec.Struct, frozen=True, tag="changes_batch"):
    """Events in log order; ``commit``: the node's commit index (events at or below
    it will never be retracted); ``resume_from``: the consumer's events from this index
    on are not in this node's history — retract them; ``end``: the stream is over."""

    id: int
    events: list[ChangeEvent] = []
    commit: int = 0
    resume_from: int = 0
    end: bool = False
    error: str | None = None


class ChangeMembership(msgspec.Struct, frozen=True, tag="change_membership"):
    """Ask the leader for one membership change: ``op`` is ``add-learner`` (``node``
    at ``address``), ``promote`` (a caught-up learner becomes a voter) or ``remove``.
    Answered once the change is committed."""

    id: int
    op: str
    node: str
    address: str = ""


class MembershipReply(msgspec.Struct, frozen=True, tag="membership_reply"):
    id: int
    voters: list[str] = []
    learners: list[str] = []
    index: int = 0  # the committed CONFIG entry
    error_kind: str | None = None
    error: str | None = None
    leader_address: str | None = None


Message = (
    Hello
    | Execute
    | ExecuteReply
    | Forward
    | ForwardReply
    | StatusRequest
    | StatusReply
    | TransferLeader
    | TransferReply
    | SnapshotFetch
    | SnapshotChunk
    | ChangeMembership
    | MembershipReply
    | ChangesRequest
    | ChangesBatch
    | SnapshotOffer
    | TimeoutNow
    | VoteRequest
    | VoteReply
    | Append
    | AppendReply
    | ChangeBatch
    | ChangeAck
    | KvGet
    | KvCoordPut
    | KvReplicate
    | KvReply
    | KvRequest
    | KvResult
    | KvTree
    | KvTreeDiff
    | KvPush
    | KvPurgeCheck
    | KvPurgeState
    | KvPurge
    | KvSchema
)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def results_digest(results: Sequence[StatementResult]) -> str:
    """A digest of statement results (columns, rows, counts, row ids): equal results
    give equal digests on the client and on the server."""
    return hashlib.sha256(_encoder.encode(list(results))).hexdigest()


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes) -> Message:
    """Decode one frame's payload; raises msgspec.DecodeError/ValidationError on garbage
    (the caller, an adapter, translates that into ProtocolError)."""
    return _decoder.decode(payload)
