"""The simulator's membership seed space (``replidb sim --membership``): spare nodes
are added as learners, promoted once caught up, and members (leaders included) are
removed, while crashes, partitions, pauses and message loss go on; every checker holds
throughout and the final membership converges."""

from __future__ import annotations

import pytest
from tests.test_sim import WORKERS

from replidb.testing import MemoryStorage, run
from replidb.testing.sim import Params, run_seeds

MEMBERSHIP_SEEDS = range(250)
# Seeds that fail when a fix made while membership changes were built is reverted
# (checked on the simulator as it is now; tests/test_core_membership.py has the
# unit-level cases):
REGRESSION_SEEDS = {
    36: "a node that thought itself removed refused votes: no leader could be elected",
    202: "the same (also seeds 260, 367)",
    201: "a restarted leader relearned commit from 0 and could not offer a snapshot",
    282: "the same (also seeds 15, 334)",
}


def test_membership_seeds_hold_every_invariant() -> None:
    results = run_seeds(MEMBERSHIP_SEEDS, workers=WORKERS, keep_trace=False, membership=True)
    failures = [f"{r.seed}: {r.violations[0]}" for r in results if r.violations]
    assert not failures, (
        "failing seeds (replay: replidb sim --seed S --membership --verbose):\n"
        + "\n".join(failures)
    )
    assert all(r.converged for r in results)
    changed = [r for r in results if r.membership_changes]
    assert len(changed) >= 200  # the acceptance bar: 200 seeds mixing changes and faults
    assert {r.policy for r in changed} == {"async", "quorum", "all"}
    assert sum(r.crashes for r in changed) > 500
    for fault in ("split", "isolate", "oneway", "pause"):
        assert sum(r.faults.get(fault, 0) for r in changed) > 100, fault
    params = {r.seed: Params.for_seed(r.seed, membership=True) for r in results}
    joined = [r for r in changed if set(r.final_members) - set(params[r.seed].initial_members())]
    left = [r for r in changed if set(params[r.seed].initial_members()) - set(r.final_members)]
    assert len(joined) > 50 and len(left) > 100  # spares joined; original members left
    assert sum(1 for r in changed if r.snapshots) > 30  # joins and catch-ups by snapshot
    safe = [r for r in results if r.policy != "async"]
    assert len(safe) > 100 and sum(r.acked_lost for r in safe) == 0


@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_membership_regression_seed(seed: int) -> None:
    result = run(seed, membership=True, raise_on_violation=True)
    assert result.converged and result.membership_changes, REGRESSION_SEEDS[seed]


def test_forgetting_the_membership_on_restart_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that restarts with its command line's membership instead of its log's
    counts the wrong majority: the checkers see a leader without a committed entry, or
    two leaders in one term."""
    monkeypatch.setattr(MemoryStorage, "configs", lambda self: [])
    results = {seed: run(seed, membership=True) for seed in (28, 65, 91, 176)}
    assert all(r.violations for r in results.values())
    assert "lacks committed" in results[28].violations[0]
    assert "second leader in term" in results[176].violations[0]
