"""Simulated time for the simulators: events due at a time, ordered by (time, the
order they were scheduled in), so one seed gives one order."""

from __future__ import annotations

import heapq
from typing import Any

__all__ = ["EventQueue"]


class EventQueue:
    def __init__(self) -> None:
        self.now = 0
        self._heap: list[tuple[int, int, str, Any]] = []
        self._order = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, delay: int, kind: str, payload: Any) -> None:
        self._order += 1
        heapq.heappush(self._heap, (self.now + delay, self._order, kind, payload))

    def pop(self) -> tuple[str, Any]:
        """The next event (kind, payload); time moves to when it is due."""
        when, _, kind, payload = heapq.heappop(self._heap)
        self.now = max(self.now, when)
        return kind, payload
