"""Where and when a read may be served, per consistency level (issue #6).

- ``any``: here, now (possibly stale).
- ``session``: here, once this node has applied the client's position token.
- ``bounded:S``: here if this node's data is at most S seconds old, else the client
  is redirected to the leader. "Old" is measured, not guessed: a follower's data is as
  fresh as the newest leader message whose commit index it has applied (everything
  committed before that message left the leader is here), so its staleness is the
  time since the leader sent that message — by the leader's wall clock, stamped on
  each append, so that network delay counts too. Clocks that disagree by D seconds
  make the bound off by D (as with any wall-clock bound; NTP keeps D to milliseconds).
  The leader's staleness is 0.
- ``leader``: run by the leader.
- ``linearizable``: run by the leader after it confirms, with a round of heartbeats
  acknowledged by a majority, that it still leads (ReadIndex: core/replica.py), and
  once it has applied the commit index the read arrived at.

This module keeps the bookkeeping (freshness, reads waiting for their round); the node
runtime (node/server.py) feeds it and asks it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque

from replidb.core import NotLeaderError, ReadState, Replica, Role
from replidb.errors import NotLeader, Unavailable

__all__ = ["ReadGate", "bound_of"]

_MAX_HEARD = 4096  # leader messages remembered while their commit index is not applied


def bound_of(level: str) -> float | None:
    """The S of ``bounded:S`` (the client validated it); None for other levels."""
    if not level.startswith("bounded:"):
        return None
    return float(level.split(":", 1)[1])


class ReadGate:
    def __init__(self) -> None:
        self._fresh_at = -math.inf  # when the newest leader message we have applied arrived
        self._heard: deque[tuple[float, int]] = deque()  # (arrived, its commit), ascending
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[int]] = {}

    # ---- bounded staleness ------------------------------------------------------

    def heard_from_leader(self, commit: int, applied: int, sent: float) -> None:
        """An append from the leader, sent at ``sent`` (wall clock, seconds)."""
        if commit <= applied:
            self._fresh_at = max(self._fresh_at, sent)
            self._heard.clear()
        elif not self._heard or commit > self._heard[-1][1]:
            if len(self._heard) >= _MAX_HEARD:
                self._heard.popleft()
            self._heard.append((sent, commit))

    def applied(self, applied: int) -> None:
        while self._heard and self._heard[0][1] <= applied:
            self._fresh_at = max(self._fresh_at, self._heard.popleft()[0])

    def staleness(self, replica: Replica, now: float) -> float:
        """Seconds this node's data may lag the leader's (0 on the leader); ``now``
        is the wall clock."""
        if replica.role is Role.LEADER:
            return 0.0
        return max(0.0, now - self._fresh_at)

    # ---- linearizable ------------------------------------------------------------

    async def confirm(self, replica: Replica, drive: object, timeout: float) -> int:
        """The index a linearizable read must wait for, once a majority confirmed this
        node still leads. ``drive``: the runtime's Ready handler, called once."""
        ctx = next(self._ids)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[ctx] = future
        try:
            replica.request_read(ctx)
        except NotLeaderError as exc:
            self._waiting.pop(ctx, None)
            raise NotLeader(str(exc)) from None
        assert callable(drive)
        drive()
        try:
            index = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Unavailable(
                f"could not confirm leadership with a majority within {timeout:g}s; retry"
            ) from None
        finally:
            self._waiting.pop(ctx, None)
        if index == 0:
            raise NotLeader("this node stopped leading before the read was confirmed")
        return index

    def released(self, states: tuple[ReadState, ...]) -> None:
        for state in states:
            future = self._waiting.get(state.ctx)
            if future is not None and not future.done():
                future.set_result(state.index)

    def fail_all(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_result(0)
