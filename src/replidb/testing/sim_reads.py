"""Linearizable reads in the simulator (``replidb sim --reads``).

On a seeded share of world ticks a client asks whichever node leads for a
linearizable read (``Replica.request_read``). When the core releases it with an index,
that index must cover every entry committed anywhere before the read began: a leader
that has been deposed without knowing it (cut off, paused) must not confirm a read
with its stale commit index. Reads refused because their leader stepped down are
counted, and reads lost with a crashed node are simply never answered (the client
would time out).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from replidb.core.replica import ReadState

if TYPE_CHECKING:
    from replidb.testing.sim import SimNode, Simulation

__all__ = ["ReadDriver"]

READ_RATE = 0.3  # reads asked per world tick, when a run has reads


class ReadDriver:
    def __init__(self, sim: Simulation, rng: random.Random, enabled: bool) -> None:
        self._sim = sim
        self._rng = rng
        self.enabled = enabled
        self._pending: dict[int, tuple[str, int]] = {}  # ctx -> (node, committed before)
        self._next = 0
        self.served = 0
        self.refused = 0

    def maybe_read(self) -> None:
        if not self.enabled or self._rng.random() >= READ_RATE:
            return
        sim = self._sim
        node = sim.pick_leader(self._rng)
        if node is None or node.replica is None:
            return
        self._next += 1
        self._pending[self._next] = (node.id, len(sim.checker.committed))
        try:
            node.replica.request_read(self._next)
        except Exception as exc:
            sim._core_error(node.id, exc)
        sim._log(f"{node.id} asked for linearizable read {self._next}")
        sim._drain(node)

    def on_read_states(self, node: SimNode, states: tuple[ReadState, ...]) -> None:
        for state in states:
            owner, committed_before = self._pending.pop(state.ctx, ("?", 0))
            if owner != node.id:
                self._sim.checker.fail(node.id, f"read {state.ctx} released by the wrong node")
            if state.index == 0:
                self.refused += 1
                continue
            if state.index < committed_before:
                self._sim.checker.fail(
                    node.id,
                    f"linearizable read {state.ctx} at index {state.index} misses entries "
                    f"committed up to {committed_before} before it began",
                )
            self.served += 1
            self._sim._log(f"{node.id} serves read {state.ctx} at {state.index}")
