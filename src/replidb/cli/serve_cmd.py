"""``replidb serve`` (one node) and ``replidb cluster up`` (N local nodes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from replidb.cli.kv_options import kv_config, kv_options, refuse_kv_options
from replidb.cli.mesh_options import mesh_config, mesh_options
from replidb.core import parse_policy
from replidb.errors import Error
from replidb.node import Node, NodeConfig
from replidb.node.process import die_with_parent
from replidb.transport.peer import split_address

__all__ = ["cluster", "parse_peers", "serve"]


def parse_peers(text: str) -> dict[str, str]:
    """'n2=h:p,n3=h:p' -> {'n2': 'h:p', ...}; ValueError names the bad part."""
    peers: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        node_id, sep, address = part.partition("=")
        if not sep or not node_id:
            raise ValueError(f"bad peer {part!r}: expected ID=HOST:PORT")
        split_address(address)
        if node_id in peers:
            raise ValueError(f"peer {node_id!r} is listed twice")
        peers[node_id] = address
    return peers


_AVAILABLE = {
    "topology": ("single-leader", "multi-leader", "leaderless"),
    "stream": ("statement", "wal", "logical", "mixed"),
}
_PLANNED = {
    "topology": ("single-leader", "multi-leader", "leaderless"),
    "stream": ("statement", "wal", "logical", "mixed"),
}


def _available(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Accept what is built; name what is planned but not built yet; refuse the rest."""
    del ctx
    name = param.name or ""
    if value in _AVAILABLE[name]:
        return value
    if value in _PLANNED[name]:
        raise click.BadParameter(
            f"{name} {value!r} is not available yet; this release runs {_AVAILABLE[name][0]!r}"
        )
    raise click.BadParameter(f"unknown {name} {value!r}: choose {', '.join(_PLANNED[name])}")


def cluster_options(func: Any) -> Any:
    """Options every node of a cluster must agree on."""
    options = [
        click.option(
            "--topology",
            default="single-leader",
            show_default=True,
            callback=_available,
            help="Who accepts writes: single-leader, multi-leader or leaderless.",
        ),
        click.option(
            "--stream",
            default="logical",
            show_default=True,
            callback=_available,
            help="What travels to followers: statement (SQL + the leader's time and "
            "random seed; unsafe SQL refused), wal (physical pages; followers byte-identical, "
            "locked to one SQLite version and page size), logical (row changes), mixed "
            "(statements where safe, rows where not).",
        ),
        click.option(
            "--row-images",
            default="minimal",
            show_default=True,
            type=click.Choice(["minimal", "full"]),
            help="logical stream: minimal logs an UPDATE's key and changed columns; full "
            "also logs its whole new row (needed by partial replicas with a row filter).",
        ),
        click.option(
            "--page-size",
            default=4096,
            show_default=True,
            type=click.Choice(["512", "1024", "2048", "4096", "8192", "16384", "32768", "65536"]),
            callback=lambda ctx, param, value: int(value),
            help="wal stream: the data file's page size, which every node must share.",
        ),
        click.option(
            "--sync",
            "sync_policy",
            default="async",
            show_default=True,
            help="Commit policy: async, semi-sync:K, quorum or all.",
        ),
        click.option(
            "--learners",
            default="",
            metavar="ID,...",
            help="Non-voting members: they replicate and serve reads but never vote or "
            "lead, and count for no majority.",
        ),
        click.option(
            "--on-sync-timeout",
            default="block",
            show_default=True,
            type=click.Choice(["block", "degrade"]),
            help="When sync acknowledgements are late: keep waiting (the client's deadline "
            "answers 'outcome unknown'), or fall back to async visibly until followers "
            "catch up.",
        ),
        click.option(
            "--sync-timeout-ms",
            default=2000,
            show_default=True,
            type=click.IntRange(1, 3_600_000),
            help="How late is late, for --on-sync-timeout degrade.",
        ),
        click.option(
            "--max-log-entries",
            default=100_000,
            show_default=True,
            type=click.IntRange(1, 10**12),
            help="Log retention: keep at most this many committed entries; a follower "
            "further behind catches up by snapshot.",
        ),
        click.option(
            "--max-log-mb",
            default=1024,
            show_default=True,
            type=click.IntRange(1, 10**9),
            help="Log retention in megabytes (whichever cap is reached first).",
        ),
        click.option(
            "--snapshot-chunk-bytes",
            default=1 << 20,
            type=click.IntRange(1024, 8 << 20),
            hidden=True,
            help="Snapshot transfer chunk size (testing).",
        ),
        click.option("--tick-ms", default=50, show_default=True, type=click.IntRange(1, 10_000)),
        click.option(
            "--heartbeat-ms", default=100, show_default=True, type=click.IntRange(1, 60_000)
        ),
        click.option(
            "--election-timeout-ms",
            default=1000,
            show_default=True,
            type=click.IntRange(10, 600_000),
            help="Minimum; each node randomizes within [T, 2T).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _parse_learners(text: str, members: list[str]) -> tuple[str, ...]:
    learners = tuple(sorted({n.strip() for n in text.split(",") if n.strip()}))
    unknown = [n for n in learners if n not in members]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)} is not a member (members: {', '.join(sorted(members))})",
            param_hint="--learners",
        )
    if len(learners) == len(members):
        raise click.BadParameter("at least one member must vote", param_hint="--learners")
    return learners


def _check_policy(value: str, voters: int) -> None:
    try:
        policy = parse_policy(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sync") from None
    if policy.name == "semi-sync" and policy.k > voters - 1:
        raise click.BadParameter(
            f"{policy} waits for {policy.k} followers but a {voters}-node cluster has "
            f"{voters - 1}: no write could ever be acknowledged",
            param_hint="--sync",
        )


def _check_subscription(
    specs: tuple[str, ...], node_id: str, learners: tuple[str, ...], stream: str
) -> None:
    if not specs:
        return
    if node_id not in learners:
        raise click.BadParameter(
            f"{node_id} is a voter: only a learner can be a partial replica (a partial "
            "replica must never become leader); add it to --learners",
            param_hint="--subscribe",
        )
    if stream != "logical":
        raise click.BadParameter(
            f"partial replication filters row changes and needs --stream logical, not {stream}",
            param_hint="--subscribe",
        )
    from replidb.storage.subscription import parse_subscription

    try:
        parse_subscription(specs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subscribe") from None


@click.command()
@click.option("--node-id", required=True, help="This node's id, unique in the cluster.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--listen", required=True, help="HOST:PORT for peers and clients.")
@click.option("--peers", default="", help="The other nodes: ID=HOST:PORT,...")
@click.option("--seed", type=int, default=None, help="Seed election timeouts (testing).")
@click.option(
    "--join",
    is_flag=True,
    help="Join a running cluster: --peers lists (some of) its members. The node starts "
    "as a learner and waits until `replidb join` adds it.",
)
@click.option(
    "--subscribe",
    multiple=True,
    metavar="'TABLE[(COLS)] [WHERE PRED]'",
    help="Make this learner a partial replica of the listed tables (repeat per table), "
    "e.g. --subscribe \"users(id, name) WHERE region = 'eu'\". Needs --stream logical; "
    "a row filter needs --row-images full on the cluster.",
)
@click.option(
    "--debug-peer-delay-ms",
    type=click.IntRange(0, 60_000),
    default=0,
    hidden=True,
    help="Fault injection: hold each message from a peer this long.",
)
@cluster_options
@mesh_options
@kv_options
def serve(
    node_id: str,
    data_dir: Path,
    listen: str,
    peers: str,
    seed: int | None,
    join: bool,
    subscribe: tuple[str, ...],
    debug_peer_delay_ms: int,
    topology: str,
    stream: str,
    row_images: str,
    page_size: int,
    max_log_entries: int,
    max_log_mb: int,
    snapshot_chunk_bytes: int,
    sync_policy: str,
    learners: str,
    on_sync_timeout: str,
    sync_timeout_ms: int,
    tick_ms: int,
    heartbeat_ms: int,
    election_timeout_ms: int,
    **more: Any,
) -> None:
    """Run one node in the foreground, logging one line per event to stderr.

    Example:

        replidb serve --node-id n1 --data ./n1 --listen 127.0.0.1:7101 \\
            --peers n2=127.0.0.1:7102,n3=127.0.0.1:7103

    A fourth node, joining that cluster (then run `replidb join`):

        replidb serve --node-id n4 --data ./n4 --listen 127.0.0.1:7104 \\
            --peers n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103 --join
    """
    try:
        split_address(listen)
        peer_map = parse_peers(peers)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if node_id in peer_map:
        raise click.BadParameter(f"{node_id} lists itself as a peer", param_hint="--peers")
    single_leader = dict(stream=stream, sync_policy=sync_policy, learners=learners,
                         join=join, subscribe=subscribe)  # fmt: skip
    if topology != "leaderless":
        refuse_kv_options(more)
    if topology == "multi-leader":
        config = mesh_config(node_id, data_dir, listen, peer_map, tick_ms, more, single_leader)
        _log_to_stderr(node_id)
        sys.exit(_run(config))
    if topology == "leaderless":
        config = kv_config(node_id, data_dir, listen, peer_map, {**more, **single_leader})
        _log_to_stderr(node_id)
        sys.exit(_run(config))
    if join and not peer_map:
        raise click.BadParameter("--join needs --peers: where the cluster is", param_hint="--join")
    if join:
        learners = ",".join([learners, node_id])
    learner_ids = _parse_learners(learners, [node_id, *peer_map])
    _check_policy(sync_policy, len(peer_map) + 1 - len(learner_ids))
    _check_subscription(subscribe, node_id, learner_ids, stream)
    config = NodeConfig(
        node_id=node_id,
        data_dir=data_dir,
        listen=listen,
        peers=peer_map,
        tick_ms=tick_ms,
        heartbeat_ms=heartbeat_ms,
        election_timeout_ms=election_timeout_ms,
        policy=parse_policy(sync_policy),
        on_sync_timeout=on_sync_timeout,
        sync_timeout_ms=sync_timeout_ms,
        seed=seed,
        learners=learner_ids,
        stream=stream,
        row_images=row_images,
        page_size=page_size,
        subscribe=subscribe,
        max_log_entries=max_log_entries,
        max_log_bytes=max_log_mb << 20,
        snapshot_chunk_bytes=snapshot_chunk_bytes,
        debug_peer_delay_ms=debug_peer_delay_ms,
    )
    _log_to_stderr(node_id)
    sys.exit(_run(config))


def _log_to_stderr(node_id: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s.%(msecs)03d {node_id} %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )


def _run(config: Any) -> int:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    return int(runner(_serve(config)))


def _node_for(config: Any) -> Any:
    """The node a configuration describes (the other topologies' modules are imported
    only when used: every command pays for what `replidb` imports at start)."""
    if isinstance(config, NodeConfig):
        return Node(config)
    if config.__class__.__name__ == "KvNodeConfig":
        from replidb.node.kv_server import KvNode

        return KvNode(config)
    from replidb.node.mesh_server import MeshNode

    return MeshNode(config)


async def _serve(config: Any) -> int:
    try:
        node = _node_for(config)
    except (Error, ValueError) as exc:  # the data directory does not suit these options
        click.echo(f"error: {exc}", err=True)
        return 1
    try:
        await node.start()
    except OSError as exc:
        click.echo(f"error: cannot listen on {config.listen}: {exc.strerror or exc}", err=True)
        node.store.close()
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.stopped.set)
    await node.stopped.wait()
    await node.stop()
    return 1 if node.failed else 0


@click.group()
def cluster() -> None:
    """Run a local cluster."""


@cluster.command("up")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--dir", "base_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", default=7101, show_default=True, type=click.IntRange(1, 65000))
@click.option("--host", default="127.0.0.1", show_default=True)
@cluster_options
@kv_options
def up(nodes: int, base_dir: Path, port: int, host: str, **options: Any) -> None:
    """Run N nodes on HOST, ports PORT.., data in DIR/nID, until Ctrl-C.

    Example:

        replidb cluster up --nodes 3 --dir ./cluster --port 7101
    """
    members = [f"n{i + 1}" for i in range(nodes)]
    learners = _parse_learners(options["learners"], members)
    _check_policy(options["sync_policy"], nodes - len(learners))
    addresses = {f"n{i + 1}": f"{host}:{port + i}" for i in range(nodes)}
    extra: list[str] = []
    for name, value in options.items():
        flag = "--sync" if name == "sync_policy" else "--" + name.replace("_", "-")
        extra += [flag, str(value)]
    children: dict[str, subprocess.Popen[bytes]] = {}
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for node_id, address in addresses.items():
            peers = ",".join(f"{p}={a}" for p, a in addresses.items() if p != node_id)
            data = base_dir / node_id
            data.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable,
                "-m",
                "replidb",
                "serve",
                "--node-id",
                node_id,
                "--data",
                str(data),
                "--listen",
                address,
                "--peers",
                peers,
                *extra,
            ]
            children[node_id] = subprocess.Popen(command, preexec_fn=die_with_parent)
            (data / "pid").write_text(f"{children[node_id].pid}\n")
            click.echo(f"node {node_id} on {address} (data {data}, pid {children[node_id].pid})")
        click.echo(f"cluster up: {','.join(addresses.values())} — Ctrl-C stops all nodes")
        reported: set[str] = set()
        while not stop:
            for node_id, child in children.items():
                if child.poll() is not None and node_id not in reported:
                    click.echo(f"node {node_id} exited with code {child.returncode}", err=True)
                    reported.add(node_id)
            time.sleep(0.1)
    finally:
        _stop_children(children)
    click.echo("cluster stopped")


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
