"""Multi-leader replication on real processes (issue #8): three nodes take concurrent,
conflicting writes on every topology, one of them cut off for the middle third, and
converge to identical contents; under ``record`` every key written on both sides of
the partition is in every node's replidb_conflicts; auto ids never collide. A ring
stalls past a dead node and recovers when it returns."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import replidb
from replidb.cli.status_cmd import cluster_status
from replidb.errors import Error
from replidb.testing.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.slow

DURATION_S = 30.0
KEYS = 12


def _mesh(tmp_path: Path, links: str, *extra: str) -> LocalCluster:
    cuts = {f"n{i}": tmp_path / f"cut-n{i}" for i in (1, 2, 3)}
    cluster = LocalCluster(
        tmp_path,
        nodes=3,
        extra=("--topology", "multi-leader", "--links", links, *extra),
        node_extra={n: ("--debug-cut-file", str(path)) for n, path in cuts.items()},
    )
    cluster.cuts = cuts  # type: ignore[attr-defined]
    return cluster


def _cut(cluster: LocalCluster, node: str) -> None:
    """Cut ``node`` off from the others, both ways (an empty file for everyone: heal)."""
    others = [n for n in cluster.members if n != node]
    for n, path in cluster.cuts.items():  # type: ignore[attr-defined]
        path.write_text(",".join(others) if n == node else node if node else "")


def _heal(cluster: LocalCluster) -> None:
    for path in cluster.cuts.values():  # type: ignore[attr-defined]
        path.write_text("")


def _converged(cluster: LocalCluster) -> bool:
    statuses = [cluster.status(n) for n in cluster.members]
    if any(s is None for s in statuses):
        return False
    vectors = [s.mesh_applied for s in statuses if s is not None]
    return all(v == vectors[0] for v in vectors) and not any(
        s.mesh_pending for s in statuses if s is not None
    )


class Writer(threading.Thread):
    """Writes to one node: upserts and deletes of a few shared keys (conflicts), and
    inserts with ids chosen by the node (they must never collide)."""

    def __init__(self, cluster: LocalCluster, node: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.conn = replidb.connect(cluster.addresses[node], autocommit=True, timeout=5.0)
        self.stop = stop
        self.rng = random.Random(node)
        self.inserted = 0
        self.errors: list[str] = []
        self.keys_written: list[tuple[float, int]] = []  # (when, key)

    def run(self) -> None:
        cursor = self.conn.cursor()
        n = 0
        while not self.stop.is_set():
            n += 1
            key = self.rng.randrange(KEYS)
            try:
                if self.rng.random() < 0.15:
                    cursor.execute("DELETE FROM t WHERE id = ?", [key])
                else:
                    cursor.execute(
                        "INSERT INTO t(id, v, node) VALUES (?, ?, ?) ON CONFLICT(id) DO "
                        "UPDATE SET v = excluded.v, node = excluded.node",
                        [key, f"{self.node}-{n}", self.node],
                    )
                self.keys_written.append((time.monotonic(), key))
                cursor.execute("INSERT INTO u(v) VALUES (?)", [f"{self.node}-{n}"])
                self.inserted += 1
            except Error as exc:
                self.errors.append(str(exc))
            time.sleep(0.01)
        self.conn.close()


@pytest.mark.parametrize("links", ["all-to-all", "star", "ring"])
def test_concurrent_writes_with_a_partition_converge(tmp_path: Path, links: str) -> None:
    cluster = _mesh(tmp_path, links, "--resolve", "t=record")
    _heal(cluster)
    cluster.start_all()
    try:
        first = replidb.connect(cluster.addresses["n1"], autocommit=True, timeout=10.0)
        wait_until(lambda: _converged(cluster), 10, "the nodes to start")
        first.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, node TEXT)")
        first.execute("CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT)")
        wait_until(lambda: _converged(cluster), 10, "the tables to reach every node")
        stop = threading.Event()
        writers = [Writer(cluster, node, stop) for node in cluster.members]
        for writer in writers:
            writer.start()
        time.sleep(DURATION_S / 3)
        _cut(cluster, "n3")
        cut_at = time.monotonic()
        time.sleep(DURATION_S / 3)
        healed_at = time.monotonic()
        # Cut off, n3 kept taking writes, and n1 did not see them.
        marker = replidb.connect(cluster.addresses["n3"], autocommit=True, timeout=5.0)
        marker.execute("INSERT INTO u(v) VALUES ('written on n3 while cut off')")
        time.sleep(1.0)
        assert not cluster.query("n1", "SELECT 1 FROM u WHERE v LIKE 'written on n3%'")
        _heal(cluster)
        time.sleep(DURATION_S / 3)
        stop.set()
        for writer in writers:
            writer.join(30)
        wait_until(lambda: _converged(cluster), 60, "every node to hold every change")

        for writer in writers:
            assert not writer.errors, f"{writer.node}: {writer.errors[:3]}"
            assert writer.inserted > 100
        tables = {
            n: (cluster.query(n, "SELECT * FROM t ORDER BY id"),
                cluster.query(n, "SELECT * FROM u ORDER BY id"))
            for n in cluster.members
        }  # fmt: skip
        assert tables["n1"] == tables["n2"] == tables["n3"]
        # Every id a node chose is in u, once: none collided (1 for the marker).
        assert len(tables["n1"][1]) == sum(w.inserted for w in writers) + 1

        # Keys written on both sides of the partition conflicted: every node recorded
        # them, keeping the version with the larger timestamp.
        def during(writer: Writer) -> set[int]:
            return {k for at, k in writer.keys_written if cut_at + 0.5 < at < healed_at}

        both_sides = during(writers[2]) & (during(writers[0]) | during(writers[1]))
        assert both_sides
        for node in cluster.members:
            rows = cluster.query(
                node,
                "SELECT pk, local_version, remote_version, kept FROM replidb_conflicts "
                "WHERE tbl = 't'",
            )
            recorded = {json.loads(pk)[0] for pk, *_ in rows}
            assert both_sides <= recorded, (node, both_sides - recorded)
            for _, local, remote, kept in rows:
                assert kept == ("remote" if _stamp(remote) > _stamp(local) else "local")
            status = cluster.status(node)
            assert status is not None and status.conflicts >= len(rows) > 0
    finally:
        cluster.stop_all()


def _stamp(text: Any) -> tuple[int, int, str]:
    if text is None:
        return (-1, -1, "")
    stamp, _, origin = str(text).partition("@")
    wall, _, logical = stamp.partition(".")
    return int(wall), int(logical), origin


def test_a_ring_stalls_past_a_dead_node_and_recovers(tmp_path: Path) -> None:
    cluster = _mesh(tmp_path, "ring")
    _heal(cluster)
    cluster.start_all()
    try:
        conns = {
            n: replidb.connect(cluster.addresses[n], autocommit=True, timeout=5.0)
            for n in cluster.members
        }
        wait_until(lambda: _converged(cluster), 10, "the nodes to start")
        conns["n1"].execute("CREATE TABLE t(v TEXT)")
        wait_until(lambda: _converged(cluster), 10, "the table to reach every node")
        cluster.kill("n2")  # the ring is n1 -> n2 -> n3 -> n1
        conns["n1"].execute("INSERT INTO t VALUES ('from n1')")
        conns["n3"].execute("INSERT INTO t VALUES ('from n3')")
        wait_until(
            lambda: cluster.query("n1", "SELECT 1 FROM t WHERE v = 'from n3'"), 10,
            "n3's write to reach n1 (n3 -> n1 is alive)",
        )  # fmt: skip
        time.sleep(2.0)  # n1 -> n3 goes through n2, which is dead: stalled
        assert not cluster.query("n3", "SELECT 1 FROM t WHERE v = 'from n1'")
        cluster.start("n2")
        wait_until(
            lambda: cluster.query("n3", "SELECT 1 FROM t WHERE v = 'from n1'"), 15,
            "the ring to carry n1's write to n3 once n2 is back",
        )  # fmt: skip
        wait_until(lambda: _converged(cluster), 15, "the ring to converge")
        report = cluster_status(cluster.connect)
        assert report["topology"] == "multi-leader" and report["links"] == "ring"
        assert {json.dumps(n["applied"]) for n in report["nodes"]} == {
            json.dumps({"n1": 2, "n2": 0, "n3": 1})
        }
        shown = subprocess.run(
            [sys.executable, "-m", "replidb", "status", "--connect", cluster.connect],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert "multi-leader, ring links: every node takes writes" in shown
    finally:
        cluster.stop_all()


def test_a_node_whose_clock_runs_ahead_is_refused_until_it_agrees(tmp_path: Path) -> None:
    cluster = _mesh(tmp_path, "all-to-all", "--max-clock-skew-ms", "500")
    cluster.node_extra["n3"] += ("--debug-clock-offset-ms", "3000")
    _heal(cluster)
    cluster.start_all()
    try:
        n1 = replidb.connect(cluster.addresses["n1"], autocommit=True, timeout=5.0)
        n3 = replidb.connect(cluster.addresses["n3"], autocommit=True, timeout=5.0)
        n1.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        n3.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
        n3.execute("INSERT INTO t(v) VALUES ('from the future')")  # n3 still takes writes

        def refused(node: str) -> str:
            status = cluster.status(node)
            return status.refused if status is not None else ""

        wait_until(lambda: "n3's clock is" in refused("n1"), 10, "n1 to refuse n3")
        assert "ahead of ours (more than the allowed 500 ms)" in refused("n1")
        wait_until(lambda: "behind ours" in refused("n3"), 10, "n3 to refuse the others")
        time.sleep(1.0)
        assert cluster.status("n1").mesh_applied.get("n3", 0) == 0  # type: ignore[union-attr]
        # The clock is fixed (the node restarts without the offset): its changes are
        # taken once our clocks pass the stamps they were given (3 s ahead).
        cluster.kill("n3")
        cluster.node_extra["n3"] = cluster.node_extra["n3"][:-2]
        cluster.start("n3")
        wait_until(lambda: _converged(cluster), 20, "n3's changes to be taken")
        rows = cluster.query("n1", "SELECT v FROM t")
        assert ["from the future"] in rows
    finally:
        cluster.stop_all()
