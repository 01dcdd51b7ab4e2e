"""``replidb bench``: a closed-loop benchmark against a cluster (replidb/loadgen.py)."""

from __future__ import annotations

import contextlib
import json
import sys

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from replidb.cli.options import fail
from replidb.errors import Error
from replidb.loadgen import WORKLOADS, BenchResult, local_cluster, run_bench

__all__ = ["bench_command"]


def _render(result: BenchResult, target: str) -> None:
    table = Table(title=f"replidb bench: {result.workload}, {target}")
    for column in ("clients", "writes/s", "reads/s", "p50 ms", "p99 ms", "max ms", "lag p99 ms"):
        table.add_column(column, justify="right")
    lag = "-" if result.follower_lag_p99_ms is None else f"{result.follower_lag_p99_ms:.1f}"
    table.add_row(
        str(result.concurrency),
        f"{result.writes_per_s:,.0f}",
        f"{result.reads_per_s:,.0f}",
        f"{result.p50_ms:.2f}",
        f"{result.p99_ms:.2f}",
        f"{result.max_ms:.1f}",
        lag,
    )
    console = Console()
    console.print(table)
    if result.workload == "batch":
        console.print(f"rows/s: {result.rows_per_s:,.0f} (100 per transaction)")
    if result.writes_per_group:
        console.print(f"group commit: {result.writes_per_group:.1f} writes per transaction")
    if result.errors:
        console.print(f"[red]{result.errors} request(s) failed[/red]")


@click.command("bench")
@click.option("--connect", "addresses", default=None, metavar="HOST:PORT[,...]",
              help="A running cluster to load.")  # fmt: skip
@click.option("--local", "local", type=click.IntRange(1, 9), default=None,
              help="Start a throwaway cluster of N nodes on loopback instead.")  # fmt: skip
@click.option("--workload", type=click.Choice(WORKLOADS), default="insert", show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--duration", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True)
@click.option("--sync", "sync", default="", help="Commit policy for the writes (and, with "
              "--local, for the cluster): async, semi-sync:K, quorum, all.")  # fmt: skip
@click.option("--stream", default="logical", show_default=True,
              type=click.Choice(["statement", "wal", "logical", "mixed"]),
              help="Stream format, with --local.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def bench_command(
    addresses: str | None,
    local: int | None,
    workload: str,
    concurrency: int,
    duration: float,
    sync: str,
    stream: str,
    as_json: bool,
) -> None:
    """Closed-loop clients for a while; then writes/s, latency and follower lag.

    Example:

    \\b
        replidb bench --local 3 --workload insert --concurrency 64 --duration 10 --sync quorum
    """
    if (addresses is None) == (local is None):
        fail("give either --connect HOST:PORT[,...] or --local N")
        sys.exit(2)
    target = addresses or f"{local} local nodes ({stream}, {sync or 'async'})"
    try:
        with contextlib.ExitStack() as stack:
            if local is not None:
                addresses = stack.enter_context(local_cluster(local, sync, stream))
            assert addresses is not None
            progress = stack.enter_context(
                Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.fields[ops]} ops"),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
            )
            task = progress.add_task(workload, total=duration, ops=0)
            result = run_bench(
                addresses,
                workload,
                concurrency,
                duration,
                sync,
                progress=lambda done, ops: progress.update(task, completed=done, ops=ops),
            )
    except (Error, ValueError) as exc:
        fail(str(exc))
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result.as_json()))
    else:
        _render(result, target)
