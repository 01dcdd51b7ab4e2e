"""Linearizable reads under the simulator's faults (``replidb sim --reads``): every
read a leader confirms covers everything committed before it began — also when that
leader has been cut off or paused and deposed without knowing it."""

from __future__ import annotations

import pytest
from tests.test_sim import WORKERS

from replidb.core import replica
from replidb.testing import run
from replidb.testing.sim import run_seeds

READ_SEEDS = range(300)


def test_linearizable_reads_hold_under_faults() -> None:
    results = run_seeds(READ_SEEDS, workers=WORKERS, keep_trace=False, reads=True)
    failures = [f"{r.seed}: {r.violations[0]}" for r in results if r.violations]
    assert not failures, (
        "failing seeds (replay: replidb sim --seed S --reads --verbose):\n" + "\n".join(failures)
    )
    assert all(r.converged for r in results)
    assert sum(r.reads_served for r in results) > 5000
    assert sum(r.reads_refused for r in results) > 100  # leaders stepped down mid-read


def test_reads_confirmed_without_a_quorum_round_are_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader that trusts its own leadership serves stale reads once deposed."""
    start = replica.Replica._start_reads

    def trusting(self: replica.Replica, contexts: list[int]) -> None:
        start(self, contexts)
        self._release_reads(self._read_round)

    monkeypatch.setattr(replica.Replica, "_start_reads", trusting)
    for seed in (1, 32, 78, 88):
        violations = run(seed, reads=True).violations
        assert violations and "misses entries committed" in violations[0], seed
