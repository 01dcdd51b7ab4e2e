"""Membership changes on real processes: a node joins a live cluster under write load
(as a learner, by snapshot, then promoted to voter) and members are removed under load
— the leader included — without losing an acknowledged write."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import replidb
from replidb.testing.local_cluster import LocalCluster, NumberedWriter, wait_until

pytestmark = pytest.mark.slow


def _replidb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replidb", *args], capture_output=True, text=True, timeout=timeout
    )


def _table_rows(cluster: LocalCluster, node: str, table: str) -> set[int]:
    return {int(row[0]) for row in cluster.query(node, f"SELECT n FROM {table}")}


def _write_for(connect: str, table: str, seconds: float) -> NumberedWriter:
    writer = NumberedWriter(connect, table)
    writer.start()
    wait_until(lambda: len(writer.acked) > 20, 20, "writes to be acknowledged")
    time.sleep(seconds)
    return writer


def test_a_node_joins_under_load_and_members_are_removed_under_load(tmp_path: Path) -> None:
    # A retention cap far below what is written: the new node must come by snapshot.
    cluster = LocalCluster(
        tmp_path, nodes=3, spares=1, extra=("--sync", "quorum", "--max-log-entries", "200")
    )
    cluster.start_all()
    try:
        leader = cluster.wait_for_leader()
        conn = replidb.connect(cluster.connect, autocommit=True)
        for table in ("w", "w2", "w3"):  # one per phase: each writer counts from 1
            conn.cursor().execute(f"CREATE TABLE {table}(id INTEGER PRIMARY KEY, n INTEGER UNIQUE)")
        conn.close()
        writer = _write_for(cluster.connect, "w", 1.5)
        cluster.start("n4")  # replidb serve ... --join
        joined = _replidb(
            "join", "--connect", cluster.connect, "--node-id", "n4",
            "--address", cluster.addresses["n4"], "--timeout", "90",
        )  # fmt: skip
        assert joined.returncode == 0, joined.stderr
        assert "n4 is a voter (voters n1,n2,n3,n4" in joined.stdout
        assert "catching up" in joined.stderr  # progress while it was a learner
        time.sleep(1.0)  # and the writes go on with four voters
        writer.stop.set()
        writer.join(30)
        assert not writer.errors, writer.errors
        all_nodes = ["n1", "n2", "n3", "n4"]
        cluster.wait_converged("w", nodes=all_nodes, timeout=60)
        assert set(writer.acked) <= _table_rows(cluster, "n4", "w")
        status = cluster.status(cluster.wait_for_leader())
        assert status is not None and status.voters == all_nodes
        assert "installed snapshot" in cluster.log("n4")
        assert "waits for 3 of 4 nodes" in status.durability

        # Remove a follower, then the leader itself, each while writes go on.
        follower = next(n for n in all_nodes if n != leader and n != "n4")
        remaining = [n for n in all_nodes if n != follower]
        for victim, table in ((follower, "w2"), (cluster.wait_for_leader(), "w3")):
            remaining = [n for n in remaining if n != victim]
            connect = ",".join(cluster.addresses[n] for n in remaining)
            writer = _write_for(connect, table, 1.0)
            removed = _replidb("remove", "--connect", connect, "--node-id", victim)
            assert removed.returncode == 0, removed.stderr
            assert f"{victim} removed (voters {','.join(remaining)}" in removed.stdout
            time.sleep(1.0)
            writer.stop.set()
            writer.join(30)
            assert not writer.errors, writer.errors
            cluster.wait_converged(table, nodes=remaining, timeout=60)
            rows = _table_rows(cluster, remaining[0], table)
            lost = set(writer.acked) - rows
            assert not lost, f"acknowledged writes lost after removing {victim}: {sorted(lost)}"
            # The removed node is told (it holds the entry that removed it): it stops
            # campaigning and says so.
            wait_until(
                lambda v=victim: (s := cluster.status(v)) is not None and s.role == "removed",
                20,
                f"{victim} to know it was removed",
            )
            cluster.kill(victim)
        new_leader = cluster.wait_for_leader()
        assert new_leader in remaining
        status = cluster.status(new_leader)
        assert status is not None and status.voters == remaining
    finally:
        cluster.stop_all()


def test_membership_commands_refuse_bad_requests(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, nodes=3)
    cluster.start_all()
    try:
        cluster.wait_for_leader()
        unknown = _replidb("remove", "--connect", cluster.connect, "--node-id", "n9")
        assert unknown.returncode == 0 and "n9 removed" in unknown.stdout  # already gone
        bad = _replidb(
            "join", "--connect", cluster.connect, "--node-id", "n5", "--address", "nowhere",
        )  # fmt: skip
        assert bad.returncode == 1
        assert bad.stderr.strip() == "error: bad address 'nowhere': expected HOST:PORT"
        promote = _replidb(
            "join", "--connect", cluster.connect, "--node-id", "n2",
            "--address", cluster.addresses["n2"],
        )  # fmt: skip
        assert promote.returncode == 0 and "n2 is a voter" in promote.stdout  # already one
        (tmp_path / "one").mkdir()
        last = LocalCluster(tmp_path / "one", nodes=1)
        last.start_all()
        try:
            last.wait_for_leader()
            refused = _replidb("remove", "--connect", last.connect, "--node-id", "n1")
            assert refused.returncode == 1
            assert "n1 is the last voter" in refused.stderr
        finally:
            last.stop_all()
    finally:
        cluster.stop_all()


def test_a_member_that_lost_its_data_comes_back_by_remove_and_join(tmp_path: Path) -> None:
    """A node whose disk was wiped must not rejoin as itself (its votes and log are
    gone); the procedure is remove, wipe, join, and it catches up like a new node."""
    cluster = LocalCluster(
        tmp_path, nodes=3, extra=("--sync", "quorum", "--max-log-entries", "100")
    )
    cluster.start_all()
    try:
        cluster.wait_for_leader()
        conn = replidb.connect(cluster.connect, autocommit=True)
        conn.cursor().execute("CREATE TABLE w(id INTEGER PRIMARY KEY, n INTEGER UNIQUE)")
        conn.close()
        writer = _write_for(cluster.connect, "w", 1.0)
        cluster.kill("n3")
        survivors = ",".join(cluster.addresses[n] for n in ("n1", "n2"))
        removed = _replidb("remove", "--connect", survivors, "--node-id", "n3")
        assert removed.returncode == 0, removed.stderr
        shutil.rmtree(tmp_path / "n3")  # the lost disk
        cluster.members = ["n1", "n2"]  # so n3 starts with --join, pointed at them
        cluster.start("n3")
        joined = _replidb(
            "join", "--connect", survivors, "--node-id", "n3",
            "--address", cluster.addresses["n3"],
        )  # fmt: skip
        assert joined.returncode == 0, joined.stderr
        writer.stop.set()
        writer.join(30)
        assert not writer.errors, writer.errors
        cluster.wait_converged("w", nodes=["n1", "n2", "n3"], timeout=60)
        assert set(writer.acked) <= _table_rows(cluster, "n3", "w")
        status = cluster.status("n3")
        assert status is not None and status.voters == ["n1", "n2", "n3"]
    finally:
        cluster.stop_all()
