"""``replidb sql``: run SQL against a cluster, once (``-c``) or in an interactive shell."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import apsw
import click

from replidb.cli.options import connect_option, fail
from replidb.client import Client, connect, is_read_only
from replidb.client.connection import Connection
from replidb.errors import Error
from replidb.transport import wire

__all__ = ["format_table", "result_json", "run_sql", "shell", "sql"]

HISTORY_FILE = "~/.replidb_history"


def run_sql(
    addresses: str | Sequence[str],
    sql_text: str,
    *,
    consistency: str = "any",
    timeout: float = 10.0,
    sync: str = "",
) -> list[wire.StatementResult]:
    """Run ``sql_text`` (one or more statements) as ONE atomic request; its results.

    The whole text travels as one Statement: the server runs it in one transaction.
    ``sync`` overrides the cluster's commit policy for this write."""
    client = Client(addresses, timeout=timeout, consistency=consistency, sync=sync)
    try:
        return client.execute([wire.Statement(sql_text)], write=not is_read_only(sql_text))
    finally:
        client.close()


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "X'" + value.hex().upper() + "'"  # SQLite's blob literal
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table (header, dashes, rows); numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        all(isinstance(row[i], (int, float)) for row in rows if row[i] is not None)
        for i in range(len(columns))
    ]

    def line(texts: Sequence[str]) -> str:
        padded = [
            t.rjust(w) if num else t.ljust(w)
            for t, w, num in zip(texts, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def _json_value(value: Any) -> Any:
    # JSON has no bytes: a blob becomes {"base64": "..."}, unambiguous and reversible.
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return value


def result_json(columns: Sequence[str], rows: Sequence[Sequence[Any]], rowcount: int) -> str:
    """One result as one JSON line: {"columns": [...], "rows": [[...]], "rowcount": n}."""
    return json.dumps(
        {
            "columns": list(columns),
            "rows": [[_json_value(v) for v in row] for row in rows],
            "rowcount": rowcount,
        }
    )


def _print_result(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], rowcount: int, as_json: bool
) -> None:
    if as_json:
        click.echo(result_json(columns, rows, rowcount))
    elif columns:
        click.echo(format_table(columns, rows))


def shell(conn: Connection, *, as_json: bool = False) -> None:
    """Interactive loop: read until ``apsw.complete``, run, print; errors do not end it.

    Runs in autocommit mode, so BEGIN ... COMMIT buffers writes as the driver does."""
    interactive = sys.stdin.isatty()  # history only for a human at a terminal
    history = os.path.expanduser(HISTORY_FILE)
    if interactive:
        try:
            import readline

            try:
                readline.read_history_file(history)
            except OSError:
                pass
        except ImportError:  # no readline on this platform: plain input still works
            interactive = False
    buffer = ""
    try:
        while True:
            try:
                line = input("   ...> " if buffer else "replidb> ")
            except EOFError:
                click.echo()
                break
            except KeyboardInterrupt:
                click.echo()
                buffer = ""  # Ctrl-C drops the statement being typed, like sqlite3
                continue
            if not buffer and line.strip() in (".quit", ".exit"):
                break
            buffer += line + "\n"
            if not buffer.strip():
                buffer = ""
                continue
            if not apsw.complete(buffer):
                continue
            text, buffer = buffer, ""
            try:
                cursor = conn.execute(text)
            except Error as exc:
                fail(str(exc))
                continue
            columns = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchall()
            if columns or as_json:
                _print_result(columns, rows, cursor.rowcount, as_json)
    finally:
        if interactive:
            try:
                import readline

                readline.write_history_file(history)
            except OSError:
                pass


@click.command("sql")
@connect_option("Cluster addresses; the first reachable one is used.")
@click.option("-c", "command", metavar="SQL", help="Run this SQL (one atomic request) and exit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result, per line.")
@click.option(
    "--consistency",
    default="any",
    show_default=True,
    metavar="LEVEL",
    help="Read consistency: any, bounded:SECONDS, session, leader, linearizable.",
)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds, retries included.")
@click.option(
    "--sync",
    "sync_policy",
    default="",
    metavar="POLICY",
    help="Commit policy for these writes: async, semi-sync:K, quorum, all (default: cluster's).",
)
def sql(
    addresses: str,
    command: str | None,
    as_json: bool,
    consistency: str,
    timeout: float,
    sync_policy: str,
) -> None:
    """Run SQL on a replidb cluster, or open an interactive shell without -c.

    Reads are served by the node you connect to; writes reach the leader.

    Example:

    \b
        replidb sql --connect 127.0.0.1:7101 -c "SELECT * FROM t"

    The same from Python:

    \b
        from replidb.cli.sql_cmd import run_sql
        results = run_sql("127.0.0.1:7101", "SELECT * FROM t")
        print(results[-1].rows)
    """
    try:
        if command is not None:
            results = run_sql(
                addresses, command, consistency=consistency, timeout=timeout, sync=sync_policy
            )
            for result in results:
                _print_result(result.columns, result.rows, result.rowcount, as_json)
            return
        conn = connect(
            addresses,
            consistency=consistency,
            timeout=timeout,
            autocommit=True,
            sync=sync_policy or None,
        )
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
    try:
        shell(conn, as_json=as_json)
    finally:
        conn.close()
