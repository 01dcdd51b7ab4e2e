"""Cluster membership: who votes, who only learns, and how that changes safely.

A membership is a value (``Membership``) carried in the log by ``EntryKind.CONFIG``
entries. Rules (Raft thesis §4.1, single-server changes):

- A node uses the newest membership in its log, committed or not, from the moment the
  entry is appended; if the entry is truncated away, the previous one applies again
  (``ConfigHistory`` keeps them by index for exactly that).
- One change at a time: one node is added as a learner, promoted from learner to
  voter, or removed. Any two majorities of memberships that differ by one voter
  overlap, so two leaders can never be elected in one term across a change. A leader
  proposes a change only once the previous one is committed and once it has committed
  an entry of its own term (Ongaro's fix for a change racing a leader change).
- A learner is promoted only once it holds the log up to the leader's commit index,
  so that a new voter never slows commits down or, for ``all``, blocks them.
- A leader that removes itself keeps leading until that entry commits (without
  counting itself for majorities), then hands over with TimeoutNow and steps down.

Addresses ride along so that every node's runtime can reach new members; the core
itself never looks at them. No I/O here: just values and their checks.
"""

from __future__ import annotations

import bisect

import msgspec

__all__ = [
    "ConfigHistory",
    "Membership",
    "MembershipBusy",
    "decode_membership",
    "encode_membership",
]


class MembershipBusy(ValueError):
    """The change is fine but cannot be made right now (another one is committing, a new
    leader has not committed yet, the learner is still catching up): retry shortly."""


class Membership(msgspec.Struct, frozen=True):
    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()
    addresses: tuple[tuple[str, str], ...] = ()  # (node id, HOST:PORT), for the runtime

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(sorted({*self.voters, *self.learners}))

    def address(self, node: str) -> str | None:
        return dict(self.addresses).get(node)

    def with_learner(self, node: str, address: str = "") -> Membership:
        if node in self.voters or node in self.learners:
            raise ValueError(f"{node} is already a member of this cluster")
        return Membership(
            self.voters,
            tuple(sorted((*self.learners, node))),
            _set_address(self.addresses, node, address),
        )

    def promoted(self, node: str) -> Membership:
        if node in self.voters:
            raise ValueError(f"{node} is already a voter")
        if node not in self.learners:
            raise ValueError(f"{node} is not a member of this cluster: add it as a learner first")
        return Membership(
            tuple(sorted((*self.voters, node))),
            tuple(n for n in self.learners if n != node),
            self.addresses,
        )

    def without(self, node: str) -> Membership:
        if node not in self.voters and node not in self.learners:
            raise ValueError(f"{node} is not a member of this cluster")
        if self.voters == (node,):
            raise ValueError(f"{node} is the last voter: a cluster needs one")
        return Membership(
            tuple(n for n in self.voters if n != node),
            tuple(n for n in self.learners if n != node),
            tuple(pair for pair in self.addresses if pair[0] != node),
        )

    def describe_change(self, new: Membership) -> str:
        """What ``new`` changes, if it is exactly one allowed step; else ValueError."""
        added_voters = set(new.voters) - set(self.voters)
        removed_voters = set(self.voters) - set(new.voters)
        added_learners = set(new.learners) - set(self.learners)
        removed_learners = set(self.learners) - set(new.learners)
        if not new.voters:
            raise ValueError("a membership needs at least one voter")
        if set(new.voters) & set(new.learners):
            raise ValueError("a node cannot be both a voter and a learner")
        # A promotion moves one node from learners to voters: still one node changed.
        if len(added_voters | removed_voters | added_learners | removed_learners) != 1:
            raise ValueError(
                "one membership change at a time: add a learner, promote one, or remove one"
            )
        if added_voters:
            (node,) = added_voters
            if node not in self.learners:
                raise ValueError(f"{node} must join as a learner before it can vote")
            return f"promote {node} to voter"
        if added_learners:
            (node,) = added_learners
            if node in self.voters:
                raise ValueError(f"{node} is a voter; demotion is a removal and a re-join")
            return f"add {node} as a learner"
        (node,) = removed_voters or removed_learners
        return f"remove {node}"


def _set_address(
    addresses: tuple[tuple[str, str], ...], node: str, address: str
) -> tuple[tuple[str, str], ...]:
    if not address:
        return addresses
    return tuple(sorted([*(pair for pair in addresses if pair[0] != node), (node, address)]))


def encode_membership(membership: Membership) -> bytes:
    return msgspec.msgpack.encode(membership)


def decode_membership(data: bytes) -> Membership:
    return msgspec.msgpack.decode(data, type=Membership)


class ConfigHistory:
    """The memberships in force from each log index on: the bootstrap one (or the one at
    the snapshot base) and then one per CONFIG entry in the log."""

    def __init__(self, base_index: int, base: Membership) -> None:
        self._indexes = [base_index]
        self._memberships = [base]

    @property
    def latest(self) -> Membership:
        return self._memberships[-1]

    @property
    def latest_index(self) -> int:
        return self._indexes[-1]

    def at(self, index: int) -> Membership:
        """The membership in force once the log is applied up to ``index``."""
        position = bisect.bisect_right(self._indexes, index) - 1
        return self._memberships[max(0, position)]

    def add(self, index: int, membership: Membership) -> None:
        if index <= self._indexes[-1]:
            self.truncate(index)
        self._indexes.append(index)
        self._memberships.append(membership)

    def truncate(self, from_index: int) -> bool:
        """Forget changes at ``from_index`` and after (never the base); True if any."""
        keep = max(1, bisect.bisect_left(self._indexes, from_index))
        if keep == len(self._indexes):
            return False
        del self._indexes[keep:]
        del self._memberships[keep:]
        return True

    def reset(self, index: int, membership: Membership) -> None:
        """A snapshot at ``index`` replaced the log: it is the new base."""
        self._indexes = [index]
        self._memberships = [membership]
