"""``replidb status`` for a multi-leader cluster: every node leads, so instead of terms
and lag behind a leader it shows what each node has applied of every origin, what
waits for its dependencies, and the conflicts each has resolved."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from replidb.transport import wire

__all__ = ["mesh_report", "render_mesh"]


def mesh_report(shown: dict[str, str], found: dict[str, wire.NodeStatus | None]) -> dict[str, Any]:
    reachable = [s for s in found.values() if s is not None]
    # What every origin has written, as far as anyone we reach knows.
    known: dict[str, int] = {}
    for status in reachable:
        for origin, seq in status.mesh_applied.items():
            known[origin] = max(known.get(origin, 0), seq)
    nodes = []
    for nid in sorted(shown):
        st = found[nid]
        row: dict[str, Any] = {"id": nid, "address": shown[nid]}
        if st is None:
            row.update(role="unreachable", applied=None, behind=None, pending=None,
                       conflicts=None, refused=None, healthy=False)  # fmt: skip
        else:
            behind = sum(max(0, seq - st.mesh_applied.get(o, 0)) for o, seq in known.items())
            row.update(
                role="leader",
                applied=dict(st.mesh_applied),
                behind=behind,
                pending=st.mesh_pending,
                conflicts=st.conflicts,
                refused=st.refused or None,
                healthy=not st.refused,
                connected=list(st.peers_connected),
            )
        nodes.append(row)
    about = reachable[0]
    return {
        "topology": "multi-leader",
        "links": about.mesh_links,
        "nodes": nodes,
        "leader": None,
        "durability": about.durability,
        "conflicts": sum(n["conflicts"] or 0 for n in nodes),
    }


def render_mesh(report: dict[str, Any], console: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    numeric = ("behind", "pending", "conflicts")
    for name in ("id", "address", "role", "applied", *numeric, "healthy"):
        table.add_column(name, justify="right" if name in numeric else "left", no_wrap=True)
    for n in report["nodes"]:
        applied = n["applied"]
        table.add_row(
            n["id"],
            n["address"],
            n["role"],
            "-" if applied is None else " ".join(f"{o}:{s}" for o, s in sorted(applied.items())),
            *("-" if n[k] is None else str(n[k]) for k in numeric),
            "[green]yes[/green]" if n["healthy"] else "[red]no[/red]",
        )
    console.print(table)
    console.print(f"multi-leader, {report['links']} links: every node takes writes")
    console.print(f"conflicts resolved: {report['conflicts']} (per node above)")
    for n in report["nodes"]:
        if n.get("refused"):
            console.print(f"[red]{n['id']} refused[/red]: {n['refused']}")
    console.print(report["durability"])
