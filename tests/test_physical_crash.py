"""kill -9 of a real process in the middle of WAL-stream storage work: the store
repairs itself on the next open, and ends byte-identical to the leader.

The child (tests/physical_child.py) slows its apply with the fault-injection variable
REPLIDB_DEBUG_APPLY_PAGE_DELAY_MS so that the kill lands between page writes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

from replidb.storage.physical_store import APPLY_DELAY_ENV, PhysicalStore
from replidb.stream.physical import decode_page_record
from replidb.transport.wire import Statement as S

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("physical_child.py")
DELAY_MS = 5
BATCH = 4


def _leader_workload(directory: Path) -> tuple[PhysicalStore, dict[int, int]]:
    """A leader with ~40 entries touching a few hundred pages; row count per index."""
    leader = PhysicalStore(directory)
    counts: dict[int, int] = {}

    def write(*statements: S) -> None:
        index = leader.last_index() + 1
        assert leader.execute_write(list(statements), 1, index).data is not None
        counts[index] = int(leader.execute_read([S("SELECT count(*) FROM t")])[0].rows[0][0])

    write(S("CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, v TEXT)"))
    write(S("CREATE INDEX t_n ON t(n)"))
    for i in range(36):
        write(
            S(
                "INSERT INTO t(n, v) VALUES " + ", ".join(["(?, ?)"] * 15),
                [x for k in range(15) for x in (i * 15 + k, f"{i}-{k}-" + "y" * 200)],
            )
        )
        if i % 6 == 5:
            write(S("UPDATE t SET v = upper(v) WHERE n % 4 = ?", [i % 4]))
            write(S("DELETE FROM t WHERE n % 9 = ?", [i % 9]))
    return leader, counts


def _page_writes(leader: PhysicalStore) -> int:
    """How many pages an apply of the whole log, BATCH entries at a time, writes."""
    total = 0
    entries = leader.entries(1, leader.last_index(), 1 << 62)
    for start in range(0, len(entries), BATCH):
        pages: set[int] = set()
        for entry in entries[start : start + BATCH]:
            pages.update(pgno for pgno, _ in decode_page_record(entry.data).pages)
        total += len(pages)
    return total


def _check(directory: Path, counts: dict[int, int]) -> PhysicalStore:
    store = PhysicalStore(directory)
    conn = apsw.Connection(str(directory / "data.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    applied = store.applied_index()
    expected = counts.get(applied, 0)
    assert store.execute_read([S("SELECT count(*) FROM t")])[0].rows[0][0] == expected
    return store


def _run_child(*args: str, kill_after: float | None) -> int:
    env = {**os.environ, APPLY_DELAY_ENV: str(DELAY_MS)}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_kill_9_mid_apply_is_repaired_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leader, counts = _leader_workload(tmp_path / "leader")
    entries = leader.entries(1, leader.last_index(), 1 << 62)
    duration = _page_writes(leader) * DELAY_MS / 1000
    assert duration > 0.5, "the workload must give the kills room"
    leader.close()
    expected = (tmp_path / "leader" / "data.db").read_bytes()
    base = PhysicalStore(tmp_path / "base")
    base.persist(None, None, entries)
    base.close()

    interrupted = 0
    for round_ in range(10):
        directory = tmp_path / f"follower{round_}"
        shutil.copytree(tmp_path / "base", directory)
        code = _run_child(
            str(directory), "apply", str(BATCH), kill_after=duration * (round_ + 0.5) / 10
        )
        assert code == -signal.SIGKILL
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="replidb.storage"):
            store = _check(directory, counts)  # resumes the interrupted apply first
        interrupted += "re-applying entries" in caplog.text
        rest = store.entries(store.applied_index() + 1, store.last_index(), 1 << 62)
        store.apply(rest)
        assert store.applied_index() == len(entries)
        store.close()
        assert (directory / "data.db").read_bytes() == expected, f"round {round_}"
    # Most kills must have landed inside an apply, not between two.
    assert interrupted >= 7


def test_kill_9_between_data_commit_and_log_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leader, counts = _leader_workload(tmp_path / "leader")
    last = leader.last_index()
    follower = PhysicalStore(tmp_path / "follower")
    entries = leader.entries(1, last, 1 << 62)
    follower.persist(None, None, entries)
    follower.apply(entries)
    follower.close()
    leader.close()

    code = _run_child(str(tmp_path / "leader"), "die-before-log", kill_after=None)
    assert code == -signal.SIGKILL
    with caplog.at_level(logging.WARNING, logger="replidb.storage"):
        leader = _check(tmp_path / "leader", counts)
    assert "never logged" in caplog.text
    assert leader.last_index() == leader.applied_index() == last
    assert leader.execute_read([S("SELECT count(*) FROM t WHERE v = 'doomed'")])[0].rows == [[0]]
    leader.close()
    assert (tmp_path / "leader" / "data.db").read_bytes() == (
        tmp_path / "follower" / "data.db"
    ).read_bytes()
