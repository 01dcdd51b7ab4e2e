"""What a change bought: `replidb bench --local 3` on two revisions of this repository,
run alternately in one invocation (A, B, B, A, ...) so that machine drift hits both
alike; prints each run and the mean ratio B/A of writes/s.

    .venv/bin/python bench/ab.py --base 2d6b375 --head HEAD --clients 64 --sync quorum

Each revision is checked out into a temporary git worktree and run from its own
sources (PYTHONPATH) with this interpreter; the worktrees are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench(src: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable, "-m", "replidb", "bench", "--local", "3", "--workload", args.workload,
        "--concurrency", str(args.clients), "--sync", args.sync, "--duration",
        str(args.duration), "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"bench failed in {src}: {done.stderr.strip()[-500:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="revision A (e.g. a commit)")
    parser.add_argument("--head", default="HEAD", help="revision B")
    parser.add_argument("--runs", type=int, default=2, help="pairs of runs")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--sync", default="quorum")
    parser.add_argument("--workload", default="insert")
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="replidb-ab-") as tmp:
        trees = {}
        for name in ("base", "head"):
            tree = Path(tmp) / name
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q",
                            str(tree), getattr(args, name)], check=True)  # fmt: skip
            trees[name] = tree
        try:
            results: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
            for run in range(args.runs):
                order = ("base", "head") if run % 2 == 0 else ("head", "base")
                for name in order:
                    result = bench(trees[name] / "src", args)
                    results[name].append(result)
                    print(f"{name:4} {getattr(args, name)}: {result['writes_per_s']:,.0f} "
                          f"writes/s, p50 {result['p50_ms']} ms", flush=True)  # fmt: skip
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(tree)], check=False)  # fmt: skip
    a = statistics.mean(r["writes_per_s"] for r in results["base"])
    b = statistics.mean(r["writes_per_s"] for r in results["head"])
    print(f"{args.head} / {args.base}: {b:,.0f} / {a:,.0f} writes/s = {b / a:.2f}x "
          f"({args.clients} clients, {args.sync}, {args.workload})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
