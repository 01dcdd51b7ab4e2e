"""Reading the leader's DDL for a partial replica (``subscription.py`` decides what to do
with it): which statement it is, which table and column it concerns, and the rewrite of
a ``CREATE TABLE`` down to the subscribed columns.

This works on SQLite's tokens and copies the leader's text through unchanged wherever
it keeps something. sqlglot was tried and set aside: its SQLite dialect re-spells
declared types (which decide column affinity, hence the values stored) and gives up on
``WITHOUT ROWID`` and ``STRICT`` tables. The grammar needed here is small: a table
definition is ``name ( item, item, ... ) options`` and each item is either a column
(it starts with the column's name) or a table constraint (it starts with CONSTRAINT,
PRIMARY, UNIQUE, CHECK or FOREIGN).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

__all__ = ["Ddl", "Token", "parse_ddl", "quote", "rewrite_create", "tokens", "unquote"]

_TOKEN = re.compile(
    r"'(?:[^']|'')*'"  # string literal
    r"|\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`|\[[^\]]*\]"  # quoted identifiers
    r"|--[^\n]*|/\*.*?(?:\*/|\Z)"  # comments
    r"|[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*"  # words
    r"|[0-9][A-Za-z0-9_.]*"  # numbers (kept whole so "1e5" is no identifier)
    r"|\S",
    re.DOTALL,
)
_CONSTRAINT_WORDS = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"})


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int

    @property
    def name(self) -> str | None:
        """The identifier (or keyword) this token spells, unquoted; None otherwise."""
        first = self.text[0]
        if first in '"`[':
            return unquote(self.text)
        if first.isalpha() or first == "_" or ord(first) >= 0x80:
            return self.text
        return None

    @property
    def keyword(self) -> str:
        """The upper-cased word if it is a bare word (quoted names are never keywords)."""
        return self.text.upper() if self.text[0] not in "\"`['" else ""


def tokens(sql: str) -> list[Token]:
    """SQLite's tokens of ``sql``, comments left out."""
    return [
        Token(m.group(0), m.start(), m.end())
        for m in _TOKEN.finditer(sql)
        if not m.group(0).startswith(("--", "/*"))
    ]


def unquote(text: str) -> str:
    if text[:1] == '"':
        return text[1:-1].replace('""', '"')
    if text[:1] == "`":
        return text[1:-1].replace("``", "`")
    if text[:1] == "[":
        return text[1:-1]
    return text


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Ddl:
    """One DDL statement, as far as a partial replica cares.

    kind: create_table | create_table_as | create_virtual | create_index | drop_table |
    drop_index | add_column | drop_column | rename_column | rename_table | other.
    """

    kind: str
    table: str = ""  # the table it concerns (for an index: the indexed table)
    name_span: tuple[int, int] = (0, 0)  # where ``table`` is spelled in the text
    column: str = ""  # add/drop/rename column: the column
    new_name: str = ""  # rename: the new name
    index: str = ""  # create/drop index: the index


def parse_ddl(sql: str) -> Ddl:
    """Classify one DDL statement; what it does not recognise is ``other``."""
    toks = tokens(sql)
    try:
        return _parse(toks)
    except IndexError:  # a statement SQLite accepted but this reader does not follow
        return Ddl("other")


def _parse(toks: list[Token]) -> Ddl:
    words = [t.keyword for t in toks]
    if words[0] == "CREATE":
        i = 1
        if words[i] in ("TEMP", "TEMPORARY"):
            return Ddl("other")  # the leader logs no temporary objects
        if words[i] == "UNIQUE":
            i += 1
        if words[i] == "INDEX":
            index, i, _ = _name(toks, _if_exists(words, i + 1, 3))
            table, i, span = _name(toks, i + 1)  # after ON
            return Ddl("create_index", table, span, index=index)
        kind = "create_table"
        if words[i] == "VIRTUAL":
            kind, i = "create_virtual", i + 1
        if words[i] != "TABLE":
            return Ddl("other")  # views and triggers
        table, i, span = _name(toks, _if_exists(words, i + 1, 3))
        if kind == "create_table" and words[i] == "AS":
            kind = "create_table_as"
        return Ddl(kind, table, span)
    if words[0] == "DROP" and words[1] in ("TABLE", "INDEX"):
        name, _, span = _name(toks, _if_exists(words, 2, 2))
        if words[1] == "INDEX":
            return Ddl("drop_index", index=name)
        return Ddl("drop_table", name, span)
    if words[0] == "ALTER" and words[1] == "TABLE":
        table, i, span = _name(toks, 2)
        action = words[i]
        if action == "RENAME" and words[i + 1] == "TO":
            return Ddl("rename_table", table, span, new_name=_plain(toks[i + 2]))
        i += 2 if words[i + 1] == "COLUMN" else 1
        if action == "RENAME":
            return Ddl("rename_column", table, span, _plain(toks[i]), _plain(toks[i + 2]))
        if action in ("ADD", "DROP"):
            return Ddl(f"{action.lower()}_column", table, span, _plain(toks[i]))
    return Ddl("other")


def _if_exists(words: list[str], i: int, length: int) -> int:
    """Skip ``IF [NOT] EXISTS`` (``length`` words) at ``i``."""
    return i + length if words[i] == "IF" else i


def _plain(token: Token) -> str:
    name = token.name
    if name is None:
        raise IndexError  # not a name where one belongs: leave the statement alone
    return name


def _name(toks: list[Token], i: int) -> tuple[str, int, tuple[int, int]]:
    """A possibly schema-qualified name at ``i``: (name, next index, its text span).
    A name in a schema other than main (temp) is reported as "", which no
    subscription holds."""
    start = toks[i].start
    name = _plain(toks[i])
    if i + 2 < len(toks) and toks[i + 1].text == ".":
        schema, name = name, _plain(toks[i + 2])
        i += 2
        if schema.lower() != "main":
            name = ""
    return name, i + 1, (start, toks[i].end)


@dataclass(frozen=True)
class _Item:
    text: str
    column: str | None  # a column's name; None for a table constraint
    primary: bool  # declares (part of) the primary key
    mentions: frozenset[str]  # a constraint's names in its first (...) group, lower-cased


def _items(sql: str, toks: list[Token]) -> tuple[int, int, list[_Item]]:
    """The definitions between the outer parentheses: (open, close offsets, items)."""
    open_at = next(i for i, t in enumerate(toks) if t.text == "(")
    depth = 0
    groups: list[list[Token]] = [[]]
    for i in range(open_at + 1, len(toks)):
        text = toks[i].text
        if text == ")" and depth == 0:
            items = [_item(sql, group) for group in groups if group]
            return toks[open_at].end, toks[i].start, items
        if text == "," and depth == 0:
            groups.append([])
            continue
        depth += {"(": 1, ")": -1}.get(text, 0)
        groups[-1].append(toks[i])
    raise ValueError("its column definitions do not end")


def _item(sql: str, group: list[Token]) -> _Item:
    words = [t.keyword for t in group]
    primary = any(a == "PRIMARY" and b == "KEY" for a, b in itertools.pairwise(words))
    text = sql[group[0].start : group[-1].end]
    if words[0] not in _CONSTRAINT_WORDS:
        return _Item(text, _plain(group[0]), primary, frozenset())
    # The constrained columns: the names in its first parenthesised group (CHECK's
    # expression, the key columns of PRIMARY KEY / UNIQUE / FOREIGN KEY; a foreign key's
    # REFERENCES list names the other table's columns and comes later).
    mentions: set[str] = set()
    depth = 0
    for token in group:
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
            if depth == 0:
                break
        elif depth and token.name is not None:
            mentions.add(token.name.lower())
    return _Item(text, None, primary and words[0] != "CHECK", frozenset(mentions))


def rewrite_create(sql: str, keep: frozenset[str]) -> str:
    """``CREATE TABLE`` text with only the columns named in ``keep`` (lower-cased), and
    without the table constraints that mention a column left out. ValueError if a
    primary-key column would be left out or no column would remain."""
    try:
        open_at, close_at, items = _items(sql, tokens(sql))
    except (IndexError, StopIteration):
        raise ValueError("cannot read its column definitions") from None
    dropped = {i.column.lower() for i in items if i.column and i.column.lower() not in keep}
    kept: list[str] = []
    for item in items:
        lost = (item.column or "").lower() in dropped or bool(item.mentions & dropped)
        if lost and item.primary:
            missing = item.column or ", ".join(sorted(item.mentions & dropped))
            raise ValueError(
                f"needs its primary key column {missing} in the column list "
                "(identity columns must be replicated)"
            )
        if not lost:
            kept.append(item.text)
    if not any(item.column and item.column.lower() in keep for item in items):
        raise ValueError("would keep no column: the leader's table has none of the listed ones")
    return sql[:open_at] + ", ".join(kept) + sql[close_at:]
