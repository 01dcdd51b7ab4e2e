"""Snapshot files on disk: making one from a live database, finding the newest, and
swapping one in for a node's database, each step crash-safe.

A snapshot is a plain SQLite file, a consistent copy of the replicated data at one log
position (``replidb_meta`` keeps ``applied_index`` = ``snapshot_index`` and
``snapshot_term``), without anything private to the node that made it: no log, no
discarded transactions, no undo, no term or vote. It is named ``<id>.snapshot`` with a
``<id>.json`` sidecar (index, term, size, sha256), so a restarted leader can serve the
one it has without hashing it again.

Why ``VACUUM INTO`` twice and never ``VACUUM``: a plain VACUUM renumbers the rowids of
tables without an INTEGER PRIMARY KEY, and the logical stream keys such tables by rowid,
so a follower seeded from a renumbered copy would apply the next change to the wrong
row. ``VACUUM INTO`` keeps rowids; the second one drops the pages the stripped log held.

Why the swap is ordered as it is: the old file's WAL is checkpointed (TRUNCATE) before
its connections close, so the ``-wal``/``-shm`` set aside hold nothing the old file
lacks; they must be gone before the new file takes the name, or SQLite would replay the
old WAL into the new database. A crash at any step leaves either the old database
(complete) or the new one, and stale leftovers that the next open removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from replidb.core.messages import HardState
from replidb.errors import InternalError

__all__ = [
    "SUFFIX",
    "SnapshotInfo",
    "copy_database",
    "file_sha256",
    "finish_snapshot",
    "fsync_directory",
    "latest_snapshot",
    "prepare_install",
    "prune_snapshots",
    "remove_database",
    "remove_install_leftovers",
    "replace_database",
    "snapshot_paths",
    "write_json",
]

SUFFIX = ".snapshot"
_PRIVATE_TABLES = ("replidb_log", "replidb_discarded", "replidb_undo")
_LEFTOVERS = (".installing", "-wal.replaced", "-shm.replaced")


@dataclass(frozen=True)
class SnapshotInfo:
    """A complete snapshot file: the database at log position ``index``/``term``."""

    snapshot_id: str
    path: Path
    index: int
    term: int
    size: int
    sha256: str
    # The cluster membership in force at ``index``, encoded (core/membership.py) as
    # hex; "" if it never changed from the command line's.
    membership: str = ""

    def describe(self) -> dict[str, object]:
        return {
            "snapshot_id": self.snapshot_id,
            "index": self.index,
            "term": self.term,
            "size": self.size,
            "sha256": self.sha256,
            "membership": self.membership,
        }


def snapshot_paths(directory: Path, snapshot_id: str) -> tuple[Path, Path]:
    """(the snapshot file, its sidecar) for ``snapshot_id`` in ``directory``."""
    return directory / f"{snapshot_id}{SUFFIX}", directory / f"{snapshot_id}.json"


def copy_database(db_path: Path, dest: Path) -> None:
    """A consistent copy of ``db_path`` at ``dest``, through a connection of its own (so it
    can run in a worker thread while the node's connections keep serving: in WAL mode
    the copy reads one snapshot of the file and blocks no writer)."""
    try:
        conn = apsw.Connection(str(db_path))
        try:
            conn.set_busy_timeout(5000)
            conn.execute("VACUUM INTO ?", (str(dest),))
        finally:
            conn.close()
    except apsw.Error as exc:
        raise InternalError(f"cannot copy {db_path} for a snapshot: {exc}") from None


def finish_snapshot(
    conn: apsw.Connection, directory: Path, index: int, term: int, membership: bytes = b""
) -> SnapshotInfo:
    """Strip the node's private state from the copy open on ``conn``, mark it as the
    snapshot at ``index``/``term``, and publish it in ``directory`` (keeping the newest 2)."""
    snapshot_id = f"{index}-{term}-{secrets.token_hex(4)}"
    path, sidecar = snapshot_paths(directory, snapshot_id)
    compact = directory / f".{snapshot_id}.tmp"
    try:
        conn.execute("BEGIN IMMEDIATE")
        for table in _PRIVATE_TABLES:
            conn.execute(f"DELETE FROM {table}")
        conn.execute("DELETE FROM replidb_meta")
        conn.executemany(
            "INSERT INTO replidb_meta(key, value) VALUES(?, ?)",
            [("applied_index", index), ("snapshot_index", index), ("snapshot_term", term)]
            + ([("membership", membership)] if membership else []),
        )
        conn.execute("COMMIT")
        conn.execute("VACUUM INTO ?", (str(compact),))
        size = compact.stat().st_size
        sha256 = file_sha256(compact, sync=True)
        info = SnapshotInfo(snapshot_id, path, index, term, size, sha256, membership.hex())
        write_json(sidecar, info.describe())
        os.replace(compact, path)
        fsync_directory(directory)
    except apsw.Error as exc:
        raise InternalError(f"cannot finish snapshot {snapshot_id}: {exc}") from None
    except OSError as exc:
        raise InternalError(f"cannot write snapshot {snapshot_id}: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            compact.unlink()
    prune_snapshots(directory)
    return info


def latest_snapshot(directory: Path) -> SnapshotInfo | None:
    """The newest complete snapshot in ``directory`` (by index), or None."""
    found = _complete(directory)
    return found[0] if found else None


def prune_snapshots(directory: Path, keep: int = 2) -> None:
    """Keep the newest ``keep`` complete snapshots; remove older ones and orphan sidecars."""
    for info in _complete(directory)[keep:]:
        for name in snapshot_paths(directory, info.snapshot_id):
            with contextlib.suppress(OSError):
                name.unlink()
    for sidecar in directory.glob("*.json"):
        if sidecar.name.endswith(".partial.json"):
            continue  # the fetcher's resume state
        if not (directory / f"{sidecar.stem}{SUFFIX}").exists():
            with contextlib.suppress(OSError):
                sidecar.unlink()


def _complete(directory: Path) -> list[SnapshotInfo]:
    out: list[tuple[int, float, SnapshotInfo]] = []
    for file in directory.glob(f"*{SUFFIX}"):
        sidecar = file.with_suffix(".json")
        try:
            meta = json.loads(sidecar.read_text())
            stat = file.stat()
            info = SnapshotInfo(
                str(meta["snapshot_id"]),
                file,
                int(meta["index"]),
                int(meta["term"]),
                int(meta["size"]),
                str(meta["sha256"]),
                str(meta.get("membership", "")),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if info.size == stat.st_size and file.stem == info.snapshot_id:
            out.append((info.index, stat.st_mtime, info))
    out.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [info for _, _, info in out]


def file_sha256(path: Path, sync: bool = False) -> str:
    """Hex sha256 of a file (``sync``: fsync it too, while it is open)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
        if sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def write_json(path: Path, value: object, sync_directory: bool = True) -> None:
    """Replace ``path`` with ``value`` as JSON, atomically, its content durably, and the
    rename too with ``sync_directory`` (without it a crash may bring back the previous
    version, which is enough for state that only ever moves forward safely)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_directory:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- installing ------------------------------------------------------------------


def prepare_install(
    snapshot: Path,
    db_path: Path,
    index: int,
    term: int,
    hard_state: HardState,
    discarded: Sequence[Sequence[object]],
    described: Sequence[Sequence[object]],
    membership: bytes = b"",
) -> None:
    """Copy ``snapshot`` beside ``db_path`` (checking it is the one at ``index``/``term``)
    and give the copy this node's own state: its hard state, its ``discarded`` rows
    (whole rows, ids kept) and the ``described`` ones (without id), in one transaction."""
    prepared = _leftover(db_path, ".installing")
    try:
        shutil.copyfile(snapshot, prepared)
        conn = apsw.Connection(str(prepared))
    except (OSError, apsw.Error) as exc:
        raise InternalError(f"cannot prepare snapshot {snapshot.name}: {exc}") from None
    try:
        rows = conn.execute("SELECT key, value FROM replidb_meta").fetchall()
        meta: dict[Any, Any] = {row[0]: row[1] for row in rows}
        found = (meta.get("snapshot_index"), meta.get("snapshot_term"), meta.get("applied_index"))
        if found != (index, term, index):
            raise InternalError(
                f"{snapshot.name} holds position {found[0]}/{found[1]} (applied {found[2]}), "
                f"not the announced {index}/{term}"
            )
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO replidb_discarded VALUES(?, ?, ?, ?, ?, ?, ?)", discarded)
        conn.executemany(
            "INSERT INTO replidb_discarded(term, idx, changes, record, discarded_at, reason) "
            "VALUES(?, ?, ?, ?, ?, ?)",
            described,
        )
        conn.executemany(
            "INSERT OR REPLACE INTO replidb_meta(key, value) VALUES(?, ?)",
            [("term", hard_state.term), ("vote", hard_state.vote)]
            + ([("membership", membership)] if membership else []),
        )
        conn.execute("COMMIT")
    except apsw.Error as exc:
        raise InternalError(f"{snapshot.name} cannot be installed: {exc}") from None
    finally:
        conn.close()


def replace_database(db_path: Path) -> None:
    """Swap the prepared file in for ``db_path``, whose connections are all closed and
    whose WAL was checkpointed empty."""
    prepared = _leftover(db_path, ".installing")
    with prepared.open("rb+") as f:
        os.fsync(f.fileno())
    directory = db_path.parent
    aside = []
    for suffix in ("-wal", "-shm"):
        companion = db_path.with_name(db_path.name + suffix)
        if companion.exists():
            moved = _leftover(db_path, f"{suffix}.replaced")
            os.replace(companion, moved)
            aside.append(moved)
    fsync_directory(directory)
    os.replace(prepared, db_path)
    fsync_directory(directory)
    for moved in aside:
        with contextlib.suppress(OSError):
            moved.unlink()


def remove_database(db_path: Path) -> None:
    """Delete a scratch database file and the journal files SQLite may leave beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)


def remove_install_leftovers(db_path: Path) -> None:
    """What an install interrupted by a crash left beside the database: never needed
    (the old file was complete until the swap, the new one complete after it)."""
    for suffix in _LEFTOVERS:
        with contextlib.suppress(FileNotFoundError):
            _leftover(db_path, suffix).unlink()


def _leftover(db_path: Path, suffix: str) -> Path:
    return db_path.with_name(db_path.name + suffix)
