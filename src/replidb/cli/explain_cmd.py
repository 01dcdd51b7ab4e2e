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
            "logical": plan,
            "statement": plan,
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
    return {
        "sql": analysis.sql,
        "writes": True,
        "logical": logical,
        "statement": statement,
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

    This build replicates with `logical`; `statement` and `mixed` are analysed as they
    will behave (non-deterministic constructs made identical by a shipped context, or
    refused).

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
        for fmt, note in (
            ("logical", " (this build)"),
            ("statement", " (planned)"),
            ("mixed", " (planned)"),
        ):
            click.echo(f"  {fmt + note:<22} {report[fmt]}")
        for finding in report["findings"]:  # type: ignore[attr-defined]
            click.echo(f"    - {finding['construct']}: {finding['verdict']} — {finding['reason']}")
