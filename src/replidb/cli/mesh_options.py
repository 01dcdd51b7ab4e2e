"""``replidb serve --topology multi-leader``: the options only a multi-leader node
takes, and the node configuration built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from replidb.cli.options import refuse_options_set
from replidb.core.mesh import TOPOLOGIES

__all__ = ["mesh_config", "mesh_options"]

# Single-leader options that mean nothing here, with their defaults: set to anything
# else with --topology multi-leader, they are refused rather than silently ignored.
_SINGLE_LEADER_ONLY = {
    "stream": "logical",
    "sync_policy": "async",
    "learners": "",
    "join": False,
    "subscribe": (),
}


def mesh_options(func: Any) -> Any:
    options = [
        click.option(
            "--links",
            default="all-to-all",
            show_default=True,
            type=click.Choice(TOPOLOGIES),
            help="multi-leader: who sends changes to whom — all-to-all, star (one hub "
            "passes everything on) or ring (each node to the next; a dead node stalls "
            "the ring until it returns).",
        ),
        click.option("--hub", default="", help="multi-leader star: the hub (default: first id)."),
        click.option(
            "--resolve",
            multiple=True,
            metavar="TABLE=POLICY",
            help="multi-leader: conflict resolution for one table (repeat): lww, record "
            "(lww, and both versions kept in replidb_conflicts) or custom:NAME.",
        ),
        click.option(
            "--default-resolution",
            default="lww",
            show_default=True,
            help="multi-leader: conflict resolution for tables without --resolve.",
        ),
        click.option(
            "--resolvers",
            multiple=True,
            metavar="MODULE",
            help="multi-leader: import this module, which registers custom resolvers "
            "(replidb.multileader.register_resolver).",
        ),
        click.option(
            "--max-clock-skew-ms",
            default=500,
            show_default=True,
            type=click.IntRange(1, 3_600_000),
            help="multi-leader: refuse peers whose clock differs from ours by more.",
        ),
        click.option(
            "--id-stride",
            default=16,
            show_default=True,
            type=click.IntRange(1, 1 << 16),
            help="multi-leader: node k (in sorted id order) hands out integer keys "
            "equal to k modulo this; at least the number of nodes.",
        ),
        click.option(
            "--debug-clock-offset-ms",
            default=0,
            type=int,
            hidden=True,
            help="Fault injection: this node's clock runs this far off.",
        ),
        click.option(
            "--debug-cut-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            hidden=True,
            help="Fault injection: cut this node off from the node ids listed in FILE.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def mesh_config(
    node_id: str,
    data_dir: Path,
    listen: str,
    peers: dict[str, str],
    tick_ms: int,
    options: dict[str, Any],
    single_leader: dict[str, Any],
) -> Any:
    """A MeshNodeConfig; click.BadParameter names what does not fit."""
    from replidb.multileader import load_resolvers
    from replidb.node.mesh_server import MeshNodeConfig
    from replidb.storage.mesh_store import check_resolution

    refuse_options_set(single_leader, _SINGLE_LEADER_ONLY, "applies to single-leader clusters only")
    nodes = sorted([node_id, *peers])
    if options["hub"] and options["hub"] not in nodes:
        raise click.BadParameter(f"{options['hub']} is not a node", param_hint="--hub")
    if options["id_stride"] < len(nodes):
        raise click.BadParameter(
            f"{len(nodes)} nodes need an id stride of at least {len(nodes)}",
            param_hint="--id-stride",
        )
    resolution: dict[str, str] = {}
    for item in options["resolve"]:
        table, sep, policy = item.partition("=")
        if not sep or not table or not policy:
            raise click.BadParameter(f"bad {item!r}: expected TABLE=POLICY", param_hint="--resolve")
        resolution[table] = policy
    try:
        resolvers = load_resolvers(list(options["resolvers"]))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--resolvers") from None
    for policy in [options["default_resolution"], *resolution.values()]:
        try:
            check_resolution(policy, resolvers)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--resolve") from None
    return MeshNodeConfig(
        node_id=node_id,
        data_dir=data_dir,
        listen=listen,
        peers=peers,
        links=options["links"],
        hub=options["hub"],
        max_skew_ms=options["max_clock_skew_ms"],
        tick_ms=tick_ms,
        resolution=resolution,
        default_resolution=options["default_resolution"],
        resolvers=resolvers,
        id_stride=options["id_stride"],
        clock_offset_ms=options["debug_clock_offset_ms"],
        cut_file=options["debug_cut_file"],
    )
