"""How long the CLI takes to start: `vncsess --version` (imports only), `vncsess --help`
(imports and the help screen), and one shell-completion call.

    python bench/startup.py [--runs N] [--before REF]

Runs this tree's code and, with --before, the code of a git ref (a temporary worktree, the
same Python and packages), interleaved so both see the same machine load. Prints medians
and 90th percentiles; results go in docs/benchmarks.md. Figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(src: Path, args: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of `python -m vncsess ARGS` with the package imported from src."""
    full = {**os.environ, "PYTHONPATH": str(src), **(env or {})}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "vncsess", *args],
        env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    return time.perf_counter() - started


def summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return f"| {name} | {statistics.median(values):.3f} s | {p90:.3f} s | {len(values)} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--before", help="a git ref to compare with (e.g. main)")
    args = ap.parse_args()

    trees = {"this tree": ROOT / "src"}
    tmp = None
    if args.before:
        tmp = Path(tempfile.mkdtemp(prefix="vncsess-before-"))
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp / "wt"), args.before],
            check=True, capture_output=True,
        )  # fmt: skip
        trees = {f"{args.before}": tmp / "wt" / "src", **trees}
    complete = {
        "_VNCSESS_COMPLETE": "complete_bash",
        "COMP_WORDS": "vncsess inspect ",
        "COMP_CWORD": "2",
    }
    results: dict[str, list[float]] = {}
    try:
        for src in trees.values():  # warm the page cache and the bytecode caches
            timed(src, ["--help"])
        for _ in range(args.runs):
            for label, src in trees.items():
                for cmd in ("--version", "--help"):
                    key = f"`vncsess {cmd}` ({label})"
                    results.setdefault(key, []).append(timed(src, [cmd]))
            # Completion exists only in this tree: TAB after a command that takes an id
            # (one `docker ps` included).
            results.setdefault("TAB: complete a session id (this tree)", []).append(
                timed(trees["this tree"], [], env=complete)
            )
    finally:
        if tmp is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "wt")],
                check=False, capture_output=True,
            )  # fmt: skip
    print("| measure | median | p90 | runs |")
    print("|---|---|---|---|")
    for name, values in results.items():
        print(summary(name, values))


if __name__ == "__main__":
    main()
