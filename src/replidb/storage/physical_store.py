"""One node's storage for the ``wal`` stream: what replicates is the database pages each
transaction changed, so every node's data file is byte-identical at the same log
position (format and version lock: ``stream/physical.py``).

Two files in the node's directory:

- ``data.db``, the replicated one: the user's tables plus the replicated bookkeeping
  (``replidb_client_sessions``, ``replidb_rowid_leases``). Every node creates it the
  same way, so fresh nodes start byte-identical; after that it is written only by the
  leader's transactions, by ``apply`` and by rollback, never by a checkpoint of
  something the log lacks (connections are opened with checkpoint-on-close off).
- ``node.db``, this node's own: hard state, the log, ``replidb_discarded`` and
  ``replidb_undo`` (before-images of the leader's own not yet committed writes).

Leader: the client's statements run and COMMIT on ``data.db`` in WAL mode with
auto-checkpoint off; the WAL hook reports the frame count, and the pages of that commit
are read back from ``data.db-wal`` (``wal_reader``). One fsynced ``node.db`` transaction
then stores the log entry, the applied index, the WAL position logged so far and the
undo data. If the process dies between the two commits, the WAL holds a commit the log
lacks: on open, before any connection touches ``data.db``, the WAL is cut back to the
logged position (that write was never acknowledged). Only logged frames are ever
checkpointed (every ``CHECKPOINT_FRAMES`` frames, before an apply, and in ``close``).

Follower: ``apply`` records ``applying = lo..hi`` in ``node.db``, closes every
connection on ``data.db`` (no reader may see a half-applied transaction, and a
connection's page cache goes stale when pages change behind SQLite's back), writes
each page at ``(pgno - 1) * page_size``, truncates to the new size, fsyncs, then
records the applied index. Page images are absolute, so a crash mid-apply is repaired
on open by applying ``lo..hi`` again.

Rollback (a deposed leader's applied but uncommitted writes): the undo data is
written back newest first and each write is kept in ``replidb_discarded``; the file
ends byte-identical to a node that never had them.

Snapshots (storage/physical_snapshot.py): the snapshot is this file itself, copied
byte for byte at the commit index, so a follower that installs it is byte-identical
to the others and the log can be compacted. The copy runs in a worker thread; what
changes the main file (checkpoint, apply, rollback, install) holds ``_file_lock``
meanwhile.

Fault injection for tests: ``REPLIDB_DEBUG_APPLY_PAGE_DELAY_MS`` (``APPLY_DELAY_ENV``)
makes ``apply`` sleep that long before each page it writes, so a test can kill the
process mid-apply (storage/page_io.py).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw

from replidb.core.messages import Entry, EntryKind, HardState
from replidb.errors import Error, InternalError, ProtocolError
from replidb.storage import physical_snapshot, sessions
from replidb.storage.executor import (
    capture_changes,
    changes_data,
    check_expected,
    install_guard,
    run_read,
    translate,
)
from replidb.storage.node_log import LOG_SCHEMA, NodeLogTables
from replidb.storage.page_io import (
    APPLY_DELAY_ENV,
    check_record,
    create_data_file,
    file_size,
    read_header,
    write_pages,
)
from replidb.storage.snapshot_files import SnapshotInfo
from replidb.storage.sqlite_store import WriteOutcome, WriteRequest, describe_record
from replidb.storage.wal_reader import (
    EMPTY_POSITION,
    WalPosition,
    WalTail,
    drop_unlogged,
)
from replidb.stream.logical import Segment, WriteRecord
from replidb.stream.physical import PageRecord, decode_page_record, encode_page_record
from replidb.transport.wire import Statement, StatementResult

__all__ = ["APPLY_DELAY_ENV", "CHECKPOINT_FRAMES", "PhysicalStore"]

log = logging.getLogger("replidb.storage")

CHECKPOINT_FRAMES = 1000  # SQLite's own auto-checkpoint threshold

_NODE_SCHEMA = (
    LOG_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS replidb_undo(
    idx INTEGER PRIMARY KEY, db_pages_before INTEGER NOT NULL, pages BLOB NOT NULL,
    changes TEXT NOT NULL);
"""
)
# Fixed statements, run once at creation on every node: the files must come out identical.
_DATA_SCHEMA = """
CREATE TABLE replidb_rowid_leases(tbl TEXT PRIMARY KEY, ceiling INTEGER NOT NULL);
CREATE TABLE replidb_client_sessions(
    client_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, result BLOB NOT NULL,
    idx INTEGER NOT NULL);
"""
_DISCARD_REASON = "not in the new leader's log"


class PhysicalStore(NodeLogTables):
    def __init__(self, directory: Path, page_size: int = 4096) -> None:
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two from 512 to 65536: {page_size}")
        self.directory = Path(directory)
        self.data_path = self.directory / "data.db"
        self.wal_path = self.directory / "data.db-wal"
        node_path = self.directory / "node.db"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.node = apsw.Connection(str(node_path))
            self._log_db = self.node
            self.node.set_busy_timeout(5000)
            self.node.execute("PRAGMA journal_mode=WAL")
            self.node.execute(_NODE_SCHEMA)
            if not self.data_path.exists():
                create_data_file(self.data_path, page_size, _DATA_SCHEMA)
            self._data_fd = os.open(self.data_path, os.O_RDWR)
        except (apsw.Error, OSError) as exc:
            raise InternalError(f"cannot open the store in {self.directory}: {exc}") from None
        self.page_size, self.file_format = read_header(self._data_fd, self.data_path)
        self._node_uri = "file:" + urllib.parse.quote(str(node_path.resolve())) + "?mode=ro"
        self._reader: apsw.Connection | None = None
        self._writer: apsw.Connection | None = None
        self._reader_guard: Any = None  # the executor's guard of each connection
        self._writer_guard: Any = None
        self._tail: WalTail | None = None
        self._wal_frames: int | None = None  # set by the WAL hook after a commit
        self._floors_pending = False
        self._closed = False
        # Held while the main file changes, and by a snapshot copy (physical_snapshot).
        self._file_lock = threading.RLock()
        self._recover()
        self._last_index, self._last_term = self._load_last()

    def close(self) -> None:
        """Checkpoint the WAL (so ``data.db`` is complete on its own) and close."""
        if self._closed:
            return
        self._closed = True
        with self._file_lock:
            try:
                self._quiesce()
            finally:
                self.node.close()
                if self._data_fd >= 0:
                    os.close(self._data_fd)

    def _clear_meta(self, key: str) -> None:
        self.node.execute("DELETE FROM replidb_meta WHERE key=?", (key,))

    def _logged_position(self) -> WalPosition:
        text = self._meta("wal_position")
        return WalPosition.decode(text) if text else EMPTY_POSITION

    def _txn(self, synchronous: str) -> _Txn:
        return _Txn(self.node, synchronous)

    def _recover(self) -> None:
        """Repair what a crash left, before any connection opens ``data.db``."""
        if physical_snapshot.recover_install(self):
            log.warning("%s: finished an interrupted snapshot install", self.directory)
        dropped = drop_unlogged(self.wal_path, self._logged_position(), self.page_size)
        if dropped:
            log.warning(
                "%s: dropped %d WAL frame(s) of a write committed to the data file but "
                "never logged (it was never acknowledged)",
                self.data_path,
                dropped,
            )
        applying = self._meta("applying")
        if applying:
            lo, hi = (int(part) for part in applying.split())
            log.warning(
                "%s: re-applying entries %d..%d (interrupted apply)", self.directory, lo, hi
            )
            entries = self.entries(lo, hi, 1 << 62)
            if len(entries) != hi - lo + 1:
                raise InternalError(f"entries {lo}..{hi} of an interrupted apply are not logged")
            self.apply(entries)
        rolling_back = self._meta("rolling_back")
        if rolling_back:
            lo, hi = (int(part) for part in rolling_back.split())
            log.warning("%s: finishing the interrupted rollback of %d..%d", self.directory, lo, hi)
            self._finish_rollback(lo, hi)

    # ---- follower path: persist, then apply ------------------------------------

    def persist(
        self, hard_state: HardState | None, truncate_from: int | None, entries: Sequence[Entry]
    ) -> None:
        """Make a Ready's durable part durable (fsynced) before returning. Refuses, before
        storing anything, entries this node could never apply (the version lock)."""
        for entry in entries:
            if entry.kind == EntryKind.WRITE:
                self._decode(entry)
        if truncate_from is not None and truncate_from <= self.snapshot_position()[0]:
            raise InternalError(
                f"cannot truncate the log at {truncate_from}: it is compacted there"
            )
        if truncate_from is not None and truncate_from <= self.applied_index():
            with self._file_lock:
                self._roll_back(truncate_from, hard_state)
        with self._txn("FULL"):
            if hard_state is not None:
                self._set_meta("term", hard_state.term)
                self._set_meta("vote", hard_state.vote)
            if truncate_from is not None:
                self.node.execute("DELETE FROM replidb_log WHERE idx >= ?", (truncate_from,))
            # Same index and term means the same entry (Raft's log matching): the leader's
            # own entries come back here, and need not be written twice.
            self.node.executemany(
                "INSERT INTO replidb_log(idx, term, kind, data) VALUES(?, ?, ?, ?) "
                "ON CONFLICT(idx) DO UPDATE SET term=excluded.term, kind=excluded.kind, "
                "data=excluded.data WHERE replidb_log.term != excluded.term",
                [(e.index, e.term, e.kind, e.data) for e in entries],
            )
        self._last_index, self._last_term = self._load_last()

    def apply(self, entries: Sequence[Entry]) -> None:
        """Apply committed entries in order; NOOP entries only advance the applied index."""
        if not entries:
            return
        records = [self._decode(e) for e in entries if e.kind == EntryKind.WRITE]
        lo, hi = entries[0].index, entries[-1].index
        if not records:
            self._note_applied(hi)
            return
        with self._file_lock:
            self._quiesce()
            with self._txn("FULL"):
                self._set_meta("applying", f"{lo} {hi}")
                self._set_meta("wal_position", EMPTY_POSITION.encode())
            self._write_pages(records)
            self._note_applied(hi)

    def _note_applied(self, hi: int) -> None:
        # NORMAL is enough: if this is lost, "applying" survives and the open re-applies.
        with self._txn("NORMAL"):
            self._set_meta("applied_index", hi)
            self._clear_meta("applying")
            self.node.execute("DELETE FROM replidb_undo WHERE idx <= ?", (hi,))

    def note_committed(self, index: int) -> None:
        """Entries up to ``index`` can never be rolled back: drop their undo data."""
        if not self.node.execute(
            "SELECT 1 FROM replidb_undo WHERE idx <= ? LIMIT 1", (index,)
        ).fetchone():
            return  # the common case on followers: no write transaction needed
        with self._txn("NORMAL"):
            self.node.execute("DELETE FROM replidb_undo WHERE idx <= ?", (index,))

    def _decode(self, entry: Entry) -> PageRecord:
        try:
            record = decode_page_record(entry.data)
        except ValueError as exc:
            raise ProtocolError(f"wal stream: entry {entry.index}: {exc}") from None
        check_record(record, self.page_size, self.file_format)
        return record

    def _write_pages(self, records: Sequence[PageRecord]) -> None:
        assert self._reader is None and self._writer is None, "data.db is in use"
        write_pages(self._data_fd, self.data_path, records)

    # ---- rollback --------------------------------------------------------------

    def _roll_back(self, lo: int, hard_state: HardState | None) -> None:
        hi = self.applied_index()
        writes = {
            int(row[0])
            for row in self.node.execute(
                "SELECT idx FROM replidb_log WHERE idx BETWEEN ? AND ? AND kind=?",
                (lo, hi, EntryKind.WRITE),
            )
        }
        undone = {
            int(row[0])
            for row in self.node.execute(
                "SELECT idx FROM replidb_undo WHERE idx BETWEEN ? AND ?", (lo, hi)
            )
        }
        missing = sorted(writes - undone)
        if missing:
            raise InternalError(
                f"cannot roll back applied entry {missing[0]}: it has no undo data "
                "(it was committed); this node needs a resync"
            )
        self._quiesce()
        with self._txn("FULL"):
            if hard_state is not None:
                self._set_meta("term", hard_state.term)
                self._set_meta("vote", hard_state.vote)
            self._set_meta("rolling_back", f"{lo} {hi}")
            self._set_meta("wal_position", EMPTY_POSITION.encode())
        self._finish_rollback(lo, hi)

    def _finish_rollback(self, lo: int, hi: int) -> None:
        """Write the undo data of ``lo..hi`` back, newest first (idempotent), then move
        the entries from the log to ``replidb_discarded``."""
        self._quiesce()
        records: list[PageRecord] = []
        changes: dict[Any, str] = {}  # by log index
        for idx, pages, text in self.node.execute(
            "SELECT idx, pages, changes FROM replidb_undo WHERE idx BETWEEN ? AND ? "
            "ORDER BY idx DESC",
            (lo, hi),
        ).fetchall():
            try:
                if not isinstance(pages, bytes):
                    raise ValueError(f"pages are {type(pages).__name__}, not bytes")
                records.append(decode_page_record(pages))
            except ValueError as exc:
                raise InternalError(f"the undo data of entry {idx} is damaged ({exc}); resync")
            changes[idx] = str(text)
        if records:
            self._write_pages(records)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        with self._txn("FULL"):
            for idx, term, kind, data in self.node.execute(
                "SELECT idx, term, kind, data FROM replidb_log WHERE idx BETWEEN ? AND ? "
                "ORDER BY idx DESC",
                (lo, hi),
            ).fetchall():
                if kind == EntryKind.WRITE:
                    self.node.execute(
                        "INSERT INTO replidb_discarded"
                        "(term, idx, changes, record, discarded_at, reason) "
                        "VALUES(?, ?, ?, ?, ?, ?)",
                        (term, idx, changes.get(idx, "[]"), data, now, _DISCARD_REASON),
                    )
            self.node.execute("DELETE FROM replidb_undo WHERE idx >= ?", (lo,))
            self.node.execute("DELETE FROM replidb_log WHERE idx >= ?", (lo,))
            self._set_meta("applied_index", lo - 1)
            self._clear_meta("rolling_back")
        self._last_index, self._last_term = self._load_last()

    # ---- connections on data.db ------------------------------------------------

    def _open(self, flags: int = 0, attach_node: bool = False) -> apsw.Connection:
        try:
            conn = apsw.Connection(str(self.data_path), flags=apsw.SQLITE_OPEN_READWRITE | flags)
            # Only explicit checkpoints of logged frames may write the main file: SQLite's
            # checkpoint on close could copy a commit the log does not have.
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.set_busy_timeout(5000)
            # Read the header now: until a connection has, it does not know the file is
            # in WAL mode, and a checkpoint through it would silently do nothing.
            conn.execute("PRAGMA schema_version").fetchall()
            if attach_node:
                # So queries such as SELECT ... FROM replidb_discarded work on every node.
                conn.execute("ATTACH DATABASE ? AS node", (self._node_uri,))
        except apsw.Error as exc:
            raise InternalError(f"cannot open {self.data_path}: {exc}") from None
        return conn

    def _reader_conn(self) -> apsw.Connection:
        if self._reader is None:
            conn = self._open(apsw.SQLITE_OPEN_URI, attach_node=True)
            conn.execute("PRAGMA query_only=ON")
            self._reader_guard = install_guard(conn)
            self._reader = conn
        return self._reader

    def _writer_conn(self) -> apsw.Connection:
        if self._writer is None:
            conn = self._open()
            mode = conn.execute("PRAGMA journal_mode").fetchone()
            if not mode or mode[0] != "wal":
                conn.close()
                raise InternalError(f"{self.data_path} is not in WAL mode")
            conn.execute("PRAGMA synchronous=FULL")  # the log says applied: it must be there
            conn.set_wal_hook(self._on_wal)  # replaces auto-checkpoint
            self._writer_guard = install_guard(conn)
            self._writer = conn
            self._tail = WalTail.load(self.wal_path, self._data_fd, self.page_size)
            if self._tail.header is not None and self._tail.position != self._logged_position():
                raise InternalError(f"{self.wal_path} does not end where the log says")
        return self._writer

    def _on_wal(self, _conn: apsw.Connection, name: str, frames: int) -> int:
        if name == "main":
            self._wal_frames = frames
        return int(apsw.SQLITE_OK)

    def _quiesce(self) -> None:
        """Close every connection on ``data.db``, checkpointing the WAL into the main file
        first (all of it is logged)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        try:
            if file_size(self.wal_path) > 0:
                conn = self._writer or self._open()
                try:
                    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
                finally:
                    if conn is not self._writer:
                        conn.close()
                if file_size(self.wal_path) > 0:
                    raise InternalError(f"could not checkpoint {self.wal_path}")
        except apsw.Error as exc:
            raise InternalError(f"cannot checkpoint {self.wal_path}: {exc}") from None
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._tail = None

    def _checkpoint(self) -> None:
        """Copy the (logged) WAL into the main file and restart it."""
        assert self._writer is not None and self._tail is not None
        if not self._file_lock.acquire(blocking=False):
            return  # a snapshot is being copied: a later write retries
        try:
            try:
                self._writer.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
            except apsw.Error as exc:
                log.warning("checkpoint of %s failed, will retry: %s", self.wal_path, exc)
                return
            if file_size(self.wal_path) == 0:
                self._tail.reset()
                with self._txn("NORMAL"):
                    self._set_meta("wal_position", EMPTY_POSITION.encode())
        finally:
            self._file_lock.release()

    # ---- leader path -----------------------------------------------------------

    def execute_read(self, statements: Sequence[Statement]) -> list[StatementResult]:
        """Run on the read-only connection; NeedsWrite if any statement writes."""
        return run_read(self._reader_conn(), self._reader_guard, statements)

    def execute_batch(
        self, requests: Sequence[WriteRequest], term: int, first_index: int
    ) -> list[WriteOutcome | Error]:
        """One transaction (and fsync) per request: each logs the WAL frames of its own
        commit, so writes cannot share one here (storage/sqlite_store.py groups them)."""
        outcomes: list[WriteOutcome | Error] = []
        index = first_index
        for r in requests:
            try:
                outcome = self.execute_write(
                    r.statements, term, index, r.client_id, r.seq, r.dry_run, r.expect,
                    r.expect_count,
                )  # fmt: skip
            except Error as exc:
                outcomes.append(exc)
                continue
            if outcome.data is not None:
                index += 1
            outcomes.append(outcome)
        return outcomes

    def execute_write(
        self,
        statements: Sequence[Statement],
        term: int,
        index: int,
        client_id: str = "",
        seq: int = 0,
        dry_run: bool = False,
        expect: str = "",
        expect_count: int = 0,
    ) -> WriteOutcome:
        """Run a client transaction; if it changed anything, log its pages at
        ``(term, index)`` and mark it applied, durably, before returning."""
        conn = self._writer_conn()
        conn.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            if client_id and not dry_run:
                previous = sessions.previous_result(conn, client_id, seq)
                if previous is not None:
                    return WriteOutcome(previous[0], None, duplicate=True, index=previous[1])
            if self._floors_pending and not dry_run:
                sessions.raise_rowid_floors(conn)  # see raise_rowid_floors
            leased = False

            def remember(results: list[StatementResult], segments: list[Segment]) -> None:
                nonlocal leased
                if not dry_run:
                    leased = sessions.raise_leases(conn, segments)
                if client_id and not dry_run:
                    sessions.remember_result(conn, client_id, seq, results, index)

            results, segments = capture_changes(conn, statements, self._writer_guard, remember)
            check_expected(results, expect, expect_count)
            if dry_run or not changes_data(segments):
                return WriteOutcome(results, None)
            self._wal_frames = None
            conn.execute("COMMIT")
            committed = True
        except (apsw.Error, TypeError, ValueError, OverflowError) as exc:
            raise translate(exc, self._writer_guard) from None
        finally:
            if not committed:
                conn.execute("ROLLBACK")
        self._floors_pending = False
        try:
            data = self._log_write(term, index, segments)
        except Exception as exc:
            self._drop_unlogged_commit()
            if isinstance(exc, Error):
                raise
            raise InternalError(f"could not log write {index}, so it was undone: {exc}") from exc
        if data is None:
            return WriteOutcome(results, None)
        if self._tail is not None and self._tail.frames >= CHECKPOINT_FRAMES:
            self._checkpoint()
        return WriteOutcome(results, data, needs_commit=leased)

    def _log_write(self, term: int, index: int, segments: list[Segment]) -> bytes | None:
        """Read the commit's pages from the WAL and log them with their undo data."""
        frames, self._wal_frames = self._wal_frames, None
        tail = self._tail
        assert tail is not None
        if frames is None:
            return None  # the commit wrote no page
        commit = tail.read_commit(frames)
        version = apsw.sqlite_lib_version()
        record = PageRecord(
            version, self.page_size, self.file_format, commit.db_pages, tail.pages(commit)
        )
        undo = PageRecord(
            version, self.page_size, self.file_format, tail.db_pages, tail.before_images(commit)
        )
        data = encode_page_record(record)
        position = WalPosition(commit.header.salt1, commit.header.salt2, commit.end)
        self._append_log(term, index, data, undo, describe_record(WriteRecord(segments)), position)
        tail.advance(commit)
        self._last_index, self._last_term = index, term
        return data

    def _append_log(
        self,
        term: int,
        index: int,
        data: bytes,
        undo: PageRecord,
        changes: str,
        position: WalPosition,
    ) -> None:
        with self._txn("FULL"):
            self.node.execute(
                "INSERT INTO replidb_log(idx, term, kind, data) VALUES(?, ?, ?, ?)",
                (index, term, EntryKind.WRITE, data),
            )
            self._set_meta("applied_index", index)
            self._set_meta("wal_position", position.encode())
            self.node.execute(
                "INSERT OR REPLACE INTO replidb_undo(idx, db_pages_before, pages, changes) "
                "VALUES(?, ?, ?, ?)",
                (index, undo.db_pages, encode_page_record(undo), changes),
            )

    def _drop_unlogged_commit(self) -> None:
        """Undo a commit the log lacks, as the next open would: close without
        checkpointing, then cut the WAL back to the logged position."""
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None
        self._tail = None
        dropped = drop_unlogged(self.wal_path, self._logged_position(), self.page_size)
        log.warning(
            "%s: dropped %d WAL frame(s) of a write that was not logged", self.data_path, dropped
        )

    def raise_rowid_floors(self) -> int:
        """A new leader's first duty (see rowid_guard). Every page change must travel in
        a log entry, and this call has no log index, so the raise itself happens at the
        start of this leader's next write, inside it. Returns the tables with a lease."""
        conn = self._writer_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = sessions.raise_rowid_floors(conn)
        except apsw.Error as exc:
            raise InternalError(f"storage failure: {exc}") from None
        finally:
            conn.execute("ROLLBACK")
        self._floors_pending = count > 0
        return count

    # ---- snapshots (storage/physical_snapshot.py) ------------------------------

    def create_snapshot(self, directory: Path, committed_index: int | None = None) -> SnapshotInfo:
        """The data file, byte for byte, at ``committed_index`` (or the applied index if
        that is lower; later if the commit index has moved on and the undo data below
        it is gone), published in ``directory``. Safe in a worker thread while this
        store serves: it uses no connection of the store's."""
        return physical_snapshot.create_snapshot(self, directory, committed_index)

    def install_snapshot(
        self, path: Path, index: int, term: int, committed_index: int, membership: bytes = b""
    ) -> int:
        """Replace ``data.db`` with the snapshot at ``path`` (position ``index``/``term``,
        ``membership`` in force there),
        crash-safely, keeping term, vote and replidb_discarded, and describing into
        replidb_discarded this node's own writes above ``committed_index``. ProtocolError
        if the file does not fit this node (the version lock). Returns how many it
        described."""
        return physical_snapshot.install_snapshot(
            self, path, index, term, committed_index, membership
        )


class _Txn:
    """A node.db transaction at the given synchronous level; apsw errors become
    InternalError."""

    def __init__(self, conn: apsw.Connection, synchronous: str) -> None:
        self.conn = conn
        self.synchronous = synchronous

    def __enter__(self) -> None:
        self.conn.execute(f"PRAGMA synchronous={self.synchronous}")
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self.conn.execute("COMMIT")
                return
            except apsw.Error as failure:
                exc = failure
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        if isinstance(exc, apsw.Error) and not isinstance(exc, Error):
            raise InternalError(f"storage failure: {exc}") from exc
