"""Which statements replay identically on another node, and why (stream/statement_analysis)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from replidb.cli.main import cli
from replidb.stream.statement_analysis import analyze, split_statements

CASES = [
    ("UPDATE t SET a = random() WHERE id = 1", True, {"random()": "context"}),
    ("INSERT INTO t VALUES (randomblob(4))", True, {"randomblob()": "context"}),
    (
        "INSERT INTO t VALUES (datetime('now'), date(), CURRENT_TIMESTAMP)",
        True,
        {"datetime('now')": "context", "date()": "context", "CURRENT_TIMESTAMP": "context"},
    ),
    ("INSERT INTO t VALUES (date('2020-01-01'))", True, {}),
    ("CREATE TABLE t(a, at DEFAULT CURRENT_TIMESTAMP)", True, {"CURRENT_TIMESTAMP": "context"}),
    (
        "INSERT INTO t VALUES (last_insert_rowid() + changes())",
        True,
        {"last_insert_rowid()": "state", "changes()": "state"},
    ),
    ("DELETE FROM t WHERE x = 1 LIMIT 3", False, {"DELETE ... LIMIT without ORDER BY": "refuse"}),
    ("DELETE FROM t ORDER BY id LIMIT 3", True, {}),
    ("INSERT INTO t SELECT sqlite_version()", False, {"sqlite_version()": "refuse"}),
    ("INSERT INTO t VALUES (my_udf(1))", False, {"my_udf()": "refuse"}),
    ("INSERT INTO t(a) SELECT a FROM u", False, {"INSERT ... SELECT without ORDER BY": "refuse"}),
    ("INSERT INTO t(a) SELECT a FROM u ORDER BY a", True, {}),
    (
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = random(); END",
        False,
        {"random in a trigger": "refuse"},
    ),
    ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; END", True, {}),
    ("CREATE VIEW v AS SELECT random() AS r", False, {"random() in a view": "refuse"}),
    ("VACUUM", False, {"a statement replidb does not recognise": "refuse"}),
]


@pytest.mark.parametrize(("sql", "safe", "verdicts"), CASES, ids=[c[0][:40] for c in CASES])
def test_each_construct_gets_its_verdict(sql: str, safe: bool, verdicts: dict[str, str]) -> None:
    [analysis] = analyze(sql)
    found = {f.construct: f.verdict for f in analysis.findings}
    for construct, verdict in verdicts.items():
        assert found.get(construct) == verdict, found
    assert analysis.statement_safe is safe
    assert all(f.reason for f in analysis.findings)


def test_reads_are_not_replicated_at_all() -> None:
    [analysis] = analyze("SELECT random(), sqlite_version(), my_udf(1) FROM t")
    assert not analysis.writes and analysis.findings == ()


def test_trigger_bodies_stay_whole_when_splitting() -> None:
    text = "CREATE TABLE a(x); CREATE TRIGGER tr AFTER INSERT ON a BEGIN SELECT ';'; END; SELECT 2"
    assert split_statements(text) == [
        "CREATE TABLE a(x)",
        "CREATE TRIGGER tr AFTER INSERT ON a BEGIN SELECT ';'; END",
        "SELECT 2",
    ]


def test_explain_replication_explains_every_format() -> None:
    result = CliRunner().invoke(
        cli, ["explain-replication", "--json", "DELETE FROM t LIMIT 1; SELECT 1"]
    )
    assert result.exit_code == 0, result.output
    delete, select = (json.loads(line) for line in result.output.splitlines())
    assert delete["statement"].startswith("refused: DELETE ... LIMIT without ORDER BY")
    assert delete["mixed"].startswith("ships rows")
    assert delete["logical"].startswith("ships the rows it changes")
    assert select["writes"] is False and "nothing is replicated" in select["statement"]
    text = CliRunner().invoke(cli, ["explain-replication", "UPDATE t SET v = random()"])
    assert "with the leader's context (random())" in text.output


def test_unparseable_sql_is_a_one_line_error() -> None:
    result = CliRunner().invoke(cli, ["explain-replication", "INSERT INTO (("])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot parse SQL") and result.output.count("\n") == 1
