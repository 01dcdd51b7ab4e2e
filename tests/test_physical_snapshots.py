"""Snapshots for the wal stream, in-process: the snapshot is the data file byte for
byte at the commit index (the leader's writes above it rolled back in the copy),
installing it leaves a node byte-identical to one that applied the log, an ex-leader's
own writes go to replidb_discarded, a kill at any step of an install is finished or
undone on open, the version lock refuses a foreign file, and compaction keeps the log's
positions right."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.physical_support import crash, integrity

from replidb.core.messages import Entry, EntryKind, HardState
from replidb.errors import InternalError, ProtocolError
from replidb.storage import physical_snapshot, physical_store
from replidb.storage.physical_store import PhysicalStore
from replidb.storage.snapshot_files import SnapshotInfo, file_sha256
from replidb.transport.wire import Statement as S

# ---- helpers -----------------------------------------------------------------------


class Writer:
    """Drives a leader store: each call is one client transaction at the next index."""

    def __init__(self, store: PhysicalStore, term: int = 1) -> None:
        self.store, self.term = store, term

    def __call__(self, *sql: str | S) -> int:
        statements = [s if isinstance(s, S) else S(s) for s in sql]
        index = self.store.last_index() + 1
        outcome = self.store.execute_write(statements, self.term, index)
        assert outcome.data is not None, f"write {index} changed nothing"
        return index


def ship(leader: PhysicalStore, follower: PhysicalStore, upto: int | None = None) -> None:
    """What replication does: persist the leader's new entries, then apply them."""
    hi = leader.last_index() if upto is None else upto
    entries = leader.entries(follower.last_index() + 1, hi, 1 << 40)
    follower.persist(None, None, entries)
    follower.apply(entries)


def fill(write: Writer, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        write(S("INSERT INTO t(v) VALUES (?)", [f"{i}-" + "x" * 400]))


def data_bytes(store: PhysicalStore) -> bytes:
    """The data file of a follower: complete on its own (applies write the main file)."""
    assert not store.wal_path.exists() or store.wal_path.stat().st_size == 0
    return store.data_path.read_bytes()


def rows(store: PhysicalStore, sql: str) -> list[list[object]]:
    return store.execute_read([S(sql)])[0].rows


def _leader(
    make: Callable[..., PhysicalStore], name: str = "leader"
) -> tuple[PhysicalStore, Writer]:
    store = make(name)
    write = Writer(store)
    write("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    write("CREATE INDEX t_v ON t(v)")
    return store, write


# ---- making a snapshot -------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["none", "below_commit", "above_commit"])
def test_a_snapshot_at_the_commit_index_is_a_followers_file_there(
    make: Callable[..., PhysicalStore], tmp_path: Path, checkpoint: str
) -> None:
    """Where the leader last checkpointed decides where the copy's pages come from:
    all from the WAL, main file then WAL, or main file then undo (the main file holds
    uncommitted entries, so the copy must roll them back)."""
    leader, write = _leader(make)
    fill(write, 30)
    if checkpoint == "below_commit":
        leader._checkpoint()
    fill(write, 10, 30)
    committed = write("UPDATE t SET v = 'committed' WHERE id = 1")
    leader.note_committed(committed)
    write("DELETE FROM t WHERE id % 3 = 0")
    fill(write, 20, 40)
    if checkpoint == "above_commit":
        leader._checkpoint()
        assert leader.wal_path.stat().st_size == 0
    write("CREATE TABLE later(x)", "INSERT INTO later VALUES (1)")
    applied = leader.applied_index()

    info = leader.create_snapshot(tmp_path / "s", committed)
    assert (info.index, info.term) == (committed, 1)
    assert info.size == info.path.stat().st_size and info.sha256 == file_sha256(info.path)
    at_commit, at_applied = make("at_commit"), make("at_applied")
    ship(leader, at_commit, committed)
    ship(leader, at_applied)
    snapshot = info.path.read_bytes()
    assert snapshot == data_bytes(at_commit)
    assert snapshot != data_bytes(at_applied)  # the copy really was rolled back
    assert integrity(info.path) == "ok"
    assert leader.applied_index() == applied  # the store itself is untouched
    assert rows(leader, "SELECT count(*) FROM later") == [[1]]

    fresh = make("fresh")
    assert fresh.install_snapshot(info.path, info.index, info.term, committed_index=0) == 0
    assert data_bytes(fresh) == snapshot
    assert (fresh.applied_index(), fresh.first_index(), fresh.last_index()) == (
        committed,
        committed + 1,
        committed,
    )
    assert fresh.term(committed) == 1 and fresh.log_stats() == (0, 0)
    assert rows(fresh, "SELECT v FROM t WHERE id = 1") == [["committed"]]
    # Replication continues on top of it; everyone stays byte-identical.
    write("INSERT INTO later VALUES (2)")
    ship(leader, fresh)
    ship(leader, at_commit)
    ship(leader, at_applied)
    assert data_bytes(fresh) == data_bytes(at_commit) == data_bytes(at_applied)
    leader.close()
    assert leader.data_path.read_bytes() == data_bytes(fresh)


def test_without_a_commit_index_or_above_applied_the_snapshot_is_at_applied(
    make: Callable[..., PhysicalStore], tmp_path: Path
) -> None:
    leader, write = _leader(make)
    fill(write, 12)
    follower = make("follower")
    ship(leader, follower)
    for committed in (None, leader.applied_index() + 5):
        info = leader.create_snapshot(tmp_path / "s", committed)
        assert info.index == leader.applied_index()
        assert info.path.read_bytes() == data_bytes(follower)


def test_the_point_moves_up_to_what_has_committed_since(
    make: Callable[..., PhysicalStore], tmp_path: Path
) -> None:
    """The caller's commit index may be stale by the time the thread runs: the undo
    data of what committed since is gone, so the copy stops there instead."""
    leader, write = _leader(make)
    fill(write, 10)
    stale = leader.last_index()
    fill(write, 5, 10)
    now_committed = leader.last_index()
    leader.note_committed(now_committed)
    fill(write, 5, 15)
    info = leader.create_snapshot(tmp_path / "s", stale)
    assert info.index == now_committed
    follower = make("follower")
    ship(leader, follower, now_committed)
    assert info.path.read_bytes() == data_bytes(follower)


def test_a_snapshot_in_a_thread_while_the_leader_writes_and_checkpoints(
    make: Callable[..., PhysicalStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy holds the file lock for a while (slowed down here); the leader keeps
    writing meanwhile, its checkpoints wait, and the copy is still the exact file."""
    monkeypatch.setattr(physical_store, "CHECKPOINT_FRAMES", 20)
    leader, write = _leader(make)
    fill(write, 100)
    committed = leader.last_index()
    leader.note_committed(committed)
    fill(write, 3, 100)
    real_copy = physical_snapshot._copy_file
    copying = threading.Event()

    def slow_copy(src: int, dst: int, size: int) -> None:
        copying.set()
        time.sleep(0.3)
        real_copy(src, dst, size)

    monkeypatch.setattr(physical_snapshot, "_copy_file", slow_copy)
    result: list[SnapshotInfo] = []
    worker = threading.Thread(
        target=lambda: result.append(leader.create_snapshot(tmp_path / "s", committed))
    )
    worker.start()
    assert copying.wait(5)
    written = most_frames = 0
    while worker.is_alive():
        fill(write, 1, 200 + written)
        written += 1
        assert leader._tail is not None
        most_frames = max(most_frames, leader._tail.frames)
    worker.join()
    assert written >= 5, "the leader must keep writing while the copy runs"
    assert most_frames > 40  # its checkpoints (every 20 frames here) waited for the copy
    (info,) = result
    assert info.index == committed
    follower = make("follower")
    ship(leader, follower, committed)
    assert info.path.read_bytes() == data_bytes(follower)
    fill(write, 1, 999)  # the next write checkpoints again
    assert leader._tail is not None and leader._tail.frames < 20
    # Only the newest two snapshots stay, and no temporary file.
    for _ in range(3):
        leader.create_snapshot(tmp_path / "s")
    assert len(list((tmp_path / "s").glob("*.snapshot"))) == 2
    assert len(list((tmp_path / "s").glob("*.json"))) == 2
    assert not list((tmp_path / "s").glob(".*"))


# ---- installing one ----------------------------------------------------------------


def _ex_leader(
    make: Callable[..., PhysicalStore], tmp_path: Path
) -> tuple[PhysicalStore, PhysicalStore, int, SnapshotInfo]:
    """``old`` shared the first entries with ``new``, had one write of its own rolled
    back (discarded), then applied two more that never replicated; ``new`` led on in
    term 2 and made a snapshot."""
    old, write_old = _leader(make, "old")
    fill(write_old, 20)
    new = make("new")
    ship(old, new)
    shared = old.last_index()
    write_old("INSERT INTO t(v) VALUES ('rolled back')")
    old.persist(None, shared + 1, [])
    assert old.discarded_count() == 1
    write_old("INSERT INTO t(v) VALUES ('never replicated 1')")
    write_old("UPDATE t SET v = 'never replicated 2' WHERE id = 3")
    old.persist(HardState(7, "c"), None, [])
    write_new = Writer(new, term=2)
    fill(write_new, 15, 100)
    write_new("DELETE FROM t WHERE id % 4 = 1")
    info = new.create_snapshot(tmp_path / "s")
    new.compact(info.index)
    return old, new, shared, info


def test_install_on_an_ex_leader_keeps_its_state_and_describes_its_writes(
    make: Callable[..., PhysicalStore], tmp_path: Path
) -> None:
    old, new, shared, info = _ex_leader(make, tmp_path)
    assert old.install_snapshot(info.path, info.index, info.term, committed_index=shared) == 2
    assert old.hard_state() == HardState(7, "c")
    assert (old.applied_index(), old.first_index(), old.last_index()) == (
        info.index,
        info.index + 1,
        info.index,
    )
    assert old.term(info.index) == 2 and old.log_stats() == (0, 0)
    assert rows(old, "SELECT count(*) FROM replidb_undo") == [[0]]
    discarded = rows(old, "SELECT idx, term, changes, reason FROM replidb_discarded ORDER BY id")
    assert [d[:2] for d in discarded] == [[shared + 1, 1], [shared + 1, 1], [shared + 2, 1]]
    assert "rolled back" in str(discarded[0][2])
    assert "never replicated 1" in str(discarded[1][2])
    assert {"table": "t", "op": "UPDATE", "key": {"id": 3}} in [
        {k: c[k] for k in ("table", "op", "key")} for c in json.loads(str(discarded[2][2]))
    ]
    assert {d[3] for d in discarded[1:]} == {"replaced by a snapshot from the leader"}
    assert info.path.exists()  # copied, not consumed
    assert not list(old.directory.glob("*.installing"))
    follower = make("follower")
    follower.install_snapshot(info.path, info.index, info.term, 0)
    assert data_bytes(old) == data_bytes(follower) == info.path.read_bytes()
    assert integrity(old.data_path) == "ok"

    # It follows the new leader from there, and stays so across a reopen.
    write_new = Writer(new, term=2)
    fill(write_new, 5, 200)
    ship(new, old)
    ship(new, follower)
    assert data_bytes(old) == data_bytes(follower)
    old.close()
    old = make("old")
    assert old.hard_state() == HardState(7, "c") and old.discarded_count() == 3
    assert old.first_index() == info.index + 1 and old.term(info.index) == 2
    write_new("INSERT INTO t(v) VALUES ('after reopen')")
    ship(new, old)
    ship(new, follower)
    assert data_bytes(old) == data_bytes(follower)
    new.close()
    assert new.data_path.read_bytes() == data_bytes(old)


def test_install_describes_nothing_that_committed(
    make: Callable[..., PhysicalStore], tmp_path: Path
) -> None:
    leader, write = _leader(make)
    fill(write, 8)
    follower = make("follower")
    ship(leader, follower)  # applied, hence committed, though it does not know it
    fill(write, 4, 8)
    info = leader.create_snapshot(tmp_path / "s")
    assert follower.install_snapshot(info.path, info.index, info.term, committed_index=0) == 0
    assert follower.discarded_count() == 0
    with pytest.raises(ValueError, match="older than the committed state"):
        follower.install_snapshot(info.path, info.index - 1, info.term, info.index)


def test_an_older_snapshot_keeps_the_writes_it_rolls_back(
    make: Callable[..., PhysicalStore], tmp_path: Path
) -> None:
    """A snapshot below what a node applied (a restored backup, a commit index the
    node has not relearned yet): committed writes above it are described too, by
    their pages, never dropped silently."""
    leader, write = _leader(make)
    fill(write, 6)
    info = leader.create_snapshot(tmp_path / "s")
    fill(write, 3, 6)
    follower = make("follower")
    ship(leader, follower)
    assert follower.install_snapshot(info.path, info.index, info.term, committed_index=0) == 3
    discarded = rows(follower, "SELECT idx, changes, record FROM replidb_discarded ORDER BY id")
    assert [d[0] for d in discarded] == [info.index + 1, info.index + 2, info.index + 3]
    entries = leader.entries(info.index + 1, info.index + 3, 1 << 40)
    assert [d[2] for d in discarded] == [e.data for e in entries]
    pages = json.loads(str(discarded[0][1]))[0]["pages"]
    assert pages and all(isinstance(p, int) for p in pages)
    assert data_bytes(follower) == info.path.read_bytes()


def test_a_snapshot_with_another_page_size_is_refused(
    make: Callable[..., PhysicalStore], tmp_path: Path
) -> None:
    leader, write = _leader(make)
    fill(write, 3)
    info = leader.create_snapshot(tmp_path / "s")
    other = make("other", page_size=8192)
    before = data_bytes(other)
    with pytest.raises(ProtocolError) as refused:
        other.install_snapshot(info.path, info.index, info.term, 0)
    message = str(refused.value)
    assert "\n" not in message and "4096" in message and "8192" in message, message
    assert data_bytes(other) == before and other.applied_index() == 0
    assert not other._meta("installing")
    assert not list(other.directory.glob("*.installing"))


@pytest.mark.parametrize(
    ("offset", "value", "words"),
    [
        (96, (3_000_000).to_bytes(4, "big"), ["SQLite 3.0.0", "same SQLite version"]),
        (18, b"\x01\x01", ["file format 0x0101"]),
        (0, b"Not SQLite", ["not an SQLite database"]),
        (-1, b"", ["pages"]),
    ],
)
def test_a_foreign_snapshot_file_is_refused(
    make: Callable[..., PhysicalStore],
    tmp_path: Path,
    offset: int,
    value: bytes,
    words: list[str],
) -> None:
    leader, write = _leader(make)
    fill(write, 3)
    info = leader.create_snapshot(tmp_path / "s")
    bad = tmp_path / "bad.snapshot"
    data = bytearray(info.path.read_bytes())
    if offset < 0:
        del data[-100:]  # truncated
    else:
        data[offset : offset + len(value)] = value
    bad.write_bytes(bytes(data))
    follower = make("follower")
    with pytest.raises(ProtocolError) as refused:
        follower.install_snapshot(bad, info.index, info.term, 0)
    assert "\n" not in str(refused.value)
    for word in words:
        assert word in str(refused.value)
    assert follower.applied_index() == 0


# ---- crashes during an install -----------------------------------------------------

_CHILD = """
import os, signal, sys
from pathlib import Path
from replidb.storage import physical_snapshot as ps
from replidb.storage.physical_store import PhysicalStore

directory, snapshot, index, term, committed, step = sys.argv[1:]
real_record = ps._record

def die(*_args):
    os.kill(os.getpid(), signal.SIGKILL)

def record_then_die(*args):
    real_record(*args)
    die()

if step == "prepared":
    ps._mark = die
elif step == "marked":
    ps._swap = die
elif step == "wal-removed":
    os.replace = die
elif step == "renamed":
    ps._record = die
elif step == "recorded":
    ps._record = record_then_die
store = PhysicalStore(Path(directory))
store.install_snapshot(Path(snapshot), int(index), int(term), int(committed))
print("not killed")
"""


@pytest.mark.parametrize("step", ["prepared", "marked", "wal-removed", "renamed", "recorded"])
def test_a_kill_during_an_install_is_undone_or_finished_on_open(
    make: Callable[..., PhysicalStore],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    step: str,
) -> None:
    """SIGKILL after each step of an install: before the marker, the next open has
    the old state; from it on, the new one, with the writes it lost described once."""
    old, new, shared, info = _ex_leader(make, tmp_path)
    before = rows(old, "SELECT * FROM t ORDER BY id")
    crash(old)  # with logged frames in its WAL, which must not reach the new file
    assert old.wal_path.stat().st_size > 0
    args = [str(old.directory), str(info.path), str(info.index), str(info.term), str(shared)]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args, step],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    with caplog.at_level(logging.WARNING, logger="replidb.storage"):
        store = make("old")
    assert not list(store.directory.glob("*.installing"))
    assert not store._meta("installing")
    if step == "prepared":
        assert store.applied_index() == shared + 2
        assert rows(store, "SELECT * FROM t ORDER BY id") == before
        assert store.discarded_count() == 1
        return
    assert ("finished an interrupted snapshot install" in caplog.text) == (step != "recorded")
    assert (store.applied_index(), store.first_index()) == (info.index, info.index + 1)
    assert store.discarded_count() == 3  # described once, in the marker's transaction
    assert store.hard_state() == HardState(7, "c")
    assert data_bytes(store) == info.path.read_bytes()
    assert integrity(store.data_path) == "ok"
    write_new = Writer(new, term=2)
    write_new("INSERT INTO t(v) VALUES ('after the crash')")
    ship(new, store)
    new.close()
    assert new.data_path.read_bytes() == data_bytes(store)


def test_a_failure_before_the_marker_leaves_the_store_as_it_was(
    make: Callable[..., PhysicalStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, _new, shared, info = _ex_leader(make, tmp_path)
    before = rows(old, "SELECT * FROM t ORDER BY id")

    def full_disk(*_args: object) -> None:
        raise InternalError("storage failure: database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(physical_snapshot, "_mark", full_disk)
        with pytest.raises(InternalError, match="disk is full"):
            old.install_snapshot(info.path, info.index, info.term, shared)
    assert not list(old.directory.glob("*.installing"))
    assert old.applied_index() == shared + 2
    assert rows(old, "SELECT * FROM t ORDER BY id") == before
    Writer(old)("INSERT INTO t(v) VALUES ('still works')")


def test_an_interruption_just_after_the_marker_still_finishes_on_open(
    make: Callable[..., PhysicalStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the marker is committed the prepared file is the install: an exception
    there must not remove it, or the next open would take the old file for the new."""
    old, _new, shared, info = _ex_leader(make, tmp_path)
    real_mark = physical_snapshot._mark

    def mark_then_interrupt(*args: Any) -> None:
        real_mark(*args)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(physical_snapshot, "_mark", mark_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            old.install_snapshot(info.path, info.index, info.term, shared)
    assert list(old.directory.glob("*.installing"))
    crash(old)
    store = make("old")
    assert store.applied_index() == info.index
    assert data_bytes(store) == info.path.read_bytes()


def test_a_marker_without_its_prepared_file_is_refused_on_open(
    make: Callable[..., PhysicalStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, _new, shared, info = _ex_leader(make, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(physical_snapshot, "finish_install", lambda store: None)
        old.install_snapshot(info.path, info.index, info.term, shared)
    crash(old)
    (old.directory / "data.db.installing").unlink()
    with pytest.raises(InternalError, match="needs a resync"):
        PhysicalStore(old.directory)


# ---- compaction --------------------------------------------------------------------


def test_compaction_keeps_positions_and_refuses_truncating_below_it(
    make: Callable[..., PhysicalStore], tmp_path: Path
) -> None:
    leader, write = _leader(make)
    fill(write, 10)
    committed = leader.last_index()
    leader.note_committed(committed)
    fill(write, 3, 10)  # applied, not committed
    assert leader.compact(committed) == committed
    assert (leader.first_index(), leader.term(committed), leader.term(committed - 1)) == (
        committed + 1,
        1,
        0,
    )
    for at in (committed, committed - 3):
        with pytest.raises(InternalError, match="compacted"):
            leader.persist(HardState(2, None), at, [])
    assert leader.applied_index() == committed + 3  # nothing was rolled back
    # A stale commit index below the compaction point: the snapshot starts there.
    info = leader.create_snapshot(tmp_path / "s", committed - 4)
    assert info.index == committed
    # Truncating above it still rolls back (the undo data is kept).
    leader.persist(HardState(2, None), committed + 1, [])
    assert leader.applied_index() == leader.last_index() == committed
    assert leader.discarded_count() == 3
    follower = make("follower")
    follower.install_snapshot(info.path, info.index, info.term, 0)
    leader.close()
    assert leader.data_path.read_bytes() == data_bytes(follower)


def test_a_fully_compacted_log_continues_and_survives_a_reopen(
    make: Callable[..., PhysicalStore],
) -> None:
    leader, write = _leader(make)
    fill(write, 5)
    follower = make("follower")
    ship(leader, follower)
    last = follower.last_index()
    assert follower.compact(last) == last
    assert follower.log_stats() == (0, 0)
    assert (follower.last_index(), follower.term(last), follower.first_index()) == (
        last,
        1,
        last + 1,
    )
    follower.close()
    follower = make("follower")
    assert (follower.last_index(), follower.term(last), follower.applied_index()) == (
        last,
        1,
        last,
    )
    fill(write, 3, 5)
    ship(leader, follower)
    noop = Entry(2, follower.last_index() + 1, EntryKind.NOOP, b"")
    follower.persist(HardState(2, None), None, [noop])
    follower.apply([noop])
    assert (follower.last_index(), follower.term(noop.index)) == (noop.index, 2)
    leader.close()
    assert leader.data_path.read_bytes() == data_bytes(follower)
