"""When does a client write get its "ok"? The leader's waiting room.

Each write waits under its commit policy (the cluster default or the transaction's
own): the replica reports, per policy, the highest index that policy lets us
acknowledge. When acknowledgements do not arrive within ``sync_timeout``:

- ``block``: keep waiting; the request's own deadline answers "outcome unknown".
- ``degrade``: like MySQL semi-sync, fall back to async *visibly* (a log line, a
  counter, a flag in status) and acknowledge what the leader holds durably; return to
  the configured policy once the followers have caught up with the leader's log.

A write whose leader loses its term before it is acknowledged is answered "outcome
unknown", never "failed" and never "ok".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from replidb.core import CommitPolicy, Replica, Role
from replidb.errors import OutcomeUnknown

__all__ = ["AckTracker"]

_ASYNC = CommitPolicy("async")


@dataclass
class _Waiter:
    index: int
    term: int
    policy: CommitPolicy
    since: float
    future: asyncio.Future[None]
    committed: bool  # must also be on a majority (it raised an id lease), whatever policy


class AckTracker:
    def __init__(
        self, default: CommitPolicy, on_timeout: str, sync_timeout_s: float, log: logging.Logger
    ) -> None:
        self.default = default
        self.on_timeout = on_timeout
        self.sync_timeout_s = sync_timeout_s
        self.degraded = False
        self.degradations = 0
        self._log = log
        self._waiting: list[_Waiter] = []

    def wait_for(
        self,
        index: int,
        term: int,
        policy: CommitPolicy | None,
        now: float,
        committed: bool = False,
    ) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiter(index, term, policy or self.default, now, future, committed))
        return future

    def check(self, replica: Replica, now: float) -> None:
        """Answer every waiter whose policy is now satisfied; degrade or recover."""
        if self.degraded and self._caught_up(replica):
            self.degraded = False
            self._log.info("followers caught up: commit policy %s again", self.default)
        if not self._waiting:
            return
        if replica.role is not Role.LEADER:
            self.fail_all(f"this node is no longer the leader (term {replica.term})")
            return
        # Degraded, every waiter is held to async; otherwise each to its own policy.
        acked = {
            w.policy: replica.acked_for(_ASYNC if self.degraded else w.policy)
            for w in self._waiting
        }
        still: list[_Waiter] = []
        for waiter in self._waiting:
            if waiter.future.done():
                continue
            if waiter.term != replica.term:
                waiter.future.set_exception(
                    OutcomeUnknown("leadership changed while the write waited")
                )
            elif waiter.index <= acked[waiter.policy] and (
                not waiter.committed or waiter.index <= replica.commit_index
            ):
                waiter.future.set_result(None)
            else:
                still.append(waiter)
        self._waiting = still
        if (
            still
            and self.on_timeout == "degrade"
            and not self.degraded
            and any(now - w.since >= self.sync_timeout_s for w in still)
        ):
            self.degraded = True
            self.degradations += 1
            self._log.warning(
                "no %s acknowledgement for %.1fs: degrading to async (degradation #%d); "
                "acknowledged writes can now be lost on failover",
                self.default,
                self.sync_timeout_s,
                self.degradations,
            )
            self.check(replica, now)

    def _caught_up(self, replica: Replica) -> bool:
        return replica.role is Role.LEADER and replica.acked_for(self.default) >= replica.last_index

    def forget(self, future: asyncio.Future[None]) -> None:
        self._waiting = [w for w in self._waiting if w.future is not future]

    def fail_all(self, why: str) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.future.done():
                waiter.future.set_exception(OutcomeUnknown(f"write not acknowledged: {why}"))
