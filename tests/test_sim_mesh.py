"""Multi-leader replication under the simulator's faults (``replidb sim --multi-leader``):
partitions, loss, duplication, reordering, crashes (also half-way through a batch) and
clock skew, on every topology; then every node must converge to the same rows, each
the write with the highest timestamp."""

from __future__ import annotations

import dataclasses

import pytest
from tests.test_sim import WORKERS

from replidb.core import mesh
from replidb.testing.sim_mesh import run_mesh, run_mesh_seeds

MESH_SEEDS = range(300)


def test_multi_leader_converges_under_faults() -> None:
    results = run_mesh_seeds(MESH_SEEDS, workers=WORKERS)
    failures = [f"{r.seed}: {r.violations[0]}" for r in results if r.violations]
    assert not failures, (
        "failing seeds (replay: replidb sim --multi-leader --seed S --verbose):\n"
        + "\n".join(failures)
    )
    assert all(r.converged for r in results)
    assert {r.params.topology for r in results} == set(mesh.TOPOLOGIES)
    # The faults and the conflicts happened, in numbers:
    assert sum(r.conflicts for r in results) > 10_000
    assert sum(r.duplicates for r in results) > 1_000  # dropped, not applied twice
    assert sum(r.refusals for r in results) > 100  # clock skew beyond the bound
    assert sum(r.crashes for r in results) > 300


def test_ignoring_dependencies_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without causal delivery, an update arrives before what it depends on."""
    original = mesh.Mesh.stamp

    def no_deps(self: mesh.Mesh, now_ms: int) -> tuple[int, mesh.HLC, dict[str, int]]:
        seq, stamp, _ = original(self, now_ms)
        return seq, stamp, {}

    monkeypatch.setattr(mesh.Mesh, "stamp", no_deps)
    violations = [v for seed in range(12) for v in run_mesh(seed).violations]
    assert any("causal order broken" in v for v in violations)


def test_accepting_any_clock_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    init = mesh.Mesh.__init__

    def trusting(self: mesh.Mesh, config: mesh.MeshConfig, *args: object) -> None:
        init(self, dataclasses.replace(config, max_skew_ms=10**9), *args)  # type: ignore[arg-type]

    monkeypatch.setattr(mesh.Mesh, "__init__", trusting)
    violations = [v for seed in (2, 7, 8, 9) for v in run_mesh(seed).violations]
    assert any("beyond the skew bound" in v for v in violations)


def test_a_seed_replays_identically() -> None:
    a, b = run_mesh(5), run_mesh(5)
    assert a.trace_digest == b.trace_digest and a.trace == b.trace
