"""``replidb changes``: the change stream as JSON lines."""

from __future__ import annotations

import json
import sys

import click

from replidb.cli.options import connect_option, fail
from replidb.client.changes import changes
from replidb.errors import Error

__all__ = ["changes_command"]


@click.command("changes")
@connect_option("Any member(s) of the cluster.")
@click.option(
    "--from",
    "start",
    default=None,
    metavar="TERM:INDEX",
    help="Resume after this position (an event's source.position); default: the "
    "beginning of the retained log.",
)
@click.option("--follow", is_flag=True, help="Keep waiting for new changes.")
@click.option("--tables", default="", metavar="T1,T2", help="Only these tables.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to find a node.")
def changes_command(
    addresses: str, start: str | None, follow: bool, tables: str, timeout: float
) -> None:
    """Print every row change as a JSON line (Debezium-style envelope).

    op is c, u or d; x retracts an event an asynchronous failover discarded. Delivery is
    at least once, in log order; resume with --from the last position you processed
    (that transaction comes again).

    Example:

    \\b
        replidb changes --connect 127.0.0.1:7101 --follow --tables orders
    """
    names = [t.strip() for t in tables.split(",") if t.strip()]
    try:
        for event in changes(addresses, start=start, tables=names, follow=follow, timeout=timeout):
            click.echo(json.dumps(event, separators=(",", ":")))
            sys.stdout.flush()
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
