"""WAL shipping on real processes: a follower killed (-9) in the middle of applying
pages, ten times under load, always comes back identical; a follower with another page
size is refused with a clear error."""

from __future__ import annotations

import hashlib
import random
import subprocess
import time
from pathlib import Path

import pytest

import replidb
from replidb.testing.local_cluster import LocalCluster, NumberedWriter

pytestmark = pytest.mark.slow


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_follower_killed_mid_apply_ten_times_ends_byte_identical(tmp_path: Path) -> None:
    """n3 SIGKILLs itself part-way through writing a batch of pages (fault injection in
    storage/page_io.py), ten times while a client keeps writing; every restart finishes
    the interrupted apply, and in the end all three data files are the same bytes."""
    rng = random.Random(4)
    cluster = LocalCluster(tmp_path, nodes=3, extra=("--stream", "wal", "--learners", "n3"))
    cluster.start_all()
    try:
        leader = cluster.wait_for_leader()
        conn = replidb.connect(cluster.addresses[leader], autocommit=True)
        conn.cursor().execute(
            "CREATE TABLE w(id INTEGER PRIMARY KEY, n INTEGER, "
            "pad TEXT DEFAULT (hex(zeroblob(300))))"
        )
        conn.close()
        writer = NumberedWriter(cluster.addresses[leader], "w")
        writer.start()
        kills = 0
        cluster.kill("n3")
        for _ in range(10):
            pages = rng.randint(2, 40)
            cluster.node_env["n3"] = {"REPLIDB_DEBUG_APPLY_KILL_AFTER_PAGES": str(pages)}
            cluster.start("n3")
            try:
                cluster.procs.pop("n3").wait(30)  # it dies mid-apply, by its own hand
            except subprocess.TimeoutExpired:
                raise AssertionError("n3 never died mid-apply") from None
            kills += 1
        cluster.node_env["n3"] = {}
        cluster.start("n3")
        time.sleep(0.5)
        writer.stop.set()
        writer.join(30)
        assert not writer.errors, writer.errors[:3]
        assert len(writer.acked) > 50
        cluster.wait_converged("w", nodes=cluster.ids, timeout=60)
        assert kills == 10
        resumed = cluster.log("n3").count("(interrupted apply)")
        assert resumed >= 10, f"only {resumed} restarts found an interrupted apply"
    finally:
        cluster.stop_all()
    digests = {n: _file_digest(tmp_path / n / "data.db") for n in cluster.ids}
    assert len(set(digests.values())) == 1, digests


def test_a_follower_with_another_page_size_is_refused(tmp_path: Path) -> None:
    # n3 is a learner, so it is always the follower, never the leader.
    cluster = LocalCluster(
        tmp_path,
        nodes=3,
        extra=("--stream", "wal", "--learners", "n3"),
        node_extra={"n3": ("--page-size", "8192")},
    )
    cluster.start_all()
    try:
        leader = cluster.wait_for_leader()
        conn = replidb.connect(cluster.addresses[leader], autocommit=True)
        conn.cursor().execute("CREATE TABLE p(id INTEGER PRIMARY KEY)")
        conn.cursor().execute("INSERT INTO p VALUES (1)")
        conn.close()
        deadline = time.monotonic() + 15
        while cluster.alive("n3") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not cluster.alive("n3")
        log = cluster.log("n3")
        assert "page" in log and "8192" in log and "4096" in log, log[-2000:]
        assert cluster.wait_converged("p", nodes=["n1", "n2"])  # the others carry on
    finally:
        cluster.stop_all()
