"""``replidb kv get|put|delete``: key reads and writes on a leaderless cluster, with
R and W per call, coordinated by this command or (``--via node``) by a node."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from replidb.cli.options import connect_option, fail
from replidb.errors import Error

__all__ = ["kv"]


def _parse_key(text: str) -> Any:
    """JSON if it parses (1 -> int, ["a", 2] -> a composite key), else the string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value


def _options(func: Any) -> Any:
    func = click.option(
        "--via",
        default="client",
        show_default=True,
        type=click.Choice(["client", "node"]),
        help="Who coordinates: this command (it talks to each replica) or the first node.",
    )(func)
    func = click.option(
        "--timeout",
        default=10.0,
        show_default=True,
        type=click.FloatRange(0, min_open=True),
        help="Seconds to wait for an answer.",
    )(func)
    return connect_option("Nodes of the leaderless cluster (the first that answers).")(func)


def _client(addresses: str, via: str, timeout: float) -> Any:
    from replidb.client.kv import KvClient  # (imported when used: `replidb` starts faster)

    return KvClient(addresses, via=via, timeout=timeout)


@click.group()
def kv() -> None:
    """Key reads and writes on a leaderless cluster (tables with a PRIMARY KEY)."""


@kv.command("get")
@_options
@click.option("-r", "--read-quorum", "r", type=int, default=None, help="R for this read.")
@click.argument("table")
@click.argument("key")
def get_command(addresses: str, via: str, timeout: float, r: int | None, table: str,
                key: str) -> None:  # fmt: skip
    """Read a row from R replicas: prints {"rows": [...siblings], "context": ...}.

    Example: replidb kv get --connect 127.0.0.1:7101 users 1 -r 2
    """
    try:
        client = _client(addresses, via, timeout)
        try:
            read = client.get(table, _parse_key(key), r=r)
        finally:
            client.close()
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
    click.echo(json.dumps({"rows": read.rows, "context": read.context}, default=repr))


def _write(addresses: str, via: str, timeout: float, action: Any) -> None:
    try:
        client = _client(addresses, via, timeout)
        try:
            action(client)
        finally:
            client.close()
    except Error as exc:
        fail(str(exc))
        sys.exit(1)


def _context(text: str | None) -> list[tuple[str, int]] | None:
    if text is None:
        return None
    try:
        pairs = json.loads(text)
        return [(str(node), int(counter)) for node, counter in pairs]
    except (json.JSONDecodeError, TypeError, ValueError):
        raise click.BadParameter(
            f'{text!r}: expected the context a read printed, e.g. [["n1", 3]]',
            param_hint="--context",
        ) from None


@kv.command("put")
@_options
@click.option("-w", "--write-quorum", "w", type=int, default=None, help="W for this write.")
@click.option("--context", default=None, help="The context of a read (resolves siblings).")
@click.option("--sloppy", is_flag=True, help="Let nodes past the key's replicas stand in.")
@click.argument("table")
@click.argument("row")
def put_command(addresses: str, via: str, timeout: float, w: int | None, context: str | None,
                sloppy: bool, table: str, row: str) -> None:  # fmt: skip
    """Write a row (a JSON object with its primary key) to W replicas.

    Example: replidb kv put --connect 127.0.0.1:7101 users '{"id": 1, "name": "ada"}' -w 2
    """
    try:
        values = json.loads(row)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="ROW") from None
    if not isinstance(values, dict):
        raise click.BadParameter("a row is a JSON object of column values", param_hint="ROW")
    ctx = _context(context)
    _write(addresses, via, timeout, lambda c: c.put(table, values, ctx, w=w, sloppy=sloppy))


@kv.command("delete")
@_options
@click.option("-w", "--write-quorum", "w", type=int, default=None, help="W for this write.")
@click.option("--context", default=None, help="The context of a read.")
@click.argument("table")
@click.argument("key")
def delete_command(addresses: str, via: str, timeout: float, w: int | None,
                   context: str | None, table: str, key: str) -> None:  # fmt: skip
    """Delete a row (a tombstone, purged once every replica has it).

    Example: replidb kv delete --connect 127.0.0.1:7101 users 1
    """
    ctx = _context(context)
    _write(addresses, via, timeout, lambda c: c.delete(table, _parse_key(key), ctx, w=w))
