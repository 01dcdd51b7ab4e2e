"""The `statement` and `mixed` stream formats' half of a store: deciding whether a
transaction can travel as SQL, fixing its context on the leader, and replaying it on a
replica with a check that the replay changed exactly what the leader's run changed.

The leader logs a ``Replay`` segment (stream/logical.py) with the SQL, its time, a
random seed, the AUTOINCREMENT counters a replica must start from, and a digest of the
rows it changed. A replica runs the same SQL through the same capture the leader used
(so DDL undo and connection state match) under the same context, then compares
digests: a mismatch stops the node ("this node has diverged") instead of letting it
drift.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import apsw

from replidb.errors import Error, InternalError, SQLError
from replidb.storage.determinism import DeterministicWriter
from replidb.storage.executor import capture_changes, translate
from replidb.stream.changeset import UNCHANGED, iter_changeset
from replidb.stream.logical import DDL, Changes, Replay, ReplayStatement, Segment
from replidb.stream.statement_analysis import analyze
from replidb.transport.wire import Statement

__all__ = ["RefusalCache", "autoincrement_counters", "digest", "enter_context", "replay"]


class RefusalCache:
    """Analyses each distinct SQL text once (sqlglot parsing costs milliseconds)."""

    LIMIT = 4096

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse  # statement: refuse; mixed: fall back to rows
        self._verdicts: dict[str, str | None] = {}

    def check(self, statements: Sequence[Statement]) -> bool:
        """True if every statement replays identically. Otherwise SQLError naming the
        construct and why (``statement``), or False (``mixed`` ships rows instead)."""
        for statement in statements:
            if statement.sql not in self._verdicts:
                self._verdicts[statement.sql] = refusal(statement.sql)
                if len(self._verdicts) > self.LIMIT:  # oldest first
                    del self._verdicts[next(iter(self._verdicts))]
            reason = self._verdicts[statement.sql]
            if reason is None:
                continue
            if self.refuse:
                raise SQLError(f"the statement stream cannot replicate {reason}")
            return False
        return True


def refusal(sql: str) -> str | None:
    """The first construct in ``sql`` that does not replay identically, with why."""
    try:
        analyses = analyze(sql)
    except ValueError as exc:
        return f"a statement it cannot analyse ({exc})"
    for analysis in analyses:
        for finding in analysis.findings:
            if finding.verdict == "refuse":
                return f"{finding.construct}: {finding.reason}"
    return None


def enter_context(
    writer: DeterministicWriter, statements: Sequence[Statement], now: float
) -> Replay:
    """Fix this transaction's time and randomness on the leader and return the replay
    segment so far (digest and the counters to ship are filled in after the run)."""
    now_ms = int(now * 1000)
    seed = int.from_bytes(os.urandom(8), "big") >> 1
    writer.enter(now_ms, seed)
    return Replay(
        [ReplayStatement(s.sql, s.params) for s in statements],
        now_ms,
        seed,
        autoincrement_counters(writer.conn),
    )


def replay(
    conn: apsw.Connection,
    guard: Any,
    writer: DeterministicWriter,
    segment: Replay,
    index: int,
) -> list[Segment]:
    """Run a statement record again, in the leader's context, inside the caller's
    transaction; return the row changes it made (kept for a rollback)."""
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)  # triggers run on every node
    writer.enter(segment.now_ms, segment.seed)
    try:
        for table, seq in sorted(segment.sequences.items()):
            conn.execute("UPDATE sqlite_sequence SET seq=? WHERE name=?", (seq, table))
            if conn.changes() == 0:
                conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES(?, ?)", (table, seq))
        statements = [Statement(s.sql, s.params) for s in segment.statements]
        _, segments = capture_changes(conn, statements, guard)
    except (apsw.Error, Error, TypeError, ValueError) as exc:
        raise InternalError(
            f"replaying statement entry {index} failed where the leader succeeded "
            f"({translate(exc, guard)}): this node has diverged"
        ) from None
    finally:
        writer.leave()
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
    if digest(segments) != segment.digest:
        raise InternalError(
            f"replaying statement entry {index} changed different rows than the leader "
            "did: this node has diverged (use --stream logical or mixed)"
        )
    return segments


def autoincrement_counters(conn: apsw.Connection) -> dict[str, int]:
    if not conn.execute("SELECT 1 FROM sqlite_schema WHERE name='sqlite_sequence'").fetchone():
        return {}
    return {str(n): int(v) for n, v in conn.execute("SELECT name, seq FROM sqlite_sequence")}


def digest(segments: Sequence[Segment]) -> bytes:
    """A fingerprint of the rows and schema a run changed, independent of the order
    SQLite lists changes in."""
    parts: list[bytes] = []
    for segment in segments:
        if isinstance(segment, DDL):
            parts.append(b"D" + segment.sql.encode())
        elif isinstance(segment, Changes):
            changes = sorted(
                repr((c.table, c.op, _plain(c.old), _plain(c.new))).encode()
                for c in iter_changeset(segment.changeset)
            )
            parts.append(b"C" + b"\x00".join(changes))
    return hashlib.blake2b(b"\x01".join(parts), digest_size=16).digest()


def _plain(values: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    if values is None:
        return None
    return tuple("<unchanged>" if v is UNCHANGED else v for v in values)
