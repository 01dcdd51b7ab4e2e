"""Membership changes in the simulator (``replidb sim --membership``).

A membership run starts with spare nodes outside the cluster (each one a learner of
the initial cluster in its own eyes, as ``replidb serve --join`` starts one). On a
seeded share of world ticks, during the safety phase, the client side asks whichever
node leads for one change, as ``replidb join`` and ``replidb remove`` do: add a node
that is not a member (a spare, or one removed earlier, with whatever stale log it
kept) as a learner, promote a learner that has caught up, or remove a member (the
leader itself included). The core refuses what it must (a change while another is
uncommitted, a new leader that has not committed yet, a learner still behind); those
refusals are counted, not errors. Everything else — crashes, partitions, loss — goes
on around the changes, and the usual checkers hold throughout.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from replidb.core.membership import Membership, MembershipBusy
from replidb.core.messages import Role

if TYPE_CHECKING:
    from replidb.testing.sim import Simulation

__all__ = ["MembershipDriver"]

MIN_VOTERS = 2  # never remove below this (one voter is legal, and dull)


class MembershipDriver:
    def __init__(self, sim: Simulation, rng: random.Random) -> None:
        self._sim = sim
        self._rng = rng
        self.proposed = 0
        self.refused = 0

    def maybe_change(self) -> None:
        if self._rng.random() >= self._sim.params.change_rate:
            return
        sim = self._sim
        node = sim.pick_leader(self._rng)
        if node is None or node.replica is None:
            return
        replica = node.replica
        new = self._pick(replica.membership, [n.id for n in sim.nodes])
        if new is None:
            return
        change = replica.membership.describe_change(new)
        try:
            entry = replica.propose_membership(new)
        except MembershipBusy as exc:
            self.refused += 1
            sim._log(f"{node.id} refuses to {change}: {exc}")
            return
        except Exception as exc:  # any other refusal of a valid change is a bug
            sim._core_error(node.id, exc)
        self.proposed += 1
        sim._log(f"{node.id} proposes to {change} at {entry.index} term={entry.term}")
        sim._drain(node)

    def _pick(self, current: Membership, ids: list[str]) -> Membership | None:
        rng = self._rng
        outside = [n for n in ids if n not in current.members]
        options: list[tuple[str, str]] = [("add", n) for n in outside]
        options += [("promote", n) for n in current.learners]
        if len(current.voters) > MIN_VOTERS:
            options += [("remove", n) for n in current.voters]
        options += [("remove", n) for n in current.learners]
        if not options:
            return None
        op, node = rng.choice(options)
        if op == "add":
            return current.with_learner(node)
        if op == "promote":
            return current.promoted(node)
        return current.without(node)

    def final_members(self) -> tuple[str, ...]:
        """The converged leader's membership, in a membership run (else ())."""
        sim = self._sim
        if not sim.params.spares:
            return ()
        for node in sim.nodes:
            if node.replica is not None and node.replica.role is Role.LEADER:
                return node.replica.membership.members
        return ()
