"""``replidb explain-replication "SQL"``: how each stream format would replicate it."""

from __future__ import annotations

import json
import sys

import click

from replidb.cli.options import fail
from replidb.stream.statement_analysis import Analysis, analyze

__all__ = ["explain", "explain_replication"]


def explain(analysis: Analysis) -> dict[str, object]:
    """One statement's replication under each format, with the reasons."""
    if not analysis.writes:
        plan = "a read: served by the node you connect to; nothing is replicated"
        return {
            "sql": analysis.sql,
            "writes": False,
            "statement": plan,
            "wal": plan,
            "logical": plan,
            "mixed": plan,
            "findings": [],
        }
    refused = [f for f in analysis.findings if f.verdict == "refuse"]
    context = [f for f in analysis.findings if f.verdict == "context"]
    logical = "ships the rows it changes (table, key, before, after) and its DDL as is"
    if context:
        logical += (
            f"; {', '.join(f.construct for f in context)} run once, on the leader, "
            "so every replica stores the same values"
        )
    if refused:
        statement = "refused: " + "; ".join(f"{f.construct}: {f.reason}" for f in refused)
        mixed = "ships rows, as logical does, because of " + ", ".join(f.construct for f in refused)
    else:
        statement = "ships the SQL text" + (
            " with the leader's context (" + ", ".join(f.construct for f in context) + ")"
            if context
            else ""
        )
        mixed = "ships the SQL text, as statement does: every construct replays identically"
    wal = (
        "ships every page the transaction changed (table and index pages, page 1); "
        "followers write them as is and hold the leader's exact bytes"
    )
    return {
        "sql": analysis.sql,
        "writes": True,
        "statement": statement,
        "wal": wal,
        "logical": logical,
        "mixed": mixed,
        "findings": [
            {"construct": f.construct, "verdict": f.verdict, "reason": f.reason}
            for f in analysis.findings
        ],
    }


@click.command("explain-replication")
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per statement.")
def explain_replication(sql: str, as_json: bool) -> None:
    """Show how SQL would be replicated by each stream format, and why.

    The cluster's format is chosen with `--stream` (see docs/streams.md). `statement`
    and `mixed` use this same analysis when a write arrives: non-deterministic
    constructs are made identical by a shipped context, or refused (`statement`) or
    shipped as rows (`mixed`).

    Example:

    \b
        replidb explain-replication "INSERT INTO t VALUES (random(), datetime('now'))"
    """
    try:
        analyses = analyze(sql)
    except ValueError as exc:
        fail(str(exc))
        sys.exit(1)
    for number, analysis in enumerate(analyses, start=1):
        report = explain(analysis)
        if as_json:
            click.echo(json.dumps(report, ensure_ascii=False))
            continue
        click.echo(f"statement {number}: {report['sql']}")
        for fmt in ("statement", "wal", "logical", "mixed"):
            click.echo(f"  {fmt:<10} {report[fmt]}")
        for finding in report["findings"]:  # type: ignore[attr-defined]
            click.echo(f"    - {finding['construct']}: {finding['verdict']} — {finding['reason']}")
