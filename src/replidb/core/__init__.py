"""Pure, deterministic replication state machines: no I/O, no clock, no global random."""

from replidb.core.log import LogReader
from replidb.core.messages import (
    Append,
    AppendReply,
    Entry,
    EntryKind,
    HardState,
    PeerMessage,
    Role,
    RoleChanged,
    VoteReply,
    VoteRequest,
)
from replidb.core.policy import CommitPolicy, parse_policy
from replidb.core.replica import Config, NotLeaderError, ReadState, Ready, Replica

__all__ = [
    "Append",
    "AppendReply",
    "CommitPolicy",
    "Config",
    "Entry",
    "EntryKind",
    "HardState",
    "LogReader",
    "NotLeaderError",
    "PeerMessage",
    "ReadState",
    "Ready",
    "Replica",
    "Role",
    "RoleChanged",
    "VoteReply",
    "VoteRequest",
    "parse_policy",
]
