"""``replidb status`` for a leaderless cluster: no leader and no log, so per node the
keys it holds, the hints it keeps for others, and what read repair, hinted handoff,
anti-entropy and tombstone purging have done there."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from replidb.transport import wire

__all__ = ["kv_report", "render_kv"]

_COUNTERS = ("read_repairs", "hints_handed_over", "anti_entropy_repairs", "tombstones_purged")


def kv_report(shown: dict[str, str], found: dict[str, wire.NodeStatus | None]) -> dict[str, Any]:
    nodes = []
    for nid in sorted(shown):
        st = found[nid]
        row: dict[str, Any] = {"id": nid, "address": shown[nid]}
        if st is None:
            row.update(role="unreachable", keys=None, hints=None, counters=None, healthy=False)
        else:
            row.update(
                role="replica",
                keys=st.kv_keys,
                hints=dict(st.kv_hints),
                counters=dict(st.kv_counters),
                healthy=not st.refused,
                refused=st.refused or None,
                connected=list(st.peers_connected),
            )
        nodes.append(row)
    about = next(s for s in found.values() if s is not None)
    return {
        "topology": "leaderless",
        "n": about.kv_replicas,
        "r": about.kv_r,
        "w": about.kv_w,
        "lww": list(about.kv_lww),
        "nodes": nodes,
        "leader": None,
        "durability": about.durability,
    }


def render_kv(report: dict[str, Any], console: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ("keys", "hints", *_COUNTERS)
    for name in ("id", "address", "role", *columns, "healthy"):
        table.add_column(name.replace("_", " "), justify="left", no_wrap=True)
    for n in report["nodes"]:
        counters = n["counters"] or {}
        hints = n["hints"]
        table.add_row(
            n["id"],
            n["address"],
            n["role"],
            "-" if n["keys"] is None else str(n["keys"]),
            "-" if hints is None else str(sum(hints.values())),
            *("-" if n["counters"] is None else str(counters.get(c, 0)) for c in _COUNTERS),
            "[green]yes[/green]" if n["healthy"] else "[red]no[/red]",
        )
    console.print(table)
    lww = ", ".join(report["lww"]) or "none"
    console.print(f"leaderless: N={report['n']} R={report['r']} W={report['w']}; lww tables: {lww}")
    for n in report["nodes"]:
        if n.get("refused"):
            console.print(f"[red]{n['id']}[/red]: {n['refused']}")
    console.print(report["durability"])
