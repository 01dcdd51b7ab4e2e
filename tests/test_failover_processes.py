"""Planned and unplanned leadership changes on real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import replidb
from replidb.client.admin import transfer_leader
from replidb.testing.local_cluster import LocalCluster, NumberedWriter

pytestmark = pytest.mark.slow


def _setup(cluster: LocalCluster) -> str:
    leader = cluster.wait_for_leader()
    conn = replidb.connect(cluster.connect, autocommit=True)
    conn.cursor().execute("CREATE TABLE w(n INTEGER PRIMARY KEY)")
    conn.close()
    return leader


def test_transfer_leader_loses_no_write_and_pauses_less_than_an_election_timeout(
    cluster: LocalCluster,
) -> None:
    leader = _setup(cluster)
    target = next(n for n in cluster.ids if n != leader)
    writer = NumberedWriter(cluster.connect, "w")
    writer.start()
    time.sleep(0.5)
    asked = time.monotonic()
    old, new = transfer_leader(cluster.connect, target)
    time.sleep(0.5)
    writer.stop.set()
    writer.join(15)
    assert (old, new) == (leader, target)
    assert cluster.wait_for_leader() == target
    assert writer.unknown == set() and writer.errors == []
    assert writer.longest_gap_after(asked) < 1.0, "more than an election timeout without writes"
    acked = set(writer.acked)
    present = {row[0] for row in cluster.query(target, "SELECT n FROM w")}
    assert acked <= present, f"lost acknowledged writes: {sorted(acked - present)[:10]}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "replidb",
            "transfer-leader",
            "--connect",
            cluster.connect,
            "--to",
            leader,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert f"leadership moved from {target} to {leader}" in out.stdout


def test_transfer_to_an_unknown_node_is_a_one_line_error(cluster: LocalCluster) -> None:
    _setup(cluster)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "replidb",
            "transfer-leader",
            "--connect",
            cluster.connect,
            "--to",
            "n9",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == "error: no node 'n9' in this cluster (members: n1, n2, n3)"
