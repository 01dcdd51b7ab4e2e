"""``replidb discarded``: what failovers rolled back, on every node, kept not lost."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from replidb.cli.options import connect_option, fail
from replidb.cli.status_cmd import cluster_status
from replidb.client.transport import Client
from replidb.errors import Error
from replidb.transport import wire

__all__ = ["discarded", "discarded_report"]

_QUERY = "SELECT term, idx, discarded_at, reason, changes FROM replidb_discarded ORDER BY id"


def discarded_report(addresses: str | Sequence[str], timeout: float = 5.0) -> dict[str, Any]:
    """Every member's discarded transactions: ``{"nodes": {id: [{term, index,
    discarded_at, reason, changes: [...]}, ...]}, "unreachable": [id...], "total": n}``."""
    members = cluster_status(addresses, timeout=timeout)["nodes"]
    found: dict[str, list[dict[str, Any]]] = {}
    unreachable: list[str] = []
    for member in members:
        client = Client(member["address"], timeout=timeout)
        try:
            rows = client.execute([wire.Statement(_QUERY)], write=False)[0].rows
        except Error:
            unreachable.append(member["id"])
            continue
        finally:
            client.close()
        found[member["id"]] = [
            {"term": t, "index": i, "discarded_at": at, "reason": why, "changes": json.loads(c)}
            for t, i, at, why, c in rows
        ]
    return {
        "nodes": found,
        "unreachable": unreachable,
        "total": sum(len(rows) for rows in found.values()),
    }


def _summary(changes: list[dict[str, Any]], width: int = 70) -> str:
    parts = []
    for change in changes:
        if "ddl" in change:
            parts.append(change["ddl"])
        else:
            key = ", ".join(f"{k}={v!r}" for k, v in (change.get("key") or {}).items())
            parts.append(f"{change['op']} {change['table']} ({key})")
    text = "; ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


@click.command("discarded")
@connect_option("Any member(s); every member is asked.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds per node.")
def discarded(addresses: str, as_json: bool, timeout: float) -> None:
    """List the transactions that failovers rolled back, on every node.

    A deposed leader that held writes the new leader never got undoes them and keeps
    each one in its replidb_discarded table: nothing is dropped silently.

    Example:

    \b
        replidb discarded --connect 127.0.0.1:7101 --json
    """
    try:
        report = discarded_report(addresses, timeout)
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("node", "term", "index", "discarded at", "reason", "changes"):
        table.add_column(name, justify="right" if name in ("term", "index") else "left")
    for node, rows in sorted(report["nodes"].items()):
        for row in rows:
            table.add_row(
                node,
                str(row["term"]),
                str(row["index"]),
                row["discarded_at"],
                row["reason"],
                _summary(row["changes"]),
            )
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    console.print(
        f"{report['total']} discarded transaction(s)"
        + (f"; unreachable: {', '.join(report['unreachable'])}" if report["unreachable"] else "")
    )
