"""The replication log and a node's durable state as SQLite tables, shared by every
store: ``replidb_log`` (the entries), ``replidb_meta`` (term, vote, applied index, …)
and ``replidb_discarded`` (what failovers rolled back, kept, never dropped).

A store mixes ``NodeLogTables`` in and points ``_log_db`` at the connection that holds
these tables (the one data file for logical/statement/mixed, node.db for wal).
"""

from __future__ import annotations

from typing import Any

import apsw

from replidb.core.messages import Entry, HardState

__all__ = ["LOG_SCHEMA", "NodeLogTables"]

LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS replidb_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replidb_log(
    idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, kind INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS replidb_discarded(
    id INTEGER PRIMARY KEY, term INTEGER NOT NULL, idx INTEGER NOT NULL,
    changes TEXT NOT NULL, record BLOB NOT NULL, discarded_at TEXT NOT NULL,
    reason TEXT NOT NULL);
"""


class NodeLogTables:
    """The core's LogReader and the node's durable state, over ``_log_db``."""

    _log_db: apsw.Connection
    _last_index: int
    _last_term: int

    # ---- LogReader (for the core) ----------------------------------------------

    def last_index(self) -> int:
        return self._last_index

    def term(self, index: int) -> int:
        if index <= 0:
            return 0
        if index == self._last_index:
            return self._last_term
        row = self._log_db.execute("SELECT term FROM replidb_log WHERE idx=?", (index,)).fetchone()
        return int(row[0]) if row else 0

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

    def _load_last(self) -> tuple[int, int]:
        row = self._log_db.execute(
            "SELECT idx, term FROM replidb_log ORDER BY idx DESC LIMIT 1"
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)
