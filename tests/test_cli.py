"""The command line: bad input gets one clear line; docs and commands stay in step."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from replidb.cli.main import cli

ROOT = Path(__file__).parent.parent


def _commands(group: click.Group, prefix: str = "replidb") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found += _commands(command, path)
        else:
            found.append((path, command))
    return found


@pytest.mark.parametrize(("path", "command"), _commands(cli))
def test_every_command_has_an_example_in_its_help(path: str, command: click.Command) -> None:
    assert command.help and "Example" in command.help, f"{path} --help shows no example"
    example = command.help.split("Example", 1)[1]
    assert path in " ".join(example.split()), f"{path}'s example does not run {path}"


def _readme_command_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("replidb "):
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", _readme_command_lines())
def test_readme_commands_parse(line: str) -> None:
    """Every `replidb ...` line in the README names real commands and options."""
    args = shlex.split(line)[1:]
    command: click.Command = cli
    ctx = click.Context(cli, info_name="replidb")
    while isinstance(command, click.Group):
        name = args.pop(0)
        sub = command.get_command(ctx, name)
        assert sub is not None, f"README uses unknown command {name!r}: {line}"
        command = sub
    command.make_context(command.name or "", [a for a in args if a != "[--json]"])


def test_readme_shows_the_two_commands_first() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```\n(.*?)```", text, re.DOTALL)
    assert first_block is not None
    assert first_block.group(1).splitlines()[:2] == [
        line for line in first_block.group(1).splitlines()[:2] if line.startswith("make ")
    ]
    assert "make demo" in first_block.group(1) and "make test" in first_block.group(1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peers", "n2"], "bad peer 'n2': expected ID=HOST:PORT"),
        (["--peers", "n2=host"], "bad address 'host'"),
        (["--peers", "n1=127.0.0.1:7"], "n1 lists itself as a peer"),
        (["--listen", "nowhere"], "bad address 'nowhere'"),
        (["--sync", "sometimes"], "unknown commit policy 'sometimes'"),
        (["--sync", "semi-sync:x"], "semi-sync needs a follower count"),
        (["--sync", "semi-sync:1"], "semi-sync:1 waits for 1 followers but a 1-node cluster"),
        (["--page-size", "1000"], "'1000' is not one of '512', '1024'"),
        (["--row-images", "some"], "'some' is not one of 'minimal', 'full'"),
        (["--stream", "rows"], "unknown stream 'rows': choose statement, wal, logical, mixed"),
        (["--topology", "leaderless", "--replicas", "3"], "N=3 replicas need at least 3 nodes"),
        (["--topology", "leaderless", "--sync", "quorum"], "--sync does not apply to a leaderless"),
        (["--topology", "leaderless", "--links", "star"], "--links does not apply to a leaderless"),
        (["--replicas", "2"], "--replicas applies to leaderless clusters only"),
        (
            ["--topology", "leaderless", "--tombstone-grace", "1"],
            "1.0 s is less than 4 replica timeouts (4.0 s)",
        ),
        (["--topology", "multi-leader", "--lww", "t"], "--lww applies to leaderless clusters only"),
        (
            ["--topology", "leaderless", "--peers", "n2=127.0.0.1:8", "--write-quorum", "3"],
            "3 is more than N=2",
        ),
        (["--topology", "multi-leader", "--sync", "quorum"], "--sync applies to single-leader"),
        (["--topology", "multi-leader", "--resolve", "t"], "bad 't': expected TABLE=POLICY"),
        (
            ["--topology", "multi-leader", "--resolve", "t=custom:nope"],
            "unknown conflict resolution 'custom:nope'",
        ),
        (["--topology", "multi-leader", "--resolvers", "no_such_mod"], "cannot import resolver"),
        (
            [
                "--topology",
                "multi-leader",
                "--peers",
                "n2=127.0.0.1:8,n3=127.0.0.1:9",
                "--id-stride",
                "2",
            ],
            "3 nodes need an id stride of at least 3",
        ),
        (["--topology", "multi-leader", "--links", "tree"], "'tree' is not one of"),
        (["--topology", "multi-leader", "--hub", "n9"], "n9 is not a node"),
    ],
)
def test_serve_rejects_bad_options_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    base = ["serve", "--node-id", "n1", "--data", str(tmp_path), "--listen", "127.0.0.1:7"]
    for i in range(0, len(args), 2):  # later options override the defaults above
        if args[i] in base:
            base[base.index(args[i]) + 1] = args[i + 1]
        else:
            base += args[i : i + 2]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 2
    assert message in result.output


def test_serve_on_a_busy_port_fails_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "replidb",
                "serve",
                "--node-id",
                "n1",
                "--data",
                str(tmp_path),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and f"cannot listen on 127.0.0.1:{port}" in errors[0]
