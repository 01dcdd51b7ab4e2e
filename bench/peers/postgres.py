"""A PostgreSQL 15 peer on loopback: a primary and two streaming standbys, async or
synchronous (``synchronous_standby_names = 'ANY 1 (s1, s2)'``, ``synchronous_commit =
on``), loaded by replidb's own generator (replidb/loadgen.py) through psycopg.

    .venv/bin/python bench/peers/postgres.py --sync --clients 64 --duration 10

Installs what it needs if missing: the postgresql package (apt-get, as root) and
psycopg (pip, into this interpreter). The servers run as the ``postgres`` user in a
temporary directory and are stopped (every one we started) on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from replidb.loadgen import run_bench
from replidb.testing.local_cluster import free_ports

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def ensure_installed() -> None:
    if not (PG_BIN / "initdb").exists():
        print("installing postgresql (apt-get) ...", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql-15"], check=True, env=env)
    try:
        importlib.import_module("psycopg")
    except ImportError:
        print("installing psycopg (pip) ...", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "psycopg[binary]>=3.1"], check=True
        )


def _as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


class PostgresTarget:
    """replidb.loadgen.Target for a primary and its standbys."""

    placeholder = "%s"
    id_column = "BIGSERIAL PRIMARY KEY"

    def __init__(self, primary: int, standbys: list[int]) -> None:
        import psycopg

        self._psycopg = psycopg
        self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self.primary = primary
        self.standbys = standbys

    def _connect(self, port: int) -> Any:
        return self._psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        )

    def connect(self) -> Any:
        return self._connect(self.primary)

    def replica_readers(self) -> list[Any]:
        return [self._connect(port) for port in self.standbys]


@contextlib.contextmanager
def postgres_cluster(sync: bool) -> Iterator[PostgresTarget]:
    """Primary + standbys s1, s2 on free loopback ports; all stopped afterwards."""
    ensure_installed()
    base = Path(tempfile.mkdtemp(prefix="replidb-peer-pg-"))
    shutil.chown(base, "postgres", "postgres")
    ports = free_ports(3)
    dirs = [base / name for name in ("primary", "s1", "s2")]
    started: list[Path] = []
    try:
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(dirs[0]), "-A", "trust", "-U", "postgres")
        settings = [
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 10",
            "synchronous_commit = on",
            f"synchronous_standby_names = '{'ANY 1 (s1, s2)' if sync else ''}'",
        ]
        with (dirs[0] / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")
        _start(dirs[0], ports[0], started)
        for name, directory, port in zip(("s1", "s2"), dirs[1:], ports[1:], strict=True):
            _as_postgres(str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(ports[0]),
                         "-U", "postgres", "-D", str(directory), "-R", "-X", "stream")  # fmt: skip
            with (directory / "postgresql.auto.conf").open("a") as conf:
                conf.write(
                    f"primary_conninfo = 'host=127.0.0.1 port={ports[0]} user=postgres "
                    f"application_name={name}'\n"
                )
            _start(directory, port, started)
        yield PostgresTarget(ports[0], ports[1:])
    finally:
        for directory in reversed(started):
            with contextlib.suppress(subprocess.CalledProcessError):
                _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(directory), "-m", "immediate",
                             "-w", "stop")  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def _start(directory: Path, port: int, started: list[Path]) -> None:
    _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(directory), "-l", str(directory / "log"),
                 "-o", f"-p {port}", "-w", "start")  # fmt: skip
    started.append(directory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sync", action="store_true", help="ANY 1 (s1, s2), commit on")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workload", default="insert")
    args = parser.parse_args()
    with postgres_cluster(args.sync) as target:
        result = run_bench(target, args.workload, args.clients, args.duration)
    print(json.dumps(result.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
