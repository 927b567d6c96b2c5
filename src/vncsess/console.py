"""Terminal output: data on stdout, messages and progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["err", "escape", "out"]

# Piped or captured output (scripts, CI logs) is not wrapped at 80 columns: a URL cut in
# three lines cannot be copied.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    # Plain print: rich would wrap or colour what a script is about to parse.
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    err.print(escape(message), style="dim")


def success(message: str) -> None:
    err.print(escape(message), style="green")


def error(message: str, hint: str = "") -> None:
    err.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}")


@contextmanager
def progress(title: str) -> Iterator[Any]:
    """A spinner on a terminal; plain lines on stderr when not (CI logs keep them)."""
    if err.is_terminal:
        with err.status(escape(title)) as status:

            def update(line: str) -> None:
                status.update(escape(line))
                if not line.startswith("Step "):
                    err.print(f"[dim]· {escape(line)}[/]")

            yield update
    else:

        def plain(line: str) -> None:
            print(f"· {line}", file=sys.stderr, flush=True)

        yield plain


def table(columns: list[str], rows: list[list[str]]) -> None:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[escape(x) for x in r])
    out.print(t)


def human_age(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
