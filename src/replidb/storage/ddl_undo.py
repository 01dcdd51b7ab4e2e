"""How to undo a schema change, worked out by the leader just before it runs one.

A deposed leader must roll back the writes the new leader does not have, DDL
included. Row changes invert themselves (session changesets); DDL does not, so for
each DDL statement the leader records:

- ``pre``: statements to run first, inside the capture, so that the data the DDL is
  about to destroy is recorded as ordinary row changes (``DROP TABLE t`` is preceded by
  ``DELETE FROM t``; ``ALTER TABLE t DROP COLUMN c`` by ``UPDATE t SET c = NULL``) and
  comes back when those changes are inverted;
- ``undo``: statements that reverse the schema change itself, run in order.

``plan`` returns None for DDL it cannot reverse (a NOT NULL column dropped, a
statement it does not recognise): such a transaction can still replicate, but a node
that must roll it back stops and asks for a resync.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import apsw

__all__ = ["UndoPlan", "plan"]

_TOKEN = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|--[^\n]*|/\*.*?\*/"
    r"|[A-Za-z_][A-Za-z0-9_$]*|\S",
    re.DOTALL,
)
_KINDS = ("TABLE", "INDEX", "VIEW", "TRIGGER")


@dataclass(frozen=True)
class UndoPlan:
    pre: list[str] = field(default_factory=list)
    undo: list[str] = field(default_factory=list)


def _tokens(sql: str) -> list[str]:
    return [t for t in _TOKEN.findall(sql) if not t.startswith(("--", "/*"))]


def _unquote(token: str) -> str:
    if token[:1] in ('"', "`", "[") and len(token) >= 2:
        return token[1:-1].replace('""', '"') if token[0] == '"' else token[1:-1]
    return token


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _name(tokens: list[str], i: int) -> tuple[str, int]:
    """A possibly schema-qualified name at ``i``: (unquoted last part, next index)."""
    name = _unquote(tokens[i])
    i += 1
    if i + 1 < len(tokens) and tokens[i] == ".":
        name = _unquote(tokens[i + 1])
        i += 2
    return name, i


def _schema_sql(conn: apsw.Connection, kind: str, name: str) -> str | None:
    row = conn.execute(
        "SELECT sql FROM sqlite_schema WHERE type = ? AND name = ? COLLATE NOCASE",
        (kind.lower(), name),
    ).fetchone()
    return str(row[0]) if row and row[0] else None


def plan(conn: apsw.Connection, sql: str) -> UndoPlan | None:
    """The undo plan for one DDL statement, read from the schema before it runs."""
    tokens = _tokens(sql)
    words = [t.upper() for t in tokens]
    try:
        if words[0] == "CREATE":
            return _plan_create(conn, tokens, words)
        if words[0] == "DROP" and words[1] in _KINDS:
            return _plan_drop(conn, tokens, words)
        if words[:2] == ["ALTER", "TABLE"]:
            return _plan_alter(conn, tokens, words)
        if words[0] in ("REINDEX", "ANALYZE"):
            return UndoPlan()  # rebuilds derived data only
    except IndexError:
        return None
    return None


def _plan_create(conn: apsw.Connection, tokens: list[str], words: list[str]) -> UndoPlan | None:
    i = 1
    while words[i] in ("TEMP", "TEMPORARY", "UNIQUE", "VIRTUAL"):
        i += 1
    kind = words[i]
    if kind not in _KINDS:
        return None
    i += 1
    if words[i : i + 3] == ["IF", "NOT", "EXISTS"]:
        i += 3
    name, _ = _name(tokens, i)
    if _schema_sql(conn, kind, name) is not None:
        return UndoPlan()  # IF NOT EXISTS on an existing object: nothing will change
    return UndoPlan(undo=[f"DROP {kind} IF EXISTS {_quote(name)}"])


def _plan_drop(conn: apsw.Connection, tokens: list[str], words: list[str]) -> UndoPlan | None:
    kind = words[1]
    i = 2
    if words[i : i + 2] == ["IF", "EXISTS"]:
        i += 2
    name, _ = _name(tokens, i)
    created = _schema_sql(conn, kind, name)
    if created is None:
        return UndoPlan()  # IF EXISTS on a missing object
    if kind != "TABLE":
        return UndoPlan(undo=[created])
    dependents = [
        str(row[0])
        for row in conn.execute(
            "SELECT sql FROM sqlite_schema WHERE tbl_name = ? COLLATE NOCASE "
            "AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY rowid",
            (name,),
        )
    ]
    return UndoPlan(pre=[f"DELETE FROM {_quote(name)}"], undo=[created, *dependents])


def _plan_alter(conn: apsw.Connection, tokens: list[str], words: list[str]) -> UndoPlan | None:
    table, i = _name(tokens, 2)
    action = words[i]
    if action == "RENAME" and words[i + 1] == "TO":
        new, _ = _name(tokens, i + 2)
        return UndoPlan(undo=[f"ALTER TABLE {_quote(new)} RENAME TO {_quote(table)}"])
    if action == "RENAME":
        j = i + 2 if words[i + 1] == "COLUMN" else i + 1
        old = _unquote(tokens[j])
        new = _unquote(tokens[j + 2])
        return UndoPlan(
            undo=[f"ALTER TABLE {_quote(table)} RENAME COLUMN {_quote(new)} TO {_quote(old)}"]
        )
    if action == "ADD":
        j = i + 2 if words[i + 1] == "COLUMN" else i + 1
        column = _unquote(tokens[j])
        return UndoPlan(undo=[f"ALTER TABLE {_quote(table)} DROP COLUMN {_quote(column)}"])
    if action == "DROP":
        j = i + 2 if words[i + 1] == "COLUMN" else i + 1
        return _plan_drop_column(conn, table, _unquote(tokens[j]))
    return None


def _plan_drop_column(conn: apsw.Connection, table: str, column: str) -> UndoPlan | None:
    columns = list(conn.execute("SELECT * FROM pragma_table_info(?)", (table,)))
    for position, (_, name, declared, notnull, default, _pk) in enumerate(columns):
        if str(name).lower() != column.lower():
            continue
        if notnull or position != len(columns) - 1:
            # Re-adding puts a column last and cannot restore NOT NULL values: such a
            # drop is not reversible in place (a node that must undo it needs a resync).
            return None
        definition = f"{_quote(str(name))} {declared}".rstrip()
        if default is not None:
            definition += f" DEFAULT {default}"
        # Re-added, the column holds its default; blank it so that inverting the
        # recorded UPDATE (which expects NULL there) puts the old values back.
        blank = f"UPDATE {_quote(table)} SET {_quote(str(name))} = NULL"
        return UndoPlan(
            pre=[blank], undo=[f"ALTER TABLE {_quote(table)} ADD COLUMN {definition}", blank]
        )
    return UndoPlan()  # no such column: the DROP will fail and nothing changes
