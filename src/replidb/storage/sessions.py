"""Exactly-once client sessions and id leases: the replicated bookkeeping every store
keeps next to the user's tables, as plain functions over an apsw connection.

Both tables (``replidb_client_sessions``, ``replidb_rowid_leases``) live in the
replicated database, written inside the client's own transaction, so they travel with
it whatever the stream format: a retried write is recognised, and a raised id lease
holds, on whichever node leads next (see rowid_guard for why leases exist).

These functions run inside the caller's open transaction and never begin or end one.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw
import msgspec

from replidb.errors import BadRequest
from replidb.storage.executor import REPLICATED_INTERNAL_TABLES
from replidb.storage.rowid_guard import LEASE_CHUNK, max_inserted_keys
from replidb.stream.logical import Segment
from replidb.transport.wire import StatementResult

__all__ = ["previous_result", "raise_leases", "raise_rowid_floors", "remember_result"]

_results_encoder = msgspec.msgpack.Encoder()
_results_decoder = msgspec.msgpack.Decoder(list[StatementResult])


def previous_result(
    conn: apsw.Connection, client_id: str, seq: int
) -> tuple[list[StatementResult], int] | None:
    """The results and log index of write ``seq`` if it is the client's last one (a
    retry); None if ``seq`` is new. BadRequest if it is older than the last one."""
    row = conn.execute(
        "SELECT seq, result, idx FROM replidb_client_sessions WHERE client_id=?",
        (client_id,),
    ).fetchone()
    if row is None or seq > row[0]:
        return None
    if seq == row[0]:
        return _results_decoder.decode(row[1]), int(row[2])
    raise BadRequest(f"write {seq} of client {client_id} is older than its last ({row[0]})")


def remember_result(
    conn: apsw.Connection,
    client_id: str,
    seq: int,
    results: list[StatementResult],
    index: int,
) -> None:
    """Record write ``seq`` of ``client_id`` (its results, its log index) as its last."""
    conn.execute(
        "INSERT INTO replidb_client_sessions(client_id, seq, result, idx) "
        "VALUES(?, ?, ?, ?) ON CONFLICT(client_id) DO UPDATE SET "
        "seq=excluded.seq, result=excluded.result, idx=excluded.idx",
        (client_id, seq, _results_encoder.encode(results), index),
    )


def raise_leases(conn: apsw.Connection, segments: Sequence[Segment]) -> bool:
    """Raise the id lease of every table this write inserted keys above it in.
    True if any was raised (the write must then be acknowledged only once committed)."""
    raised = False
    for table, key in sorted(max_inserted_keys(segments).items()):
        if table in REPLICATED_INTERNAL_TABLES:
            continue
        row = conn.execute(
            "SELECT ceiling FROM replidb_rowid_leases WHERE tbl=?", (table,)
        ).fetchone()
        if row is None or key > row[0]:
            conn.execute(
                "INSERT INTO replidb_rowid_leases(tbl, ceiling) VALUES(?, ?) "
                "ON CONFLICT(tbl) DO UPDATE SET ceiling=excluded.ceiling",
                (table, key + LEASE_CHUNK),
            )
            raised = True
    return raised


def raise_rowid_floors(conn: apsw.Connection) -> int:
    """A new leader's first duty: allocate above every committed id lease, so ids a
    discarded write handed out are never handed out again. Returns the number of
    tables with a lease (each now allocates above it)."""
    leases = conn.execute(
        "SELECT l.tbl, l.ceiling FROM replidb_rowid_leases AS l "
        "JOIN sqlite_schema AS s ON s.name = l.tbl AND s.type = 'table' "
        "WHERE s.sql LIKE '%AUTOINCREMENT%'"
    ).fetchall()
    for table, ceiling in leases:
        conn.execute(
            "UPDATE sqlite_sequence SET seq=? WHERE name=? AND seq < ?",
            (ceiling, table, ceiling),
        )
        if not conn.execute("SELECT 1 FROM sqlite_sequence WHERE name=?", (table,)).fetchone():
            conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES(?, ?)", (table, ceiling))
    return len(leases)
