"""The replication log and a node's durable state as SQLite tables, shared by every
store: ``replidb_log`` (the entries), ``replidb_meta`` (term, vote, applied index, …)
and ``replidb_discarded`` (what failovers rolled back, kept, never dropped).

Compaction deletes a prefix of the log once it is applied, so the log cannot grow
without bound; ``snapshot_index``/``snapshot_term`` in ``replidb_meta`` remember the
last entry deleted, because the core still asks for its term (the consistency check of
the next append) and the log's end must stay known when nothing is left in it.
``membership`` there is the cluster membership in force at that point (the newest
CONFIG entry compacted away, or the one a snapshot brought), so that membership
survives compaction and installs.

A store mixes ``NodeLogTables`` in and points ``_log_db`` at the connection that holds
these tables (the one data file for logical/statement/mixed, node.db for wal).
"""

from __future__ import annotations

from typing import Any

import apsw

from replidb.core.messages import Entry, EntryKind, HardState
from replidb.errors import InternalError

__all__ = ["LOG_SCHEMA", "NodeLogTables", "membership_at"]

LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS replidb_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replidb_log(
    idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, kind INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS replidb_log_configs ON replidb_log(idx) WHERE kind = 2;
CREATE TABLE IF NOT EXISTS replidb_discarded(
    id INTEGER PRIMARY KEY, term INTEGER NOT NULL, idx INTEGER NOT NULL,
    changes TEXT NOT NULL, record BLOB NOT NULL, discarded_at TEXT NOT NULL,
    reason TEXT NOT NULL);
"""


def membership_at(conn: apsw.Connection, index: int) -> bytes:
    """The encoded membership in force at ``index`` in the log tables on ``conn``: the
    newest CONFIG entry at or below it, else the one recorded at the compaction point
    (b"" if the cluster never changed its membership: the command line's holds)."""
    # (the literal 2 = EntryKind.CONFIG lets SQLite use the partial index)
    row = conn.execute(
        "SELECT data FROM replidb_log WHERE kind = 2 AND idx <= ? ORDER BY idx DESC LIMIT 1",
        (index,),
    ).fetchone()
    if row is None:
        row = conn.execute("SELECT value FROM replidb_meta WHERE key = 'membership'").fetchone()
    return bytes(row[0]) if row and isinstance(row[0], bytes) else b""


class NodeLogTables:
    """The core's LogReader and the node's durable state, over ``_log_db``."""

    _log_db: apsw.Connection
    _last_index: int
    _last_term: int

    # ---- LogReader (for the core) ----------------------------------------------

    def last_index(self) -> int:
        return self._last_index

    def first_index(self) -> int:
        """The first index still in the log (1 + the last compacted one)."""
        return self.snapshot_position()[0] + 1

    def term(self, index: int) -> int:
        """The entry's term; the snapshot's term at the snapshot index; 0 for entries
        compacted away below it (the core asks no more once it knows first_index)."""
        if index <= 0:
            return 0
        if index == self._last_index:
            return self._last_term
        row = self._log_db.execute("SELECT term FROM replidb_log WHERE idx=?", (index,)).fetchone()
        if row:
            return int(row[0])
        snapshot_index, snapshot_term = self.snapshot_position()
        return snapshot_term if index == snapshot_index else 0

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        out: list[Entry] = []
        size = 0
        for idx, term, kind, data in self._log_db.execute(
            "SELECT idx, term, kind, data FROM replidb_log WHERE idx BETWEEN ? AND ? ORDER BY idx",
            (lo, hi),
        ):
            if out and size + len(data) > max_bytes:
                break
            out.append(Entry(term, idx, kind, data))
            size += len(data)
        return out

    def configs(self) -> list[Entry]:
        """The membership at the compaction point (as an entry there), then every CONFIG
        entry in the log. A scan of the log: called once, when the node starts."""
        out: list[Entry] = []
        base = self._meta("membership")
        if base:
            index, term = self.snapshot_position()
            out.append(Entry(term, index, EntryKind.CONFIG, bytes(base)))
        out.extend(
            Entry(term, idx, kind, data)
            for idx, term, kind, data in self._log_db.execute(
                # (the literal 2 = EntryKind.CONFIG lets SQLite use the partial index)
                "SELECT idx, term, kind, data FROM replidb_log WHERE kind = 2 ORDER BY idx"
            )
        )
        return out

    def membership_at(self, index: int) -> bytes:
        """The encoded membership in force at ``index`` (see ``membership_at``)."""
        return membership_at(self._log_db, index)

    # ---- durable node state ----------------------------------------------------

    def _meta(self, key: str, default: Any = None) -> Any:
        row = self._log_db.execute("SELECT value FROM replidb_meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def _set_meta(self, key: str, value: Any) -> None:
        self._log_db.execute(
            "INSERT INTO replidb_meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def hard_state(self) -> HardState:
        return HardState(int(self._meta("term", 0)), self._meta("vote"))

    def applied_index(self) -> int:
        return int(self._meta("applied_index", 0))

    def discarded_count(self) -> int:
        row = self._log_db.execute("SELECT count(*) FROM replidb_discarded").fetchone()
        return int(row[0]) if row else 0

    def snapshot_position(self) -> tuple[int, int]:
        """(index, term) of the last entry compacted away or installed; (0, 0) if none."""
        return int(self._meta("snapshot_index", 0)), int(self._meta("snapshot_term", 0))

    def log_stats(self) -> tuple[int, int]:
        """(entries, bytes of entry data) in the retained log."""
        row = self._log_db.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM replidb_log"
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def compact(self, up_to: int) -> int:
        """Delete the log up to ``up_to`` (and the undo kept for it); returns how many
        entries went. ``up_to`` must be applied (ValueError otherwise), and the caller
        keeps it at or below the commit index: an uncommitted entry may still have to
        be rolled back, which needs it in the log. Cheap when called often: the delete
        is a range of the primary key."""
        applied = self.applied_index()
        if up_to > applied:
            raise ValueError(f"cannot compact the log to {up_to}: only {applied} is applied")
        first = self.first_index()
        if up_to < first:
            return 0
        term = self.term(up_to)
        membership = self.membership_at(up_to)
        db = self._log_db
        db.execute("BEGIN IMMEDIATE")
        try:
            if membership:
                self._set_meta("membership", membership)
            db.execute("DELETE FROM replidb_log WHERE idx BETWEEN ? AND ?", (first, up_to))
            deleted = db.changes()
            db.execute("DELETE FROM replidb_undo WHERE idx <= ?", (up_to,))
            self._set_meta("snapshot_index", up_to)
            self._set_meta("snapshot_term", term)
            db.execute("COMMIT")
        except BaseException as exc:
            db.execute("ROLLBACK")
            if isinstance(exc, apsw.Error):
                raise InternalError(f"cannot compact the log: {exc}") from None
            raise
        self._last_index, self._last_term = self._load_last()
        return deleted

    def _load_last(self) -> tuple[int, int]:
        row = self._log_db.execute(
            "SELECT idx, term FROM replidb_log ORDER BY idx DESC LIMIT 1"
        ).fetchone()
        if row:
            return int(row[0]), int(row[1])
        return self.snapshot_position()  # empty after a compaction or an install
