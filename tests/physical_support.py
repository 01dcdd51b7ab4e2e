"""Helpers shared by the physical (wal) store tests."""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from replidb.storage.physical_store import PhysicalStore


def integrity(path: Path) -> str:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        row = conn.execute("PRAGMA integrity_check").fetchone()
        assert row is not None
        return str(row[0])
    finally:
        conn.close()


def crash(store: PhysicalStore) -> None:
    """Drop the store as a killed process would: no checkpoint, nothing finished."""
    for conn in (store._reader, store._writer):
        if conn is not None:
            conn.close()  # checkpoint-on-close is off for the store's connections
    store.node.close()
    os.close(store._data_fd)
    store._closed = True
