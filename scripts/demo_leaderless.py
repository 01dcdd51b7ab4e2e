"""`make demo`, third act: three leaderless nodes. Quorum writes and reads through
`replidb kv`, two concurrent writes kept as siblings and resolved with the context a
read returned, and a replica stopped while writes go on: the others keep hints for it
and hand them over when it is back.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from demo_multileader import _wait

from replidb.cli.sql_cmd import run_sql
from replidb.client.transport import probe_status
from replidb.errors import Error


def act(workdir: Path, base: int, replidb: str, run: Callable[..., str],
        stop: Callable[[subprocess.Popen[bytes]], None]) -> None:  # fmt: skip
    ids = ["n1", "n2", "n3"]
    addresses = {n: f"127.0.0.1:{base + i}" for i, n in enumerate(ids)}
    connect = ",".join(addresses.values())
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(n: str, show: bool = True) -> None:
        peers = ",".join(f"{p}={a}" for p, a in addresses.items() if p != n)
        command = ["serve", "--topology", "leaderless", "--node-id", n,
                   "--data", str(workdir / f"l-{n}"), "--listen", addresses[n],
                   "--peers", peers, "--replica-timeout-ms", "300"]  # fmt: skip
        if show:
            print(f"$ replidb {' '.join(command)} &")
        with (workdir / f"l-{n}.log").open("ab") as log:
            procs[n] = subprocess.Popen([replidb, *command], stdout=log, stderr=subprocess.STDOUT)

    print("\n=== leaderless: quorums, siblings, hinted handoff ===")
    try:
        for n in ids:
            start(n)
        _wait(lambda: all(_linked(a) for a in addresses.values()), "the nodes to connect")
        run("sql", "--connect", addresses["n1"], "-c",
            "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")  # fmt: skip
        run("kv", "put", "--connect", connect, "users", '{"id": 1, "name": "ada"}', "-w", "2")
        run("kv", "get", "--connect", connect, "users", "1", "-r", "2")
        print("\ntwo clients write id 2 without having read it (no context): siblings")
        for name in ("grace", "grace hopper"):
            run("kv", "put", "--connect", connect, "users", json.dumps({"id": 2, "name": name}),
                "--context", "[]")  # fmt: skip
        read = json.loads(run("kv", "get", "--connect", connect, "users", "2"))
        print("a write with the context of that read replaces both:")
        run("kv", "put", "--connect", connect, "users", '{"id": 2, "name": "Grace Hopper"}',
            "--context", json.dumps(read["context"]))  # fmt: skip
        run("kv", "get", "--connect", connect, "users", "2")

        print("\nstopping n3; writes go on with W=2 of N=3 ...")
        stop(procs.pop("n3"))
        run(
            "sql",
            "--connect",
            addresses["n1"],
            "-c",
            "INSERT INTO users VALUES " + ", ".join(f"({i}, 'user {i}')" for i in range(10, 30)),
        )
        run("status", "--connect", addresses["n1"])
        print("restarting n3: the hints reach it")
        start("n3", show=False)
        _wait(lambda: _count(addresses["n3"]) == 22, "n3 to receive its hints")
        run("sql", "--connect", addresses["n3"], "-c", "SELECT count(*) FROM users")
        run("status", "--connect", addresses["n1"])
    finally:
        for proc in procs.values():
            stop(proc)


def _linked(address: str) -> bool:
    try:
        return len(probe_status(address, 1.0).peers_connected) == 2
    except Error:
        return False


def _count(address: str) -> int:
    try:
        return int(run_sql(address, "SELECT count(*) FROM users")[-1].rows[0][0])
    except Error:
        return -1
