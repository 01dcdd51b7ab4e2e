"""``replidb serve --topology leaderless``: the options only a leaderless node takes,
and the node configuration built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from replidb.cli.options import refuse_options_set

__all__ = ["kv_config", "kv_options", "refuse_kv_options"]

# Options of the other topologies, with their defaults: set to anything else with
# --topology leaderless, they are refused rather than silently ignored.
_OTHER_TOPOLOGIES = {
    "stream": "logical",
    "sync_policy": "async",
    "learners": "",
    "join": False,
    "subscribe": (),
    "links": "all-to-all",
    "hub": "",
    "resolve": (),
    "default_resolution": "lww",
    "resolvers": (),
}


def kv_options(func: Any) -> Any:
    options = [
        click.option(
            "--replicas",
            default=0,
            type=click.IntRange(0, 1000),
            help="leaderless: N, the replicas of each row (at most the number of nodes; "
            "below it, a consistent-hash ring picks each row's N) [3, or every node if "
            "fewer].",
        ),
        click.option(
            "--vnodes",
            default=64,
            show_default=True,
            type=click.IntRange(1, 4096),
            help="leaderless: points per node on the hash ring (all nodes must agree).",
        ),
        click.option(
            "--read-quorum",
            default=0,
            type=click.IntRange(0, 1000),
            help="leaderless: R, replicas a key read waits for by default [majority of N].",
        ),
        click.option(
            "--write-quorum",
            default=0,
            type=click.IntRange(0, 1000),
            help="leaderless: W, replicas a write waits for by default [majority of N].",
        ),
        click.option(
            "--lww",
            default="",
            metavar="TABLE,...",
            help="leaderless: tables where the latest write wins (no siblings returned).",
        ),
        click.option(
            "--hint-window",
            default=3600.0,
            show_default=True,
            type=click.FloatRange(0.001, 30 * 86400),
            help="leaderless: seconds a hint for an unreachable replica is kept; older "
            "hints are dropped and anti-entropy repairs the replica instead.",
        ),
        click.option(
            "--anti-entropy-interval",
            default=5.0,
            show_default=True,
            type=click.FloatRange(0, 86400),
            help="leaderless: seconds between Merkle-tree comparisons with the next peer (0: off).",
        ),
        click.option(
            "--tombstone-grace",
            default=60.0,
            show_default=True,
            type=click.FloatRange(0.01, 365 * 86400),
            help="leaderless: seconds a deletion's tombstone is kept at least; it is "
            "purged later only once every replica holds it and no hint mentions it.",
        ),
        click.option(
            "--replica-timeout-ms",
            default=1000,
            show_default=True,
            type=click.IntRange(10, 600_000),
            help="leaderless: how long a coordinator waits for replicas before it gives "
            "up on them (and leaves hints).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def refuse_kv_options(options: dict[str, Any]) -> None:
    """The leaderless options, set with another topology: refused by name."""
    defaults = {str(p.name): p.default for p in kv_options(lambda: None).__click_params__}
    refuse_options_set(options, defaults, "applies to leaderless clusters only")


def kv_config(
    node_id: str, data_dir: Path, listen: str, peers: dict[str, str], options: dict[str, Any]
) -> Any:
    """A KvNodeConfig; click.BadParameter names what does not fit."""
    from replidb.node.kv_server import KvNodeConfig

    refuse_options_set(options, _OTHER_TOPOLOGIES, "does not apply to a leaderless cluster")
    nodes = len(peers) + 1
    n = options["replicas"] or min(3, nodes)
    if n > nodes:
        raise click.BadParameter(
            f"N={n} replicas need at least {n} nodes; --peers names {nodes} with this one",
            param_hint="--replicas",
        )
    for flag, key in (("--read-quorum", "read_quorum"), ("--write-quorum", "write_quorum")):
        if options[key] > n:
            raise click.BadParameter(f"{options[key]} is more than N={n}", param_hint=flag)
    timeout_s = options["replica_timeout_ms"] / 1000
    if options["tombstone_grace"] < 4 * timeout_s:
        raise click.BadParameter(
            f"{options['tombstone_grace']} s is less than 4 replica timeouts ({4 * timeout_s} s): "
            "a late copy of a deleted row could outlive its tombstone",
            param_hint="--tombstone-grace",
        )
    lww = tuple(t.strip() for t in options["lww"].split(",") if t.strip())
    return KvNodeConfig(
        node_id=node_id,
        data_dir=data_dir,
        listen=listen,
        peers=peers,
        replicas=n,
        vnodes=options["vnodes"],
        r=options["read_quorum"],
        w=options["write_quorum"],
        lww=lww,
        hint_window_s=options["hint_window"],
        anti_entropy_s=options["anti_entropy_interval"],
        tombstone_grace_s=options["tombstone_grace"],
        phase_timeout_s=timeout_s,
    )
