"""The ``replidb`` command. Each subcommand is a few lines around one library call."""

from __future__ import annotations

import click

from replidb.cli.serve_cmd import cluster, serve

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="replidb")
def cli() -> None:
    """replidb: a replicated SQL database — SQLite on every node."""


cli.add_command(serve)
cli.add_command(cluster)


def _add_optional_commands() -> None:
    from replidb.cli.admin_cmd import join_command, remove_command, transfer_leader_command
    from replidb.cli.backup_cmd import backup_command, restore_command
    from replidb.cli.bench_cmd import bench_command
    from replidb.cli.changes_cmd import changes_command
    from replidb.cli.discarded_cmd import discarded
    from replidb.cli.explain_cmd import explain_replication
    from replidb.cli.kv_cmd import kv
    from replidb.cli.sim_cmd import sim
    from replidb.cli.sql_cmd import sql
    from replidb.cli.status_cmd import status

    commands = (
        sql,
        status,
        sim,
        transfer_leader_command,
        join_command,
        remove_command,
        discarded,
        explain_replication,
        backup_command,
        restore_command,
        changes_command,
        bench_command,
        kv,
    )
    for command in commands:
        cli.add_command(command)


_add_optional_commands()


def main() -> None:
    cli()
