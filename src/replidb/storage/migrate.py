"""Switching a node's files from the `wal` layout to the one-file layout of `logical`,
`statement` and `mixed`: the way out of wal shipping's version lock.

`wal` keeps the replicated data file (data.db) apart from the node's log (node.db);
the other formats keep both in replidb.db. Converting keeps the data, the term and
vote, the applied position, the log and the discarded writes, so the node rejoins its
cluster where it left off. Entries written in the wal era stay in the log as page
records: they are all applied here (the conversion refuses otherwise), and a node that
would have to apply one later stops with a clear error instead of diverging.

Procedure (docs/streams.md): stop the cluster once every node reports the same
applied index, restart every node with ``--stream logical``, then upgrade SQLite (or
the machines) node by node; logical records do not depend on the page format.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import apsw

from replidb.errors import InternalError
from replidb.storage.node_log import LOG_SCHEMA
from replidb.storage.physical_store import PhysicalStore

__all__ = ["convert_wal_layout", "has_wal_layout"]

log = logging.getLogger("replidb.storage")

_KEPT_META = ("term", "vote", "applied_index", "snapshot_index", "snapshot_term")


def has_wal_layout(data_dir: Path) -> bool:
    return (data_dir / "data.db").exists() and (data_dir / "node.db").exists()


def convert_wal_layout(data_dir: Path, target: Path) -> None:
    """Build ``target`` (replidb.db) from data.db + node.db; the originals are kept
    under ``wal-era/`` until the operator removes them."""
    PhysicalStore(data_dir).close()  # finishes an interrupted apply, checkpoints
    node = apsw.Connection(str(data_dir / "node.db"))
    try:
        meta: dict[str, Any] = {
            str(k): v for k, v in node.execute("SELECT key, value FROM replidb_meta")
        }
        last = node.execute("SELECT max(idx) FROM replidb_log").fetchone()
    finally:
        node.close()
    applied, last_index = int(meta.get("applied_index") or 0), int((last or [0])[0] or 0)
    if applied < last_index:
        raise InternalError(
            f"cannot leave the wal format: this node applied {applied} of {last_index} "
            "log entries; restart it with --stream wal until it has caught up"
        )
    partial = target.with_name(target.name + ".converting")
    shutil.copyfile(data_dir / "data.db", partial)
    conn = apsw.Connection(str(partial))
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("ATTACH DATABASE ? AS node", (str(data_dir / "node.db"),))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            LOG_SCHEMA
            + "INSERT INTO replidb_log SELECT idx, term, kind, data FROM node.replidb_log;"
            "INSERT INTO replidb_discarded(term, idx, changes, record, discarded_at, reason) "
            "SELECT term, idx, changes, record, discarded_at, reason "
            "FROM node.replidb_discarded ORDER BY id;"
        )
        conn.executemany(
            "INSERT INTO replidb_meta(key, value) VALUES(?, ?)",
            [(key, meta[key]) for key in _KEPT_META if key in meta],
        )
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE node")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    kept = data_dir / "wal-era"
    kept.mkdir(exist_ok=True)
    for name in ("data.db", "data.db-wal", "data.db-shm", "node.db", "node.db-wal", "node.db-shm"):
        if (data_dir / name).exists():
            (data_dir / name).rename(kept / name)
    partial.rename(target)
    for suffix in ("-wal", "-shm"):
        leftover = partial.with_name(partial.name + suffix)
        if leftover.exists():
            leftover.unlink()
    log.warning(
        "converted this node from the wal layout at index %d; the old files are in %s",
        applied,
        kept,
    )
