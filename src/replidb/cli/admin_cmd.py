"""``replidb transfer-leader``, ``join`` and ``remove``: planned switchover and
membership changes."""

from __future__ import annotations

import sys
import time

import click

from replidb.cli.options import connect_option, fail
from replidb.client.admin import join, remove, transfer_leader
from replidb.errors import Error

__all__ = ["join_command", "remove_command", "transfer_leader_command"]


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


@click.command("join")
@connect_option("Any member(s) of the cluster.")
@click.option("--node-id", "node", required=True, help="The id of the node to add.")
@click.option("--address", required=True, metavar="HOST:PORT", help="Where that node listens.")
@click.option(
    "--learner",
    is_flag=True,
    help="Keep it a non-voting read replica (never votes or leads); default: promote it "
    "to voter once it has caught up.",
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait in all.")
def join_command(addresses: str, node: str, address: str, learner: bool, timeout: float) -> None:
    """Add a running node to the cluster, as a learner first, then as a voter.

    Start the node with ``replidb serve ... --join`` first. One membership change
    happens at a time; a repeated join of the same node just reports it.

    Example:

    \b
        replidb join --connect 127.0.0.1:7101 --node-id n4 --address 127.0.0.1:7104
    """
    started = time.monotonic()
    shown = [-1]

    def progress(held: int, commit: int) -> None:
        if held != shown[0]:
            shown[0] = held
            percent = 100 * held // commit if commit else 100
            click.echo(f"{node} catching up: {held} of {commit} ({percent}%)", err=True)

    try:
        reply = join(
            addresses, node, address, voter=not learner, timeout=timeout, progress=progress
        )
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
    role = "learner" if node in reply.learners else "voter"
    click.echo(
        f"{node} is a {role} (voters {','.join(reply.voters)}; learners "
        f"{','.join(reply.learners) or 'none'}) after {time.monotonic() - started:.2f}s"
    )


@click.command("remove")
@connect_option("Any member(s) of the cluster.")
@click.option("--node-id", "node", required=True, help="The id of the node to take out.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait.")
def remove_command(addresses: str, node: str, timeout: float) -> None:
    """Take a node out of the cluster (the leader too: it hands over first).

    Once this returns the node counts for no majority and gets no more writes; stop
    its process.

    Example:

    \b
        replidb remove --connect 127.0.0.1:7101 --node-id n3
    """
    try:
        reply = remove(addresses, node, timeout)
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
    click.echo(
        f"{node} removed (voters {','.join(reply.voters)}; learners "
        f"{','.join(reply.learners) or 'none'}); stop its process"
    )
