"""``replidb transfer-leader``: a planned switchover."""

from __future__ import annotations

import sys
import time

import click

from replidb.cli.options import connect_option, fail
from replidb.client.admin import transfer_leader
from replidb.errors import Error

__all__ = ["transfer_leader_command"]


@click.command("transfer-leader")
@connect_option("Any member(s) of the cluster.")
@click.option("--to", "target", required=True, help="The node id that should lead.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait.")
def transfer_leader_command(addresses: str, target: str, timeout: float) -> None:
    """Hand leadership to another node without losing a write.

    Example:

    \b
        replidb transfer-leader --connect 127.0.0.1:7101 --to n2
    """
    started = time.monotonic()
    try:
        old, new = transfer_leader(addresses, target, timeout)
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
    took = time.monotonic() - started
    click.echo(f"leadership moved from {old} to {new} in {took:.2f}s")
