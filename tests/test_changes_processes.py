"""Change data capture on real processes (node/changes.py, client/changes.py): every
change at least once and in log order across a consumer killed and resumed from its
last position; retractions for acknowledged writes an asynchronous failover discarded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import replidb
from replidb.client.changes import changes
from replidb.testing.local_cluster import LocalCluster, wait_until

pytestmark = pytest.mark.slow


def _key(event: dict[str, Any]) -> tuple[int, int]:
    return event["source"]["index"], event["source"]["seq"]


def _content(event: dict[str, Any] | None) -> Any:
    """An event without the node that happened to stream it."""
    if event is None:
        return None
    return {**event, "source": {k: v for k, v in event["source"].items() if k != "node"}}


def _consumer(cluster: LocalCluster, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    with out.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "replidb", "changes", "--connect", cluster.connect,
             "--follow", "--tables", "t", *extra],
            stdout=sink,
        )  # fmt: skip


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_consumer_killed_and_resumed_gets_every_change_in_order(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, extra=("--sync", "quorum"))
    cluster.start_all()
    consumers: list[subprocess.Popen[bytes]] = []
    try:
        cluster.wait_for_leader()
        conn = replidb.connect(cluster.connect, autocommit=True)
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("CREATE TABLE other(x)")
        first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
        consumers.append(_consumer(cluster, first))

        def work() -> None:
            for i in range(1, 151):
                conn.execute("INSERT INTO t(v) VALUES (?)", (f"v{i}",))
                conn.execute("INSERT INTO other VALUES (?)", (i,))  # filtered out
                if i % 3 == 0:
                    conn.execute("UPDATE t SET v = v || '!' WHERE id = ?", (i - 1,))
                if i % 5 == 0:
                    conn.execute("DELETE FROM t WHERE id = ?", (i - 2,))

        writer = threading.Thread(target=work)
        writer.start()
        wait_until(lambda: len(_lines(first)) >= 60, 30, "the consumer to print 60 changes")
        consumers[0].send_signal(signal.SIGKILL)  # mid-stream
        consumers[0].wait(10)
        printed = _lines(first)
        resume_at = printed[-1]["source"]["position"]
        consumers.append(_consumer(cluster, second, "--from", resume_at))
        writer.join(60)
        conn.close()
        leader = cluster.addresses[cluster.wait_for_leader()]  # (it has applied it all)
        expected = list(changes(leader, tables=["t"]))  # the whole history
        assert len(expected) == 150 + 50 + 30
        last = _key(expected[-1])
        wait_until(lambda: any(_key(e) == last for e in _lines(second)), 30, "the resumed consumer")
        resumed = _lines(second)
        for run in (printed, resumed):  # each run in log order
            assert [_key(e) for e in run] == sorted(_key(e) for e in run)
        seen = {_key(e): e for e in printed + resumed}
        # every change, at least once:
        assert [_content(seen.get(_key(e))) for e in expected] == [_content(e) for e in expected]
        assert {e["op"] for e in expected} == {"c", "u", "d"}
        assert all(e["source"]["table"] == "t" and e["ts_ms"] > 0 for e in expected)
    finally:
        for consumer in consumers:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait(10)
        cluster.stop_all()


def test_writes_discarded_by_an_async_failover_are_retracted(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, extra=("--sync", "async"))
    cluster.start_all()
    stop = threading.Event()
    try:
        leader = cluster.wait_for_leader()
        followers = [n for n in cluster.ids if n != leader]
        conn = replidb.connect(cluster.addresses[leader], autocommit=True)
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t(v) VALUES ('kept')")
        cluster.wait_converged("t")
        received: list[dict[str, Any]] = []
        # The consumer reads from the leader first (the others are there to fail over to).
        order = [cluster.addresses[n] for n in (leader, *followers)]

        def consume() -> None:
            try:
                for event in changes(order, follow=True, timeout=30):
                    received.append(event)
                    if stop.is_set():
                        return
            except replidb.Unavailable:
                if not stop.is_set():  # (after the test, the cluster is gone)
                    raise

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        wait_until(lambda: len(received) == 1, 20, "the first change")
        for node in followers:
            cluster.pause(node)  # the leader alone holds what comes next
        for i in range(5):
            conn.execute("INSERT INTO t(v) VALUES (?)", (f"doomed{i}",))  # acknowledged (async)
        conn.close()
        wait_until(lambda: len(received) == 6, 20, "the doomed changes to be streamed")
        doomed = {e["after"]["id"] for e in received[1:]}
        cluster.kill(leader)
        for node in followers:
            cluster.resume(node)
        new = cluster.wait_for_leader(exclude=leader, timeout=20)
        # The first batch the leader sent may sit in a paused follower's socket buffer
        # and survive; the rest are discarded by the new leader's history.
        ids = {row[0] for row in cluster.query(new, "SELECT id FROM t")}
        discarded = doomed - ids
        assert len(discarded) >= 3, "the failover discarded (almost) nothing: no test"

        def retracted() -> set[int]:
            return {e["after"]["id"] for e in received[6:] if e["op"] == "x"}

        wait_until(lambda: retracted() == discarded, 30, "a retraction for each discarded write")
        assert all(e["retracts"] == "c" for e in received[6:])
        assert ids == {1} | (doomed - discarded)  # the survivors were not retracted
        stop.set()
    finally:
        stop.set()
        cluster.stop_all()
