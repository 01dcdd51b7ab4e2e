"""Leaderless replication on real processes (issue #9).

- A replica is SIGKILLed while four clients keep reading and writing with R=W=2 of
  N=3 (three coordinating themselves, one through a node); with anti-entropy off, the
  keys written while it was down reach it only by hinted handoff once it restarts,
  and the recorded history passes the per-key checker (testing/sim_leaderless.py).
- With reads off, anti-entropy alone repairs a replica whose database lost rows and
  went back to older versions behind its back.
- Siblings, their resolution, lww tables, SQL on any replica, the CLI, and deletions
  that never return once their tombstones are purged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest

import replidb
from replidb.client.kv import KvClient
from replidb.core.hashring import HashRing
from replidb.errors import OutcomeUnknown
from replidb.testing.kv_history import HistoryWorker, final_state
from replidb.testing.local_cluster import LocalCluster, wait_until
from replidb.testing.sim_leaderless import Params, check_history
from replidb.transport.kv_wire import encode_key

pytestmark = pytest.mark.slow


def _cluster(tmp_path: Path, *extra: str, nodes: int = 3) -> LocalCluster:
    cluster = LocalCluster(tmp_path, nodes=nodes, extra=("--topology", "leaderless", *extra))
    cluster.start_all()

    def linked() -> bool:
        statuses = [cluster.status(n) for n in cluster.members]
        return all(s is not None and len(s.peers_connected) == nodes - 1 for s in statuses)

    wait_until(linked, 15, "the nodes to start and connect")
    return cluster


def _counters(cluster: LocalCluster, counter: str) -> int:
    """A counter summed over the nodes that answer (counters restart with a node)."""
    statuses = [cluster.status(node) for node in cluster.members if cluster.alive(node)]
    return sum(s.kv_counters.get(counter, 0) for s in statuses if s is not None)


def _hints(cluster: LocalCluster) -> int:
    statuses = [cluster.status(n) for n in cluster.members]
    return sum(sum(s.kv_hints.values()) if s else 1 for s in statuses)


def _create(cluster: LocalCluster, sql: str) -> None:
    conn = replidb.connect(cluster.addresses["n1"], autocommit=True, timeout=10.0)
    try:
        conn.execute(sql)
    finally:
        conn.close()
    table = sql.split("(")[0].split()[-1]
    exists = f"SELECT count(*) FROM sqlite_master WHERE name = '{table}'"
    wait_until(
        lambda: all(cluster.query(n, exists) == [[1]] for n in cluster.members),
        10,
        f"table {table} on every node",
    )


def test_a_killed_replica_gets_its_hints_and_the_history_checks_out(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, "--anti-entropy-interval", "0", "--replica-timeout-ms", "500")
    try:
        _create(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT)")
        stop = threading.Event()
        clients = [KvClient(cluster.connect, replica_timeout=0.5) for _ in range(3)]
        clients.append(KvClient(cluster.addresses["n1"], via="node"))
        workers = [HistoryWorker(f"c{i}", c, 8, stop) for i, c in enumerate(clients)]
        for worker in workers:
            worker.start()
        time.sleep(3)
        cluster.kill("n3")
        # Written only while n3 is down and never read: only a hint can bring them there.
        blind = KvClient(cluster.connect, replica_timeout=0.5)
        for key in range(100, 160):
            blind.put("t", {"id": key, "tag": f"down-{key}"})
        assert blind.get("t", 100).rows == [{"id": 100, "tag": "down-100"}]
        time.sleep(3)
        statuses = [cluster.status(n) for n in ("n1", "n2")]
        assert sum(s.kv_hints.get("n3", 0) for s in statuses if s) >= 60
        cluster.start("n3")
        time.sleep(3)
        stop.set()
        for worker in workers:
            worker.join(30)
        blind.close()
        for client in clients:
            client.close()
        wait_until(lambda: _hints(cluster) == 0, 20, "every hint to be handed over")
        down_only = "SELECT id, tag FROM t WHERE id >= 100 ORDER BY id"
        assert cluster.query("n3", down_only) == [[k, f"down-{k}"] for k in range(100, 160)]
        assert _counters(cluster, "hints_handed_over") >= 60
        assert _counters(cluster, "anti_entropy_repairs") == 0  # (off: hints did it)

        history = [event for worker in workers for event in worker.history]
        writes = [e for e in history if e.kind == "write"]
        reads = [e for e in history if e.kind == "read" and e.outcome == "ok"]
        acked = [e for e in writes if e.outcome == "ok"]
        assert len(acked) > 200 and len(reads) > 200
        final_client = KvClient(cluster.connect)
        final = final_state(final_client, 8)
        final_client.close()
        params = Params(nodes=3, n=3, r=2, w=2, sloppy=False, keys=8, clients=4, loss=0.0,
                        max_delay=0, fault_rate=0.0)  # fmt: skip
        assert check_history(history, params, final) == []
    finally:
        cluster.stop_all()


def _set_clock(path: Path, keys: list[bytes], clocks: dict[bytes, bytes]) -> None:
    db = apsw.Connection(str(path))
    try:
        db.execute("BEGIN")
        for key in keys:
            db.execute("UPDATE replidb_kv SET clock = ?, digest = x'00' WHERE key = ?",
                       (clocks[key], key))  # fmt: skip
        db.execute("COMMIT")
    finally:
        db.close()


def test_anti_entropy_alone_repairs_a_replica_changed_behind_its_back(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, "--anti-entropy-interval", "0.5")
    try:
        _create(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT)")
        kv = KvClient(cluster.connect)
        for key in range(200):
            kv.put("t", {"id": key, "tag": "v1"}, w=3)
        path = tmp_path / "n3" / "kv.db"
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        old = {bytes(k): bytes(c) for k, c in db.execute("SELECT key, clock FROM replidb_kv")}
        db.close()
        for key in range(150, 200):
            kv.put("t", {"id": key, "tag": "v2"}, w=3)
        kv.close()
        expected = cluster.query("n1", "SELECT * FROM t ORDER BY id")
        cluster.kill("n3")
        # Behind its back: 40 rows and their versions gone, 50 rows back at v1.
        db = apsw.Connection(str(path))
        db.execute("DELETE FROM t WHERE id < 40")
        for k in range(40):
            db.execute("DELETE FROM replidb_kv WHERE key = ?", (encode_key("t", [k]),))
        db.execute("UPDATE t SET tag = 'v1' WHERE id >= 150")
        changed = list(db.execute("SELECT count(*), sum(tag = 'v2') FROM t"))
        db.close()
        assert changed == [(160, 0)]
        _set_clock(path, [encode_key("t", [k]) for k in range(150, 200)], old)
        cluster.start("n3")
        wait_until(lambda: cluster.status("n3") is not None, 10, "n3 to restart")
        wait_until(
            lambda: cluster.query("n3", "SELECT * FROM t ORDER BY id") == expected,
            30,
            "anti-entropy to repair n3",
        )
        assert _counters(cluster, "anti_entropy_repairs") >= 90
        assert _counters(cluster, "read_repairs") == 0  # no reads were made
    finally:
        cluster.stop_all()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replidb", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_siblings_lww_sql_and_deletions_that_stay_deleted(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, "--lww", "e", "--tombstone-grace", "1",
                       "--replica-timeout-ms", "250", "--anti-entropy-interval", "0.5")  # fmt: skip
    try:
        _create(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        _create(cluster, "CREATE TABLE e(k TEXT PRIMARY KEY, v INTEGER)")
        kv = KvClient(cluster.connect)
        # Two writers that saw nothing: siblings, both returned, resolved with the context.
        kv.put("t", {"id": 1, "v": "a"}, context=[])
        kv.put("t", {"id": 1, "v": "b"}, context=[])
        read = kv.get("t", 1)
        assert sorted(r["v"] for r in read.rows) == ["a", "b"]
        with pytest.raises(replidb.Conflict):
            _ = read.row
        kv.put("t", {"id": 1, "v": "ab"}, context=read)
        assert kv.get("t", 1, r=3).rows == [{"id": 1, "v": "ab"}]
        # lww: one answer, the later write.
        kv.put("e", {"k": "x", "v": 1}, context=[])
        kv.put("e", {"k": "x", "v": 2}, context=[])
        assert kv.get("e", "x").rows == [{"k": "x", "v": 2}]
        # SQL: writes through any node, reads on every replica.
        conn = replidb.connect(cluster.addresses["n2"], autocommit=True)
        conn.execute("INSERT INTO t VALUES (2, 'sql'), (3, 'sql')")
        conn.execute("UPDATE t SET v = 'sql2' WHERE id = 2")
        conn.close()
        assert kv.get("t", 2).rows == [{"id": 2, "v": "sql2"}]
        cluster.wait_converged("t")
        # The CLI.
        put = _cli("kv", "put", "--connect", cluster.connect, "t", '{"id": 4, "v": "cli"}',
                   "-w", "3")  # fmt: skip
        assert put.returncode == 0, put.stderr
        got = _cli("kv", "get", "--connect", cluster.addresses["n3"], "t", "4", "--via", "node")
        assert json.loads(got.stdout)["rows"] == [{"id": 4, "v": "cli"}]
        # Bad input: one line naming it, whoever coordinates.
        via_node = KvClient(cluster.addresses["n2"], via="node")
        for client in (kv, via_node):
            with pytest.raises(replidb.BadRequest, match="table t has no column nope"):
                client.put("t", {"id": 9, "nope": 1})
        with pytest.raises(replidb.BadRequest, match="cannot have UNIQUE constraints"):
            _create(cluster, "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
        assert via_node.get("t", "4").rows == [{"id": 4, "v": "cli"}]  # "4": the key 4
        via_node.close()
        bad = _cli("kv", "get", "--connect", cluster.connect, "t", "4", "-r", "4")
        assert bad.returncode == 1 and bad.stderr.strip() == "error: r=4 must be between 1 and N=3"
        # A deletion n3 misses (it is down): a hint, then purged everywhere once n3 has
        # it; the old row never comes back, through anti-entropy or reads.
        cluster.kill("n3")
        kv.delete("t", 3)
        assert _cli("kv", "delete", "--connect", cluster.connect, "t", "4").returncode == 0
        time.sleep(2.5)  # past the grace period: the hint for n3 holds the tombstones
        assert _counters(cluster, "tombstones_purged") == 0
        cluster.start("n3")
        wait_until(lambda: _hints(cluster) == 0, 20, "the hints to reach n3")
        wait_until(lambda: _counters(cluster, "tombstones_purged") >= 6, 20, "the purge")
        time.sleep(2)  # anti-entropy rounds after the purge
        for node in cluster.members:
            assert cluster.query(node, "SELECT id FROM t ORDER BY id") == [[1], [2]]
        assert kv.get("t", 3, r=3).rows == [] and kv.get("t", 4, r=3).rows == []
        kv.close()
    finally:
        cluster.stop_all()


def test_a_sloppy_quorum_counts_a_stand_in_that_hands_the_write_over(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, "--replicas", "3", "--anti-entropy-interval", "0", nodes=4)
    try:
        _create(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        ring = HashRing(cluster.members, 64)
        key = next(k for k in range(1000) if "n4" in ring.preference_list(encode_key("t", [k]), 3))
        stand_in = next(n for n in cluster.members
                        if n not in ring.preference_list(encode_key("t", [key]), 3))  # fmt: skip
        cluster.kill("n4")
        kv = KvClient(cluster.connect, replica_timeout=0.5)
        with pytest.raises(OutcomeUnknown, match="only 2 of the W=3"):
            kv.put("t", {"id": key, "v": "strict"}, w=3)
        kv.put("t", {"id": key, "v": "sloppy"}, w=3, sloppy=True)
        kv.close()
        status = cluster.status(stand_in)
        assert status is not None and status.kv_hints.get("n4", 0) >= 1
        assert cluster.query(stand_in, f"SELECT * FROM t WHERE id = {key}") == []  # a hint only
        cluster.start("n4")
        wait_until(lambda: _hints(cluster) == 0, 20, "the hints to reach n4")
        assert cluster.query("n4", f"SELECT v FROM t WHERE id = {key}") == [["sloppy"]]
    finally:
        cluster.stop_all()
