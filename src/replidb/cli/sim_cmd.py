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
def sim(
    seed: int | None, seeds: int, verbose: bool, membership: bool, reads: bool, multi_leader: bool
) -> None:
    """Run the real core against a simulated network, clock and disks.

    Example:

        replidb sim --seed 42 --verbose

        replidb sim --seed 0 --seeds 200 --membership

        replidb sim --seed 0 --seeds 300 --multi-leader
    """
    if multi_leader:
        if membership or reads:
            raise click.UsageError("--multi-leader cannot be combined with --membership/--reads")
        from replidb.testing.sim_mesh import main_mesh_sim

        sys.exit(main_mesh_sim(seed, seeds, verbose))
    from replidb.testing.sim import main_sim

    sys.exit(main_sim(seed, seeds, verbose, membership, reads))
