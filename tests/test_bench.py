"""`replidb bench`: closed-loop load against a throwaway local cluster or a running one,
a table or one JSON object, and clear errors for bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from replidb.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replidb", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bench_with_a_local_cluster_prints_json() -> None:
    done = _bench("--local", "3", "--duration", "1", "--concurrency", "16", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["workload"] == "insert" and result["concurrency"] == 16
    # 16 clients at once: the leader's transactions hold several writes (group commit)
    assert result["writes_per_group"] > 1.0
    assert result["writes"] > 0 and result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["follower_lag_p99_ms"] is not None and result["lag_samples"] > 0


def test_bench_against_a_running_cluster(cluster: LocalCluster) -> None:
    cluster.wait_for_leader()
    done = _bench(
        "--connect", cluster.connect, "--workload", "read-mix", "--duration", "1",
        "--sync", "quorum",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "replidb bench: read-mix" in done.stdout and "writes/s" in done.stdout
    rows = cluster.query(cluster.wait_for_leader(), "SELECT count(*) FROM bench")
    assert rows[0][0] > 1000  # the 1,000 rows it reads, and what it wrote


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give either --connect HOST:PORT[,...] or --local N"),
        (("--local", "3", "--connect", "127.0.0.1:1"), "give either"),
        (("--local", "3", "--workload", "scan"), "'scan' is not one of"),
    ],
)
def test_bad_arguments_are_refused(args: tuple[str, ...], message: str) -> None:
    done = _bench(*args)
    assert done.returncode == 2 and message in done.stderr
