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

__all__ = ["CommitPolicy", "parse_policy"]


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
