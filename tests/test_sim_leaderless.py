"""Leaderless replication in the simulator (core/leaderless.py, core/dvv.py,
core/hashring.py, core/merkle.py; testing/sim_leaderless.py): quorum reads see every
write acknowledged before them, no acknowledged write is lost, replicas converge; and
the per-key checker tells W = R = 1 apart from quorums."""

from __future__ import annotations

import pytest

from replidb.core import dvv, leaderless
from replidb.testing import sim_leaderless
from replidb.testing.sim_leaderless import run_leaderless

SEEDS = range(300)


def test_quorums_hold_under_faults() -> None:
    results = [run_leaderless(seed) for seed in SEEDS]
    failures = [f"{r.seed}: {r.violations[0]}" for r in results if r.violations]
    assert not failures, "failing seeds:\n" + "\n".join(failures)
    strict = [r for r in results if not r.params.sloppy]
    assert len(strict) > 150 and sum(r.reads_ok for r in strict) > 10_000
    assert sum(r.stale for r in strict) == 0
    # What the faults exercised, in numbers:
    assert sum(r.siblings_seen for r in results) > 1_000  # concurrent writes kept
    assert sum(r.repairs for r in results) > 500  # read repair
    assert sum(r.hints_handed for r in results) > 100  # sloppy quorum + handoff
    assert sum(r.ae_repairs for r in results) > 500  # anti-entropy
    assert sum(r.unknown for r in results) > 100  # outcomes the client cannot know
    assert sum(r.purged for r in results) > 100  # tombstones dropped everywhere


def test_w_and_r_of_one_read_stale_data_but_lose_no_acknowledged_write() -> None:
    results = [run_leaderless(seed, r=1, w=1) for seed in range(100)]
    assert not [r.violations for r in results if r.violations]  # nothing lost
    assert sum(r.stale for r in results) > 100  # but reads miss acknowledged writes


def test_reading_one_replica_under_a_quorum_setting_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = leaderless.ReadOp.start

    def hasty(self: leaderless.ReadOp) -> list[tuple[str, object]]:
        self.r = 1
        return start(self)

    monkeypatch.setattr(leaderless.ReadOp, "start", hasty)
    assert any("missing" in v for s in range(40) for v in run_leaderless(s).violations)


def test_a_coordinator_that_forgets_its_own_versions_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forgetful(current: object, put: leaderless.CoordPut, node: str) -> dvv.Clock:
        return dvv.update(dvv.new(list(put.context), put.value), dvv.Clock(), node)

    monkeypatch.setattr(sim_leaderless, "coordinate", forgetful)
    assert any("is lost" in v for s in range(20) for v in run_leaderless(s).violations)


def test_without_anti_entropy_replicas_diverge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sim_leaderless.LeaderlessSimulation, "_anti_entropy", lambda self, all_pairs=False: None
    )
    assert any("differ" in v for s in range(20) for v in run_leaderless(s).violations)


def test_dots_handed_out_again_after_a_purge_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that keeps its actor across a purge reuses dots: a client whose
    context predates the purge (a slow writer) silently supersedes a write made after
    it, which the checker reports lost."""
    monkeypatch.setattr(sim_leaderless._Replica, "actor", property(lambda self: self.id))
    lost = [s for s in range(60) if any("is lost" in v for v in run_leaderless(s).violations)]
    assert lost
