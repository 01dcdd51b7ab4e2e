"""Partial replication (storage/subscription.py): a leader store's logical records,
applied through a subscription to a fresh database, leave exactly the subscribed
tables, rows and columns; what cannot be applied faithfully stops with one line."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replidb.errors import InternalError
from replidb.storage import SQLiteStore
from replidb.storage.subscription import (
    PartialApplier,
    Subscription,
    TableFilter,
    parse_subscription,
)
from replidb.stream.logical import decode_record
from replidb.transport.wire import Statement as S


class Pair:
    """A leader store and a partial replica fed each of its records."""

    def __init__(
        self, path: Path, specs: Sequence[str], row_images: str = "full", stream: str = "logical"
    ) -> None:
        self.leader = SQLiteStore(path / "leader.db", stream=stream, row_images=row_images)
        self.replica = apsw.Connection(str(path / "replica.db"))
        self.applier = PartialApplier(self.replica, parse_subscription(specs))
        self.index = 0

    def write(self, *sql: str | S) -> None:
        self.index += 1
        statements = [s if isinstance(s, S) else S(s) for s in sql]
        outcome = self.leader.execute_write(statements, term=1, index=self.index)
        assert outcome.data is not None
        apply_to(self.replica, self.applier, outcome.data)

    def leader_rows(self, sql: str) -> list[list[Any]]:
        return self.leader.execute_read([S(sql)])[0].rows

    def replica_rows(self, sql: str) -> list[list[Any]]:
        return [list(row) for row in self.replica.execute(sql)]

    def close(self) -> None:
        self.leader.close()
        self.replica.close()


def apply_to(conn: apsw.Connection, applier: PartialApplier, data: bytes) -> None:
    """As a follower applies: one transaction, triggers off."""
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
    conn.execute("BEGIN IMMEDIATE")
    try:
        applier.apply(decode_record(data))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@pytest.fixture
def make_pair(tmp_path: Path) -> Iterator[Any]:
    pairs: list[Pair] = []

    def make(specs: Sequence[str], **kwargs: str) -> Pair:
        path = tmp_path / str(len(pairs))
        path.mkdir()
        pairs.append(Pair(path, specs, **kwargs))
        return pairs[-1]

    yield make
    for pair in pairs:
        pair.close()


def user_tables(conn: apsw.Connection) -> list[str]:
    return [
        str(row[0])
        for row in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' "
            "AND name NOT LIKE 'replidb_%' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]


def columns(conn: apsw.Connection, table: str) -> list[str]:
    return [str(row[0]) for row in conn.execute("SELECT name FROM pragma_table_info(?)", (table,))]


# ---- parsing ---------------------------------------------------------------------


def test_specs_parse_into_table_filters() -> None:
    sub = parse_subscription(
        [
            "orders",
            "users(\"id\", name, [Region]) WHERE region = 'eu' AND id > 10",
            '"Audit Log" WHERE level >= 2',
            "items(id, price)",
        ]
    )
    assert sub == Subscription(
        {
            "orders": TableFilter(None, None),
            "users": TableFilter(("id", "name", "Region"), "region = 'eu' AND id > 10"),
            "Audit Log": TableFilter(None, "level >= 2"),
            "items": TableFilter(("id", "price"), None),
        }
    )
    assert sub.describe() == (
        "4 tables: orders; users(id, name, Region) WHERE region = 'eu' AND id > 10; "
        '"Audit Log" WHERE level >= 2; items(id, price)'
    )


@pytest.mark.parametrize(
    ("specs", "problem"),
    [
        (["users", "USERS(id)"], "table USERS is listed twice"),
        (["users()"], "the column list is empty"),
        (["users(id,)"], "a column name is missing"),
        (["users(id, id)"], "column id is listed twice"),
        (["users(lower(name))"], "column 'lower(name)' is not a plain column name"),
        (["users(u.id)"], "column 'u.id' is not a plain column name"),
        (["users(id"], "no closing parenthesis"),
        (["main.users"], "expected a column list or WHERE after main, found '.'"),
        (["WHERE x = 1"], "it must start with a table name"),
        (["replidb_log"], "replidb_log is an internal table"),
        (["users WHERE"], "WHERE needs a predicate"),
        (["users WHERE region = "], "the predicate does not parse (near"),
        (["users WHERE region = = 'eu'"], 'does not parse (near "=": syntax error)'),
        (["users WHERE id IN (SELECT id FROM admins)"], "(subqueries prohibited)"),
        (["users WHERE random() > 0"], "(non-deterministic functions prohibited)"),
        (["users WHERE created > CURRENT_TIMESTAMP"], "non-deterministic functions prohibited"),
        (["users WHERE created > datetime('now', '-1 day')"], "non-deterministic use of datetime"),
        (["users WHERE created > date()"], "non-deterministic use of date()"),
        (["users WHERE region = ?"], "(parameters prohibited)"),
        (["users WHERE my_udf(region)"], "(no such function: my_udf)"),
        (["users WHERE count(*) > 1"], "misuse of aggregate function count()"),
        (["users WHERE users.region = 'eu'"], "column users.region: name the table's own"),
        (["users WHERE 1; DROP TABLE users"], "one expression (it contains ';')"),
        (["users WHERE 1) OR (1"], "parentheses do not match"),
    ],
)
def test_a_bad_spec_is_refused_with_one_line_naming_it(specs: list[str], problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_subscription(specs)
    message = str(info.value)
    assert message.startswith(f"subscription {specs[-1]!r}: ") and problem in message
    assert "\n" not in message


def test_deterministic_predicates_are_accepted() -> None:
    parse_subscription(
        [
            "a WHERE lower(name) LIKE 'b%' AND coalesce(n, 0) BETWEEN 1 AND 9",
            "b WHERE created > datetime('2024-01-01', '+1 day') AND typeof(x) = 'integer'",
            'c WHERE "odd name" IS NOT NULL -- a comment',
            "d WHERE json_extract(doc, '$.kind') = 'x' AND rowid > 5",
        ]
    )


# ---- tables, rows, columns ---------------------------------------------------------


def test_a_table_filter_replicates_only_the_subscribed_tables(make_pair: Any) -> None:
    pair = make_pair(["orders"])
    pair.write(
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)",
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)",
        "CREATE INDEX users_name ON users(name)",
        "CREATE VIEW named AS SELECT name FROM users",
        "CREATE TRIGGER audit AFTER INSERT ON users BEGIN "
        "INSERT INTO orders(item) VALUES ('for ' || new.name); END",
    )
    pair.write(
        "INSERT INTO users(name) VALUES ('ann'), ('bob')", "INSERT INTO orders VALUES (7, 'x')"
    )
    pair.write("UPDATE orders SET item = 'y' WHERE id = 7", "DELETE FROM users WHERE name = 'ann'")
    pair.write("CREATE INDEX orders_item ON orders(item)")
    assert user_tables(pair.replica) == ["orders"]
    names = pair.replica_rows("SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite%'")
    assert names == [["table", "orders"], ["index", "orders_item"]]
    # the leader's trigger ran there: its rows arrive as row changes
    assert pair.replica_rows("SELECT * FROM orders") == pair.leader_rows("SELECT * FROM orders")
    assert len(pair.replica_rows("SELECT * FROM orders")) == 3


PREDICATE = "region = 'eu'"


def test_updates_move_rows_into_and_out_of_the_row_filter(make_pair: Any) -> None:
    pair = make_pair([f"users WHERE {PREDICATE}"])
    steps = [
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, region TEXT)",
        "INSERT INTO users VALUES (1, 'ann', 'eu'), (2, 'bob', 'us'), (3, 'cy', NULL)",
        "UPDATE users SET region = 'eu' WHERE id = 2",  # out -> in: INSERT
        "UPDATE users SET region = 'us' WHERE id = 1",  # in -> out: DELETE
        "UPDATE users SET name = 'BOB' WHERE id = 2",  # in -> in: UPDATE
        "UPDATE users SET name = 'CY' WHERE id = 3",  # out -> out: nothing
        "UPDATE users SET id = 20 WHERE id = 2",  # a key change, staying in
        "UPDATE users SET region = 'eu', id = 30 WHERE id = 1",  # a key change, moving in
        "DELETE FROM users WHERE id IN (1, 3, 30)",
        "INSERT INTO users VALUES (4, 'di', 'eu')",
    ]
    for step in steps:
        pair.write(step)
        expected = pair.leader_rows(f"SELECT * FROM users WHERE {PREDICATE} ORDER BY id")
        assert pair.replica_rows("SELECT * FROM users ORDER BY id") == expected, step
    assert pair.replica_rows("SELECT id FROM users") == [[4], [20]]


def test_predicates_compare_with_the_leaders_affinity_and_collation(make_pair: Any) -> None:
    """n > '3' on an INTEGER column compares numbers, and name = 'bob' on a NOCASE column
    matches 'Bob', as in the leader's own SELECT (bound values alone would do neither)."""
    where = "n > '3' AND name = 'bob'"
    pair = make_pair([f"t WHERE {where}"])
    pair.write("CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, name TEXT COLLATE NOCASE)")
    pair.write("INSERT INTO t VALUES (1, 5, 'Bob'), (2, 2, 'bob'), (3, 9, 'rob')")
    expected = pair.leader_rows(f"SELECT * FROM t WHERE {where}")
    assert expected == [[1, 5, "Bob"]]
    assert pair.replica_rows("SELECT * FROM t") == expected


def test_a_column_list_keeps_only_those_columns(make_pair: Any) -> None:
    pair = make_pair(["users(id, name)"])
    pair.write(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL COLLATE NOCASE, "
        "email TEXT CHECK (email LIKE '%@%'), secret BLOB, UNIQUE(name), UNIQUE(name, email), "
        "CONSTRAINT pw CHECK (length(secret) > 2))"
    )
    pair.write("INSERT INTO users VALUES (1, 'ann', 'a@x', x'00ff00'), (2, 'bob', 'b@x', NULL)")
    pair.write(
        "UPDATE users SET email = 'c@x' WHERE id = 1", "UPDATE users SET name = 'BOB' WHERE id = 2"
    )
    pair.write("DELETE FROM users WHERE id = 1", "INSERT INTO users(id, name) VALUES (3, 'cy')")
    assert columns(pair.replica, "users") == ["id", "name"]
    schema = pair.replica_rows("SELECT sql FROM sqlite_schema WHERE name = 'users'")[0][0]
    # the leader's text is kept where kept; constraints on dropped columns are gone
    assert schema == (
        "CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "name TEXT NOT NULL COLLATE NOCASE, UNIQUE(name))"
    )
    assert pair.replica_rows("SELECT * FROM users ORDER BY id") == [[2, "BOB"], [3, "cy"]]
    assert not pair.replica_rows("SELECT name FROM sqlite_schema WHERE name LIKE 'replidb%'")


def test_tables_rows_and_columns_combined(make_pair: Any) -> None:
    where = "region = 'eu' AND id > 10"
    pair = make_pair(["orders", f"users(id, name, region) WHERE {where}", "notes(id, body)"])
    pair.write(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, region TEXT, score INTEGER)",
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INTEGER)",
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, hidden TEXT)",
        "CREATE TABLE other(x)",
    )
    pair.write(
        "INSERT INTO users VALUES (5, 'a', 'eu', 1), (11, 'b', 'eu', 2), (12, 'c', 'us', 3)",
        "INSERT INTO orders VALUES (1, 11)",
        "INSERT INTO notes VALUES (1, 'n', 'h')",
        "INSERT INTO other VALUES (1)",
    )
    pair.write("UPDATE users SET score = score + 1")  # changes no listed column
    pair.write("UPDATE users SET region = 'eu', id = id + 10 WHERE id < 12")  # 5 -> 15 joins
    pair.write("UPDATE users SET region = 'us' WHERE id = 21")  # 11 -> 21 leaves
    pair.write("UPDATE notes SET hidden = 'H'", "UPDATE notes SET body = 'N'")
    assert user_tables(pair.replica) == ["notes", "orders", "users"]
    expected = pair.leader_rows(f"SELECT id, name, region FROM users WHERE {where} ORDER BY id")
    assert expected == [[15, "a", "eu"]]
    assert pair.replica_rows("SELECT * FROM users ORDER BY id") == expected
    assert pair.replica_rows("SELECT * FROM orders") == [[1, 11]]
    assert pair.replica_rows("SELECT * FROM notes") == [[1, "N"]]


def test_a_rowid_table_keeps_its_rowids(make_pair: Any) -> None:
    pair = make_pair(["log(msg, level) WHERE level >= 2", "plain"])
    pair.write("CREATE TABLE log(msg TEXT, level INTEGER, extra)", "CREATE TABLE plain(a, b)")
    pair.write(
        "INSERT INTO log VALUES ('a', 1, 'x'), ('b', 2, 'y'), ('c', 3, 'z')",
        "INSERT INTO plain VALUES (1, 2), (3, 4)",
    )
    pair.write(
        "UPDATE log SET level = 5 WHERE msg = 'a'", "UPDATE log SET level = 0 WHERE msg = 'b'"
    )
    pair.write("UPDATE log SET msg = 'C' WHERE msg = 'c'", "UPDATE plain SET b = 9 WHERE a = 3")
    pair.write("DELETE FROM log WHERE msg = 'a'", "DELETE FROM plain WHERE a = 1")
    pair.write("INSERT INTO log VALUES ('d', 7, NULL)")
    expected = pair.leader_rows("SELECT rowid, msg, level FROM log WHERE level >= 2 ORDER BY 1")
    assert expected == [[3, "C", 3], [4, "d", 7]]
    assert pair.replica_rows("SELECT rowid, * FROM log ORDER BY 1") == expected
    assert pair.replica_rows("SELECT rowid, * FROM plain") == pair.leader_rows(
        "SELECT rowid, * FROM plain"
    )


def test_a_table_without_predicate_needs_no_full_images(make_pair: Any) -> None:
    pair = make_pair(["t(id, a)"], row_images="minimal")
    pair.write("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)", "INSERT INTO t VALUES (1, 2, 3)")
    pair.write("UPDATE t SET a = 20", "UPDATE t SET b = 30")
    assert pair.replica_rows("SELECT * FROM t") == [[1, 20]]


# ---- property: the replica holds exactly the leader's matching rows ------------------

KEYS = st.integers(1, 6)
VALUES = st.one_of(st.none(), st.integers(-2, 6), st.sampled_from(["3", "5", "x", "Bob", "bob"]))
OPS = st.one_of(
    st.tuples(st.just("insert"), KEYS, VALUES, VALUES, VALUES),
    st.tuples(st.just("update"), KEYS, st.sampled_from(["n", "s", "region"]), VALUES),
    st.tuples(st.just("rekey"), KEYS, KEYS),
    st.tuples(st.just("bump"), st.integers(-1, 4)),
    st.tuples(st.just("delete"), KEYS),
)
WHERE = "(n > '2' OR s = 'bob') AND region IS NOT 'x'"


def _statement(op: tuple[Any, ...]) -> S:
    kind = op[0]
    if kind == "insert":
        return S("INSERT OR REPLACE INTO t(id, n, s, region) VALUES (?, ?, ?, ?)", list(op[1:]))
    if kind == "update":
        return S(f"UPDATE t SET {op[2]} = ? WHERE id = ?", [op[3], op[1]])
    if kind == "rekey":
        return S("UPDATE OR IGNORE t SET id = ? WHERE id = ?", [op[2], op[1]])
    if kind == "bump":
        return S("UPDATE t SET n = n + 1 WHERE n > ?", [op[1]])
    return S("DELETE FROM t WHERE id = ?", [op[1]])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(OPS, min_size=1, max_size=3), min_size=1, max_size=8))
def test_the_replica_always_equals_the_leaders_filtered_select(batches: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pair = Pair(Path(tmp), [f"t(id, n, s) WHERE {WHERE}"])
        try:
            pair.write(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, s TEXT COLLATE NOCASE, "
                "region TEXT)"
            )
            for batch in batches:
                statements = [_statement(op) for op in batch]
                outcome = pair.leader.execute_write(statements, 1, pair.index + 1)
                if outcome.data is None:
                    continue  # changed nothing
                pair.index += 1
                apply_to(pair.replica, pair.applier, outcome.data)
                expected = pair.leader_rows(f"SELECT id, n, s FROM t WHERE {WHERE} ORDER BY id")
                assert pair.replica_rows("SELECT * FROM t ORDER BY id") == expected
        finally:
            pair.close()


# ---- DDL ---------------------------------------------------------------------------


def test_ddl_follows_the_subscribed_columns(make_pair: Any) -> None:
    pair = make_pair(["t(id, a, c, d) WHERE a > 0", "u"])
    pair.write(
        "/* migration 1 */ create table t(id integer primary key, a, b)",
        "CREATE TABLE u(id INTEGER PRIMARY KEY, x)",
        "INSERT INTO t VALUES (1, 1, 'b1'), (2, 0, 'b2')",
    )
    pair.write(
        "-- add columns\nALTER TABLE t ADD COLUMN c TEXT DEFAULT 'c'",  # listed: kept
        "alter table t add e INTEGER",  # not listed: skipped
        "CREATE INDEX t_a ON t(a)",  # kept
        "CREATE INDEX t_b ON t(b)",  # names a dropped column: skipped
        'CREATE INDEX t_a_e ON t(a, "e")',  # quoted, still a dropped column: skipped
        "CREATE INDEX t_ab ON t(a) WHERE b IS NOT NULL",  # partial on a dropped one: skipped
        "CREATE UNIQUE INDEX u_x ON u(lower(x))",
    )
    assert columns(pair.replica, "t") == ["id", "a", "c"]
    indexes = pair.replica_rows(
        "SELECT name FROM sqlite_schema WHERE type = 'index' AND name NOT LIKE 'replidb%' "
        "ORDER BY name"
    )
    assert indexes == [["t_a"], ["u_x"]]
    pair.write(
        "UPDATE t SET c = 'C', e = 5 WHERE id = 1", "INSERT INTO t VALUES (3, 3, 'b', 'c', 9)"
    )
    pair.write("ALTER TABLE t RENAME COLUMN c TO cc", "UPDATE t SET cc = 'renamed' WHERE id = 3")
    pair.write(
        "DROP INDEX t_b",  # never created here: nothing to do
        "DROP INDEX t_ab",
        "DROP INDEX t_a_e",
        "DROP INDEX t_a",
        "ALTER TABLE t DROP COLUMN b",
        "ALTER TABLE t DROP COLUMN e",
    )
    pair.write("ALTER TABLE t ADD COLUMN d", "UPDATE t SET d = id * 10")
    assert columns(pair.replica, "t") == ["id", "a", "cc", "d"]
    assert pair.replica_rows("SELECT * FROM t ORDER BY id") == pair.leader_rows(
        "SELECT id, a, cc, d FROM t WHERE a > 0 ORDER BY id"
    )
    assert pair.replica_rows("SELECT * FROM t ORDER BY id") == [
        [1, 1, "C", 10],
        [3, 3, "renamed", 30],
    ]
    pair.write("DROP TABLE t", "DROP TABLE u")
    assert user_tables(pair.replica) == []
    assert not pair.replica_rows("SELECT name FROM sqlite_schema WHERE name LIKE 'replidb%'")
    pair.write("CREATE TABLE t(id INTEGER PRIMARY KEY, a)", "INSERT INTO t VALUES (1, 5)")
    assert pair.replica_rows("SELECT * FROM t") == [[1, 5]]


def test_a_new_applier_over_the_same_replica_carries_on(make_pair: Any) -> None:
    pair = make_pair(["t(id, a) WHERE b = 'keep'"])
    pair.write(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)", "INSERT INTO t VALUES (1, 1, 'keep')"
    )
    pair.write("ALTER TABLE t RENAME COLUMN a TO aa")
    pair.applier = PartialApplier(pair.replica, parse_subscription(["t(id, a) WHERE b = 'keep'"]))
    pair.write("UPDATE t SET aa = 2", "INSERT INTO t VALUES (2, 2, 'drop'), (3, 3, 'keep')")
    assert pair.replica_rows("SELECT * FROM t ORDER BY id") == [[1, 2], [3, 3]]
    record = decode_record(_record(pair, "UPDATE t SET aa = 4"))
    for changed in ["t(id, a) WHERE b = 'other'", "t(id, a)"]:
        other = PartialApplier(pair.replica, parse_subscription([changed]))
        with pytest.raises(InternalError, match="built with another predicate"):
            other.apply(record)


def _record(pair: Pair, sql: str) -> bytes:
    pair.index += 1
    outcome = pair.leader.execute_write([S(sql)], term=1, index=pair.index)
    assert outcome.data is not None
    return outcome.data


# ---- what cannot be applied faithfully -----------------------------------------------


def _refused(pair: Pair, *sql: str) -> str:
    before = pair.replica_rows("SELECT sql FROM sqlite_schema ORDER BY name")
    with pytest.raises(InternalError) as info:
        pair.write(*sql)
    assert pair.replica_rows("SELECT sql FROM sqlite_schema ORDER BY name") == before
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_update_without_a_complete_image_is_refused(make_pair: Any) -> None:
    pair = make_pair(["users WHERE region = 'eu'"], row_images="minimal")
    pair.write("CREATE TABLE users(id INTEGER PRIMARY KEY, region TEXT, n)")
    pair.write("INSERT INTO users VALUES (1, 'eu', 0)")
    assert _refused(pair, "UPDATE users SET n = 1") == (
        "partial replication of users needs complete row images: "
        "run the cluster with --row-images full"
    )
    assert pair.replica_rows("SELECT * FROM users") == [[1, "eu", 0]]


def test_a_statement_record_is_refused(make_pair: Any) -> None:
    pair = make_pair(["t"], stream="statement")
    message = _refused(pair, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    assert message.endswith("partial replication needs --stream logical")


@pytest.mark.parametrize(
    ("spec", "sql", "message"),
    [
        (
            "t(a, b)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)",
            "partial replication of t needs its primary key column id in the column list",
        ),
        (
            "t(a)",
            "CREATE TABLE t(k1, k2, a, PRIMARY KEY (k1, k2)) WITHOUT ROWID",
            "partial replication of t needs its primary key column k1, k2 in the column list",
        ),
        (
            "t WHERE zz > 1",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a)",
            "partial replication of t: its predicate does not fit the leader's table "
            "(no such column: zz)",
        ),
        (
            't WHERE "zz" > 1',
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a)",
            'its predicate does not fit the leader\'s table (no such column: "zz"',
        ),
        (
            "t WHERE rowid > 1",
            "CREATE TABLE t(id PRIMARY KEY, a) WITHOUT ROWID",
            "(no such column: rowid)",
        ),
        (
            "t",
            "CREATE TABLE t AS SELECT 1 AS a",
            "partial replication of t cannot follow CREATE TABLE ... AS SELECT",
        ),
        ("t(x)", "CREATE TABLE t(a, b)", "would keep no column"),
    ],
)
def test_a_table_the_subscription_cannot_follow_is_refused(
    make_pair: Any, spec: str, sql: str, message: str
) -> None:
    pair = make_pair([spec])
    assert message in _refused(pair, sql)
    assert user_tables(pair.replica) == []


def test_schema_changes_that_break_the_subscription_are_refused(make_pair: Any) -> None:
    pair = make_pair(["t(id, a) WHERE a > 0", "u"])
    pair.write(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)", "CREATE TABLE u(x)", "CREATE TABLE v(y)"
    )
    assert _refused(pair, "ALTER TABLE t RENAME COLUMN a TO aa") == (
        "partial replication of t: its predicate does not fit the leader's table "
        "(no such column: a)"
    )
    assert _refused(pair, "ALTER TABLE u RENAME TO w") == (
        "the leader renamed table u to w: partial replication does not follow a subscribed "
        "table's rename (subscribe to the new name and resync)"
    )
    # the leader went on without u; a table renamed to a subscribed name is refused too
    assert "renamed table v to u" in _refused(pair, "ALTER TABLE v RENAME TO u")
    pair.write("CREATE TABLE x(y)", "ALTER TABLE x RENAME TO x2")  # not subscribed: skipped


def test_changes_to_a_table_the_replica_never_created_are_refused(make_pair: Any) -> None:
    pair = make_pair(["t"])
    pair.write("CREATE TABLE t(id INTEGER PRIMARY KEY, a)")
    pair.replica.execute("DROP TABLE t")  # as if subscribed only after the CREATE
    assert "this node does not hold the table" in _refused(pair, "INSERT INTO t VALUES (1, 2)")


def test_a_replica_that_lost_a_row_stops(make_pair: Any) -> None:
    pair = make_pair(["t(id, a)"])
    pair.write("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)", "INSERT INTO t VALUES (1, 2, 3)")
    pair.replica.execute("DELETE FROM t")
    message = _refused(pair, "UPDATE t SET a = 5")
    assert message == (
        "partial replication of t: the UPDATE of the row {'id': 1} found no row here: "
        "this node has diverged and needs a resync"
    )
    assert "the DELETE of the row {'id': 1} found no row" in _refused(pair, "DELETE FROM t")
