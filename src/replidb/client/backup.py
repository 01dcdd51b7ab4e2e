"""``backup``: a consistent copy of the cluster's committed data, with its log position.

The copy is the leader's snapshot, fetched the way a lagging follower fetches one
(node/snapshots.py ``SnapshotFetcher``: checked chunks, sha256 at the end), so there is
one transfer to trust and not two. Why the leader: its snapshot is taken at its commit
index, the newest state the cluster has agreed on; a follower's would be as old as its
own commit index. The fetch carries the commit index the leader reported when asked
(``min_index``), so the leader does not hand out an older snapshot it happens to keep for
lagging followers: the backup holds every write committed before it began.

The transfer goes to a hidden directory beside ``out`` (``.FILE.partial``), so the last
step is a rename on one file system: ``out`` is never half written. The fetcher records
how far it got there, so running the same backup again after a failure resumes (if the
leader still has that snapshot) instead of starting over. ``out.json``, the position and
provenance (storage/restore.py ``BackupInfo``), is written last.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.metadata
import logging
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from replidb.client.transport import Client, probe_status
from replidb.errors import BadRequest, Error, Unavailable
from replidb.node.snapshots import SnapshotFetcher
from replidb.storage import snapshot_files
from replidb.storage.restore import BackupInfo, meta_path, write_backup_meta
from replidb.storage.snapshot_files import SnapshotInfo
from replidb.transport import wire

__all__ = ["backup", "find_leader", "partial_dir"]

log = logging.getLogger("replidb.backup")
_PROGRESS_EVERY_S = 1.0


def partial_dir(out: Path) -> Path:
    """Where a backup to ``out`` is fetched before it is renamed into place."""
    return out.with_name(f".{out.name}.partial")


def find_leader(addresses: str | Sequence[str], timeout: float) -> tuple[wire.NodeStatus, str]:
    """The leader's own status and an address that reaches it, asking any member.

    Retries until ``timeout`` while there is no leader (an election under way), since a
    backup started next to a cluster start should wait for it rather than fail."""
    deadline = time.monotonic() + timeout
    problem = "no member answered"
    while True:
        remaining = deadline - time.monotonic()
        client = Client(addresses, timeout=max(remaining, 0.1))
        try:
            status = client.status()
            reached = client.last_address or status.address
        finally:
            client.close()
        if status.role == "leader":
            return status, reached  # its advertised address may be a wildcard
        if status.leader_address is not None:
            try:
                leader = probe_status(status.leader_address, max(min(remaining, 2.0), 0.1))
            except Error as exc:
                problem = f"the leader {status.leader} ({status.leader_address}): {exc}"
            else:
                if leader.role == "leader":
                    return leader, status.leader_address
                problem = f"{status.leader} is no longer the leader"
        else:
            problem = "the cluster has no leader right now"
        if time.monotonic() + 0.1 >= deadline:
            raise Unavailable(f"{problem} (waited {timeout:g}s)")
        time.sleep(0.1)


def backup(
    addresses: str | Sequence[str],
    out: Path,
    *,
    timeout: float = 30.0,
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> BackupInfo:
    """Write the leader's snapshot to ``out`` and its description to ``out``.json.

    ``timeout``: seconds to find the leader, and the longest the leader may stay silent
    during the transfer (it is silent while it makes the snapshot, which takes a while
    for a large database). ``on_progress`` gets a short line now and then (e.g.
    ``12.5 of 40.0 MB (31%)``). Refuses an existing ``out`` unless ``force``. Blocking,
    like the rest of the client: do not call it from a running event loop."""
    out = Path(out)
    if out.is_dir():
        raise BadRequest(f"{out} is a directory: --out names the backup file")
    if not out.parent.is_dir():
        raise BadRequest(f"{out.parent} does not exist: create it first")
    if (out.exists() or meta_path(out).exists()) and not force:
        raise BadRequest(f"{out} exists: choose another --out, or pass --force to replace it")
    status, address = find_leader(addresses, timeout)
    say = on_progress or (lambda _text: None)
    say(f"asking leader {status.id} ({address}) for a snapshot at commit {status.commit_index}")
    work = partial_dir(out)
    fetcher = SnapshotFetcher(
        f"backup@{socket.gethostname()}",
        work,
        log,
        chunk_timeout_s=timeout,
        min_index=status.commit_index,  # every write committed before we asked
    )
    try:
        snapshot = asyncio.run(_fetch(fetcher, address, say))
    except Unavailable as exc:
        raise Unavailable(f"{exc.message} (run the backup again: it resumes)") from None
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    info = BackupInfo(
        stream=status.stream,
        index=snapshot.index,
        term=snapshot.term,
        size=snapshot.size,
        sha256=snapshot.sha256,
        snapshot_id=snapshot.snapshot_id,
        leader=status.id,
        leader_address=address,
        leader_term=status.term,
        leader_commit_index=status.commit_index,
        members=sorted([status.id, *status.peers]),
        created_at=created,
        replidb_version=_version(),
    )
    try:
        meta_path(out).unlink(missing_ok=True)  # never an old description beside new data
        snapshot_files.fsync_directory(out.parent)
        snapshot.path.replace(out)
        write_backup_meta(out, info)
    except OSError as exc:
        raise BadRequest(f"cannot write {out}: {exc}") from None
    with contextlib.suppress(OSError):
        shutil.rmtree(work)
    return info


async def _fetch(
    fetcher: SnapshotFetcher, address: str, say: Callable[[str], None]
) -> SnapshotInfo:
    """Run the fetch, reporting its progress about once a second."""
    task = asyncio.create_task(fetcher.fetch(address))
    started = time.monotonic()
    shown = ""
    while True:
        done, _ = await asyncio.wait({task}, timeout=_PROGRESS_EVERY_S)
        if done:
            return task.result()
        text = fetcher.progress
        if not text and not shown:
            text = f"the leader is making the snapshot ({time.monotonic() - started:.0f}s)"
        if text and text != shown:
            say(text)
            shown = text


def _version() -> str:
    try:
        return importlib.metadata.version("replidb")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return ""
