"""Log compaction, snapshots made from a live store and installed into another, and the
chunked, resumable transfer over a real loopback socket."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import apsw
import msgspec
import pytest

from replidb.core.messages import HardState
from replidb.errors import InternalError, Unavailable
from replidb.node.snapshots import SnapshotFetcher, SnapshotSource, answer
from replidb.storage import SQLiteStore, snapshot_files
from replidb.storage.snapshot_files import SnapshotInfo
from replidb.transport import wire
from replidb.transport.framing import read_message
from replidb.transport.wire import Statement as S

log = logging.getLogger("test.snapshots")
DATA_TABLES = ("t", "plain", "seq", "replidb_rowid_leases", "replidb_client_sessions")


class Leader:
    """A store written as a leader writes, at consecutive indexes."""

    def __init__(self, path: Path, stream: str = "logical", term: int = 1) -> None:
        self.store = SQLiteStore(path, stream=stream)
        self.term = term
        self.store.persist(HardState(term, "a"), None, [])

    def write(self, *statements: S, client: str = "") -> int:
        index = self.store.last_index() + 1
        seq = index if client else 0
        outcome = self.store.execute_write(list(statements), self.term, index, client, seq)
        assert outcome.data is not None
        return index

    def schema(self) -> None:
        self.write(
            S("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"),
            S("CREATE TABLE plain(v TEXT)"),  # keyed by rowid in changesets
            S("CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)"),
        )

    def fill(self, n: int, size: int = 10) -> None:
        for i in range(n):
            self.write(
                S("INSERT INTO t(v) VALUES (?)", [f"{i:04d}" + "x" * size]),
                S("INSERT INTO plain VALUES (?)", [f"p{i}"]),
                S("INSERT INTO seq(v) VALUES (?)", [f"s{i}"]),
                client="c1",
            )
            if i % 3 == 0:  # leave rowid gaps, which a plain VACUUM would renumber
                self.write(S("DELETE FROM plain WHERE rowid = (SELECT min(rowid) FROM plain)"))


def ship(source: SQLiteStore, follower: SQLiteStore, up_to: int | None = None) -> None:
    """What replication does: persist the source's entries, then apply them."""
    hi = source.last_index() if up_to is None else up_to
    entries = source.entries(follower.last_index() + 1, hi, 1 << 30)
    follower.persist(None, None, entries)
    follower.apply(entries)
    follower.note_committed(hi)


def rows(db: SQLiteStore | apsw.Connection) -> dict[str, list[tuple[object, ...]]]:
    conn = db.reader if isinstance(db, SQLiteStore) else db
    out = {
        t: conn.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall() for t in DATA_TABLES
    }
    out["sqlite_sequence"] = conn.execute("SELECT * FROM sqlite_sequence ORDER BY 1").fetchall()
    return out


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[..., SQLiteStore]]:
    opened: list[SQLiteStore] = []

    def make(name: str, stream: str = "logical") -> SQLiteStore:
        store = SQLiteStore(tmp_path / name, stream=stream)
        opened.append(store)
        return store

    yield make
    for store in opened:
        try:
            store.close()
        except apsw.Error:
            pass


# ---- compaction ------------------------------------------------------------------


def test_compaction_keeps_positions_and_accepts_new_entries(tmp_path: Path) -> None:
    leader = Leader(tmp_path / "a.db", term=3)
    leader.schema()
    leader.fill(9)  # 1 + 9 + 3 = 13 entries
    store = leader.store
    last = store.last_index()
    assert (store.first_index(), last, store.applied_index()) == (1, 13, 13)
    assert store.log_stats()[0] == 13

    with pytest.raises(ValueError, match="only 13 is applied"):
        store.compact(14)
    assert store.compact(10) == 10
    assert store.compact(10) == 0  # already done
    assert store.compact(4) == 0
    assert store.first_index() == 11
    assert (store.last_index(), store.applied_index()) == (13, 13)
    assert store.term(10) == 3  # the core's consistency check of the next append
    with pytest.raises(InternalError, match="compacted"):
        store.persist(None, 10, [])  # committed everywhere: never truncated
    assert store.term(9) == 0  # gone
    assert [e.index for e in store.entries(1, 13, 1 << 30)] == [11, 12, 13]
    entries, size = store.log_stats()
    assert entries == 3 and size == sum(len(e.data) for e in store.entries(11, 13, 1 << 30))

    # Compact everything: the log is empty, but its end is still known.
    assert store.compact(13) == 3
    assert store.log_stats() == (0, 0)
    assert (store.first_index(), store.last_index(), store.term(13)) == (14, 13, 3)
    assert leader.write(S("INSERT INTO t(v) VALUES ('after')")) == 14
    assert store.term(14) == 3

    store.close()
    store = SQLiteStore(tmp_path / "a.db")
    assert (store.first_index(), store.last_index(), store.applied_index()) == (14, 14, 14)
    assert store.term(13) == 3 and store.term(14) == 3
    assert store.execute_read([S("SELECT v FROM t WHERE id = 10")])[0].rows == [["after"]]
    store.close()


def test_follower_compacts_then_persists_and_applies(
    tmp_path: Path, stores: Callable[..., SQLiteStore]
) -> None:
    leader = Leader(tmp_path / "a.db")
    leader.schema()
    leader.fill(5)
    follower = stores("b.db")
    ship(leader.store, follower)
    assert follower.compact(follower.applied_index()) == leader.store.last_index()
    leader.fill(5)
    ship(leader.store, follower)
    assert rows(follower) == rows(leader.store)
    assert follower.first_index() == 9
    leader.store.close()


# ---- create ----------------------------------------------------------------------


def _check_snapshot_file(info: SnapshotInfo) -> apsw.Connection:
    assert info.path.exists() and info.path.stat().st_size == info.size
    assert hashlib.sha256(info.path.read_bytes()).hexdigest() == info.sha256
    conn = apsw.Connection(str(info.path))
    for table in ("replidb_log", "replidb_discarded", "replidb_undo"):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    meta = {k: v for k, v in conn.execute("SELECT key, value FROM replidb_meta")}
    assert meta == {
        "applied_index": info.index,
        "snapshot_index": info.index,
        "snapshot_term": info.term,
    }
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    return conn


def test_create_snapshot_is_the_state_at_its_index_while_writes_go_on(
    tmp_path: Path, stores: Callable[..., SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = Leader(tmp_path / "a.db", term=2)
    leader.schema()
    leader.fill(30)
    copied_at = leader.store.last_index()
    real_copy = snapshot_files.copy_database

    def copy_then_write(db_path: Path, dest: Path) -> None:
        real_copy(db_path, dest)
        leader.fill(4)  # after the copy: must not be in the snapshot

    monkeypatch.setattr(snapshot_files, "copy_database", copy_then_write)
    info = leader.store.create_snapshot(tmp_path / "snaps")
    monkeypatch.undo()
    assert (info.index, info.term) == (copied_at, 2)
    assert leader.store.last_index() > copied_at
    assert (
        info.path.parent == tmp_path / "snaps" and info.path.name == f"{info.snapshot_id}.snapshot"
    )

    at_index = stores("b.db")
    ship(leader.store, at_index, info.index)
    conn = _check_snapshot_file(info)
    assert rows(conn) == rows(at_index)
    assert rows(conn) != rows(leader.store)
    conn.close()
    leader.store.close()


def test_create_snapshot_in_a_thread_while_the_store_writes(
    tmp_path: Path, stores: Callable[..., SQLiteStore]
) -> None:
    leader = Leader(tmp_path / "a.db")
    leader.schema()
    leader.fill(200, size=20_000)  # ~4 MB, so the copy takes a moment
    result: list[SnapshotInfo] = []
    worker = threading.Thread(
        target=lambda: result.append(leader.store.create_snapshot(tmp_path / "s"))
    )
    worker.start()
    while worker.is_alive():
        leader.fill(1)
    worker.join()
    (info,) = result
    at_index = stores("b.db")
    ship(leader.store, at_index, info.index)
    conn = _check_snapshot_file(info)
    assert rows(conn) == rows(at_index)
    conn.close()
    # Only the newest two snapshots stay.
    for _ in range(3):
        leader.fill(1)
        leader.store.create_snapshot(tmp_path / "s")
    assert len(list((tmp_path / "s").glob("*.snapshot"))) == 2
    assert len(list((tmp_path / "s").glob("*.json"))) == 2
    assert not list((tmp_path / "s").glob("*.tmp"))
    leader.store.close()


@pytest.mark.parametrize("stream", ["logical", "statement"])
def test_create_snapshot_at_the_commit_index_rolls_back_the_rest_in_the_copy(
    tmp_path: Path, stores: Callable[..., SQLiteStore], stream: str
) -> None:
    leader = Leader(tmp_path / "a.db", stream)
    leader.schema()
    leader.fill(6)
    committed = leader.store.last_index()
    leader.store.note_committed(committed)
    leader.fill(3)  # applied by the leader, not yet committed
    applied = leader.write(S("CREATE TABLE later(x)"))
    info = leader.store.create_snapshot(tmp_path / "s", committed_index=committed)
    assert info.index == committed
    at_commit = stores("b.db", stream)
    ship(leader.store, at_commit, committed)
    conn = _check_snapshot_file(info)
    copied, expected = rows(conn), rows(at_commit)
    # AUTOINCREMENT counters are never lowered by a rollback (not here, not on the
    # leader itself): the copy keeps the leader's, which only matter to a leader.
    assert copied.pop("sqlite_sequence") == rows(leader.store)["sqlite_sequence"]
    expected.pop("sqlite_sequence")
    assert copied == expected
    assert conn.execute("SELECT name FROM sqlite_schema WHERE name='later'").fetchall() == []
    conn.close()
    # The store itself is untouched.
    assert leader.store.applied_index() == applied
    assert leader.store.execute_read([S("SELECT * FROM later")])[0].rows == []
    leader.store.close()


def test_a_partial_replica_makes_no_snapshot_and_installs_only_a_real_one(
    tmp_path: Path,
) -> None:
    """(What it installs: tests/test_partial_snapshots.py.)"""
    store = SQLiteStore(tmp_path / "p.db", subscription=["t"])
    with pytest.raises(InternalError, match="partial replica"):
        store.create_snapshot(tmp_path / "s")
    with pytest.raises(InternalError, match=r"x\.snapshot is missing"):
        store.install_snapshot(tmp_path / "x.snapshot", 1, 1, 0)
    other = SQLiteStore(tmp_path / "other.db")
    other.close()
    with pytest.raises(InternalError, match=r"other\.db holds position None/None"):
        store.install_snapshot(tmp_path / "other.db", 5, 1, 0)
    assert store.applied_index() == 0 and store.last_index() == 0  # nothing changed
    store.close()


# ---- install ---------------------------------------------------------------------


def _ex_leader(tmp_path: Path, leader: Leader, stream: str) -> tuple[SQLiteStore, int]:
    """A node that shared the first entries, then led alone in term 1: one write of its
    own was rolled back (discarded), another is applied but never replicated."""
    node = Leader(tmp_path / "b.db", stream, term=1)
    ship(leader.store, node.store)
    shared = node.store.last_index()
    node.write(S("INSERT INTO t(v) VALUES ('rolled back')"))
    node.store.persist(None, shared + 1, [])  # a new leader's log replaced it
    assert node.store.discarded_count() == 1
    node.write(
        S("INSERT INTO t(v) VALUES ('never replicated')"), S("INSERT INTO seq(v) VALUES ('z')")
    )
    node.store.persist(HardState(7, "c"), None, [])
    return node.store, shared


@pytest.mark.parametrize("stream", ["logical", "statement"])
def test_install_snapshot_keeps_the_nodes_own_state(tmp_path: Path, stream: str) -> None:
    leader = Leader(tmp_path / "a.db", stream, term=2)
    leader.schema()
    leader.fill(3)
    node, shared = _ex_leader(tmp_path, leader, stream)
    leader.fill(10)
    info = leader.store.create_snapshot(tmp_path / "s")
    leader.store.compact(info.index)

    assert node.install_snapshot(info.path, info.index, info.term, committed_index=shared) == 1
    assert rows(node) == rows(leader.store)
    assert node.hard_state() == HardState(7, "c")
    assert node.applied_index() == info.index
    assert (node.first_index(), node.last_index(), node.term(info.index)) == (
        info.index + 1,
        info.index,
        info.term,
    )
    assert node.log_stats() == (0, 0)
    discarded = node.reader.execute(
        "SELECT idx, term, changes, reason FROM replidb_discarded ORDER BY id"
    ).fetchall()
    assert [d[:2] for d in discarded] == [(shared + 1, 1), (shared + 1, 1)]
    assert "rolled back" in str(discarded[0][2])
    assert "never replicated" in str(discarded[1][2])
    assert discarded[1][3] == "replaced by a snapshot from the leader"
    assert info.path.exists()  # the fetched file is copied, not consumed
    assert not list(tmp_path.glob("b.db.*")) and not list(tmp_path.glob("b.db-*.replaced"))

    # Replication continues on top of the snapshot; both stores stay equal.
    leader.fill(5)
    ship(leader.store, node)
    assert rows(node) == rows(leader.store)
    node.close()
    node = SQLiteStore(tmp_path / "b.db", stream=stream)
    assert rows(node) == rows(leader.store)
    assert node.hard_state() == HardState(7, "c") and node.discarded_count() == 2
    assert node.first_index() == info.index + 1
    leader.fill(2)
    ship(leader.store, node)
    assert rows(node) == rows(leader.store)
    node.close()
    leader.store.close()


def test_install_describes_nothing_the_leader_also_has(
    tmp_path: Path, stores: Callable[..., SQLiteStore]
) -> None:
    leader = Leader(tmp_path / "a.db")
    leader.schema()
    leader.fill(4)
    follower = stores("b.db")
    ship(leader.store, follower)  # applied, and (unknown to it) committed
    info = leader.store.create_snapshot(tmp_path / "s")
    assert follower.install_snapshot(info.path, info.index, info.term, committed_index=0) == 0
    with pytest.raises(ValueError, match="older than the committed state"):
        follower.install_snapshot(info.path, info.index - 1, info.term, info.index)
    with pytest.raises(InternalError, match="not the announced"):
        follower.install_snapshot(info.path, info.index, info.term + 1, 0)
    assert rows(follower) == rows(leader.store)
    leader.store.close()


def test_install_refuses_while_another_connection_reads(
    tmp_path: Path, stores: Callable[..., SQLiteStore]
) -> None:
    leader = Leader(tmp_path / "a.db")
    leader.schema()
    leader.fill(2)
    info = leader.store.create_snapshot(tmp_path / "s")
    follower = stores("b.db")
    ship(leader.store, follower)
    other = apsw.Connection(str(tmp_path / "b.db"))
    other.execute("BEGIN")
    other.execute("SELECT count(*) FROM replidb_log").fetchall()
    follower.persist(HardState(3, None), None, [])  # a frame the reader pins in the WAL
    with pytest.raises(Unavailable, match="another connection"):
        follower.install_snapshot(info.path, info.index, info.term, 0)
    assert not (tmp_path / "b.db.installing").exists()
    other.execute("ROLLBACK")
    other.close()
    follower.install_snapshot(info.path, info.index, info.term, 0)
    assert rows(follower) == rows(leader.store)
    leader.store.close()


def test_open_removes_what_an_interrupted_install_left(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "b.db")
    store.close()
    for name in ("b.db.installing", "b.db-wal.replaced", "b.db-shm.replaced"):
        (tmp_path / name).write_bytes(b"junk")
    SQLiteStore(tmp_path / "b.db").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db"]


# ---- transfer --------------------------------------------------------------------


async def _serve(
    source: SnapshotSource,
    hook: Callable[[wire.SnapshotFetch, int], Awaitable[bool]] | None = None,
) -> tuple[asyncio.Server, str]:
    """A tiny node: decodes frames and hands snapshot fetches to the source. ``hook``
    (the fetch, how many this server answered) returning False closes the connection."""
    answered = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        try:
            while (message := await read_message(reader)) is not None:
                assert isinstance(message, wire.SnapshotFetch)
                if hook is not None and not await hook(message, answered):
                    break
                await answer(source, message, writer)
                answered += 1
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def big_leader(tmp_path: Path) -> Iterator[Leader]:
    leader = Leader(tmp_path / "a.db", term=4)
    leader.schema()
    leader.fill(60, size=4000)  # ~300 kB
    yield leader
    leader.store.close()


CHUNK = 16 * 1024


def test_transfer_over_loopback_then_install(
    tmp_path: Path,
    big_leader: Leader,
    stores: Callable[..., SQLiteStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    source = SnapshotSource(big_leader.store, tmp_path / "leader-snaps", log, chunk_size=CHUNK)
    fetcher = SnapshotFetcher("b", tmp_path / "b-snaps", log, chunk_timeout_s=5)

    async def run() -> SnapshotInfo:
        server, address = await _serve(source)
        async with server:
            assert fetcher.progress == ""
            return await fetcher.fetch(address)

    info = asyncio.run(run())
    made = source.current
    assert made is not None and info.sha256 == made.sha256 and info.size == made.size
    assert info.size > 8 * CHUNK  # many chunks
    assert info.path == tmp_path / "b-snaps" / f"{info.snapshot_id}.snapshot"
    assert info.path.read_bytes() == made.path.read_bytes()
    assert fetcher.bytes_received == info.size == source.bytes_sent
    assert (fetcher.resumed_from, fetcher.progress) == (0, "")
    assert not (tmp_path / "b-snaps" / "snapshot.partial").exists()
    assert not (tmp_path / "b-snaps" / "snapshot.partial.json").exists()
    text = caplog.text
    assert f"fetching snapshot {info.snapshot_id} at index {info.index} from 127.0.0.1:" in text
    assert "resuming at byte 0" in text and "MB/s" in text
    assert f"snapshot {info.snapshot_id}: " in text and "MB (1" in text  # ~10 % steps

    follower = stores("b.db")
    follower.install_snapshot(info.path, info.index, info.term, 0)
    assert rows(follower) == rows(big_leader.store)


def test_concurrent_fetches_share_one_snapshot(tmp_path: Path, big_leader: Leader) -> None:
    source = SnapshotSource(big_leader.store, tmp_path / "s", log, chunk_size=CHUNK)

    async def run() -> list[SnapshotInfo]:
        server, address = await _serve(source)
        async with server:
            fetchers = [SnapshotFetcher(n, tmp_path / n, log) for n in ("b", "c", "d")]
            return await asyncio.gather(*(f.fetch(address) for f in fetchers))

    infos = asyncio.run(run())
    assert source.created == 1
    assert len({i.snapshot_id for i in infos}) == 1
    assert source.in_use_index == infos[0].index


def test_a_corrupted_chunk_is_refused_and_the_fetch_resumes(
    tmp_path: Path, big_leader: Leader
) -> None:
    source = SnapshotSource(big_leader.store, tmp_path / "s", log, chunk_size=CHUNK)
    directory = tmp_path / "b-snaps"

    class Corrupting(SnapshotSource):
        async def serve(self, fetch: wire.SnapshotFetch) -> wire.SnapshotChunk:
            chunk = await source.serve(fetch)
            if chunk.offset == 3 * CHUNK:
                flipped = bytes([chunk.data[0] ^ 1]) + chunk.data[1:]
                return msgspec.structs.replace(chunk, data=flipped)
            return chunk

    bad = Corrupting(big_leader.store, tmp_path / "s", log)

    async def run() -> SnapshotInfo:
        server, address = await _serve(bad)
        async with server:
            with pytest.raises(Unavailable, match="crc32"):
                await SnapshotFetcher("b", directory, log, window=1).fetch(address)
        saved = json.loads((directory / "snapshot.partial.json").read_text())
        assert saved["offset"] == 3 * CHUNK  # nothing of the bad chunk was kept
        server, address = await _serve(source)
        async with server:
            fetcher = SnapshotFetcher("b", directory, log)
            info = await fetcher.fetch(address)
            assert fetcher.resumed_from == 3 * CHUNK
            return info

    info = asyncio.run(run())
    assert snapshot_files.file_sha256(info.path) == info.sha256


def test_a_wrong_sha256_discards_the_file(tmp_path: Path, big_leader: Leader) -> None:
    source = SnapshotSource(big_leader.store, tmp_path / "s", log, chunk_size=CHUNK)
    directory = tmp_path / "b-snaps"

    class Lying(SnapshotSource):
        async def serve(self, fetch: wire.SnapshotFetch) -> wire.SnapshotChunk:
            chunk = await source.serve(fetch)
            return msgspec.structs.replace(chunk, sha256="0" * 64)

    async def run() -> None:
        server, address = await _serve(Lying(big_leader.store, tmp_path / "s", log))
        async with server:
            with pytest.raises(Unavailable, match="sha256"):
                await SnapshotFetcher("b", directory, log).fetch(address)

    asyncio.run(run())
    assert sorted(p.name for p in directory.iterdir()) == []


@pytest.mark.parametrize("how", ["server closes", "task cancelled"])
def test_an_interrupted_fetch_resumes_where_it_stopped(
    tmp_path: Path, big_leader: Leader, stores: Callable[..., SQLiteStore], how: str
) -> None:
    source = SnapshotSource(big_leader.store, tmp_path / "s", log, chunk_size=CHUNK)
    directory = tmp_path / "b-snaps"
    first = SnapshotFetcher("b", directory, log, window=1)

    async def run() -> SnapshotInfo:
        cut = False
        resumed = asyncio.Event()

        async def stop_after_five(fetch: wire.SnapshotFetch, answered: int) -> bool:
            nonlocal cut
            if how == "server closes" and answered == 5 and not cut:
                cut = True  # once: the second connection is served to the end
                return False
            if how == "task cancelled" and answered >= 5:
                # Hold the sixth chunk until the first fetch was cancelled: without
                # this it sometimes finished first (a CI run failed that way).
                await resumed.wait()
            return True

        server, address = await _serve(source, stop_after_five)
        async with server:
            if how == "server closes":
                with pytest.raises(Unavailable, match="closed the connection"):
                    await first.fetch(address)
            else:
                task = asyncio.create_task(first.fetch(address))
                while first.bytes_received < 5 * CHUNK:
                    await asyncio.sleep(0.001)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                resumed.set()
            assert first.progress == ""
            saved = json.loads((directory / "snapshot.partial.json").read_text())
            assert saved["offset"] >= 5 * CHUNK
            second = SnapshotFetcher("b", directory, log)
            info = await second.fetch(address)
        assert second.resumed_from == saved["offset"]
        assert first.bytes_received + second.bytes_received < info.size + CHUNK
        return info

    info = asyncio.run(run())
    assert snapshot_files.file_sha256(info.path) == info.sha256
    follower = stores("b.db")
    follower.install_snapshot(info.path, info.index, info.term, 0)
    assert rows(follower) == rows(big_leader.store)


def test_a_resume_of_a_snapshot_the_leader_dropped_starts_over(
    tmp_path: Path, big_leader: Leader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    source = SnapshotSource(
        big_leader.store, tmp_path / "s", log, chunk_size=CHUNK, max_age_entries=0
    )
    directory = tmp_path / "b-snaps"

    async def run() -> tuple[str, SnapshotInfo, SnapshotFetcher]:
        async def stop_after_three(fetch: wire.SnapshotFetch, answered: int) -> bool:
            return answered < 3

        server, address = await _serve(source, stop_after_three)
        async with server:
            with pytest.raises(Unavailable):
                await SnapshotFetcher("b", directory, log, window=1).fetch(address)
        old = json.loads((directory / "snapshot.partial.json").read_text())["snapshot_id"]
        big_leader.fill(2)
        assert source.current is not None
        source.current.path.unlink()  # the leader moved on to a newer snapshot
        server, address = await _serve(source)
        async with server:
            fetcher = SnapshotFetcher("b", directory, log)
            return old, await fetcher.fetch(address), fetcher

    old, info, fetcher = asyncio.run(run())
    assert info.snapshot_id != old and fetcher.resumed_from == 0
    assert f"the leader no longer has snapshot {old}: starting over with {info.snapshot_id}" in (
        caplog.text
    )
    assert info.index == big_leader.store.applied_index()
    assert snapshot_files.file_sha256(info.path) == info.sha256


def test_unreachable_leader_and_leader_errors_are_unavailable(
    tmp_path: Path, big_leader: Leader
) -> None:
    fetcher = SnapshotFetcher("b", tmp_path / "b", log, chunk_timeout_s=1)

    async def run() -> None:
        server, address = await _serve(SnapshotSource(big_leader.store, tmp_path / "s", log))
        server.close()
        await server.wait_closed()
        with pytest.raises(Unavailable, match="cannot connect"):
            await fetcher.fetch(address)

        class Failing(SnapshotSource):
            async def serve(self, fetch: wire.SnapshotFetch) -> wire.SnapshotChunk:
                return wire.SnapshotChunk(fetch.id, error="disk on fire")

        server, address = await _serve(Failing(big_leader.store, tmp_path / "s", log))
        async with server:
            with pytest.raises(Unavailable, match="disk on fire"):
                await fetcher.fetch(address)

    asyncio.run(run())


def test_source_answers_errors_in_one_line(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db", subscription=["t"])
    source = SnapshotSource(store, tmp_path / "s", log)
    chunk = asyncio.run(source.serve(wire.SnapshotFetch(9, "b")))
    assert chunk.id == 9 and chunk.error is not None and "partial replica" in chunk.error
    assert "\n" not in chunk.error
    store.close()
