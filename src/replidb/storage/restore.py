"""Backups on disk, and seeding a node's data directory from one.

A backup is two files side by side:

- ``FILE``: the leader's snapshot exactly as it served it (same bytes, same sha256) — for
  the ``logical``, ``statement`` and ``mixed`` formats a plain SQLite database, which can
  be opened read-only to look inside; for ``wal`` whatever that store's snapshots are.
- ``FILE.json``: what the snapshot is (``BackupInfo``): its log position
  (``index``/``term``), the stream format, size and sha256, and where it came from.

Why a sidecar and not a header inside FILE: FILE stays the very file a follower would
install, so restore goes through the same ``install_snapshot`` a lagging follower uses,
and a SQLite backup stays a SQLite file. The sidecar is written last, so a FILE without
one is an interrupted backup; the sha256 catches a FILE and a sidecar that do not belong
together.

Why restore also sets the term: the restored log ends at ``index`` with term ``term``
while a fresh node's current term is 0. Were the nodes of a new cluster to elect a
leader at term 1 and append after an entry of term ``term``, log terms would go
backwards and the "more up-to-date log" comparison of elections would prefer a node
lacking the new entries. So the restored node's term is raised to at least ``term``.
"""

from __future__ import annotations

import datetime
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replidb.core.messages import HardState
from replidb.errors import BadRequest, InternalError
from replidb.storage import snapshot_files
from replidb.storage.base import STREAMS, open_store

__all__ = [
    "BACKUP_FORMAT",
    "BACKUP_VERSION",
    "RESTORED_NAME",
    "BackupInfo",
    "meta_path",
    "read_backup",
    "restore_backup",
    "verify_backup",
    "write_backup_meta",
]

BACKUP_FORMAT = "replidb-backup"
BACKUP_VERSION = 1
# Written into a restored data directory: where its data came from (never read back).
RESTORED_NAME = "restored-from.json"


@dataclass(frozen=True)
class BackupInfo:
    """What ``FILE.json`` says about ``FILE``."""

    stream: str  # the stream format of the cluster it came from
    index: int  # the log position the data is at
    term: int
    size: int
    sha256: str
    snapshot_id: str = ""
    leader: str = ""  # the node that served it, and what it had committed when asked
    leader_address: str = ""
    leader_term: int = 0
    leader_commit_index: int = 0
    members: list[str] = field(default_factory=list)
    created_at: str = ""  # ISO 8601, UTC
    replidb_version: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"format": BACKUP_FORMAT, "version": BACKUP_VERSION, **asdict(self)}


def meta_path(backup: Path) -> Path:
    """``FILE.json`` for ``FILE``."""
    return backup.with_name(backup.name + ".json")


def write_backup_meta(backup: Path, info: BackupInfo) -> None:
    """Write ``FILE.json`` atomically and durably: the last step of making a backup."""
    snapshot_files.write_json(meta_path(backup), info.as_json())


def read_backup(backup: Path) -> BackupInfo:
    """The description of ``backup``; BadRequest if it has none or an unreadable one."""
    meta = meta_path(backup)
    if not backup.is_file():
        raise BadRequest(f"no backup file {backup}")
    try:
        raw = json.loads(meta.read_text())
    except FileNotFoundError:
        raise BadRequest(
            f"{meta} is missing: {backup} is not a replidb backup, or an interrupted one"
        ) from None
    except (OSError, ValueError) as exc:
        raise BadRequest(f"cannot read {meta}: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != BACKUP_FORMAT:
        raise BadRequest(f"{meta} does not describe a replidb backup")
    if raw.get("version") != BACKUP_VERSION:
        raise BadRequest(
            f"{meta} is backup format version {raw.get('version')}; "
            f"this replidb reads version {BACKUP_VERSION}"
        )
    fields = {k: v for k, v in raw.items() if k not in ("format", "version")}
    try:
        info = BackupInfo(**fields)
    except TypeError as exc:
        raise BadRequest(f"{meta} is not a valid backup description: {exc}") from None
    if not (isinstance(info.index, int) and isinstance(info.term, int) and info.index > 0):
        raise BadRequest(f"{meta} holds no valid log position")
    return info


def verify_backup(backup: Path, info: BackupInfo) -> None:
    """BadRequest unless ``backup`` is exactly the file ``info`` describes."""
    try:
        size = backup.stat().st_size
        sha256 = snapshot_files.file_sha256(backup) if size == info.size else ""
    except OSError as exc:
        raise BadRequest(f"cannot read {backup}: {exc}") from None
    if size != info.size or sha256 != info.sha256:
        raise BadRequest(
            f"{backup} failed its sha256 check: it is damaged or not the file "
            f"{meta_path(backup).name} describes"
        )


def restore_backup(
    backup: Path,
    data_dir: Path,
    stream: str,
    *,
    node_id: str | None = None,
    force: bool = False,
) -> BackupInfo:
    """Seed ``data_dir`` from ``backup`` so that a node started on it (``replidb serve
    --data DIR --stream STREAM``) begins at the backup's position: data as of ``index``,
    an empty log based at ``index``/``term``. Every node of a new cluster restored from
    the same file starts at the same position, so they elect a leader and go on.

    Refuses (BadRequest, before touching ``data_dir``) a backup of another stream format,
    one that fails its sha256 check, and a non-empty ``data_dir`` unless ``force``. With
    ``force`` the backup replaces what the directory holds; writes it had past the
    backup are kept in ``replidb_discarded``, as after any rollback. ``node_id`` is only
    recorded, in ``data_dir``/restored-from.json.

    Seeding a member of a running cluster (one that lost its disk): use a backup at
    least as new as what that node last acknowledged, e.g. one taken after it went down.
    A leader never lowers a follower's acknowledged index (Raft assumes acknowledged
    entries stay on disk), so it would keep sending from there until leadership moves."""
    if stream not in STREAMS:
        raise BadRequest(f"unknown stream format {stream!r}: choose {', '.join(STREAMS)}")
    info = read_backup(backup)
    if info.stream != stream:
        raise BadRequest(
            f"{backup} is a backup of a {info.stream} cluster, not {stream}: "
            f"restore it with --stream {info.stream}"
        )
    if data_dir.exists() and not data_dir.is_dir():
        raise BadRequest(f"{data_dir} is not a directory")
    if data_dir.is_dir() and any(data_dir.iterdir()) and not force:
        raise BadRequest(f"{data_dir} is not empty: restore into a new directory, or pass --force")
    verify_backup(backup, info)
    if force:
        # Snapshots this node made or fetched before describe another history: one at a
        # higher index would otherwise be served to followers as if it followed ours.
        shutil.rmtree(data_dir / "snapshots", ignore_errors=True)
    try:
        store = open_store(data_dir, stream)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    except OSError as exc:
        raise BadRequest(f"cannot use {data_dir}: {exc}") from None
    try:
        install = getattr(store, "install_snapshot", None)
        if install is None:
            raise BadRequest(f"the {stream} store cannot install a backup yet")
        try:
            install(backup, info.index, info.term, 0)
        except OSError as exc:
            raise InternalError(f"cannot install {backup}: {exc}") from None
        hard = store.hard_state()
        if hard.term < info.term:  # see the module docstring
            store.persist(HardState(info.term, None), None, [])
    finally:
        store.close()
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    restored = {"backup": str(backup.resolve()), "node_id": node_id, "restored_at": now}
    snapshot_files.write_json(data_dir / RESTORED_NAME, {**restored, **info.as_json()})
    return info
