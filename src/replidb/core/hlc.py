"""Hybrid logical clocks (Kulkarni et al., 2014), for multi-leader conflict resolution
(issue #8): timestamps that follow physical time, yet never go backwards and always
order an event after everything it could have seen.

Rules (pure: the caller passes the physical time in milliseconds; no clock is read
here):

- ``tick(pt)``, for a local event or a send: wall = max(wall, pt); the logical counter
  restarts at 0 when wall moves forward, else counts up.
- ``receive(remote, pt)``: wall = max(wall, remote.wall, pt); the counter continues
  from whichever of ours and the remote's had that wall (both: the larger), plus one.
  So the result is greater than both our previous timestamp and the remote one.
- A remote timestamp more than ``max_skew_ms`` ahead of our physical clock is refused
  (``ClockSkewError``, naming the peer): accepting it would drag our clock forward
  and let that peer's writes win every last-writer-wins conflict.
- Timestamps are totally ordered by (wall, logical, origin): two nodes never stamp the
  same value, and every node picks the same winner.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HLC", "ClockSkewError", "HybridClock"]


@dataclass(frozen=True, order=True)
class HLC:
    wall_ms: int
    logical: int
    origin: str  # the node that stamped it: breaks ties, the same way everywhere

    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.logical}@{self.origin}"

    @staticmethod
    def parse(text: str) -> HLC:
        """The inverse of ``str()``; ValueError names what is wrong."""
        stamp, sep, origin = text.partition("@")
        wall, dot, logical = stamp.partition(".")
        if not (sep and dot and origin and wall.isdigit() and logical.isdigit()):
            raise ValueError(f"bad hybrid timestamp {text!r}: expected WALL.LOGICAL@NODE")
        return HLC(int(wall), int(logical), origin)


class ClockSkewError(Exception):
    """A peer's clock is too far ahead of ours: its timestamps are refused."""

    def __init__(self, peer: str, ahead_ms: int, max_skew_ms: int) -> None:
        super().__init__(
            f"{peer}'s clock is {ahead_ms} ms ahead of ours (more than the allowed "
            f"{max_skew_ms} ms): its changes are refused until the clocks agree"
        )
        self.peer = peer
        self.ahead_ms = ahead_ms


class HybridClock:
    def __init__(self, node_id: str, max_skew_ms: int, last: HLC | None = None) -> None:
        self.node_id = node_id
        self.max_skew_ms = max_skew_ms
        # Restored from storage after a restart: never stamp below what we already did.
        self.last = last or HLC(0, 0, node_id)

    def tick(self, physical_ms: int) -> HLC:
        wall, logical = self.last.wall_ms, self.last.logical
        if physical_ms > wall:
            wall, logical = physical_ms, 0
        else:
            logical += 1
        self.last = HLC(wall, logical, self.node_id)
        return self.last

    def receive(self, remote: HLC, physical_ms: int) -> HLC:
        ahead = remote.wall_ms - physical_ms
        if ahead > self.max_skew_ms:
            raise ClockSkewError(remote.origin, ahead, self.max_skew_ms)
        ours = self.last
        wall = max(ours.wall_ms, remote.wall_ms, physical_ms)
        if wall == ours.wall_ms == remote.wall_ms:
            logical = max(ours.logical, remote.logical) + 1
        elif wall == ours.wall_ms:
            logical = ours.logical + 1
        elif wall == remote.wall_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        self.last = HLC(wall, logical, self.node_id)
        return self.last
