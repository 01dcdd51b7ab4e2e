"""The wal-stream store on real files, in-process: followers end byte-identical to the
leader, rollback restores the exact bytes, the version lock refuses, crashes between
the two commits and mid-apply are repaired on open."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest
from tests.physical_support import crash, integrity

from replidb.core.messages import Entry, EntryKind, HardState
from replidb.errors import BadRequest, InternalError, ProtocolError
from replidb.storage import NeedsWrite, page_io
from replidb.storage.physical_store import PhysicalStore
from replidb.stream.physical import (
    PageRecord,
    WalHeader,
    decode_page_record,
    encode_page_record,
    parse_wal_frames,
    parse_wal_header,
    wal_checksum,
)
from replidb.transport.wire import Statement as S

# ---- helpers -----------------------------------------------------------------------


class Writer:
    """Drives a leader store: each call is one client transaction at the next index."""

    def __init__(self, store: PhysicalStore, term: int = 1) -> None:
        self.store, self.term = store, term

    def __call__(self, *sql: str | S, client_id: str = "", seq: int = 0) -> bytes:
        statements = [s if isinstance(s, S) else S(s) for s in sql]
        index = self.store.last_index() + 1
        outcome = self.store.execute_write(statements, self.term, index, client_id, seq)
        assert outcome.data is not None, f"write {index} changed nothing"
        return outcome.data


def ship(leader: PhysicalStore, follower: PhysicalStore, upto: int | None = None) -> None:
    """What replication does: persist the leader's new entries, then apply them."""
    hi = leader.last_index() if upto is None else upto
    entries = leader.entries(follower.last_index() + 1, hi, 1 << 40)
    follower.persist(None, None, entries)
    follower.apply(entries)


def rows(store: PhysicalStore, sql: str) -> list[list[object]]:
    return store.execute_read([S(sql)])[0].rows


def data_bytes(store: PhysicalStore) -> bytes:
    """The data file of a closed store."""
    return (store.directory / "data.db").read_bytes()


# ---- byte identity -----------------------------------------------------------------


def test_fresh_stores_are_byte_identical(make: Callable[..., PhysicalStore]) -> None:
    a, b = make("a"), make("b")
    a.close()
    b.close()
    assert data_bytes(a) == data_bytes(b)
    assert integrity(a.data_path) == "ok"


def test_followers_end_byte_identical_to_the_leader(
    make: Callable[..., PhysicalStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, f1, f2 = make("leader"), make("f1"), make("f2")
    checkpoints = 0
    real_checkpoint = PhysicalStore._checkpoint

    def counting(self: PhysicalStore) -> None:
        nonlocal checkpoints
        checkpoints += 1
        real_checkpoint(self)

    monkeypatch.setattr(PhysicalStore, "_checkpoint", counting)
    write = Writer(leader)
    write(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, v TEXT)",
        "CREATE INDEX t_n ON t(n)",
        "CREATE TABLE audit(id INTEGER PRIMARY KEY, tid INTEGER, what TEXT)",
        "CREATE TRIGGER t_audit AFTER UPDATE ON t BEGIN "
        "INSERT INTO audit(tid, what) VALUES (new.id, 'update'); END",
    )
    write(S("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)"))
    write(S("INSERT INTO blobs(b) VALUES (?)", [os.urandom(300_000)]))  # overflow pages
    ship(leader, f1)
    reader_before = rows(f1, "SELECT count(*) FROM t")  # opens the reader before applies
    assert reader_before == [[0]]
    for i in range(150):
        write(
            S(
                "INSERT INTO t(n, v) VALUES " + ", ".join(["(?, ?)"] * 12),
                [x for k in range(12) for x in (i * 12 + k, f"row {i}-{k} " + "x" * 150)],
            )
        )
        if i % 3 == 0:
            write(S("UPDATE t SET v = v || '!' WHERE n % 7 = ?", [i % 7]))
        if i % 5 == 0:
            write(S("DELETE FROM t WHERE n % 11 = ?", [i % 11]))
        if i == 60:
            write("CREATE TABLE scratch(a, b)", "INSERT INTO scratch VALUES (1, 2)")
            write("DROP TABLE scratch")
            write("DELETE FROM blobs")
        ship(leader, f1)  # one entry at a time
        if i % 40 == 0:
            ship(leader, f2)  # in batches
    ship(leader, f2)
    shipped = leader.entries(1, leader.last_index(), 1 << 40)
    assert sum(len(decode_page_record(e.data).pages) for e in shipped) > 1500
    assert checkpoints >= 1, "the workload must cross a WAL checkpoint"
    expected = rows(leader, "SELECT count(*), sum(n), group_concat(v) FROM t")
    # The reader opened before those applies sees them (the store reopens it).
    assert rows(f1, "SELECT count(*), sum(n), group_concat(v) FROM t") == expected
    assert rows(f2, "SELECT count(*) FROM audit") == rows(leader, "SELECT count(*) FROM audit")
    assert f1.applied_index() == f2.applied_index() == leader.last_index()
    for store in (leader, f1, f2):
        store.close()
    assert data_bytes(f1) == data_bytes(leader)
    assert data_bytes(f2) == data_bytes(leader)
    assert integrity(f1.data_path) == "ok"


def test_noop_entries_only_advance_the_applied_index(make: Callable[..., PhysicalStore]) -> None:
    follower = make("f")
    before = follower.data_path.read_bytes()
    follower.persist(HardState(1, None), None, [Entry(1, 1, EntryKind.NOOP)])
    follower.apply([Entry(1, 1, EntryKind.NOOP)])
    assert follower.applied_index() == 1
    assert follower.data_path.read_bytes() == before


def test_reads_refuse_writes_and_see_the_node_tables(make: Callable[..., PhysicalStore]) -> None:
    store = make("a")
    Writer(store)("CREATE TABLE t(x)")
    with pytest.raises(NeedsWrite):
        store.execute_read([S("INSERT INTO t VALUES (1)")])
    assert rows(store, "SELECT count(*) FROM replidb_discarded") == [[0]]
    assert rows(store, "SELECT count(*) FROM replidb_log") == [[1]]


# ---- exactly-once and ids ------------------------------------------------------------


def test_a_retried_write_is_recognised(make: Callable[..., PhysicalStore]) -> None:
    store, other = make("a"), make("b")
    write = Writer(store)
    write("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    first = store.execute_write([S("INSERT INTO t(v) VALUES ('a')")], 1, 2, "client", 7)
    assert first.data is not None and not first.duplicate
    again = store.execute_write([S("INSERT INTO t(v) VALUES ('a')")], 1, 3, "client", 7)
    assert again.duplicate and again.index == 2 and again.data is None
    assert again.results[0].lastrowid == first.results[0].lastrowid
    assert rows(store, "SELECT count(*) FROM t") == [[1]]
    with pytest.raises(BadRequest, match="older than its last"):
        store.execute_write([S("INSERT INTO t(v) VALUES ('b')")], 1, 3, "client", 6)
    # The session travels in the pages: a new leader recognises the retry too.
    ship(store, other)
    elsewhere = other.execute_write([S("INSERT INTO t(v) VALUES ('a')")], 2, 3, "client", 7)
    assert elsewhere.duplicate and elsewhere.index == 2


def test_a_new_leaders_id_floors_travel_in_its_next_write(
    make: Callable[..., PhysicalStore],
) -> None:
    a, b = make("a"), make("b")
    Writer(a)("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO t(v) VALUES ('a')")
    ship(a, b)
    assert b.raise_rowid_floors() == 1
    outcome = b.execute_write([S("INSERT INTO t(v) VALUES ('b')")], 2, 2)
    assert outcome.results[0].lastrowid is not None and outcome.results[0].lastrowid > 1000
    ship(b, a)
    a.close()
    b.close()
    assert data_bytes(a) == data_bytes(b)


# ---- the version lock --------------------------------------------------------------


def test_a_follower_with_another_page_size_refuses(make: Callable[..., PhysicalStore]) -> None:
    leader, follower = make("leader"), make("follower", page_size=8192)
    Writer(leader)("CREATE TABLE t(x)")
    with pytest.raises(ProtocolError) as caught:
        follower.persist(None, None, leader.entries(1, 1, 1 << 30))
    message = str(caught.value)
    assert "\n" not in message
    assert "4096 bytes" in message and "uses 8192" in message and "--stream logical" in message
    assert follower.last_index() == 0  # nothing acknowledged


def test_a_follower_with_another_sqlite_version_refuses(
    make: Callable[..., PhysicalStore],
) -> None:
    leader, follower = make("leader"), make("follower")
    Writer(leader)("CREATE TABLE t(x)")
    entry = leader.entries(1, 1, 1 << 30)[0]
    record = decode_page_record(entry.data)
    forged = PageRecord("3.0.0", record.page_size, record.file_format, record.db_pages, [])
    with pytest.raises(ProtocolError, match=r"runs SQLite 3\.0\.0 but this node runs"):
        follower.persist(None, None, [Entry(1, 1, EntryKind.WRITE, encode_page_record(forged))])
    with pytest.raises(ProtocolError, match="entry 1: not a wal page record"):
        follower.persist(None, None, [Entry(1, 1, EntryKind.WRITE, b"\x93junk")])


# ---- rollback ----------------------------------------------------------------------


def _first_three(a: PhysicalStore, b: PhysicalStore) -> Writer:
    write = Writer(a)
    write("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(40):  # enough pages that undo reads both the WAL and the main file
        write(S("INSERT INTO t(v) VALUES (?)", [f"{i}" * 300]))
    write("UPDATE t SET v = 'first' WHERE id = 1")
    ship(a, b)
    return write


@pytest.mark.parametrize("checkpoint_between", [False, True])
def test_rollback_restores_the_exact_bytes(
    make: Callable[..., PhysicalStore], checkpoint_between: bool
) -> None:
    a, b = make("a"), make("b")
    write = _first_three(a, b)
    base = a.last_index()
    write("UPDATE t SET v = 'changed' WHERE id = 1", "DELETE FROM t WHERE id = 2")
    if checkpoint_between:
        a._checkpoint()  # the next before-images come from the main file
    write(
        S("INSERT INTO t(v) VALUES (?)", ["x" * 5000]),
        "CREATE TABLE extra(k TEXT PRIMARY KEY)",
        "INSERT INTO extra VALUES ('e')",
    )
    a.persist(HardState(2, None), base + 1, [])
    assert a.applied_index() == a.last_index() == base
    assert rows(a, "SELECT v FROM t WHERE id IN (1, 2) ORDER BY id") == [["first"], ["1" * 300]]
    discarded = rows(a, "SELECT idx, reason, changes FROM replidb_discarded ORDER BY idx")
    assert [r[0] for r in discarded] == [base + 1, base + 2]
    assert all(r[1] == "not in the new leader's log" for r in discarded)
    first_changes = json.loads(str(discarded[0][2]))
    assert {"table": "t", "op": "DELETE", "key": {"id": 2}} in [
        {k: c[k] for k in ("table", "op", "key")} for c in first_changes if "table" in c
    ]
    assert {"ddl": "CREATE TABLE extra(k TEXT PRIMARY KEY)"} in json.loads(str(discarded[1][2]))
    a.close()
    b.close()
    assert data_bytes(a) == data_bytes(b)
    assert integrity(a.data_path) == "ok"


def test_a_rolled_back_leader_follows_the_new_one(make: Callable[..., PhysicalStore]) -> None:
    a, b = make("a"), make("b")
    write = _first_three(a, b)
    base = a.last_index()
    write("DELETE FROM t WHERE id > 20")
    crash(a)  # restart with logged frames in the WAL: undo must find them again
    a = make("a")
    Writer(a)("INSERT INTO t(v) VALUES ('after restart')")
    Writer(b, term=2)("INSERT INTO t(v) VALUES ('new leader')")
    entries = b.entries(base + 1, b.last_index(), 1 << 30)
    a.persist(HardState(2, "b"), base + 1, entries)
    a.apply(entries)
    assert a.discarded_count() == 2
    assert rows(a, "SELECT v FROM t ORDER BY id DESC LIMIT 1") == [["new leader"]]
    a.close()
    b.close()
    assert data_bytes(a) == data_bytes(b)


def test_rollback_without_undo_data_needs_a_resync(make: Callable[..., PhysicalStore]) -> None:
    a, b = make("a"), make("b")
    write = _first_three(a, b)
    write("DELETE FROM t")
    a.note_committed(a.last_index())
    assert rows(a, "SELECT count(*) FROM replidb_undo") == [[0]]
    with pytest.raises(InternalError, match="needs a resync"):
        a.persist(None, a.last_index(), [])


# ---- crashes -----------------------------------------------------------------------


def test_a_failure_between_data_commit_and_log_write_is_undone(
    make: Callable[..., PhysicalStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = make("a"), make("b")
    write = _first_three(a, b)
    last = a.last_index()

    def fail(*_args: object) -> None:
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr(PhysicalStore, "_append_log", fail)
        with pytest.raises(InternalError, match="could not log write"):
            write("INSERT INTO t(v) VALUES ('lost')")
    assert a.last_index() == a.applied_index() == last
    assert rows(a, "SELECT count(*) FROM t WHERE v = 'lost'") == [[0]]
    assert os.path.getsize(a.wal_path) == a._logged_position().offset
    write("INSERT INTO t(v) VALUES ('kept')")  # the same index, now logged
    ship(a, b)
    a.close()
    b.close()
    assert data_bytes(a) == data_bytes(b)


def test_an_unlogged_commit_is_dropped_on_open(
    make: Callable[..., PhysicalStore], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = make("a"), make("b")
    _first_three(a, b)
    last = a.last_index()
    crash(a)
    # What a kill between the two commits leaves: a commit in the WAL, not in the log.
    raw = apsw.Connection(str(a.data_path))
    raw.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    raw.execute("INSERT INTO t(v) VALUES ('never logged')")
    raw.close()
    with caplog.at_level(logging.WARNING, logger="replidb.storage"):
        a = make("a")
    assert re.search(r"dropped [1-9][0-9]* WAL frame\(s\)", caplog.text)
    assert a.applied_index() == a.last_index() == last
    assert rows(a, "SELECT count(*) FROM t WHERE v = 'never logged'") == [[0]]
    a.close()
    b.close()
    assert data_bytes(a) == data_bytes(b)


def test_an_interrupted_apply_is_finished_on_open(
    make: Callable[..., PhysicalStore],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    leader, follower = make("leader"), make("follower")
    _first_three(leader, make("scratch"))
    entries = leader.entries(1, leader.last_index(), 1 << 40)
    follower.persist(None, None, entries)
    written = 0

    def dying_pwrite(fd: int, data: bytes, offset: int) -> None:
        nonlocal written
        if written == 3:
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after it runs
        written += 1
        os.pwrite(fd, data, offset)

    with monkeypatch.context() as patch:
        patch.setattr(page_io, "_pwrite_all", dying_pwrite)
        with pytest.raises(KeyboardInterrupt):
            follower.apply(entries)
    crash(follower)
    with caplog.at_level(logging.WARNING, logger="replidb.storage"):
        follower = make("follower")
    assert f"re-applying entries 1..{len(entries)}" in caplog.text
    assert follower.applied_index() == len(entries)
    leader.close()
    follower.close()
    assert data_bytes(follower) == data_bytes(leader)


def test_an_interrupted_rollback_is_finished_on_open(
    make: Callable[..., PhysicalStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = make("a"), make("b")
    write = _first_three(a, b)
    base = a.last_index()
    write("UPDATE t SET v = 'gone'")
    write("DELETE FROM t WHERE id > 5")

    def dying_pwrite(fd: int, data: bytes, offset: int) -> None:
        os.pwrite(fd, data, offset)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(page_io, "_pwrite_all", dying_pwrite)
        with pytest.raises(KeyboardInterrupt):
            a.persist(HardState(2, None), base + 1, [])
    crash(a)
    a = make("a")
    assert a.applied_index() == a.last_index() == base
    assert a.discarded_count() == 2
    a.close()
    b.close()
    assert data_bytes(a) == data_bytes(b)


# ---- the pure format ---------------------------------------------------------------


def test_page_records_round_trip_and_refuse_bad_data() -> None:
    record = PageRecord("3.54.1", 512, 0x0202, 2, [(1, b"a" * 512), (2, b"b" * 512)])
    assert decode_page_record(encode_page_record(record)) == record
    bad = {
        "not a wal page record": b"\xc1",
        "page size 1000": encode_page_record(PageRecord("v", 1000, 0, 1, [])),
        "page 3 outside": encode_page_record(PageRecord("v", 512, 0, 2, [(3, b"c" * 512)])),
        "is 3 bytes": encode_page_record(PageRecord("v", 512, 0, 2, [(1, b"abc")])),
        "page 1 twice": encode_page_record(
            PageRecord("v", 512, 0, 2, [(1, b"a" * 512), (1, b"a" * 512)])
        ),
        "version 2 is not supported": encode_page_record(PageRecord("v", 512, 0, 0, [], version=2)),
    }
    for problem, data in bad.items():
        with pytest.raises(ValueError, match=problem):
            decode_page_record(data)


def test_wal_parsing_stops_at_the_first_invalid_frame(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "x.db"))
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(x)")
    for i in range(3):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    conn.close()
    wal = (tmp_path / "x.db-wal").read_bytes()
    header = parse_wal_header(wal[:32])
    frames = parse_wal_frames(header, wal[32:])
    assert len(frames) == (len(wal) - 32) // (24 + header.page_size)
    commits = [f.offset for f in frames if f.is_commit]
    assert len(commits) == 4
    # Damage the third commit's frame: only the first two commits survive.
    damaged = bytearray(wal)
    damaged[commits[2] + 24 + 100] ^= 0xFF
    survivors = parse_wal_frames(header, bytes(damaged[32:]))
    assert survivors[-1].offset == commits[1]
    # A frame from another WAL generation (other salts) ends the log too.
    salted = bytearray(wal)
    salted[commits[1] + 8] ^= 0x01
    assert parse_wal_frames(header, bytes(salted[32:]))[-1].offset == commits[0]
    # Resuming mid-file with the previous frame's checksum gives the same frames.
    start = commits[1] + 24 + header.page_size
    tail = parse_wal_frames(header, wal[start:], start)
    assert tail == []  # the header's checksum does not continue the chain mid-file
    previous = next(f for f in frames if f.offset == commits[1])
    resumed = parse_wal_frames(header, wal[start:], start, previous.checksum)
    assert [f.offset for f in resumed] == [f.offset for f in frames if f.offset >= start]
    with pytest.raises(ValueError, match="checksum"):
        parse_wal_header(wal[:24] + bytes(8))


def test_big_endian_wal_checksums() -> None:
    """A WAL written on a big-endian machine (magic ...83) checksums big-endian words."""
    page = bytes(range(256)) * 2
    fields = (0x377F0683, 3007000, 512, 0, 11, 22)
    head = struct.pack(">6I", *fields)
    c = wal_checksum(head, True)
    header = parse_wal_header(head + struct.pack(">2I", *c))
    assert header == WalHeader(*fields, *c) and header.big_endian
    frame_head = struct.pack(">4I", 1, 1, 11, 22)
    s = wal_checksum(frame_head[:8], True, *c)
    s = wal_checksum(page, True, *s)
    frame = frame_head + struct.pack(">2I", *s) + page
    assert len(parse_wal_frames(header, frame)) == 1
    little = wal_checksum(page, False, *wal_checksum(frame_head[:8], False, *c))
    assert little != s
    wrong = frame_head + struct.pack(">2I", *little) + page
    assert parse_wal_frames(header, wrong) == []
