"""`make demo`: a live three-node cluster on loopback, driven through the real CLI.

Starts `replidb cluster up`, writes on the leader, reads the rows back from each
follower, writes once more through the Python DB-API driver connected to a follower,
prints `replidb status`, grows the cluster by a fourth node, and stops every process
it started. Then three multi-leader nodes take conflicting writes across a partition
and converge (scripts/demo_multileader.py), and three leaderless nodes show quorums,
siblings and hinted handoff (scripts/demo_leaderless.py).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import demo_leaderless
import demo_multileader

BIN = Path(sys.executable).parent
REPLIDB = str(BIN / "replidb")


def free_base_port(start: int = 7101, count: int = 3) -> int:
    for base in range(start, start + 200, 10):
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise SystemExit("demo: no free ports near 7101")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(*args: str, show: bool = True) -> str:
    if show:
        print(f"\n$ replidb {shlex.join(args)}", flush=True)
    done = subprocess.run([REPLIDB, *args], capture_output=True, text=True, timeout=60)
    if show:
        print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"demo: `replidb {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def wait_for_leader(connect: str, deadline_s: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        done = subprocess.run(
            [REPLIDB, "status", "--connect", connect, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode == 0:
            status: dict[str, object] = json.loads(done.stdout)
            if status.get("leader"):
                return status
        time.sleep(0.2)
    raise SystemExit("demo: no leader was elected within 15 s")


def main() -> int:
    base = free_base_port(count=4)
    workdir = Path(tempfile.mkdtemp(prefix="replidb-demo-"))
    addresses = [f"127.0.0.1:{base + i}" for i in range(3)]
    connect = ",".join(addresses)
    log_path = workdir / "cluster.log"
    print(f"$ replidb cluster up --nodes 3 --dir {workdir} --port {base}   (logs: {log_path})")
    with log_path.open("wb") as log_file:
        cluster = subprocess.Popen(
            [REPLIDB, "cluster", "up", "--nodes", "3", "--dir", str(workdir), "--port", str(base)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    joiner: subprocess.Popen[bytes] | None = None
    try:
        status = wait_for_leader(connect)
        nodes = status["nodes"]
        assert isinstance(nodes, list)
        leader = next(n for n in nodes if n["id"] == status["leader"])
        followers = [n for n in nodes if n["id"] != status["leader"]]
        print(f"\nleader elected: {leader['id']} at {leader['address']}")

        run(
            "sql",
            "--connect",
            leader["address"],
            "-c",
            "CREATE TABLE cities(id INTEGER PRIMARY KEY, name TEXT NOT NULL, country TEXT); "
            "INSERT INTO cities(name, country) VALUES ('Lisbon','PT'), ('Kyoto','JP'), "
            "('Recife','BR')",
        )

        import replidb  # the DB-API driver, connected to a follower: the write reaches the leader

        print(f"\n>>> replidb.connect({followers[0]['address']!r}) ... INSERT ... commit()")
        conn = replidb.connect(followers[0]["address"])
        cursor = conn.cursor()
        cursor.execute("INSERT INTO cities(name, country) VALUES (?, ?)", ("Tromsø", "NO"))
        conn.commit()
        print(f"committed through {followers[0]['id']}; lastrowid={cursor.lastrowid}")
        conn.close()

        query = "SELECT id, name, country FROM cities ORDER BY id"
        for node in followers:
            for _ in range(50):  # replication is asynchronous: allow it a moment
                out = subprocess.run(
                    [
                        REPLIDB,
                        "sql",
                        "--connect",
                        node["address"],
                        "--json",
                        "-c",
                        "SELECT count(*) FROM cities",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                ).stdout
                if out and json.loads(out.splitlines()[-1])["rows"] == [[4]]:
                    break
                time.sleep(0.1)
            print(f"\nread from follower {node['id']}:", end="")
            run("sql", "--connect", node["address"], "-c", query)

        # Grow the running cluster: a fourth node joins as a learner, catches up,
        # and is promoted to voter.
        n4 = f"127.0.0.1:{base + 3}"
        peers = ",".join(f"n{i + 1}={address}" for i, address in enumerate(addresses))
        serve = ["serve", "--node-id", "n4", "--data", str(workdir / "n4"), "--listen", n4]
        print(f"\n$ replidb {shlex.join([*serve, '--peers', peers, '--join'])} &")
        with (workdir / "n4.log").open("wb") as n4_log:
            joiner = subprocess.Popen(
                [REPLIDB, *serve, "--peers", peers, "--join"],
                stdout=n4_log,
                stderr=subprocess.STDOUT,
            )
        run("join", "--connect", connect, "--node-id", "n4", "--address", n4)
        run("status", "--connect", connect)
    finally:
        if joiner is not None:
            stop(joiner)
        stop(cluster)
    leftovers = []
    for pid_file in workdir.glob("n*/pid"):
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, 0)
            leftovers.append(pid)
        except ProcessLookupError:
            pass
    if leftovers:
        print(f"demo: processes left behind: {leftovers}", file=sys.stderr)
        return 1
    print("\nwhat the nodes logged about elections:")
    for line in log_path.read_text(errors="replace").splitlines():
        if " role " in line or "started" in line:
            print("  " + line)
    print("\ncluster stopped; no process left behind.")
    demo_multileader.act(workdir, free_base_port(base + 20), REPLIDB, run, stop)
    print("\nmulti-leader nodes stopped.")
    demo_leaderless.act(workdir, free_base_port(base + 40), REPLIDB, run, stop)
    print("\nleaderless nodes stopped.")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
