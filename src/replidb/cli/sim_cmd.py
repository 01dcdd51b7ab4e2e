"""``replidb sim``: run the deterministic simulator; one seed replays a run exactly."""

from __future__ import annotations

import sys

import click

__all__ = ["sim"]


@click.command()
@click.option("--seed", type=int, default=None, help="Replay this seed (default: a random one).")
@click.option(
    "--seeds",
    default=1,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Run this many consecutive seeds starting at --seed.",
)
@click.option("--verbose", is_flag=True, help="Print the whole trace.")
@click.option(
    "--membership",
    is_flag=True,
    help="Use the membership seed space: spare nodes are added, promoted and removed "
    "while faults go on.",
)
@click.option(
    "--reads",
    is_flag=True,
    help="Also ask leaders for linearizable reads, and check each covers every entry "
    "committed before it began.",
)
@click.option(
    "--multi-leader",
    is_flag=True,
    help="Simulate multi-leader replication instead (its own seed space): every node "
    "writes, links and clocks fail, and all must converge to the same rows.",
)
@click.option(
    "--leaderless",
    is_flag=True,
    help="Simulate leaderless (Dynamo-style) replication instead: quorum reads and "
    "writes, read repair, hinted handoff, anti-entropy.",
)
@click.option(
    "--rw",
    default=None,
    metavar="R,W",
    help="With --leaderless: read and write quorums (default: a majority of N=3 each).",
)
def sim(
    seed: int | None,
    seeds: int,
    verbose: bool,
    membership: bool,
    reads: bool,
    multi_leader: bool,
    leaderless: bool,
    rw: str | None,
) -> None:
    """Run the real core against a simulated network, clock and disks.

    Example:

        replidb sim --seed 42 --verbose

        replidb sim --seed 0 --seeds 200 --membership

        replidb sim --seed 0 --seeds 300 --multi-leader

        replidb sim --seed 0 --seeds 100 --leaderless --rw 1,1
    """
    if leaderless:
        if membership or reads or multi_leader:
            raise click.UsageError("--leaderless cannot be combined with other sim modes")
        r = w = None
        if rw is not None:
            try:
                r, w = (int(x) for x in rw.split(","))
            except ValueError:
                raise click.BadParameter(f"bad {rw!r}: expected R,W", param_hint="--rw") from None
            if not (1 <= r <= 3 and 1 <= w <= 3):
                raise click.BadParameter("R and W must be between 1 and N=3", param_hint="--rw")
        from replidb.testing.sim_leaderless import main_leaderless_sim

        sys.exit(main_leaderless_sim(seed, seeds, verbose, r, w))
    if multi_leader:
        if membership or reads:
            raise click.UsageError("--multi-leader cannot be combined with --membership/--reads")
        from replidb.testing.sim_mesh import main_mesh_sim

        sys.exit(main_mesh_sim(seed, seeds, verbose))
    from replidb.testing.sim import main_sim

    sys.exit(main_sim(seed, seeds, verbose, membership, reads))
