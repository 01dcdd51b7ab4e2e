"""Would a statement replay identically on another node? The analysis behind the
`statement` and `mixed` stream formats and `replidb explain-replication`.

Statement replication ships SQL text, so every input to the statement must be the same
on every node. Each construct gets a verdict:

- ``context``: non-deterministic, but made identical by a context the leader ships
  with the statement (its transaction time for 'now' and CURRENT_*, a seed for
  random() and randomblob());
- ``state``: depends only on the database state and the statements before it in the
  same transaction (last_insert_rowid(), changes(), rowid allocation), which replay
  reproduces;
- ``refuse``: nothing shipped can make it identical (UPDATE/DELETE ... LIMIT without
  ORDER BY, sqlite_version() written into data, total_changes(), functions SQLite
  does not define,
  triggers or views whose body is non-deterministic, INSERT ... SELECT whose row order
  assigns rowids): `statement` refuses it, `mixed` ships its row changes instead.

Parsing is sqlglot's SQLite dialect; what it cannot parse is scanned token by token.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

__all__ = ["Analysis", "Finding", "analyze", "split_statements"]

logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns when it falls back

_TIME = {"DATE", "TIME", "DATETIME", "JULIANDAY", "STRFTIME", "UNIXEPOCH", "TIMEDIFF"}
_NOW = {"CURRENT_TIMESTAMP", "CURRENT_DATE", "CURRENT_TIME"}
_RANDOM = {"RANDOM", "RANDOMBLOB", "RAND"}
_STATE = {"LAST_INSERT_ROWID", "CHANGES"}
_CONNECTION = {"TOTAL_CHANGES"}
_VERSION = {
    "SQLITE_VERSION",
    "SQLITE_SOURCE_ID",
    "CURRENT_VERSION",
    "SQLITE_COMPILEOPTION_GET",
    "SQLITE_COMPILEOPTION_USED",
}
# Functions built into SQLite that are deterministic given their arguments.
_BUILTIN = (
    {
        "ABS",
        "CHAR",
        "COALESCE",
        "CONCAT",
        "CONCAT_WS",
        "FORMAT",
        "GLOB",
        "HEX",
        "IFNULL",
        "IIF",
        "INSTR",
        "LENGTH",
        "LIKE",
        "LIKELIHOOD",
        "LIKELY",
        "LOWER",
        "LTRIM",
        "MAX",
        "MIN",
        "NULLIF",
        "OCTET_LENGTH",
        "PRINTF",
        "QUOTE",
        "REPLACE",
        "ROUND",
        "RTRIM",
        "SIGN",
        "SOUNDEX",
        "SUBSTR",
        "SUBSTRING",
        "TRIM",
        "TYPEOF",
        "UNHEX",
        "UNICODE",
        "UNLIKELY",
        "UPPER",
        "ZEROBLOB",
        "AVG",
        "COUNT",
        "GROUP_CONCAT",
        "STRING_AGG",
        "SUM",
        "TOTAL",
        "JSON",
        "JSON_ARRAY",
        "JSON_OBJECT",
        "JSON_EXTRACT",
        "JSON_INSERT",
        "JSON_REPLACE",
        "JSON_SET",
        "JSON_REMOVE",
        "JSON_TYPE",
        "JSON_VALID",
        "JSON_QUOTE",
        "JSON_GROUP_ARRAY",
        "JSON_GROUP_OBJECT",
        "JSON_EACH",
        "JSON_TREE",
        "JSON_ARRAY_LENGTH",
        "JSON_PATCH",
        "ROW_NUMBER",
        "RANK",
        "DENSE_RANK",
        "NTILE",
        "LAG",
        "LEAD",
        "FIRST_VALUE",
        "LAST_VALUE",
        "NTH_VALUE",
        "PERCENT_RANK",
        "CUME_DIST",
        "CAST",
        "ACOS",
        "ASIN",
        "ATAN",
        "ATAN2",
        "CEIL",
        "CEILING",
        "COS",
        "EXP",
        "FLOOR",
        "LN",
        "LOG",
        "LOG10",
        "LOG2",
        "MOD",
        "PI",
        "POW",
        "POWER",
        "SIN",
        "SQRT",
        "TAN",
        "TRUNC",
        "STDDEV",
        "IF",
        "SUBSTR_INDEX",
        "LEFT",
        "RIGHT",
        "STRPOS",
        "ARRAY_AGG",
        "COUNT_IF",
        "LENGTH_BYTES",
        "TO_CHAR",
        "EXTRACT",
        "CASE",
        "COLUMN",
        "NOT",
        "AND",
        "OR",
        "COLLATE",
        "ESCAPE",
        "STR_POSITION",
        "DATE_ADD",
        "TS_OR_DS_TO_DATE",
        "TIME_TO_STR",
        "STR_TO_TIME",
        "UNIX_TO_TIME",
        "TIME_STR_TO_TIME",
        "TIME_STR_TO_UNIX",
    }
    | _TIME
    | _NOW
    | _RANDOM
    | _STATE
    | _CONNECTION
    | _VERSION
)
_TRIGGER = re.compile(r"\s*CREATE\s+(?:TEMP\w*\s+)?TRIGGER\b", re.I)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?=\s*\()|CURRENT_(?:TIMESTAMP|DATE|TIME)\b", re.I)


@dataclass(frozen=True)
class Finding:
    construct: str
    verdict: str  # "context" | "state" | "refuse"
    reason: str


@dataclass(frozen=True)
class Analysis:
    sql: str
    writes: bool
    findings: tuple[Finding, ...]

    @property
    def statement_safe(self) -> bool:
        return not any(f.verdict == "refuse" for f in self.findings)


def analyze(sql: str) -> list[Analysis]:
    """One Analysis per statement in ``sql``; ValueError if it cannot be parsed."""
    out: list[Analysis] = []
    for piece in split_statements(sql):
        if _TRIGGER.match(piece):  # sqlglot cannot parse trigger bodies
            out.append(_analyze_text(piece, writes=True))
            continue
        try:
            tree = sqlglot.parse_one(piece, read="sqlite")
        except sqlglot.errors.SqlglotError as exc:
            raise ValueError(f"cannot parse SQL: {str(exc).splitlines()[0]}") from None
        out.append(_analyze_one(tree, piece))
    return out


_PIECE = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|--[^\n]*|/\*.*?\*/"
    r"|[A-Za-z_]+|;|[^\sA-Za-z_;'\"`\[/-]+|\S",
    re.DOTALL,
)


def split_statements(sql: str) -> list[str]:
    """Split at top-level semicolons, keeping a trigger's BEGIN ... END body whole."""
    pieces: list[str] = []
    start = 0
    depth = 0  # inside CREATE TRIGGER ... BEGIN: count BEGIN/CASE against END
    trigger = False
    words: list[str] = []
    for match in _PIECE.finditer(sql):
        token = match.group(0).upper()
        if token == ";" and depth == 0:
            if sql[start : match.start()].strip():
                pieces.append(sql[start : match.start()].strip())
            start, trigger, words = match.end(), False, []
            continue
        if token[:1].isalpha():
            words.append(token)
            if words[:1] == ["CREATE"] and token == "TRIGGER":
                trigger = True
            elif trigger and token in ("BEGIN", "CASE"):
                depth += 1
            elif trigger and token == "END" and depth:
                depth -= 1
    if sql[start:].strip():
        pieces.append(sql[start:].strip())
    return pieces


def _name(func: exp.Func) -> str:
    if isinstance(func, exp.Anonymous):
        return str(func.name).upper()
    return func.sql(dialect="sqlite").split("(")[0].strip().upper()


def _analyze_one(tree: exp.Expr, text: str) -> Analysis:
    if isinstance(tree, exp.Select | exp.Union | exp.Values):
        return Analysis(text, False, ())  # a read is served where it runs: not replicated
    writes = True
    known = exp.Insert | exp.Update | exp.Delete | exp.Create | exp.Drop | exp.Alter
    if not isinstance(tree, known):
        unknown = Finding(
            "a statement replidb does not recognise",
            "refuse",
            "it cannot tell whether it replays identically",
        )
        return Analysis(text, True, (unknown,))
    findings: list[Finding] = []
    for func in tree.find_all(exp.Func):
        findings.extend(_function_findings(func, writes))
    limited = tree.args.get("limit") is not None and tree.args.get("order") is None
    if isinstance(tree, exp.Update | exp.Delete) and limited:
        findings.append(
            Finding(
                f"{type(tree).__name__.upper()} ... LIMIT without ORDER BY",
                "refuse",
                "which rows it touches depends on each node's scan order",
            )
        )
    if isinstance(tree, exp.Insert) and tree.find(exp.Select) is not None:
        select = tree.find(exp.Select)
        has_from = select is not None and (select.args.get("from_") or select.args.get("from"))
        if select is not None and select.args.get("order") is None and has_from:
            findings.append(
                Finding(
                    "INSERT ... SELECT without ORDER BY",
                    "refuse",
                    "rows are inserted, and rowids assigned, in scan order, which another "
                    "node's query plan may change",
                )
            )
    if isinstance(tree, exp.Create) and str(tree.args.get("kind", "")).upper() == "VIEW":
        findings = [
            Finding(
                f"{f.construct} in a view",
                "refuse",
                "a view runs wherever it is read: an INSERT ... SELECT from it would "
                "write different data on each node",
            )
            if f.verdict == "context"
            else f
            for f in findings
        ]
    if isinstance(tree, exp.Insert):
        findings.append(
            Finding(
                "rowid / AUTOINCREMENT allocation",
                "state",
                "the next id is the same on every node that holds the same rows",
            )
        )
    return Analysis(text, writes, _unique(findings))


def _function_findings(func: exp.Func, writes: bool) -> list[Finding]:
    name = _name(func)
    args = [a for a in func.iter_expressions() if not isinstance(a, exp.Column)]
    literals = [a.name.lower() for a in args if isinstance(a, exp.Literal)]
    if name in _NOW or (name in _TIME and (not args or "now" in literals)):
        shown = name if name in _NOW else f"{name.lower()}({'now' if literals else ''})"
        shown = shown.replace("(now)", "('now')")
        return [
            Finding(shown, "context", "the current time: the leader's transaction time is shipped")
        ]
    if name in _RANDOM:
        return [
            Finding(f"{name.lower()}()", "context", "random: seeded per transaction by the leader")
        ]
    if name in _STATE:
        return [
            Finding(
                f"{name.lower()}()",
                "state",
                "depends on the statements before it in this transaction",
            )
        ]
    if name in _CONNECTION:
        return [
            Finding(
                f"{name.lower()}()",
                "refuse",
                "counts everything this node's connection ever changed, which differs per node",
            )
        ]
    if name in _VERSION:
        if writes:
            return [
                Finding(
                    f"{name.lower()}()",
                    "refuse",
                    "a node's SQLite build, written into data, differs per node",
                )
            ]
        return []
    if name not in _BUILTIN:
        return [
            Finding(
                f"{name.lower()}()",
                "refuse",
                "not an SQLite function: nothing says it is deterministic",
            )
        ]
    return []


def _analyze_text(text: str, writes: bool) -> Analysis:
    """For what sqlglot cannot parse (CREATE TRIGGER ... BEGIN ... END): scan names."""
    findings: list[Finding] = []
    body_kind = "trigger" if re.search(r"\bTRIGGER\b", text, re.I) else "statement"
    for match in _WORD.finditer(text):
        name = match.group(0).upper()
        if name in _NOW or name in _TIME | _RANDOM:
            if name in _TIME and "'now'" not in text.lower() and name not in _NOW:
                continue
            verdict = "refuse" if body_kind == "trigger" else "context"
            findings.append(
                Finding(
                    f"{name.lower()} in a {body_kind}",
                    verdict,
                    "a trigger body runs on every node at its own time, with its own randomness"
                    if verdict == "refuse"
                    else "made identical by the shipped context",
                )
            )
    return Analysis(text, writes, _unique(findings))


def _unique(findings: list[Finding]) -> tuple[Finding, ...]:
    return tuple(dict.fromkeys(findings))
