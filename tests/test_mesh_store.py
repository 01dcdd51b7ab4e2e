"""The multi-leader store on real SQLite files (storage/mesh_store.py, mesh_ids.py):
local writes become changes, remote ones are resolved per table, ids never collide."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replidb.core.hlc import HLC
from replidb.core.mesh import Change
from replidb.errors import BadRequest, SQLError
from replidb.storage.mesh_store import MeshStore
from replidb.transport.wire import Statement as S


class Node:
    """A store plus what the mesh core would hand it: sequence numbers and stamps."""

    def __init__(self, store: MeshStore) -> None:
        self.store = store
        self.seq = 0

    def write(self, wall: int, *sql: str | S) -> Change:
        statements = [s if isinstance(s, S) else S(s) for s in sql]
        results, change = self.store.execute_local(
            statements, self.seq + 1, HLC(wall, 0, self.store.node_id), {}
        )
        assert change is not None, results
        self.seq += 1
        return change

    def rows(self, sql: str = "SELECT * FROM t ORDER BY 1") -> list[list[Any]]:
        return self.store.execute_read([S(sql)])[0].rows


def _max_stock(table: str, older: dict[str, Any] | None, newer: dict[str, Any] | None) -> Any:
    if older is None or newer is None:
        return older or newer
    return {**newer, "stock": max(older["stock"], newer["stock"])}


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    def make(name: str, offset: int) -> MeshStore:
        return MeshStore(
            tmp_path / f"{name}.db", name, offset, 16, {"r": "record", "s": "custom:max_stock"},
            resolvers={"max_stock": _max_stock},
        )  # fmt: skip

    a, b = Node(make("a", 1)), Node(make("b", 2))
    for sql in ("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
                "CREATE TABLE r(id INTEGER PRIMARY KEY, v TEXT)",
                "CREATE TABLE s(id INTEGER PRIMARY KEY, stock INTEGER)"):  # fmt: skip
        b.store.apply_remote(a.write(100, sql))
    yield a, b
    a.store.close()
    b.store.close()


def test_concurrent_updates_end_the_same_on_both_nodes(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    b.store.apply_remote(a.write(200, "INSERT INTO t(id, v) VALUES (1, 'old')"))
    mine, theirs = a.write(300, "UPDATE t SET v = 'a'"), b.write(300, "UPDATE t SET v = 'b'")
    assert a.store.apply_remote(theirs) == 1 and b.store.apply_remote(mine) == 1
    assert a.rows() == b.rows() == [[1, "b"]]  # same wall and counter: origin b wins
    assert a.store.conflicts == b.store.conflicts == 1


def test_a_delete_leaves_a_tombstone_that_an_older_update_cannot_undo(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    b.store.apply_remote(a.write(200, "INSERT INTO t(id, v) VALUES (1, 'x')"))
    update = a.write(300, "UPDATE t SET v = 'late'")
    delete = b.write(400, "DELETE FROM t WHERE id = 1")
    a.store.apply_remote(delete)
    b.store.apply_remote(update)  # older than the delete: loses, row stays gone
    assert a.rows() == b.rows() == []


def test_record_keeps_both_versions_in_replidb_conflicts(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    insert_a = a.write(200, "INSERT INTO r(id, v) VALUES (7, 'from a')")
    insert_b = b.write(250, "INSERT INTO r(id, v) VALUES (7, 'from b')")  # insert/insert
    a.store.apply_remote(insert_b)
    b.store.apply_remote(insert_a)
    assert a.rows("SELECT * FROM r") == b.rows("SELECT * FROM r") == [[7, "from b"]]
    rows = a.rows("SELECT pk, local_version, local_row, remote_version, remote_row, kept, "
                  "detected_by FROM replidb_conflicts")  # fmt: skip
    assert rows == [["[7]", "200.0@a", '[7, "from a"]', "250.0@b", '[7, "from b"]', "remote", "a"]]
    other = b.rows("SELECT local_version, remote_version, kept FROM replidb_conflicts")
    assert other == [["250.0@b", "200.0@a", "local"]]


def test_a_custom_resolver_merges_both_versions_alike_everywhere(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    b.store.apply_remote(a.write(200, "INSERT INTO s(id, stock) VALUES (1, 5)"))
    mine, theirs = a.write(300, "UPDATE s SET stock = 9"), b.write(310, "UPDATE s SET stock = 2")
    a.store.apply_remote(theirs)
    b.store.apply_remote(mine)
    assert a.rows("SELECT * FROM s") == b.rows("SELECT * FROM s") == [[1, 9]]


def test_ids_left_to_the_database_follow_each_nodes_stripe(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    for node, wall in ((a, 500), (b, 501)):
        node.write(wall, "INSERT INTO t(v) VALUES ('1'), ('2')", "INSERT INTO t VALUES (NULL, '3')")
    ids_a = [row[0] for row in a.rows()]
    ids_b = [row[0] for row in b.rows()]
    assert all(i % 16 == 1 for i in ids_a) and all(i % 16 == 2 for i in ids_b)
    # A table without a primary key is keyed by rowid: striped too.
    b.store.apply_remote(a.write(600, "CREATE TABLE k(v TEXT)"))
    a.write(601, "INSERT INTO k VALUES ('x')")
    b.write(601, "INSERT INTO k VALUES ('y')")
    assert a.rows("SELECT rowid FROM k") != b.rows("SELECT rowid FROM k")


def test_a_retried_write_is_done_once(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    statement = [S("INSERT INTO t(v) VALUES ('once')")]
    seq = a.seq + 1
    first, change = a.store.execute_local(statement, seq, HLC(700, 0, "a"), {}, "client", 9)
    again, repeat = a.store.execute_local(statement, seq + 1, HLC(701, 0, "a"), {}, "client", 9)
    assert change is not None and repeat is None and again == first
    assert a.rows("SELECT count(*) FROM t WHERE v = 'once'") == [[1]]


def test_a_failed_write_changes_nothing_and_logs_nothing(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    before = a.store.applied()
    with pytest.raises(SQLError, match="no such table"):
        a.store.execute_local(
            [S("INSERT INTO t(v) VALUES ('x')"), S("INSERT INTO nope VALUES (1)")],
            2, HLC(800, 0, "a"), {},
        )  # fmt: skip
    assert a.store.applied() == before and a.rows() == []


def test_ddl_after_row_changes_is_refused_by_name_and_changes_nothing(
    nodes: tuple[Node, Node],
) -> None:
    a, _ = nodes
    before = a.store.applied()
    with pytest.raises(BadRequest, match="run schema changes \\(DDL\\) before the row changes"):
        a.store.execute_local(
            [S("INSERT INTO t(v) VALUES ('x')"), S("CREATE TABLE u(id INTEGER PRIMARY KEY)")],
            2, HLC(800, 0, "a"), {},
        )  # fmt: skip
    assert a.store.applied() == before and a.rows() == []
    assert a.rows("SELECT count(*) FROM sqlite_master WHERE name = 'u'") == [[0]]


def test_the_log_serves_changes_in_apply_order(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    theirs = b.write(900, "INSERT INTO t(v) VALUES ('b')")
    a.store.apply_remote(theirs)
    mine = a.write(901, "INSERT INTO t(v) VALUES ('a')")
    scanned = a.store.scan(0, 100)
    assert [c for _, c in scanned][-2:] == [theirs, mine]
    assert a.store.position("b", 1) == scanned[-2][0]
    assert a.store.applied() == {"a": 4, "b": 1}
    assert a.store.last_hlc() == HLC(901, 0, "a")


def test_an_unknown_resolution_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown conflict resolution 'custom:nope'"):
        MeshStore(tmp_path / "x.db", "a", 1, 16, {"t": "custom:nope"})
