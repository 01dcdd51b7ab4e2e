"""A leaderless replica's store (storage/kv_store.py): versions and rows change
together, siblings and lww, tombstones, hints, captured SQL writes, schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from replidb.core import dvv
from replidb.errors import BadRequest
from replidb.storage.kv_store import KvStore
from replidb.transport.kv_wire import clock_to_bytes, encode_key, present_rows
from replidb.transport.wire import Statement


def _store(tmp_path: Path, node: str = "n1", lww: tuple[str, ...] = ()) -> KvStore:
    store = KvStore(tmp_path / node / "kv.db", node, 1_000_000, lww)
    store.run_ddl(
        ["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", "CREATE TABLE e(k TEXT PRIMARY KEY, v)"],
        strict=True,
    )
    return store


def _rows(store: KvStore, table: str = "t") -> list[list[object]]:
    return [list(r) for r in store.writer.execute(f"SELECT * FROM {table} ORDER BY 1")]


def test_a_coordinated_write_stores_the_version_and_the_row(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = encode_key("t", [1])
    clock = store.coordinate(key, [], {"id": 1, "v": "a"}, now_ms=10)
    assert dvv.join(clock) == [(store.actor, 1)] and store.actor.startswith("n1.")
    assert _rows(store) == [[1, "a"]]
    assert store.clock(key) == clock
    # With the context it read, the next write replaces it.
    store.coordinate(key, dvv.join(clock), {"id": 1, "v": "b"}, now_ms=11)
    assert _rows(store) == [[1, "b"]]
    assert present_rows(store.clock(key) or dvv.Clock(), lww=False) == [{"id": 1, "v": "b"}]


def test_concurrent_writes_are_siblings_and_sql_sees_the_latest(tmp_path: Path) -> None:
    a, b = _store(tmp_path, "n1"), _store(tmp_path, "n2")
    key = encode_key("t", [7])
    ca = a.coordinate(key, [], {"id": 7, "v": "from a"}, now_ms=100)
    cb = b.coordinate(key, [], {"id": 7, "v": "from b"}, now_ms=200)
    merged, changed = a.receive(key, cb, now_ms=300)
    assert changed
    assert sorted(r["v"] for r in present_rows(merged, lww=False)) == ["from a", "from b"]
    assert _rows(a) == [[7, "from b"]]  # the larger time, for SQL readers
    # b gets a's version: the same clock, the same row.
    merged_b, _ = b.receive(key, ca, now_ms=300)
    assert merged_b == merged and _rows(b) == _rows(a)
    # Receiving what it already holds changes nothing.
    assert a.receive(key, ca, now_ms=400)[1] is False


def test_lww_tables_answer_one_version_and_writes_supersede_all(tmp_path: Path) -> None:
    a, b = _store(tmp_path, "n1", lww=("e",)), _store(tmp_path, "n2", lww=("e",))
    key = encode_key("e", ["x"])
    a.coordinate(key, [], {"k": "x", "v": 1}, now_ms=100)
    cb = b.coordinate(key, [], {"k": "x", "v": 2}, now_ms=200)
    merged, _ = a.receive(key, cb, now_ms=300)
    assert present_rows(merged, lww=True) == [{"k": "x", "v": 2}]
    # A blind write on an lww table supersedes everything its coordinator holds.
    after = a.coordinate(key, [], {"k": "x", "v": 3}, now_ms=400)
    assert [r["v"] for r in present_rows(after, lww=False)] == [3]


def test_a_deletion_is_a_tombstone_until_purged_with_the_same_clock(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = encode_key("t", [1])
    clock = store.coordinate(key, [], {"id": 1, "v": "a"}, now_ms=10)
    tomb = store.coordinate(key, dvv.join(clock), None, now_ms=20)
    assert _rows(store) == []
    assert store.old_tombstones(before_ms=21) == [(key, 20)]
    assert store.old_tombstones(before_ms=20) == []  # not old enough
    assert not store.purge([(key, clock_to_bytes(clock))], now_ms=30)  # not this clock
    assert store.purge([(key, clock_to_bytes(tomb))], now_ms=30) == 1
    assert store.clock(key) is None and store.count() == 0


def test_hints_are_kept_per_replica_until_dropped_or_expired(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = encode_key("t", [1])
    clock = dvv.update(dvv.new([], None), dvv.Clock(), "n2")
    store.add_hint("n3", key, clock, now_ms=100)
    store.add_hint("n3", key, clock, now_ms=200)
    assert store.hint_counts() == {"n3": 2} and store.hinted(key)
    (first, _, data), _second = store.hints_for("n3", 10)
    assert data == clock_to_bytes(clock)
    store.drop_hint(first)
    assert store.expire_hints(before_ms=150) == 0
    assert store.expire_hints(before_ms=250) == 1
    assert store.hint_counts() == {} and not store.hinted(key)
    assert _rows(store) == []  # a hint is not data here


def test_sql_writes_are_captured_and_rolled_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.coordinate(encode_key("t", [1]), [], {"id": 1, "v": "a"}, now_ms=1)
    results, rows, ddl = store.capture_write(
        [Statement("INSERT INTO t VALUES (2, 'b')"), Statement("UPDATE t SET v = 'z' WHERE id = 1")]
    )
    assert results[1].rowcount == 1 and not ddl
    assert sorted(rows, key=lambda r: r[1]) == [
        ("t", [1], {"id": 1, "v": "z"}),
        ("t", [2], {"id": 2, "v": "b"}),
    ]
    assert _rows(store) == [[1, "a"]]  # nothing applied: the rows go through a quorum
    _, rows, _ = store.capture_write([Statement("DELETE FROM t WHERE id = 1")])
    assert rows == [("t", [1], None)]
    with pytest.raises(BadRequest, match="separate requests"):
        store.capture_write([Statement("CREATE TABLE u(id INTEGER PRIMARY KEY); "
                                       "INSERT INTO t VALUES (3, 'c')")])  # fmt: skip


def test_schema_from_other_nodes_runs_once_in_order(tmp_path: Path) -> None:
    a, b = _store(tmp_path, "n1"), _store(tmp_path, "n2")  # (each created t and e itself)
    a.run_ddl(["CREATE TABLE u(id INTEGER PRIMARY KEY)"], strict=True)
    # a's CREATE TABLE t fails on b (it exists): logged and recorded, not retried.
    assert "CREATE TABLE u(id INTEGER PRIMARY KEY)" in b.run_ddl(a.schema(), strict=False)
    assert b.run_ddl(a.schema(), strict=False) == []
    failed, last = b.tables.failures()  # (shown by replidb status: schemas differ)
    assert failed == 2 and "CREATE TABLE e" in last and "already exists" in last
    assert a.tables.failures() == (0, "")
    # The same text again after a DROP is another run of it, and travels too.
    a.run_ddl(["DROP TABLE u"], strict=True)
    a.run_ddl(["CREATE TABLE u(id INTEGER PRIMARY KEY)"], strict=True)
    assert b.run_ddl(a.schema(), strict=False) == [
        "DROP TABLE u",
        "CREATE TABLE u(id INTEGER PRIMARY KEY)",
    ]
    for store in (a, b):
        assert store.writer.execute("SELECT count(*) FROM u").fetchall() == [(0,)]
    with pytest.raises(BadRequest):
        a.run_ddl(["CREATE TABLE t(id INTEGER PRIMARY KEY)"], strict=True)


def test_a_late_copy_bundled_with_a_newer_write_stays_superseded(tmp_path: Path) -> None:
    """The key exists again (inserted after the purge): a late copy of the version
    the purged deletion superseded must not come back as a sibling."""
    a, c = _store(tmp_path, "n1"), _store(tmp_path, "n3")
    key = encode_key("t", [1])
    old = a.coordinate(key, [], {"id": 1, "v": "old"}, now_ms=10)
    tomb = a.coordinate(key, dvv.join(old), None, now_ms=20)
    c.receive(key, tomb, now_ms=21)
    for store in (a, c):
        assert store.purge([(key, clock_to_bytes(tomb))], now_ms=30) == 1
    a.coordinate(key, [], {"id": 1, "v": "fresh"}, now_ms=40)
    merged, _ = a.receive(key, old, now_ms=50)
    assert present_rows(merged, lww=False) == [{"id": 1, "v": "fresh"}]
    assert present_rows(c.receive(key, merged, now_ms=60)[0], lww=False) == [
        {"id": 1, "v": "fresh"}
    ]


def test_keys_need_a_primary_key_and_a_known_table(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.run_ddl(["CREATE TABLE nokey(v)"], strict=True)
    with pytest.raises(BadRequest, match="no PRIMARY KEY"):
        store.key_of("nokey", {"v": 1})
    with pytest.raises(BadRequest, match="no such table: nope"):
        store.key_of("nope", {"id": 1})
    with pytest.raises(BadRequest, match="lacks its primary key id"):
        store.key_of("t", {"v": 1})
    assert store.key_of("t", {"id": 5, "v": 1}) == encode_key("t", [5])


def test_after_a_purge_old_contexts_cannot_supersede_new_writes(tmp_path: Path) -> None:
    """Dots never repeat. Here the key comes back to n1 with n1's counter lower than
    before the purge (a slow writer's older context); without a new actor, n1 would
    hand out the tombstone's dot again and a reader who saw the tombstone would
    silently supersede that new write."""
    a, b = _store(tmp_path, "n1"), _store(tmp_path, "n2")
    key = encode_key("t", [1])
    clock = a.coordinate(key, [], {"id": 1, "v": "v1"}, now_ms=10)
    clock = a.coordinate(key, dvv.join(clock), {"id": 1, "v": "v2"}, now_ms=11)
    saw_v2 = dvv.join(clock)
    tomb = a.coordinate(key, dvv.join(clock), None, now_ms=20)
    saw_tombstone = dvv.join(tomb)
    b.receive(key, tomb, now_ms=20)
    for store in (a, b):
        assert store.purge([(key, clock_to_bytes(tomb))], now_ms=30) == 1
    slow = b.coordinate(key, saw_v2, {"id": 1, "v": "slow"}, now_ms=40)
    a.receive(key, slow, now_ms=41)
    fresh = a.coordinate(key, [], {"id": 1, "v": "fresh"}, now_ms=42)
    b.receive(key, fresh, now_ms=43)
    late = b.coordinate(key, saw_tombstone, {"id": 1, "v": "late"}, now_ms=50)
    assert "fresh" in [r["v"] for r in present_rows(late, lww=False)]


def test_a_late_copy_of_what_a_purged_deletion_superseded_is_dropped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = encode_key("t", [1])
    first = store.coordinate(key, [], {"id": 1, "v": "v1"}, now_ms=10)
    tomb = store.coordinate(key, dvv.join(first), None, now_ms=20)
    assert store.purge([(key, clock_to_bytes(tomb))], now_ms=30) == 1
    for late in (first, tomb):  # a client's late replicate, a read repair
        assert store.receive(key, late, now_ms=40) == (tomb, False)
    assert store.clock(key) is None and _rows(store) == []
    # Something the deletion did not see (concurrent with it) is kept.
    other = _store(tmp_path, "n2").coordinate(key, [], {"id": 1, "v": "concurrent"}, 15)
    assert store.receive(key, other, now_ms=50)[1] and _rows(store) == [[1, "concurrent"]]


def test_a_restarted_replica_coordinates_as_a_new_actor(tmp_path: Path) -> None:
    store = _store(tmp_path)
    actor = store.actor
    store.close()
    again = KvStore(tmp_path / "n1" / "kv.db", "n1", 1_000_000)
    assert again.actor != actor  # (a restored file cannot hand out a dot again)


def test_lww_deletes_win_when_later(tmp_path: Path) -> None:
    a, b = _store(tmp_path, "n1", lww=("e",)), _store(tmp_path, "n2", lww=("e",))
    key = encode_key("e", ["x"])
    put = a.coordinate(key, [], {"k": "x", "v": 1}, now_ms=50)
    delete = b.coordinate(key, [], None, now_ms=100)
    merged, _ = a.receive(key, delete, now_ms=200)
    assert present_rows(merged, lww=True) == [] and _rows(a, "e") == []
    b.receive(key, put, now_ms=200)
    assert _rows(b, "e") == []


def test_keys_are_normalized_by_affinity_and_composite_keys_keep_key_order(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    assert store.key("t", ["1"]) == store.key("t", [1.0]) == encode_key("t", [1])
    assert store.key("t", ["1.0"]) == store.key("t", [" 1e0 "]) == encode_key("t", [1])
    assert store.key("t", ["1.5"]) == encode_key("t", [1.5])
    for bad in (None, [1], float("nan")):
        with pytest.raises(BadRequest, match="key value"):
            store.key("t", [bad])
    assert store.key("e", [5]) == encode_key("e", ["5"])
    with pytest.raises(BadRequest, match="is not as the table stores it"):
        store.check_key(encode_key("t", ["1"]))
    store.run_ddl(["CREATE TABLE p(a TEXT, b TEXT, v, PRIMARY KEY(b, a))"], strict=True)
    _, rows, _ = store.capture_write([Statement("INSERT INTO p VALUES ('x', 'y', 1)")])
    assert rows == [("p", ["y", "x"], {"a": "x", "b": "y", "v": 1})]
    assert store.key_of("p", {"a": "x", "b": "y"}) == store.key("p", ["y", "x"])
    store.coordinate(store.key("p", ["y", "x"]), [], rows[0][2], now_ms=1)
    assert _rows(store, "p") == [["x", "y", 1]]


def test_secondary_unique_constraints_are_refused_and_drop_table_forgets_versions(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    with pytest.raises(BadRequest, match="cannot have UNIQUE constraints"):
        store.run_ddl(["CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE)"], strict=True)
    with pytest.raises(BadRequest, match="cannot have UNIQUE constraints"):
        store.run_ddl(["CREATE UNIQUE INDEX tv ON t(v)"], strict=True)
    assert "u" not in [r[0] for r in store.writer.execute("SELECT name FROM sqlite_master")]
    store.coordinate(encode_key("e", ["k"]), [], {"k": "k", "v": 1}, now_ms=1)
    store.run_ddl(["DROP TABLE e"], strict=True)
    assert store.count() == 0


def test_rows_with_unknown_columns_or_odd_values_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = encode_key("t", [1])
    with pytest.raises(BadRequest, match="table t has no column nope"):
        store.coordinate(key, [], {"id": 1, "nope": 2}, now_ms=1)
    with pytest.raises(BadRequest, match="column v: dict is not a value SQLite stores"):
        store.coordinate(key, [], {"id": 1, "v": {"a": 1}}, now_ms=1)
    assert store.count() == 0


def test_a_write_stored_under_two_dots_is_read_once(tmp_path: Path) -> None:
    """A coordinator that answered too late, and the next one, both stored it."""
    a, b = _store(tmp_path, "n1"), _store(tmp_path, "n2")
    key = encode_key("t", [1])
    first = a.coordinate(key, [], {"id": 1, "v": "x"}, now_ms=1, wid="w1")
    second = b.coordinate(key, [], {"id": 1, "v": "x"}, now_ms=2, wid="w1")
    merged, _ = a.receive(key, second, now_ms=3)
    assert len(dvv.values(merged)) == 2 and first != second
    assert present_rows(merged, lww=False) == [{"id": 1, "v": "x"}]


def test_a_node_refuses_a_data_directory_of_another_topology(tmp_path: Path) -> None:
    from replidb.node.kv_server import KvNode, KvNodeConfig
    from replidb.node.mesh_server import MeshNode, MeshNodeConfig

    (tmp_path / "mesh.db").write_bytes(b"")
    with pytest.raises(ValueError, match="holds a multi-leader node's data: a leaderless node"):
        KvNode(KvNodeConfig("n1", tmp_path, "127.0.0.1:1", {}))
    (tmp_path / "replidb.db").write_bytes(b"")
    with pytest.raises(ValueError, match="holds a single-leader node's data: a multi-leader"):
        MeshNode(MeshNodeConfig("n1", tmp_path, "127.0.0.1:1", {}))
