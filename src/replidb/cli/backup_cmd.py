"""``replidb backup`` and ``replidb restore``: a consistent copy of the cluster with its
log position, and a node (or every node of a new cluster) seeded from it. The file
format is described in storage/restore.py."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from replidb.cli.options import connect_option, fail
from replidb.client.backup import backup
from replidb.errors import Error
from replidb.storage.base import STREAMS
from replidb.storage.restore import restore_backup

__all__ = ["backup_command", "restore_command"]

_MB = 1e6


def _progress(text: str) -> None:
    click.echo(f"backup: {text}", err=True)


@click.command("backup")
@connect_option("Any member(s); the backup is fetched from the leader.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The backup file to write (its position goes to FILE.json).",
)
@click.option("--force", is_flag=True, help="Replace an existing backup file.")
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    help="Seconds to find the leader, and the longest it may stay silent meanwhile.",
)
def backup_command(addresses: str, out: Path, force: bool, timeout: float) -> None:
    """Write a consistent copy of the cluster's committed data, with its log position.

    The leader's snapshot (at its commit index) is fetched in checked chunks and
    renamed into place; FILE.json gets its index, term, stream format, size, sha256
    and where it came from. Run it again after a failure: it resumes.

    Example:

    \b
        replidb backup --connect 127.0.0.1:7101 --out ./backup.db
    """
    started = time.monotonic()
    try:
        info = backup(addresses, out, timeout=timeout, force=force, on_progress=_progress)
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
    took = time.monotonic() - started
    behind = info.leader_commit_index - info.index
    if behind > 0:  # the leader reuses a snapshot it has while it is recent enough
        _progress(f"note: the leader served a snapshot {behind} entries behind its commit")
    click.echo(
        f"backup of index {info.index} (term {info.term}): {info.size / _MB:.2f} MB "
        f"in {took:.2f} s -> {out}"
    )


@click.command("restore")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file written by replidb backup (FILE.json must be beside it).",
)
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The node's data directory to seed (new or empty).",
)
@click.option(
    "--stream",
    required=True,
    type=click.Choice(STREAMS),
    help="The stream format the node will serve; must be the backup's.",
)
@click.option("--node-id", default=None, help="The node this directory is for (recorded).")
@click.option(
    "--force",
    is_flag=True,
    help="Restore into a non-empty directory (what it held past the backup is kept "
    "in replidb_discarded).",
)
def restore_command(
    source: Path, data_dir: Path, stream: str, node_id: str | None, force: bool
) -> None:
    """Seed a node's data directory from a backup, at the backup's log position.

    Start the node with replidb serve --data DIR. For a new cluster, restore the same
    file into every node's directory: they all start at the same position, elect a
    leader and go on. To replace a member that lost its disk, use a backup taken after
    it went down (its leader waits for what it acknowledged until leadership moves).

    Example:

    \b
        replidb restore --from ./backup.db --data ./restored/n1 --stream logical --node-id n1
    """
    started = time.monotonic()
    try:
        info = restore_backup(source, data_dir, stream, node_id=node_id, force=force)
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
    took = time.monotonic() - started
    who = f"{node_id} " if node_id else ""
    click.echo(
        f"restored {who}at index {info.index} (term {info.term}) from {source} into "
        f"{data_dir} in {took:.2f} s"
    )
