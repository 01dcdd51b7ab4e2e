from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
