"""Membership in the stores: the CONFIG entries come back at startup, the membership in
force at the compaction point survives compaction, and a snapshot carries the one in
force at its index to the node that installs it (for both store layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replidb.core.membership import Membership, decode_membership, encode_membership
from replidb.core.messages import Entry, EntryKind, HardState
from replidb.storage import open_store
from replidb.storage.base import NodeStore
from replidb.transport.wire import Statement as S

JOINED = Membership(("n1", "n2", "n3"), ("n4",), (("n4", "127.0.0.1:7104"),))
PROMOTED = JOINED.promoted("n4")


def _write(store: NodeStore, sql: str) -> None:
    outcome = store.execute_write([S(sql)], 1, store.last_index() + 1)
    assert outcome.data is not None


def _config(store: NodeStore, membership: Membership) -> int:
    entry = Entry(1, store.last_index() + 1, EntryKind.CONFIG, encode_membership(membership))
    store.persist(None, None, [entry])
    store.apply([entry])
    return entry.index


@pytest.mark.parametrize("stream", ["logical", "wal"])
def test_membership_survives_compaction_and_travels_in_snapshots(
    tmp_path: Path, stream: str
) -> None:
    store = open_store(tmp_path / "a", stream)
    try:
        store.persist(HardState(1, "n1"), None, [])
        _write(store, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        joined_at = _config(store, JOINED)
        _write(store, "INSERT INTO t(v) VALUES ('a')")
        promoted_at = _config(store, PROMOTED)
        for i in range(5):
            _write(store, f"INSERT INTO t(v) VALUES ('{i}')")
        assert [e.index for e in store.configs()] == [joined_at, promoted_at]
        assert decode_membership(store.membership_at(promoted_at - 1)) == JOINED
        store.note_committed(store.last_index())
        # Compact past the first change only, then past both.
        store.compact(promoted_at - 1)
        base = store.configs()[0]
        assert (base.index, decode_membership(base.data)) == (promoted_at - 1, JOINED)
        store.compact(store.last_index() - 1)
        (base,) = store.configs()
        assert decode_membership(base.data) == PROMOTED
        info = store.create_snapshot(tmp_path / "snapshots", store.last_index())
        assert decode_membership(bytes.fromhex(info.membership)) == PROMOTED
    finally:
        store.close()
    fresh = open_store(tmp_path / "b", stream)
    try:
        membership = bytes.fromhex(info.membership)
        fresh.install_snapshot(info.path, info.index, info.term, 0, membership)
        (base,) = fresh.configs()
        assert (base.index, decode_membership(base.data)) == (info.index, PROMOTED)
    finally:
        fresh.close()
    reopened = open_store(tmp_path / "b", stream)  # and after a restart
    try:
        assert decode_membership(reopened.configs()[0].data) == PROMOTED
    finally:
        reopened.close()
