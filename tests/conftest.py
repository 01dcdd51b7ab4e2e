from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replidb.storage.physical_store import PhysicalStore
from replidb.testing.local_cluster import LocalCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three real nodes on loopback, stopped (every PID we started) even on failure."""
    local = LocalCluster(tmp_path)
    local.start_all()
    try:
        yield local
    finally:
        local.stop_all()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., PhysicalStore]]:
    """A factory of physical (wal) stores in tmp_path, each closed after the test."""
    opened: list[PhysicalStore] = []

    def factory(name: str, page_size: int = 4096) -> PhysicalStore:
        store = PhysicalStore(tmp_path / name, page_size=page_size)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        if not store._closed:
            store.close()
