"""`make demo`, second act: three multi-leader nodes take conflicting writes while one
is cut off, and converge to the same row, with the conflict kept in replidb_conflicts.

The partition is injected with the nodes' test-only cut file (the links drop what
they carry); everything else is the real CLI and real processes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from replidb.cli.sql_cmd import run_sql
from replidb.cli.status_cmd import cluster_status
from replidb.errors import Error

QUERY = "SELECT item, qty FROM stock"


def act(workdir: Path, base: int, replidb: str, run: Callable[..., str],
        stop: Callable[[subprocess.Popen[bytes]], None]) -> None:  # fmt: skip
    ids = ["n1", "n2", "n3"]
    addresses = {n: f"127.0.0.1:{base + i}" for i, n in enumerate(ids)}
    cuts = {n: workdir / f"cut-{n}" for n in ids}
    procs: list[subprocess.Popen[bytes]] = []
    print("\n=== multi-leader: every node takes writes ===")
    try:
        for n in ids:
            cuts[n].write_text("")
            peers = ",".join(f"{p}={a}" for p, a in addresses.items() if p != n)
            command = ["serve", "--topology", "multi-leader", "--node-id", n,
                       "--data", str(workdir / f"m-{n}"), "--listen", addresses[n],
                       "--peers", peers, "--resolve", "stock=record"]  # fmt: skip
            print(f"$ replidb {' '.join(command)} &")
            with (workdir / f"m-{n}.log").open("wb") as log:
                procs.append(subprocess.Popen(
                    [replidb, *command, "--debug-cut-file", str(cuts[n])],
                    stdout=log, stderr=subprocess.STDOUT,
                ))  # fmt: skip
        _wait(lambda: _statuses(replidb, addresses["n1"]) is not None, "the mesh to start")
        run("sql", "--connect", addresses["n1"], "-c",
            "CREATE TABLE stock(item TEXT PRIMARY KEY, qty INTEGER)")  # fmt: skip
        run("sql", "--connect", addresses["n2"], "-c", "INSERT INTO stock VALUES ('apples', 10)")
        _wait(lambda: _rows(replidb, addresses["n3"]) == [["apples", 10]], "the row everywhere")
        print("\ncutting n3 off from n1 and n2 (fault injection) ...")
        cuts["n3"].write_text("n1,n2")
        cuts["n1"].write_text("n3")
        cuts["n2"].write_text("n3")
        time.sleep(0.5)
        run("sql", "--connect", addresses["n1"], "-c", "UPDATE stock SET qty = 7")  # sold 3
        run("sql", "--connect", addresses["n3"], "-c", "UPDATE stock SET qty = 12")  # restocked
        for n in ("n1", "n3"):
            print(f"{n} sees {_rows(replidb, addresses[n])}  (both accepted their write)")
        print("\nhealing the partition ...")
        for path in cuts.values():
            path.write_text("")
        _wait(lambda: len({json.dumps(_rows(replidb, a)) for a in addresses.values()}) == 1,
              "the nodes to converge")  # fmt: skip
        for n in ids:
            print(f"{n} sees {_rows(replidb, addresses[n])}")
        print("(the later write won everywhere; both versions are kept:)")
        run("sql", "--connect", addresses["n1"], "-c",
            "SELECT tbl, pk, local_row, remote_row, kept FROM replidb_conflicts")  # fmt: skip
        run("status", "--connect", addresses["n1"])
    finally:
        for proc in procs:
            stop(proc)


def _statuses(replidb: str, address: str) -> dict[str, object] | None:
    del replidb
    try:
        return cluster_status(address, timeout=2.0)
    except Error:
        return None


def _rows(replidb: str, address: str) -> list[list[object]]:
    del replidb
    try:
        return [list(r) for r in run_sql(address, QUERY)[-1].rows]
    except Error:
        return []


def _wait(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")
