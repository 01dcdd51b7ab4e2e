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
- Stream formats: ``logical`` logs row changes. ``statement`` logs the client's SQL with
  the leader's context (time, random seed, AUTOINCREMENT counters; storage/determinism.py)
  and every replica runs it again; what cannot replay identically is refused.
  ``mixed`` logs statements where they replay identically and rows where they do not.
  A node keeps the rows its own replay changed in ``replidb_undo`` until the entry is
  committed, so it can still roll an entry back and say what it discarded.
- Compaction and snapshots: the applied prefix of the log can be deleted (``compact``);
  a follower that needs what is gone installs a copy of the leader's database instead
  (``create_snapshot`` / ``install_snapshot``; the files: storage/snapshot_files.py).

Durability: the log and hard state are written with ``synchronous=FULL`` (fsync on
commit); applies use ``NORMAL`` because the log can always redo them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw
import msgspec

from replidb.core.messages import Entry, EntryKind, HardState
from replidb.errors import Error, InternalError, Unavailable
from replidb.storage import partial_snapshot, sessions, snapshot_files
from replidb.storage.determinism import DeterministicWriter
from replidb.storage.executor import (
    capture_changes,
    changes_data,
    check_expected,
    install_guard,
    open_connections,
    run_read,
    translate,
)
from replidb.storage.node_log import LOG_SCHEMA, NodeLogTables
from replidb.storage.snapshot_files import SnapshotInfo
from replidb.storage.statement_mode import (
    RefusalCache,
    autoincrement_counters,
    digest,
    enter_context,
    replay,
)
from replidb.stream.logical import (
    DDL,
    Changes,
    Replay,
    Segment,
    WriteRecord,
    decode_record,
    encode_record,
    row_changes,
)
from replidb.transport.wire import Statement, StatementResult

__all__ = [
    "SQLiteStore",
    "SnapshotInfo",
    "WriteOutcome",
    "WriteRequest",
    "describe_record",
]

_SCHEMA = (
    LOG_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS replidb_rowid_leases(tbl TEXT PRIMARY KEY, ceiling INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS replidb_client_sessions(
    client_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, result BLOB NOT NULL,
    idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS replidb_undo(idx INTEGER PRIMARY KEY, record BLOB NOT NULL);
"""
)
STREAMS = ("logical", "statement", "mixed")
log = logging.getLogger("replidb.storage")
_CREATE_RE = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"((?:\"[^\"]+\"|`[^`]+`|\[[^\]]+\]|[\w.]+))",
    re.IGNORECASE,
)


class WriteOutcome(msgspec.Struct, frozen=True):
    results: list[StatementResult]
    data: bytes | None  # the log record to propose; None if nothing changed
    duplicate: bool = False  # a retried write that was already applied
    index: int = 0  # for a duplicate: the log index of the original
    needs_commit: bool = False  # raised an id lease: acknowledge only once committed


class WriteRequest(msgspec.Struct, frozen=True):
    """One client transaction for ``execute_batch``."""

    statements: Sequence[Statement]
    client_id: str = ""
    seq: int = 0
    dry_run: bool = False
    expect: str = ""  # digest of the results the client saw (interactive transactions)
    expect_count: int = 0


class SQLiteStore(NodeLogTables):
    def __init__(
        self,
        path: Path,
        stream: str = "logical",
        row_images: str = "minimal",
        clock: Any = time.time,
        subscription: Sequence[str] = (),
    ) -> None:
        if stream not in STREAMS:
            raise ValueError(f"unknown stream format {stream!r}: choose {', '.join(STREAMS)}")
        if row_images not in ("minimal", "full"):
            raise ValueError(f"unknown row images {row_images!r}: choose minimal or full")
        self.stream = stream
        self.full_images = row_images == "full"
        self._clock = clock
        self._refusals = RefusalCache(refuse=stream == "statement")
        # AUTOINCREMENT counters followers may not share (raised outside the log, by
        # raise_rowid_floors); None: unknown since this process started, so all.
        self._unsynced_counters: set[str] | None = None
        self._deterministic: DeterministicWriter | None = None
        self._partial: Any = None
        self.subscription: Any = None
        self._subscription_specs = tuple(subscription)
        if subscription:
            from replidb.storage.subscription import parse_subscription

            self.subscription = parse_subscription(subscription)  # ValueError if bad
        self.path = path
        snapshot_files.remove_install_leftovers(path)
        self._open()

    def _open(self) -> None:
        """Open the connections (again, after a snapshot replaced the file)."""
        path = self.path
        self._deterministic = None

        def make_writer() -> apsw.Connection:
            if self.stream == "logical":
                return apsw.Connection(str(path))
            self._deterministic = DeterministicWriter(path)
            return self._deterministic.conn

        self.writer, self.reader = open_connections(path, _SCHEMA, make_writer)
        self._log_db = self.writer
        self._writer_guard = install_guard(self.writer)
        self._reader_guard = install_guard(self.reader)
        self._partial = None
        if self.subscription is not None:
            from replidb.storage.subscription import PartialApplier

            # A partial replica applies the subscribed subset of each record.
            self._partial = PartialApplier(self.writer, self.subscription)
        self._last_index, self._last_term = self._load_last()

    def close(self) -> None:
        self.reader.close()
        if self._deterministic is not None:
            self._deterministic.close()
        else:
            self.writer.close()

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
        if self._partial is not None:
            self._partial.apply(record)
            return
        done: list[Segment] = []  # what this node changed, for a rollback
        replayed = False
        for segment in record.segments:
            if isinstance(segment, Replay):
                if self._deterministic is None:
                    raise InternalError(
                        f"entry {entry.index} is a statement record but this node runs "
                        "--stream logical: restart it with --stream statement or mixed "
                        "until it has caught up"
                    )
                done.extend(
                    replay(
                        self.writer, self._writer_guard, self._deterministic, segment, entry.index
                    )
                )
                replayed = True
                continue
            if isinstance(segment, DDL):
                self.writer.execute(segment.sql)
            else:
                apsw.Changeset.apply(segment.changeset, self.writer, conflict=_refuse_conflict)
            done.append(segment)
        if replayed:
            self._keep_undo(entry.index, done)

    def _keep_undo(self, index: int, segments: list[Segment]) -> None:
        self.writer.execute(
            "INSERT OR REPLACE INTO replidb_undo(idx, record) VALUES(?, ?)",
            (index, encode_record(WriteRecord(segments))),
        )

    def note_committed(self, index: int) -> None:
        """Entries up to ``index`` are committed and never rolled back: drop their undo."""
        if self.stream != "logical":
            self.writer.execute("DELETE FROM replidb_undo WHERE idx <= ?", (index,))

    def _truncate(self, index: int) -> None:
        if index <= self.snapshot_position()[0]:
            raise InternalError(f"cannot truncate the log at {index}: it is compacted there")
        applied = self.applied_index()
        if index <= applied and self._partial is not None:
            # Learners apply committed entries only, so this cannot happen short of a bug.
            raise InternalError("a partial replica cannot roll back applied entries: resync it")
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
                    record = self._local_record(idx, data)  # type: ignore[arg-type]
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
        self.writer.execute("DELETE FROM replidb_undo WHERE idx >= ?", (index,))

    def _local_record(self, index: int, data: bytes) -> WriteRecord:
        """The rows this node changed for an entry: the logged record itself, or for a
        statement entry, what the local run recorded in replidb_undo."""
        record = decode_record(data)
        if not any(isinstance(s, Replay) for s in record.segments):
            return record
        row = self.writer.execute(
            "SELECT record FROM replidb_undo WHERE idx=?", (index,)
        ).fetchone()
        if row is None:
            raise InternalError(f"no undo kept for statement entry {index}: needs a resync")
        return decode_record(row[0])

    def _undo_record(self, record: WriteRecord) -> None:
        for segment in reversed(record.segments):
            if isinstance(segment, Replay):
                raise InternalError("a statement record cannot be undone by itself")
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
        return run_read(self.reader, self._reader_guard, statements)

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
        """Run a client transaction; if it changed anything, append its record at
        ``(term, index)`` and mark it applied, all in one durable transaction."""
        request = WriteRequest(statements, client_id, seq, dry_run, expect, expect_count)
        (outcome,) = self.execute_batch([request], term, index)
        if isinstance(outcome, Error):
            raise outcome
        return outcome

    def execute_batch(
        self, requests: Sequence[WriteRequest], term: int, first_index: int
    ) -> list[WriteOutcome | Error]:
        """Group commit: run several client transactions in one SQLite transaction, so
        one fsync makes them all durable. Each runs in its own savepoint: one that fails
        (its error is returned in its place) or changes nothing leaves no trace, and
        the others are unaffected. Those that change something take consecutive log
        indexes from ``first_index``, in request order. A failure of the transaction
        itself (the disk) raises, and none of them happened."""
        conn = self.writer
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        committed = False
        outcomes: list[WriteOutcome | Error] = []
        after_commit: list[Callable[[], None]] = []
        index = first_index
        try:
            for request in requests:
                conn.execute("SAVEPOINT replidb_write")
                outcome: WriteOutcome | Error
                try:
                    outcome = self._write_one(conn, request, term, index, after_commit)
                except Error as exc:
                    outcome = exc
                except (apsw.Error, TypeError, ValueError, OverflowError) as exc:
                    outcome = translate(exc, self._writer_guard)
                if isinstance(outcome, Error) or outcome.data is None:
                    conn.execute("ROLLBACK TO replidb_write")
                else:
                    index += 1
                conn.execute("RELEASE replidb_write")
                outcomes.append(outcome)
            if index > first_index:
                self._set_meta("applied_index", index - 1)
                conn.execute("COMMIT")
                committed = True
                self._last_index, self._last_term = index - 1, term
                for finish in after_commit:
                    finish()
            return outcomes
        except (apsw.Error, TypeError, ValueError, OverflowError) as exc:
            raise translate(exc, self._writer_guard) from None
        finally:
            if not committed and conn.in_transaction:  # (some errors end it themselves)
                conn.execute("ROLLBACK")

    def _write_one(
        self,
        conn: apsw.Connection,
        request: WriteRequest,
        term: int,
        index: int,
        after_commit: list[Callable[[], None]],
    ) -> WriteOutcome:
        """One client transaction inside the batch's transaction (execute_batch)."""
        statements, client_id, seq, dry_run = (
            request.statements,
            request.client_id,
            request.seq,
            request.dry_run,
        )
        as_sql = self.stream != "logical" and not dry_run and self._refusals.check(statements)
        if client_id and not dry_run:
            previous = sessions.previous_result(conn, client_id, seq)
            if previous is not None:
                return WriteOutcome(previous[0], None, duplicate=True, index=previous[1])

        leased = False
        user_segments = 0

        def remember(results: list[StatementResult], segments: list[Segment]) -> None:
            # Inside the capture, so these rows travel with the record: a retry is
            # recognised, and a raised id lease holds, on whichever node leads next.
            nonlocal leased, user_segments
            user_segments = len(segments)
            if not dry_run:
                leased = sessions.raise_leases(conn, segments)
            if client_id and not dry_run:
                sessions.remember_result(conn, client_id, seq, results, index)

        context: Replay | None = None
        if as_sql:
            assert self._deterministic is not None
            context = enter_context(self._deterministic, statements, self._clock())
        try:
            results, segments = capture_changes(
                conn, statements, self._writer_guard, remember, self.full_images
            )
            check_expected(results, request.expect, request.expect_count)
            counters = autoincrement_counters(conn) if context else {}
        finally:
            if self._deterministic is not None:
                self._deterministic.leave()
        if dry_run or not changes_data(segments):
            return WriteOutcome(results, None)
        schema = conn.execute("PRAGMA schema_version").fetchone()
        logged: list[Segment] = segments
        if context is not None:
            unsynced = self._unsynced_counters
            bumped = {
                t: n
                for t, n in context.sequences.items()
                if counters.get(t) != n and (unsynced is None or t in unsynced)
            }
            logged = [
                msgspec.structs.replace(
                    context, sequences=bumped, digest=digest(segments[:user_segments])
                ),
                *segments[user_segments:],
            ]
            self._keep_undo(index, segments)

            def synced() -> None:  # what was shipped is now in step on every replica
                unsynced = self._unsynced_counters
                base = set(counters) if unsynced is None else unsynced
                self._unsynced_counters = base - set(bumped)

            after_commit.append(synced)
        data = encode_record(
            WriteRecord(
                logged,
                schema_version=int(schema[0]) if schema else 0,
                commit_ms=int(self._clock() * 1000),
            )
        )
        conn.execute(
            "INSERT INTO replidb_log(idx, term, kind, data) VALUES(?, ?, ?, ?)",
            (index, term, EntryKind.WRITE, data),
        )
        return WriteOutcome(results, data, needs_commit=leased)

    def raise_rowid_floors(self) -> int:
        """A new leader's first duty (storage/sessions.py). Returns tables raised."""
        with self._transaction(synchronous="FULL"):
            raised = sessions.raise_rowid_floors(self.writer)
            tables = {
                str(r[0]) for r in self.writer.execute("SELECT tbl FROM replidb_rowid_leases")
            }
        if self._unsynced_counters is not None:
            self._unsynced_counters |= tables  # changed outside the log
        return raised

    # ---- snapshots (file work in storage/snapshot_files.py) -------------------

    def create_snapshot(self, directory: Path, committed_index: int | None = None) -> SnapshotInfo:
        """A snapshot of the data in ``directory``, at the applied position, or at
        ``committed_index`` if that is lower (a leader applies its writes before they
        commit; those are rolled back in the copy, since one may never commit). Uses
        connections of its own: safe in a worker thread while this store serves."""
        if self._partial is not None:
            raise InternalError("a partial replica holds a subset: it cannot make a snapshot")
        directory.mkdir(parents=True, exist_ok=True)
        raw = directory / f".copy-{os.getpid()}-{time.monotonic_ns()}.tmp"
        try:
            snapshot_files.copy_database(self.path, raw)
            copy = SQLiteStore(raw, stream=self.stream)
            try:
                index = copy.applied_index()
                if committed_index is not None and committed_index < index:
                    if committed_index < copy.first_index() - 1:
                        raise InternalError(
                            f"cannot snapshot at {committed_index}: the log was compacted "
                            f"to {copy.first_index() - 1}"
                        )
                    term = copy.term(committed_index)
                    with copy._transaction(synchronous="OFF"):
                        copy._truncate(committed_index + 1)
                    index = committed_index
                else:
                    term = copy.term(index)
                return snapshot_files.finish_snapshot(
                    copy.writer, directory, index, term, copy.membership_at(index)
                )
            finally:
                copy.close()
        finally:
            snapshot_files.remove_database(raw)

    def install_snapshot(
        self, path: Path, index: int, term: int, committed_index: int, membership: bytes = b""
    ) -> int:
        """Replace this node's database with the snapshot at ``path`` (position
        ``index``/``term``, ``membership`` in force there), keeping its term, vote and
        discarded transactions, and
        describing into replidb_discarded what it applied above ``committed_index``
        (an ex-leader's unreplicated writes). Returns how many it described."""
        if self._partial is None:
            return self._install(path, index, term, committed_index, membership)
        # A partial replica installs its filtered subset of the leader's full copy.
        filtered = self.path.with_name(self.path.name + ".filtered")
        try:
            self._build_filtered(path, filtered, index, term)
            return self._install(filtered, index, term, committed_index, membership)
        finally:
            snapshot_files.remove_database(filtered)

    def _build_filtered(self, snapshot: Path, dest: Path, index: int, term: int) -> None:
        snapshot_files.remove_database(dest)
        fresh = SQLiteStore(dest, stream=self.stream, subscription=self._subscription_specs)
        try:
            kept = partial_snapshot.fill_from_snapshot(
                fresh.writer, fresh._partial, snapshot, index, term
            )
        finally:
            fresh.close()  # (the last connection: its WAL is checkpointed into the file)
        log.info("filtered snapshot at %d for this partial replica: %d rows kept", index, kept)

    def _install(
        self, path: Path, index: int, term: int, committed_index: int, membership: bytes
    ) -> int:
        applied = self.applied_index()
        if index < min(applied, committed_index):
            raise ValueError(
                f"snapshot at {index} is older than the committed state applied here "
                f"({min(applied, committed_index)})"
            )
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        lost = [
            (t, idx, describe_record(rec), data, now, "replaced by a snapshot from the leader")
            for idx, t, data, rec in self._unreplicated(index, term, committed_index)
        ]
        own = self.writer.execute(
            "SELECT id, term, idx, changes, record, discarded_at, reason FROM replidb_discarded"
        ).fetchall()
        try:
            hard = self.hard_state()
            snapshot_files.prepare_install(
                path, self.path, index, term, hard, own, lost, membership
            )
        except BaseException:
            snapshot_files.remove_install_leftovers(self.path)
            raise
        busy = self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy is None or busy[0]:
            snapshot_files.remove_install_leftovers(self.path)
            raise Unavailable("cannot install a snapshot now: another connection is reading")
        self.close()
        try:
            snapshot_files.replace_database(self.path)
        except OSError as exc:
            raise InternalError(f"cannot install the snapshot: {exc}") from None
        finally:
            self._open()  # the new file, or the old one if the swap failed
            self._unsynced_counters = None
        return len(lost)

    def _unreplicated(
        self, index: int, term: int, committed_index: int
    ) -> list[tuple[int, int, bytes, WriteRecord]]:
        """The writes applied here above ``committed_index`` that the snapshot does not
        hold: (index, term, logged data, the rows changed here). If this log has the
        snapshot's entry (same term), everything up to it is the leader's too."""
        lo = committed_index + 1
        if self.term(index) == term and term:
            lo = max(lo, index + 1)
        out = []
        for idx, t, kind, data in self.writer.execute(
            "SELECT idx, term, kind, data FROM replidb_log WHERE idx BETWEEN ? AND ? ORDER BY idx",
            (lo, self.applied_index()),
        ).fetchall():
            if kind != EntryKind.WRITE:
                continue
            assert isinstance(idx, int) and isinstance(t, int) and isinstance(data, bytes)
            try:
                record = self._local_record(idx, data)
            except InternalError:  # no undo kept: describe the statements instead
                record = decode_record(data)
            out.append((idx, t, data, record))
        return out

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
        elif isinstance(change, Replay):
            out.append({"statements": [st.sql for st in change.statements]})
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


def _refuse_conflict(reason: int, change: Any) -> int:
    """Replicas apply the same changes to the same state, so a conflict means divergence:
    stop rather than guess (the caller reports it as an internal error)."""
    del reason, change
    return int(apsw.SQLITE_CHANGESET_ABORT)
