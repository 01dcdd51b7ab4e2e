"""`make demo` runs scripts/demo.py in the project's venv; run the same script here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent


def test_demo_runs_end_to_end_and_leaves_no_process() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "leader elected" in out
    assert out.count("Tromsø") == 2, "each follower should show the row written through it"
    assert "no process left behind" in out
    assert "Grace Hopper" in out and "leaderless nodes stopped" in out
