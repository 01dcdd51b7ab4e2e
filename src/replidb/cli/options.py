"""Options several commands share, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["connect_option", "fail", "refuse_options_set"]


def connect_option(help_text: str) -> Callable[[Any], Any]:
    """``--connect HOST:PORT[,...]`` (or $REPLIDB_CONNECT), passed as ``addresses``."""
    return click.option(
        "--connect",
        "addresses",
        required=True,
        envvar="REPLIDB_CONNECT",
        metavar="HOST:PORT[,...]",
        help=help_text,
    )


def fail(message: str) -> None:
    """The one-line error every command ends with on failure (then exit status 1):
    exactly one line, whatever the message holds, because scripts rely on it."""
    click.echo("error: " + " ".join(message.split()), err=True)


def refuse_options_set(given: dict[str, Any], defaults: dict[str, Any], why: str) -> None:
    """click.BadParameter naming the first option in ``defaults`` that ``given`` sets
    to something else ("--FLAG {why}"): options of another topology are refused,
    never silently ignored."""
    for name, default in defaults.items():
        if given.get(name, default) != default:
            flag = "--sync" if name == "sync_policy" else "--" + name.replace("_", "-")
            raise click.BadParameter(f"{flag} {why}", param_hint=flag)
