"""Running a simulator over a range of seeds from the command line (``replidb sim``
and its --multi-leader and --leaderless variants): one summary line per seed, its
violations with the command that replays it, and a count at the end."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["report_seeds"]


def report_seeds(
    seed: int | None, seeds: int, run_one: Callable[[int], Any], replay: str, verbose: bool
) -> int:
    """Run ``seeds`` seeds from ``seed`` (random if None); 1 if any violated an
    invariant. ``run_one(seed)`` returns a result with ``trace``, ``summary()``,
    ``violations`` and, if it has one, ``trace_digest``; ``replay`` is the command
    that replays a seed (``--seed N --verbose`` is appended)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
        print(f"seed: {seed} (random)")
    failed: list[int] = []
    for current in range(seed, seed + seeds):
        result = run_one(current)
        if verbose:
            print("\n".join(result.trace))
        print(result.summary())
        digest = getattr(result, "trace_digest", "")
        if digest:
            print(f"  trace digest {digest}")
        for violation in result.violations:
            print(f"  {violation}")
        if result.violations:
            print(f"  replay with: {replay} --seed {current} --verbose")
            failed.append(current)
    if seeds > 1:
        print(
            f"{seeds - len(failed)}/{seeds} seeds passed"
            + (f"; failed: {failed}" if failed else "")
        )
    return 1 if failed else 0
