"""Everything that crosses a socket: peer (core) messages plus client and status
requests, as msgspec Structs encoded with msgpack, one per length-prefixed frame.

Evolution rule: new fields get defaults, so an older reader ignores them and a newer
reader fills them in. Tags never change meaning.
"""

from __future__ import annotations

from typing import Any

import msgspec

from replidb.core.messages import (
    Append,
    AppendReply,
    SnapshotOffer,
    TimeoutNow,
    VoteReply,
    VoteRequest,
)

__all__ = [
    "ChangeMembership",
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
    | SnapshotOffer
    | TimeoutNow
    | VoteRequest
    | VoteReply
    | Append
    | AppendReply
)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes) -> Message:
    """Decode one frame's payload; raises msgspec.DecodeError/ValidationError on garbage
    (the caller, an adapter, translates that into ProtocolError)."""
    return _decoder.decode(payload)
