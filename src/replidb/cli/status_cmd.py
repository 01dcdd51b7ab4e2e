"""``replidb status``: one row per cluster member, polled concurrently."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from replidb.cli.kv_status import kv_report, render_kv
from replidb.cli.mesh_status import mesh_report, render_mesh
from replidb.cli.options import connect_option, fail
from replidb.client import Client, probe_status
from replidb.errors import Error
from replidb.transport import wire

__all__ = ["MAX_HEALTHY_LAG", "cluster_status", "status"]

MAX_HEALTHY_LAG = 1000  # entries a follower may trail the leader and still count as healthy


def _probe(address: str, timeout: float) -> wire.NodeStatus | None:
    try:
        return probe_status(address, timeout)
    except Error:
        return None


def cluster_status(
    addresses: str | Sequence[str], timeout: float = 5.0, node_timeout: float = 1.0
) -> dict[str, Any]:
    """Ask the first reachable address for the member list, then poll every member.

    Returns ``{"nodes": [...sorted by id], "leader": id | None}``; an unreachable member
    has role "unreachable", healthy False and null numbers. Raises Unavailable if no
    address answers within ``timeout``."""
    client = Client(addresses, timeout=timeout)
    try:
        first = client.status()
        first_address = client.last_address or first.address
    finally:
        client.close()
    shown = {first.id: first.address or first_address, **first.peers}
    # Probe the first node where it answered us: its advertised address may be a wildcard.
    probe = {**shown, first.id: first_address}
    with ThreadPoolExecutor(max_workers=len(probe)) as pool:
        futures = {nid: pool.submit(_probe, addr, node_timeout) for nid, addr in probe.items()}
        found = {nid: future.result() for nid, future in futures.items()}
    if found[first.id] is None:  # it answered a moment ago: use that answer
        found[first.id] = first
    reachable = [s for s in found.values() if s is not None]
    if first.topology == "multi-leader":
        return mesh_report(shown, found)
    if first.topology == "leaderless":
        return kv_report(shown, found)

    claimants = [s for s in reachable if s.role == "leader"]
    leader_status = max(claimants, key=lambda s: s.term) if claimants else None
    if leader_status is not None:
        leader: str | None = leader_status.id
        reference = leader_status.last_index
    else:
        # Nobody we reach leads: report whom the most up-to-date members believe in.
        top = max(s.term for s in reachable)
        votes = Counter(s.leader for s in reachable if s.term == top and s.leader)
        leader = votes.most_common(1)[0][0] if votes else None
        reference = max(s.last_index for s in reachable)

    nodes = []
    for nid in sorted(shown):
        st = found[nid]
        row: dict[str, Any] = {"id": nid, "address": shown[nid]}
        if st is None:
            row.update(
                role="unreachable",
                term=None,
                last_index=None,
                commit_index=None,
                applied_index=None,
                lag=None,
                healthy=False,
                leader=None,
                discarded=None,
            )
        else:
            lag = max(reference - st.applied_index, 0)
            is_leader = st.role == "leader" and nid == leader
            row.update(
                role=st.role,
                term=st.term,
                last_index=st.last_index,
                commit_index=st.commit_index,
                applied_index=st.applied_index,
                lag=lag,
                healthy=is_leader or (st.leader is not None and lag <= MAX_HEALTHY_LAG),
                leader=st.leader,  # whom this node believes leads
                discarded=st.discarded,
                subscription=st.subscription,
                first_index=st.first_index,
                snapshot=st.snapshot,
            )
        nodes.append(row)
    about = leader_status or reachable[0]
    return {
        "nodes": nodes,
        "leader": leader,
        "needs_snapshot": list(leader_status.needs_snapshot) if leader_status else [],
        "voters": list(about.voters),
        "learners": list(about.learners),
        "policy": about.policy,
        "stream": about.stream,
        "durability": about.durability,
        "degraded": about.degraded,
        "degradations": about.degradations,
        # group commit on the leader: client writes per SQLite transaction, since it started
        "write_groups": leader_status.write_groups if leader_status else 0,
        "grouped_writes": leader_status.grouped_writes if leader_status else 0,
    }


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _render(report: dict[str, Any]) -> None:
    if report.get("topology") in ("multi-leader", "leaderless"):
        console = Console()
        render = render_mesh if report["topology"] == "multi-leader" else render_kv
        render(report, console if console.is_terminal else Console(width=200))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    numeric = ("term", "last", "commit", "applied", "lag")
    for name in ("id", "address", "role", *numeric, "healthy", "discarded"):
        table.add_column(name, justify="right" if name in numeric else "left", no_wrap=True)
    for n in report["nodes"]:
        table.add_row(
            n["id"],
            n["address"],
            n["role"],
            _text(n["term"]),
            _text(n["last_index"]),
            _text(n["commit_index"]),
            _text(n["applied_index"]),
            _text(n["lag"]),
            "[green]yes[/green]" if n["healthy"] else "[red]no[/red]",
            _text(n["discarded"]),
        )
    console = Console()
    if not console.is_terminal:  # piped: no terminal width to respect, never truncate
        console = Console(width=200)
    console.print(table)
    leader = report["leader"]
    if leader is None:
        console.print("leader: none")
    else:
        address = next((n["address"] for n in report["nodes"] if n["id"] == leader), "?")
        console.print(f"leader: {leader} ({address})")
    if report.get("voters"):
        console.print(
            f"members: voters {','.join(report['voters'])}; "
            f"learners {','.join(report['learners']) or 'none'}"
        )
    console.print(f"commit policy: {report['policy']} — {report['durability']}")
    console.print(f"stream format: {report['stream']}")
    for n in report["nodes"]:
        if n.get("subscription"):
            console.print(f"partial replica {n['id']}: {n['subscription']}")
        if n.get("snapshot"):
            console.print(f"{n['id']}: installing a snapshot: {n['snapshot']}")
    for node_id in report.get("needs_snapshot", []):
        console.print(f"{node_id}: needs a snapshot (behind the leader's retained log)")
    if report["degraded"]:
        console.print(
            f"[red]DEGRADED[/red]: sync acknowledgements timed out; acknowledging as async "
            f"until followers catch up ({report['degradations']} degradation(s) so far)"
        )


@click.command("status")
@connect_option("Any member(s); the first reachable one supplies the member list.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to find a member.")
def status(addresses: str, as_json: bool, timeout: float) -> None:
    """Show every member's role, term, log positions, lag and health.

    Example:

    \b
        replidb status --connect 127.0.0.1:7101 --json

    The same from Python:

    \b
        from replidb.cli.status_cmd import cluster_status
        report = cluster_status("127.0.0.1:7101", timeout=5.0)
        print(report["leader"], [n["lag"] for n in report["nodes"]])
    """
    try:
        report = cluster_status(addresses, timeout=timeout)
    except Error as exc:
        fail(str(exc))
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report))
    else:
        _render(report)
