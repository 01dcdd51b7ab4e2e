"""Backup and restore in one process: a store with data is served over a real loopback
socket by the same SnapshotSource a node uses; the backup call finds the leader, writes
the file and its position; restore seeds a fresh directory with the same rows at the
same log position. Every refusal is one clear line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner

from replidb.cli.main import cli
from replidb.client.backup import backup, partial_dir
from replidb.core.messages import HardState
from replidb.errors import BadRequest, Unavailable
from replidb.node.snapshots import SnapshotSource, answer
from replidb.storage import SQLiteStore
from replidb.storage.base import open_store
from replidb.storage.restore import RESTORED_NAME, meta_path, read_backup, restore_backup
from replidb.storage.snapshot_files import file_sha256
from replidb.transport import wire
from replidb.transport.framing import frame, read_message
from replidb.transport.wire import Statement as S

log = logging.getLogger("test.backup")
TERM = 3
TABLES = ("t", "plain", "replidb_client_sessions", "replidb_rowid_leases")


class Leader:
    """A store written as a leader writes, at consecutive indexes of one term."""

    def __init__(self, path: Path, stream: str = "logical") -> None:
        self.store = SQLiteStore(path, stream=stream)
        self.store.persist(HardState(TERM, "n1"), None, [])

    def write(self, *statements: S) -> int:
        index = self.store.last_index() + 1
        outcome = self.store.execute_write(list(statements), TERM, index, "c1", index)
        assert outcome.data is not None
        return index

    def fill(self, n: int, size: int = 10) -> None:
        self.write(S("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"), S("CREATE TABLE plain(v)"))
        for i in range(n):
            self.write(
                S("INSERT INTO t(v) VALUES (?)", [f"{i:04d}" + "x" * size]),
                S("INSERT INTO plain VALUES (?)", [f"p{i}"]),
            )
            if i % 3 == 0:  # rowid gaps in a table without a key: must survive as they are
                self.write(S("DELETE FROM plain WHERE rowid = (SELECT min(rowid) FROM plain)"))
        self.store.note_committed(self.store.last_index())


def rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {
            t: conn.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall() for t in TABLES
        }
    finally:
        conn.close()


@dataclass
class FakeNode:
    """A node on loopback that answers status requests and snapshot fetches."""

    role: str = "leader"
    leader: str | None = "n1"
    leader_address: str | None = None
    stream: str = "logical"
    commit_index: int = 0
    cut_after: int | None = None  # close the connection after this many chunks (once)
    address: str = ""
    fetches: list[wire.SnapshotFetch] = field(default_factory=list)

    def status(self) -> wire.NodeStatus:
        me = "n1" if self.role == "leader" else "n2"
        return wire.NodeStatus(
            id=me,
            address=self.address,
            role=self.role,
            term=TERM,
            leader=self.leader,
            leader_address=self.address if self.role == "leader" else self.leader_address,
            last_index=self.commit_index,
            commit_index=self.commit_index,
            applied_index=self.commit_index,
            peers={p: "127.0.0.1:1" for p in ("n1", "n2", "n3") if p != me},
            stream=self.stream,
        )


@contextlib.contextmanager
def serving(node: FakeNode, source: SnapshotSource | None) -> Iterator[FakeNode]:
    """Run ``node`` on its own event loop in a thread (the backup call is blocking)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (message := await read_message(reader)) is not None:
                if isinstance(message, wire.StatusRequest):
                    writer.write(frame(wire.StatusReply(message.id, node.status())))
                elif isinstance(message, wire.SnapshotFetch) and source is not None:
                    if node.cut_after is not None and len(node.fetches) >= node.cut_after:
                        node.cut_after = None
                        break
                    node.fetches.append(message)
                    await answer(source, message, writer)
                else:
                    break
        finally:
            writer.close()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    node.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield node
    finally:

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def leader(tmp_path: Path) -> Iterator[Leader]:
    made = Leader(tmp_path / "leader.db")
    made.fill(40, size=2000)  # ~150 kB: several chunks of 16 kB
    yield made
    made.store.close()


@pytest.fixture
def source(tmp_path: Path, leader: Leader) -> SnapshotSource:
    return SnapshotSource(
        leader.store,
        tmp_path / "leader-snapshots",
        log,
        chunk_size=16 * 1024,
        committed_index=leader.store.last_index,
    )


@pytest.fixture
def made(tmp_path: Path, leader: Leader, source: SnapshotSource) -> Path:
    """A backup file of ``leader``."""
    out = tmp_path / "backup.db"
    with serving(FakeNode(commit_index=leader.store.last_index()), source) as node:
        backup(node.address, out, timeout=5)
    return out


# ---- backup ----------------------------------------------------------------------


def test_backup_writes_the_leaders_snapshot_and_its_position(
    tmp_path: Path, leader: Leader, source: SnapshotSource
) -> None:
    out = tmp_path / "backup.db"
    said: list[str] = []
    last = leader.store.last_index()
    with serving(FakeNode(commit_index=last), source) as node:
        info = backup(node.address, out, timeout=5, on_progress=said.append)
    assert (info.index, info.term, info.stream) == (last, TERM, "logical")
    assert info.size == out.stat().st_size >= 8 * 16 * 1024  # several chunks
    assert info.sha256 == file_sha256(out) == source.current.sha256  # type: ignore[union-attr]
    assert (info.leader, info.leader_address, info.leader_commit_index) == (
        "n1",
        node.address,
        last,
    )
    assert info.members == ["n1", "n2", "n3"] and info.created_at.endswith("+00:00")
    assert read_backup(out) == info
    meta = json.loads(meta_path(out).read_text())
    assert (meta["format"], meta["version"], meta["index"]) == ("replidb-backup", 1, last)
    assert said and said[0].startswith(f"asking leader n1 ({node.address})")
    assert not partial_dir(out).exists()  # the fetch directory is gone
    assert sorted(p.name for p in tmp_path.iterdir() if "backup" in p.name) == [
        "backup.db",
        "backup.db.json",
    ]
    # A plain SQLite file at that position, without anything private to the leader.
    conn = apsw.Connection(str(out), flags=apsw.SQLITE_OPEN_READONLY)
    meta_rows = dict(conn.execute("SELECT key, value FROM replidb_meta").fetchall())
    assert meta_rows["snapshot_index"] == last and meta_rows["snapshot_term"] == TERM
    assert conn.execute("SELECT count(*) FROM replidb_log").fetchone() == (0,)
    conn.close()


def test_backup_asks_the_leader_through_a_follower(
    tmp_path: Path, leader: Leader, source: SnapshotSource
) -> None:
    last = leader.store.last_index()
    with (
        serving(FakeNode(commit_index=last), source) as real,
        serving(FakeNode(role="follower", leader_address=real.address), None) as follower,
    ):
        info = backup(follower.address, tmp_path / "b.db", timeout=5)
    assert info.leader == "n1" and info.leader_address == real.address and real.fetches


def test_backup_without_a_leader_fails_after_its_timeout(tmp_path: Path) -> None:
    with (
        serving(FakeNode(role="candidate", leader=None), None) as node,
        pytest.raises(Unavailable, match=r"the cluster has no leader right now \(waited 0.5s\)"),
    ):
        backup(node.address, tmp_path / "b.db", timeout=0.5)
    assert not (tmp_path / "b.db").exists()


def test_an_interrupted_backup_resumes_where_it_stopped(
    tmp_path: Path, leader: Leader, source: SnapshotSource
) -> None:
    out = tmp_path / "b.db"
    with serving(FakeNode(commit_index=leader.store.last_index(), cut_after=3), source) as node:
        with pytest.raises(Unavailable, match="run the backup again: it resumes"):
            backup(node.address, out, timeout=5)
        assert not out.exists() and not meta_path(out).exists()
        assert (partial_dir(out) / "snapshot.partial.json").exists()
        before = len(node.fetches)
        info = backup(node.address, out, timeout=5)
    resumed = node.fetches[before]
    assert resumed.snapshot_id == info.snapshot_id and resumed.offset > 0
    assert file_sha256(out) == info.sha256 and not partial_dir(out).exists()


def test_backup_refuses_to_overwrite_unless_forced(
    tmp_path: Path, made: Path, leader: Leader, source: SnapshotSource
) -> None:
    with pytest.raises(
        BadRequest, match=r"backup.db exists: choose another --out, or pass --force"
    ):
        backup("127.0.0.1:9", made, timeout=1)  # refused before any connection
    leader.write(S("INSERT INTO t(v) VALUES ('more')"))  # the next backup: one entry on
    leader.store.note_committed(leader.store.last_index())
    old = read_backup(made)
    # The leader keeps its snapshot for followers (10,000 entries by default), but a
    # backup asks for one holding everything committed when it began.
    assert source.max_age_entries == 10_000
    with serving(FakeNode(commit_index=leader.store.last_index()), source) as node:
        new = backup(node.address, made, timeout=5, force=True)
    assert new.index == old.index + 1 and read_backup(made) == new
    assert file_sha256(made) == new.sha256


# ---- restore ---------------------------------------------------------------------


def test_restore_seeds_a_directory_at_the_backups_position(
    tmp_path: Path, made: Path, leader: Leader
) -> None:
    info = read_backup(made)
    data = tmp_path / "n1"
    restored = restore_backup(made, data, "logical", node_id="n1")
    assert restored == info
    assert rows(data / "replidb.db") == rows(leader.store.path)
    store = open_store(data, "logical")
    try:
        assert (store.first_index(), store.last_index()) == (info.index + 1, info.index)
        assert store.term(info.index) == TERM and store.applied_index() == info.index
        # Its term is raised to the log's, so a new election cannot go below it.
        assert store.hard_state() == HardState(TERM, None)
        assert store.discarded_count() == 0
    finally:
        store.close()
    note = json.loads((data / RESTORED_NAME).read_text())
    assert (note["node_id"], note["index"], note["sha256"]) == ("n1", info.index, info.sha256)
    assert file_sha256(made) == info.sha256  # the backup itself is untouched


def test_every_node_restored_from_one_file_is_at_one_position(tmp_path: Path, made: Path) -> None:
    positions = set()
    for node in ("n1", "n2", "n3"):
        restore_backup(made, tmp_path / node, "logical")
        store = open_store(tmp_path / node, "logical")
        try:
            positions.add((store.last_index(), store.term(store.last_index()), store.hard_state()))
        finally:
            store.close()
    assert len(positions) == 1


def test_forced_restore_keeps_what_the_directory_held_past_the_backup(
    tmp_path: Path, made: Path, leader: Leader
) -> None:
    info = read_backup(made)
    data = tmp_path / "n1"
    restore_backup(made, data, "logical")
    (data / "snapshots").mkdir()
    (data / "snapshots" / "999-9-x.snapshot").write_bytes(b"another history")
    store = open_store(data, "logical")
    assert isinstance(store, SQLiteStore)
    store.persist(HardState(TERM + 2, "n1"), None, [])
    index = info.index + 1
    store.execute_write([S("INSERT INTO t(v) VALUES ('later')")], TERM + 2, index)
    store.close()
    with pytest.raises(BadRequest, match="n1 is not empty: restore into a new directory"):
        restore_backup(made, data, "logical")
    restore_backup(made, data, "logical", force=True)
    assert rows(data / "replidb.db") == rows(leader.store.path)
    assert not (data / "snapshots").exists()
    store = open_store(data, "logical")
    try:
        assert store.discarded_count() == 1  # the later write, kept, not dropped
        assert store.hard_state().term == TERM + 2  # never lowered
        assert store.last_index() == info.index
    finally:
        store.close()


def test_restore_refuses_a_backup_of_another_stream_format(tmp_path: Path, made: Path) -> None:
    with pytest.raises(BadRequest, match="is a backup of a logical cluster, not wal: restore it"):
        restore_backup(made, tmp_path / "n1", "wal")
    with pytest.raises(BadRequest, match="not statement: restore it with --stream logical"):
        restore_backup(made, tmp_path / "n1", "statement")
    assert not (tmp_path / "n1").exists()


def test_restore_refuses_a_damaged_backup(tmp_path: Path, made: Path) -> None:
    data = bytearray(made.read_bytes())
    data[len(data) // 2] ^= 0xFF
    made.write_bytes(bytes(data))
    with pytest.raises(BadRequest, match=r"backup\.db failed its sha256 check: it is damaged"):
        restore_backup(made, tmp_path / "n1", "logical")
    assert not (tmp_path / "n1").exists()


def test_restore_refuses_a_file_without_its_description(tmp_path: Path, made: Path) -> None:
    meta_path(made).unlink()
    with pytest.raises(BadRequest, match=r"backup.db.json is missing: .* not a replidb backup"):
        restore_backup(made, tmp_path / "n1", "logical")
    with pytest.raises(BadRequest, match="no backup file"):
        restore_backup(tmp_path / "nothing.db", tmp_path / "n1", "logical")


# ---- the commands ----------------------------------------------------------------


def _run(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.stdout, result.stderr


def test_the_commands_end_to_end(tmp_path: Path, leader: Leader, source: SnapshotSource) -> None:
    out = tmp_path / "b.db"
    with serving(FakeNode(commit_index=leader.store.last_index()), source) as node:
        code, stdout, stderr = _run(["backup", "--connect", node.address, "--out", str(out)])
    assert code == 0, stderr
    info = read_backup(out)
    assert stdout.startswith(f"backup of index {info.index} (term {TERM}): 0.")
    assert stdout.endswith(f" s -> {out}\n") and stdout.count("\n") == 1
    assert stderr.startswith("backup: asking leader n1")
    data = tmp_path / "n1"
    args = ["restore", "--from", str(out), "--data", str(data), "--stream", "logical"]
    code, stdout, stderr = _run([*args, "--node-id", "n1"])
    assert code == 0, stderr
    assert stdout.startswith(f"restored n1 at index {info.index} (term {TERM}) from {out}")
    assert rows(data / "replidb.db") == rows(leader.store.path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("existing", "b.db exists: choose another --out, or pass --force to replace it"),
        ("not-empty", "n1 is not empty: restore into a new directory, or pass --force"),
        ("damaged", "b.db failed its sha256 check"),
        ("format", "b.db is a backup of a logical cluster, not mixed: restore it with --stream"),
        ("no-json", "b.db.json is missing"),
        ("bad-stream", "'rows' is not one of 'statement', 'wal', 'logical', 'mixed'"),
    ],
)
def test_the_commands_refuse_in_one_line(
    tmp_path: Path, made: Path, case: str, message: str
) -> None:
    out = made.rename(tmp_path / "b.db")
    meta_path(made).rename(meta_path(out))
    data = tmp_path / "n1"
    stream = {"format": "mixed", "bad-stream": "rows"}.get(case, "logical")
    args = ["restore", "--from", str(out), "--data", str(data), "--stream", stream]
    if case == "existing":
        args = ["backup", "--connect", "127.0.0.1:9", "--out", str(out)]
    elif case == "not-empty":
        data.mkdir()
        (data / "pid").write_text("1\n")
    elif case == "damaged":
        with out.open("r+b") as f:
            f.seek(100)
            f.write(b"\0\1\2")
    elif case == "no-json":
        meta_path(out).unlink()
    code, stdout, stderr = _run(args)
    assert code == (2 if case == "bad-stream" else 1)
    assert message in stderr and stdout == ""
    if case != "bad-stream":  # click's usage errors take a few lines; ours take one
        assert stderr.startswith("error: ") and stderr.count("\n") == 1
    assert not (data / "replidb.db").exists()


def test_a_fetch_with_min_index_gets_a_snapshot_no_older_than_it(
    leader: Leader, source: SnapshotSource
) -> None:
    """A follower catching up takes the snapshot the leader keeps; a backup (min_index:
    the commit index it saw) gets a newer one, but never asks beyond the commit."""

    async def serve(min_index: int) -> wire.SnapshotChunk:
        chunk = await source.serve(wire.SnapshotFetch(1, "f", min_index=min_index))
        assert chunk.error is None
        return chunk

    async def run() -> list[int]:
        first = await serve(0)
        leader.write(S("INSERT INTO t(v) VALUES ('more')"))
        leader.store.note_committed(leader.store.last_index())
        kept = await serve(0)
        assert kept.snapshot_id == first.snapshot_id
        newer = await serve(leader.store.last_index())
        beyond = await serve(leader.store.last_index() + 100)
        assert beyond.snapshot_id == newer.snapshot_id
        return [first.index, kept.index, newer.index, beyond.index]

    last = leader.store.last_index()
    assert asyncio.run(run()) == [last, last, last + 1, last + 1]
    assert source.created == 2
