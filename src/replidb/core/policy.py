"""Commit policies: when may the leader acknowledge a client write?

The replica computes an *acknowledged index* after every batch; client writes at or
below it (proposed in the leader's current term) may be answered "ok". The policy is
the hook where synchronous replication plugs in; today's default is ``async``.

- ``async``: after the leader's own durable commit (a failover can lose it).
- ``semi-sync:K``: after K followers hold it durably.
- ``quorum``: after a majority of voters, leader included (= the Raft commit index).
- ``all``: after every voter holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CommitPolicy", "Guarantee", "guarantee", "parse_policy"]


@dataclass(frozen=True)
class CommitPolicy:
    name: str  # "async" | "semi-sync" | "quorum" | "all"
    k: int = 0  # followers needed, for semi-sync

    def __str__(self) -> str:
        return f"semi-sync:{self.k}" if self.name == "semi-sync" else self.name

    def acked_index(self, leader_durable: int, commit: int, follower_match: list[int]) -> int:
        """The highest index this policy lets the leader acknowledge."""
        if self.name == "async":
            return leader_durable
        if self.name == "quorum":
            return commit
        ranked = sorted(follower_match, reverse=True)
        if self.name == "all":
            return min([leader_durable, *ranked])
        if self.k > len(ranked):
            return 0  # not enough followers exist: nothing can be acknowledged
        return min(leader_durable, ranked[self.k - 1]) if self.k > 0 else leader_durable


@dataclass(frozen=True)
class Guarantee:
    """Whether an acknowledged write survives any failover, for one cluster size."""

    safe: bool
    reason: str

    def __str__(self) -> str:
        verdict = (
            "no acknowledged write is lost on failover"
            if self.safe
            else ("an acknowledged write CAN be lost on failover")
        )
        return f"{verdict}: {self.reason}"


def guarantee(policy: CommitPolicy, voters: int) -> Guarantee:
    """A new leader needs votes from a majority, and voters refuse a candidate whose log
    is behind theirs; so a write held by a majority is in every future leader's log,
    and a write held by fewer may not be."""
    majority = voters // 2 + 1
    if voters == 1 and policy.name != "semi-sync":
        return Guarantee(True, "a single node: there is no other node to fail over to")
    if policy.name == "async":
        return Guarantee(False, "async acknowledges after the leader alone has the write")
    if policy.name in ("quorum", "all"):
        held = majority if policy.name == "quorum" else voters
        return Guarantee(
            True,
            f"{policy} waits for {held} of {voters} nodes; a new leader "
            f"needs {majority} votes, so it always has the write",
        )
    held = policy.k + 1
    if policy.k > voters - 1:
        return Guarantee(
            False,
            f"{policy} waits for {policy.k} followers but only "
            f"{voters - 1} exist: no write can be acknowledged",
        )
    if held >= majority:
        return Guarantee(
            True,
            f"{policy} puts each write on {held} of {voters} nodes, a "
            f"majority; every possible new leader has it",
        )
    return Guarantee(
        False,
        f"{policy} puts each write on {held} of {voters} nodes, fewer "
        f"than the majority of {majority} that elects a leader",
    )


def parse_policy(text: str) -> CommitPolicy:
    """Parse ``async``, ``semi-sync:K``, ``quorum`` or ``all``; ValueError names the problem."""
    text = text.strip().lower()
    if text in ("async", "quorum", "all"):
        return CommitPolicy(text)
    if text.startswith("semi-sync:"):
        k_text = text.split(":", 1)[1]
        if k_text.isdigit() and int(k_text) >= 1:
            return CommitPolicy("semi-sync", int(k_text))
        raise ValueError(f"semi-sync needs a follower count >= 1, got {k_text!r}")
    raise ValueError(f"unknown commit policy {text!r}: use async, semi-sync:K, quorum or all")
