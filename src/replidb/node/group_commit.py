"""Group commit: client writes that arrive together run as one group.

The leader's cost per write used to be one SQLite COMMIT, that is one fsync, and one
replication message. Writes that reach the event loop in the same turn now join one
group, which runs on the loop's next turn: the store executes them in one SQLite
transaction (a savepoint each, storage/sqlite_store.py ``execute_batch``), one fsync
makes them all durable, and the replica sends their entries to each follower in one
Append. No timer is involved: a lone write waits for nothing, and the busier the node,
the larger the groups (the writes that arrived while the previous group's fsync held
the loop).

Durability is unchanged: no write is answered before the group's COMMIT returned, and
each is then acknowledged under its own commit policy (node/acks.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Collects ``submit``ted items and runs them through ``run`` in groups of at most
    ``max_size``; ``run`` returns one result or error per item, in order."""

    def __init__(
        self, run: Callable[[list[T]], Sequence[R | BaseException]], max_size: int = 256
    ) -> None:
        self._run = run
        self.max_size = max_size
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self.groups = 0  # groups run, and the items they held: the mean group size
        self.items = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        # A request whose client went away before its group ran is not run at all.
        pending = [(item, future) for item, future in self._pending if not future.done()]
        group, self._pending = pending[: self.max_size], pending[self.max_size :]
        if self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if not group:
            return
        self.groups += 1
        self.items += len(group)
        try:
            results = self._run([item for item, _ in group])
        except Exception as exc:  # the group as a whole failed: none of it happened
            for _, future in group:
                future.set_exception(exc)
            return
        for (_, future), result in zip(group, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
