"""Events into and out of the replica state machine, as frozen msgspec Structs.

They are plain values: the core builds and consumes them, the transport encodes them
as they are (msgpack, tagged by class), the simulator passes them around unchanged.
Every peer message names its sender and carries the sender's term: a receiver
fences on the term before it looks at anything else.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = [
    "Append",
    "AppendReply",
    "Entry",
    "EntryKind",
    "HardState",
    "PeerMessage",
    "Role",
    "RoleChanged",
    "TimeoutNow",
    "VoteReply",
    "VoteRequest",
]


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"  # asking whether it could win, before raising its term
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.IntEnum):
    NOOP = 0  # appended by every new leader, so that it can commit earlier terms' entries
    WRITE = 1  # one client transaction, encoded by stream/
    CONFIG = 2  # a membership change (core/membership.py); a no-op for the database


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """One log position: ``(term, index)`` names it everywhere."""

    term: int
    index: int
    kind: int = EntryKind.WRITE
    data: bytes = b""


class HardState(msgspec.Struct, frozen=True):
    """What must be durable before any message that depends on it leaves the node."""

    term: int = 0
    vote: str | None = None


class VoteRequest(msgspec.Struct, frozen=True, tag="vote"):
    """A vote request. ``pre_vote``: "would you vote for me in ``term``?" — nobody's
    term or vote changes. ``transfer``: the leader asked for this election, so voters
    must not ignore it for having heard from that leader recently."""

    term: int
    sender: str
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


class VoteReply(msgspec.Struct, frozen=True, tag="vote_reply"):
    """A granted pre-vote carries the term it was asked about; a refusal, the voter's."""

    term: int
    sender: str
    granted: bool
    pre_vote: bool = False


class TimeoutNow(msgspec.Struct, frozen=True, tag="timeout_now"):
    """Leadership transfer: the leader tells a caught-up follower to campaign now."""

    term: int
    sender: str


class Append(msgspec.Struct, frozen=True, tag="append"):
    """AppendEntries; with no entries it is a heartbeat that still carries ``commit``."""

    term: int
    sender: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    # Linearizable reads: the leader's newest read round when it sent this; the reply
    # echoes it, and a round echoed by a majority proves the sender was still leader
    # after the reads of that round arrived (Raft thesis §6.4, ReadIndex).
    read_round: int = 0
    # The sender's wall clock (ms) as its runtime sent this; the core ignores it. A
    # follower measures its staleness for bounded reads with it (node/reads.py).
    sent_ms: int = 0


class AppendReply(msgspec.Struct, frozen=True, tag="append_reply"):
    """``success``: ``index`` is the last index known to match the leader's log.
    Refusal: ``index`` is a hint; the leader retries from ``index + 1``."""

    term: int
    sender: str
    success: bool
    index: int
    read_round: int = 0  # the newest read round of this leader's we have seen


class SnapshotOffer(msgspec.Struct, frozen=True, tag="snapshot_offer"):
    """The leader no longer has the entries this follower needs (the log was compacted
    past them): fetch a snapshot from the leader, install it, then continue from the
    log. ``first_index``: the first entry the leader still holds."""

    term: int
    sender: str
    first_index: int
    base_term: int  # the term of entry first_index - 1 (the compaction point)


PeerMessage = VoteRequest | VoteReply | Append | AppendReply | TimeoutNow | SnapshotOffer


class RoleChanged(msgspec.Struct, frozen=True):
    """Reported in a Ready whenever role, term or known leader changes."""

    role: Role
    term: int
    leader: str | None
