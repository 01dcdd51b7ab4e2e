"""One node's SQLite database: the user's tables, the replication log and the node's
durable state, all in one file, so one SQLite transaction covers data and log.

- Leader: ``execute_write`` runs the client's statements, captures their changes and
  appends the log record in the same transaction (and records it as applied).
- Follower: ``persist`` stores entries (durably, before acknowledging them); ``apply``
  applies committed ones and records the applied index in the same transaction, so a
  crash can neither lose nor repeat an apply.
- Rollback: truncating entries that were already applied (a deposed leader's
  unreplicated writes) undoes them with inverted changesets and keeps each one in
  ``replidb_discarded``; nothing is dropped silently.

Durability: the log and hard state are written with ``synchronous=FULL`` (fsync on
commit); applies use ``NORMAL`` because the log can always redo them.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import msgspec

from replidb.core.messages import Entry, EntryKind, HardState
from replidb.errors import BadRequest, Error, InternalError
from replidb.storage.executor import (
    REPLICATED_INTERNAL_TABLES,
    NeedsWrite,
    capture_changes,
    install_guard,
    run_statements,
    translate,
)
from replidb.storage.rowid_guard import LEASE_CHUNK, max_inserted_keys
from replidb.stream.logical import (
    DDL,
    Changes,
    Segment,
    WriteRecord,
    decode_record,
    encode_record,
    row_changes,
)
from replidb.transport.wire import Statement, StatementResult

__all__ = ["SQLiteStore", "WriteOutcome", "describe_record"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replidb_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replidb_log(
    idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, kind INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS replidb_discarded(
    id INTEGER PRIMARY KEY, term INTEGER NOT NULL, idx INTEGER NOT NULL,
    changes TEXT NOT NULL, record BLOB NOT NULL, discarded_at TEXT NOT NULL,
    reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replidb_rowid_leases(tbl TEXT PRIMARY KEY, ceiling INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS replidb_client_sessions(
    client_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, result BLOB NOT NULL,
    idx INTEGER NOT NULL);
"""
_CREATE_RE = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"((?:\"[^\"]+\"|`[^`]+`|\[[^\]]+\]|[\w.]+))",
    re.IGNORECASE,
)
_results_encoder = msgspec.msgpack.Encoder()
_results_decoder = msgspec.msgpack.Decoder(list[StatementResult])


class WriteOutcome(msgspec.Struct, frozen=True):
    results: list[StatementResult]
    data: bytes | None  # the log record to propose; None if nothing changed
    duplicate: bool = False  # a retried write that was already applied
    index: int = 0  # for a duplicate: the log index of the original
    needs_commit: bool = False  # raised an id lease: acknowledge only once committed


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        try:
            self.writer = apsw.Connection(str(path))
            self.writer.execute("PRAGMA journal_mode=WAL")
            self.writer.execute("PRAGMA synchronous=FULL")
            self.writer.execute(_SCHEMA)
            self.reader = apsw.Connection(str(path))
            self.reader.execute("PRAGMA query_only=ON")
        except apsw.Error as exc:
            raise InternalError(f"cannot open database {path}: {exc}") from None
        for conn in (self.writer, self.reader):
            conn.set_busy_timeout(5000)
        self._writer_guard = install_guard(self.writer)
        self._reader_guard = install_guard(self.reader)
        self._last_index, self._last_term = self._load_last()

    def close(self) -> None:
        self.reader.close()
        self.writer.close()

    # ---- LogReader (for the core) ----------------------------------------------

    def last_index(self) -> int:
        return self._last_index

    def term(self, index: int) -> int:
        if index <= 0:
            return 0
        if index == self._last_index:
            return self._last_term
        row = self.writer.execute("SELECT term FROM replidb_log WHERE idx=?", (index,)).fetchone()
        return int(row[0]) if row else 0

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        out: list[Entry] = []
        size = 0
        for idx, term, kind, data in self.writer.execute(
            "SELECT idx, term, kind, data FROM replidb_log WHERE idx BETWEEN ? AND ? ORDER BY idx",
            (lo, hi),
        ):
            if out and size + len(data) > max_bytes:
                break
            out.append(Entry(term, idx, kind, data))
            size += len(data)
        return out

    # ---- durable node state ----------------------------------------------------

    def _meta(self, key: str, default: Any = None) -> Any:
        row = self.writer.execute("SELECT value FROM replidb_meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def _set_meta(self, key: str, value: Any) -> None:
        self.writer.execute(
            "INSERT INTO replidb_meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def hard_state(self) -> HardState:
        return HardState(int(self._meta("term", 0)), self._meta("vote"))

    def applied_index(self) -> int:
        return int(self._meta("applied_index", 0))

    def discarded_count(self) -> int:
        row = self.writer.execute("SELECT count(*) FROM replidb_discarded").fetchone()
        return int(row[0]) if row else 0

    def _load_last(self) -> tuple[int, int]:
        row = self.writer.execute(
            "SELECT idx, term FROM replidb_log ORDER BY idx DESC LIMIT 1"
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # ---- follower path: persist, then apply ------------------------------------

    def persist(
        self, hard_state: HardState | None, truncate_from: int | None, entries: Sequence[Entry]
    ) -> None:
        """Make a Ready's durable part durable, in one fsynced transaction."""
        with self._transaction(synchronous="FULL"):
            if hard_state is not None:
                self._set_meta("term", hard_state.term)
                self._set_meta("vote", hard_state.vote)
            if truncate_from is not None:
                self._truncate(truncate_from)
            self.writer.executemany(
                "INSERT OR REPLACE INTO replidb_log(idx, term, kind, data) VALUES(?, ?, ?, ?)",
                [(e.index, e.term, e.kind, e.data) for e in entries],
            )
        self._last_index, self._last_term = self._load_last()

    def apply(self, entries: Sequence[Entry]) -> None:
        """Apply committed entries in order and record the applied index atomically."""
        if not entries:
            return
        with self._transaction(synchronous="NORMAL"):
            for entry in entries:
                if entry.kind == EntryKind.WRITE:
                    self._apply_record(entry)
            self._set_meta("applied_index", entries[-1].index)

    def _apply_record(self, entry: Entry) -> None:
        record = decode_record(entry.data)
        for segment in record.segments:
            if isinstance(segment, DDL):
                self.writer.execute(segment.sql)
            else:
                apsw.Changeset.apply(segment.changeset, self.writer, conflict=_refuse_conflict)

    def _truncate(self, index: int) -> None:
        applied = self.applied_index()
        if index <= applied:
            rows = self.writer.execute(
                "SELECT idx, term, kind, data FROM replidb_log WHERE idx BETWEEN ? AND ? "
                "ORDER BY idx DESC",
                (index, applied),
            ).fetchall()
            now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
            for idx, term, kind, data in rows:
                if kind == EntryKind.WRITE:
                    assert isinstance(data, bytes)
                    record = decode_record(data)
                    self._undo_record(record)
                    self.writer.execute(
                        "INSERT INTO replidb_discarded"
                        "(term, idx, changes, record, discarded_at, reason) "
                        "VALUES(?, ?, ?, ?, ?, ?)",
                        (
                            term,
                            idx,
                            describe_record(record),
                            data,
                            now,
                            "not in the new leader's log",
                        ),
                    )
            self._set_meta("applied_index", index - 1)
        self.writer.execute("DELETE FROM replidb_log WHERE idx >= ?", (index,))

    def _undo_record(self, record: WriteRecord) -> None:
        for segment in reversed(record.segments):
            if isinstance(segment, Changes):
                inverse = apsw.Changeset.invert(segment.changeset)
                apsw.Changeset.apply(inverse, self.writer, conflict=_refuse_conflict)
                continue
            if segment.undo is not None:
                for statement in segment.undo:
                    self.writer.execute(statement)
                continue
            created = _CREATE_RE.match(segment.sql)  # records written before undo existed
            if created is None:
                raise InternalError(
                    f"cannot roll back DDL {segment.sql!r}: this node needs a resync"
                )
            kind, name = created.group(1).upper(), created.group(2)
            self.writer.execute(f"DROP {kind} IF EXISTS {name}")

    # ---- leader path -----------------------------------------------------------

    def execute_read(self, statements: Sequence[Statement]) -> list[StatementResult]:
        """Run on the read-only connection; NeedsWrite if any statement writes."""
        conn = self.reader
        conn.execute("BEGIN")
        self._reader_guard.user = True
        try:
            return run_statements(conn, statements)
        except apsw.ReadOnlyError:
            raise NeedsWrite() from None
        except (apsw.Error, TypeError, ValueError, OverflowError) as exc:
            raise translate(exc, self._reader_guard) from None
        finally:
            self._reader_guard.user = False
            conn.execute("ROLLBACK")

    def execute_write(
        self,
        statements: Sequence[Statement],
        term: int,
        index: int,
        client_id: str = "",
        seq: int = 0,
        dry_run: bool = False,
    ) -> WriteOutcome:
        """Run a client transaction; if it changed anything, append its record at
        ``(term, index)`` and mark it applied, all in one durable transaction."""
        conn = self.writer
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            if client_id and not dry_run:
                previous = self._previous_result(client_id, seq)
                if previous is not None:
                    return WriteOutcome(previous[0], None, duplicate=True, index=previous[1])

            leased = False

            def remember(results: list[StatementResult], segments: list[Segment]) -> None:
                # Inside the capture, so these rows travel with the record: a retry is
                # recognised, and a raised id lease holds, on whichever node leads next.
                nonlocal leased
                if not dry_run:
                    leased = self._raise_leases(segments)
                if client_id and not dry_run:
                    conn.execute(
                        "INSERT INTO replidb_client_sessions(client_id, seq, result, idx) "
                        "VALUES(?, ?, ?, ?) ON CONFLICT(client_id) DO UPDATE SET "
                        "seq=excluded.seq, result=excluded.result, idx=excluded.idx",
                        (client_id, seq, _results_encoder.encode(results), index),
                    )

            results, segments = capture_changes(conn, statements, self._writer_guard, remember)
            if dry_run or not any(
                isinstance(s, DDL) or not _only_sessions(s.changeset) for s in segments
            ):
                return WriteOutcome(results, None)
            schema = conn.execute("PRAGMA schema_version").fetchone()
            data = encode_record(
                WriteRecord(segments, schema_version=int(schema[0]) if schema else 0)
            )
            needs_commit = leased
            conn.execute(
                "INSERT INTO replidb_log(idx, term, kind, data) VALUES(?, ?, ?, ?)",
                (index, term, EntryKind.WRITE, data),
            )
            self._set_meta("applied_index", index)
            conn.execute("COMMIT")
            committed = True
            self._last_index, self._last_term = index, term
            return WriteOutcome(results, data, needs_commit=needs_commit)
        except (apsw.Error, TypeError, ValueError, OverflowError) as exc:
            raise translate(exc, self._writer_guard) from None
        finally:
            if not committed:
                conn.execute("ROLLBACK")

    def _raise_leases(self, segments: list[Segment]) -> bool:
        """Raise the id lease of every table this write inserted keys above it in."""
        raised = False
        for table, key in sorted(max_inserted_keys(segments).items()):
            if table in REPLICATED_INTERNAL_TABLES:
                continue
            row = self.writer.execute(
                "SELECT ceiling FROM replidb_rowid_leases WHERE tbl=?", (table,)
            ).fetchone()
            if row is None or key > row[0]:
                self.writer.execute(
                    "INSERT INTO replidb_rowid_leases(tbl, ceiling) VALUES(?, ?) "
                    "ON CONFLICT(tbl) DO UPDATE SET ceiling=excluded.ceiling",
                    (table, key + LEASE_CHUNK),
                )
                raised = True
        return raised

    def raise_rowid_floors(self) -> int:
        """A new leader's first duty: allocate above every committed id lease, so ids a
        discarded write handed out are never handed out again. Returns tables raised."""
        with self._transaction(synchronous="FULL"):
            leases = self.writer.execute(
                "SELECT l.tbl, l.ceiling FROM replidb_rowid_leases AS l "
                "JOIN sqlite_schema AS s ON s.name = l.tbl AND s.type = 'table' "
                "WHERE s.sql LIKE '%AUTOINCREMENT%'"
            ).fetchall()
            for table, ceiling in leases:
                self.writer.execute(
                    "UPDATE sqlite_sequence SET seq=? WHERE name=? AND seq < ?",
                    (ceiling, table, ceiling),
                )
                if not self.writer.execute(
                    "SELECT 1 FROM sqlite_sequence WHERE name=?", (table,)
                ).fetchone():
                    self.writer.execute(
                        "INSERT INTO sqlite_sequence(name, seq) VALUES(?, ?)", (table, ceiling)
                    )
        return len(leases)

    def _previous_result(
        self, client_id: str, seq: int
    ) -> tuple[list[StatementResult], int] | None:
        row = self.writer.execute(
            "SELECT seq, result, idx FROM replidb_client_sessions WHERE client_id=?",
            (client_id,),
        ).fetchone()
        if row is None or seq > row[0]:
            return None
        if seq == row[0]:
            return _results_decoder.decode(row[1]), int(row[2])
        raise BadRequest(f"write {seq} of client {client_id} is older than its last ({row[0]})")

    # ---- helpers ---------------------------------------------------------------

    def _transaction(self, synchronous: str) -> _Txn:
        return _Txn(self.writer, synchronous)


class _Txn:
    def __init__(self, conn: apsw.Connection, synchronous: str) -> None:
        self.conn = conn
        self.synchronous = synchronous

    def __enter__(self) -> None:
        self.conn.execute(f"PRAGMA synchronous={self.synchronous}")
        # Replicated changes already include what triggers did on the leader; firing
        # them again here would apply those effects twice.
        self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.conn.execute("COMMIT" if exc is None else "ROLLBACK")
        finally:
            self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
        if exc is None:
            return
        if isinstance(exc, apsw.Error) and not isinstance(exc, Error):
            raise InternalError(f"storage failure: {exc}") from exc


def describe_record(record: WriteRecord) -> str:
    """A logical record as JSON a user can query with SQLite's JSON functions:
    ``[{"table": "t", "op": "INSERT", "key": {"id": 1}, "before": null,
    "after": {"id": 1, "v": "x"}}, {"ddl": "..."}]``; blobs appear as ``{"hex": ...}``."""
    out: list[dict[str, Any]] = []
    for change in row_changes(record):
        if isinstance(change, DDL):
            out.append({"ddl": change.sql})
        elif not change.table.startswith("replidb_"):  # bookkeeping, not the user's data
            out.append(
                {
                    "table": change.table,
                    "op": change.op,
                    "key": _json_values(change.key),
                    "before": _json_values(change.before),
                    "after": _json_values(change.after),
                }
            )
    return json.dumps(out, separators=(",", ":"))


def _json_values(values: dict[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    return {k: {"hex": v.hex()} if isinstance(v, bytes) else v for k, v in values.items()}


def _only_sessions(changeset: bytes) -> bool:
    """True if a changeset touches nothing but replidb_client_sessions (a read-only
    transaction's bookkeeping, which need not be logged)."""
    return all(c.name == "replidb_client_sessions" for c in apsw.Changeset.iter(changeset))


def _refuse_conflict(reason: int, change: Any) -> int:
    """Replicas apply the same changes to the same state, so a conflict means divergence:
    stop rather than guess (the caller reports it as an internal error)."""
    del reason, change
    return int(apsw.SQLITE_CHANGESET_ABORT)
