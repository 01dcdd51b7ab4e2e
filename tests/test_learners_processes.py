"""Learners (non-voting members) on real processes: they replicate and serve reads,
never lead, and count for no majority."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import replidb
from replidb.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


def test_a_learner_replicates_serves_reads_and_never_leads(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, nodes=4, extra=("--learners", "n4", "--sync", "quorum"))
    cluster.start_all()
    try:
        leader = cluster.wait_for_leader()
        assert leader != "n4"
        conn = replidb.connect(cluster.addresses["n4"], autocommit=True)  # via the learner
        conn.cursor().execute("CREATE TABLE r(id INTEGER PRIMARY KEY, v TEXT)")
        conn.cursor().execute("INSERT INTO r(v) VALUES ('through a learner')")
        conn.close()
        cluster.wait_converged("r")
        status = cluster.status("n4")
        assert status is not None and status.role == "learner"
        assert "waits for 2 of 3 nodes" in status.durability  # three voters, not four
        # Kill the leader twice: a voter always takes over, never the learner.
        for _ in range(2):
            old = cluster.wait_for_leader()
            cluster.kill(old)
            new = cluster.wait_for_leader(exclude=old)
            assert new != "n4"
            cluster.start(old)
            cluster.wait_converged("r", nodes=cluster.ids, timeout=30)
        assert "role leader" not in cluster.log("n4")
        out = subprocess.run(
            [sys.executable, "-m", "replidb", "status", "--connect", cluster.connect],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert "learner" in out
    finally:
        cluster.stop_all()


def test_a_learners_acknowledgement_makes_no_majority(tmp_path: Path) -> None:
    """Two voters and a learner: with the other voter gone, the learner's copy would
    make 2 of 3 if it counted. It does not: the write is never acknowledged."""
    cluster = LocalCluster(tmp_path, nodes=3, extra=("--learners", "n3", "--sync", "quorum"))
    cluster.start_all()
    try:
        leader = cluster.wait_for_leader()
        conn = replidb.connect(cluster.addresses[leader], autocommit=True, timeout=3.0)
        conn.cursor().execute("CREATE TABLE q(id INTEGER PRIMARY KEY)")
        other_voter = next(n for n in ("n1", "n2") if n != leader)
        cluster.kill(other_voter)
        started = time.monotonic()
        with pytest.raises((replidb.OutcomeUnknown, replidb.Unavailable)):
            conn.cursor().execute("INSERT INTO q VALUES (1)")
        assert time.monotonic() - started >= 1.0
        conn.close()
    finally:
        cluster.stop_all()


def test_learners_must_be_members_and_one_member_must_vote(tmp_path: Path) -> None:
    base = [
        sys.executable,
        "-m",
        "replidb",
        "serve",
        "--node-id",
        "n1",
        "--data",
        str(tmp_path),
        "--listen",
        "127.0.0.1:7",
        "--peers",
        "n2=127.0.0.1:8",
    ]
    bad = subprocess.run([*base, "--learners", "n7"], capture_output=True, text=True)
    assert bad.returncode == 2 and "n7 is not a member (members: n1, n2)" in bad.stderr
    none = subprocess.run([*base, "--learners", "n1,n2"], capture_output=True, text=True)
    assert none.returncode == 2 and "at least one member must vote" in none.stderr
