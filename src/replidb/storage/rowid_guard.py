"""Identifier reuse guard: an id handed out by a write that a failover discards is never
handed out again for a different row.

The incident this prevents: a promoted replica allocated auto-increment ids that the
old primary had already given to clients (and an external cache), so one user's data
was shown to another. Three parts:

1. Every ``INTEGER PRIMARY KEY`` column is created ``AUTOINCREMENT`` (the rewrite below),
   so SQLite allocates from ``sqlite_sequence``, a floor we can raise, and never reuses
   an id, not even after a delete.
2. Id leases: a leader may acknowledge a row whose integer key is above the table's
   committed lease only once a raised lease (``replidb_rowid_leases``, replicated, in
   the same transaction) is committed on a majority. Leases grow in chunks, so only
   one write in ``LEASE_CHUNK`` waits for that, whatever the commit policy.
3. A new leader raises every table's ``sqlite_sequence`` to its lease before taking
   writes: whatever the old leader handed out was at or below a committed lease.

Not covered, and documented: tables whose key is not an ``INTEGER PRIMARY KEY`` (their
hidden rowid is SQLite's to reuse), and an ``INTEGER PRIMARY KEY`` created by a
multi-statement text that also carries ``?`` parameters (it is created as written).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import apsw

from replidb.stream.logical import Changes, Segment

__all__ = ["LEASE_CHUNK", "add_autoincrement", "max_inserted_keys", "split_sql"]

LEASE_CHUNK = 1000

# Tokens that can hide keywords: strings, quoted identifiers, comments.
_TOKEN = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|--[^\n]*|/\*.*?\*/"
    r"|[A-Za-z_][A-Za-z0-9_$]*|[(),;]|\S",
    re.DOTALL,
)


def split_sql(text: str) -> list[str]:
    """Split SQL text into statements exactly as SQLite would (trigger bodies included),
    using sqlite3_complete at each semicolon."""
    statements: list[str] = []
    start = 0
    for match in re.finditer(";", text):
        piece = text[start : match.end()]
        if apsw.complete(piece):
            if piece.strip(" \t\r\n;"):
                statements.append(piece)
            start = match.end()
    rest = text[start:]
    if rest.strip():
        statements.append(rest)
    return statements


def _words(sql: str) -> Iterator[tuple[str, int, int]]:
    for match in _TOKEN.finditer(sql):
        token = match.group(0)
        if token.startswith(("'", '"', "`", "[", "--", "/*")):
            continue
        yield token.upper(), match.start(), match.end()


def add_autoincrement(sql: str) -> str:
    """``CREATE TABLE ... (id INTEGER PRIMARY KEY ...)`` gains ``AUTOINCREMENT``; any
    other statement comes back unchanged."""
    words = list(_words(sql))
    upper = [w for w, _, _ in words]
    if len(upper) < 3 or upper[0] != "CREATE":
        return sql
    position = 1
    if upper[position] in ("TEMP", "TEMPORARY"):
        return sql  # temp tables are not replicated
    if upper[position] != "TABLE" or "AS" in upper[:8] or _without_rowid(upper):
        return sql
    depth = 0
    for i, word in enumerate(upper):
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
        elif (
            depth == 1
            and word == "INTEGER"
            and upper[i + 1 : i + 3] == ["PRIMARY", "KEY"]
            and (i == 0 or upper[i - 1] not in ("(", ","))  # a type, not a column name
        ):
            end = i + 3
            if end < len(upper) and upper[end] in ("ASC", "DESC"):
                end += 1
            if upper[end : end + 2] == ["ON", "CONFLICT"]:
                end += 3
            if end < len(upper) and upper[end] == "AUTOINCREMENT":
                return sql
            cut = words[end - 1][2]
            return sql[:cut] + " AUTOINCREMENT" + sql[cut:]
    return sql


def _without_rowid(upper: list[str]) -> bool:
    return any(upper[i : i + 2] == ["WITHOUT", "ROWID"] for i in range(len(upper) - 1))


def max_inserted_keys(segments: Sequence[Segment]) -> dict[str, int]:
    """Per table, the largest single-column integer key a write inserted."""
    found: dict[str, int] = {}
    for segment in segments:
        if not isinstance(segment, Changes):
            continue
        for change in apsw.Changeset.iter(segment.changeset):
            if change.op != "INSERT" or len(change.pk_columns) != 1 or change.new is None:
                continue
            key = change.new[next(iter(change.pk_columns))]
            if isinstance(key, int) and not isinstance(key, bool):
                found[change.name] = max(found.get(change.name, key), key)
    return found
