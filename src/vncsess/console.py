"""Terminal output: data on stdout, messages and progress on stderr.

Text from outside (the agent's answer, logs, file names, Docker's errors) is printed as it
is. Both consoles have rich markup and emoji codes turned off, styles are applied with Text
objects (never by markup inside a string), and control characters are shown, not obeyed:
`[/docs]` cannot raise, `[note]` cannot vanish, and a page cannot retitle the terminal.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

__all__ = ["err", "literal", "out"]

# Piped or captured output (scripts, CI logs) is not wrapped at 80 columns: a URL cut in
# three lines cannot be copied.
out = Console(
    highlight=False,
    markup=False,
    emoji=False,
    soft_wrap=True,
    width=None if sys.stdout.isatty() else 240,
)
err = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)

# C0 controls but tab and newline, DEL, and C1 controls: ESC sequences from a web page must
# not reach the terminal (colours, cursor moves, window titles, hyperlinks).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def literal(text: object, style: str = "") -> Text:
    """Outside text, shown exactly: no markup, no emoji codes, control characters made
    visible (`\\x1b`)."""
    shown = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
    return Text(shown, style=style)


def print_json(data: Any) -> None:
    # Plain print: rich would wrap or colour what a script is about to parse.
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def data(text: str) -> None:
    """One piece of data on stdout (a URL, a path, an answer), literally."""
    out.print(literal(text))


def info(message: str) -> None:
    err.print(literal(message, "dim"))


def success(message: str) -> None:
    err.print(literal(message, "green"))


def error(message: str, hint: str = "") -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", literal(message)))
    if hint:
        err.print(Text.assemble(("hint:", "dim"), " ", literal(hint)))


def table(columns: list[str], rows: list[list[str]]) -> None:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[literal(x) for x in r])
    out.print(t)


_MARKS = {
    "ok": ("ok", "green"),
    "warning": ("warning", "yellow"),
    "problem": ("problem", "bold red"),
}


def checks(found: Sequence[Any]) -> None:
    """doctor's findings (name, status, summary, fix), one line each, the fix below."""
    width = max((len(c.name) for c in found), default=0)
    for c in found:
        word, style = _MARKS[c.status]
        out.print(
            Text.assemble(
                (f"{word:<8}", style), (f"{c.name:<{width}}", "bold"), "  ", literal(c.summary)
            )
        )
        if c.fix:
            out.print(Text.assemble(" " * (8 + width + 2), ("fix: ", "dim"), literal(c.fix)))
    problems = sum(c.status == "problem" for c in found)
    warnings = sum(c.status == "warning" for c in found)
    if problems:
        err.print(literal(f"{problems} problem(s): `vncsess up` would fail", "bold red"))
    else:
        err.print(literal(f"no problems ({warnings} warning(s)): `vncsess up` can run", "green"))


def human_age(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def human_duration(seconds: float) -> str:
    """`0.4s`, `35s`, `2m05s`, `1h02m`: how long something took."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# ------------------------------------------------------------------ progress


class _View:
    """What long work reports (see images.BuildReporter): messages, and for builds the
    stage, the step inside it (a Dockerfile step) and the finest detail (the package being
    unpacked). Both views time each stage and end with a summary."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.started = time.monotonic()
        self.done: list[tuple[str, float]] = []  # finished stages and their durations
        self.current = ""
        self.current_since = self.started
        self.step_text = ""
        self.detail_text = ""
        self.last_news = self.started  # when the work last said anything

    # the reporter interface ------------------------------------------------
    def __call__(self, message: str) -> None:
        self.last_news = time.monotonic()
        self.message(message)

    def stage(self, name: str) -> None:
        self.last_news = time.monotonic()
        self._finish_stage()
        self.current, self.current_since = name, time.monotonic()
        self.step_text = self.detail_text = ""
        self.stage_started(name)

    def step(self, text: str) -> None:
        self.last_news = time.monotonic()
        self.step_text, self.detail_text = text, ""
        self.step_changed()

    def detail(self, text: str) -> None:
        self.last_news = time.monotonic()
        self.detail_text = text
        self.detail_changed()

    # what each view does with it -----------------------------------------
    def message(self, message: str) -> None:
        raise NotImplementedError

    def stage_started(self, name: str) -> None:
        pass

    def stage_finished(self, name: str, seconds: float) -> None:
        pass

    def step_changed(self) -> None:
        pass

    def detail_changed(self) -> None:
        pass

    # shared ----------------------------------------------------------------
    def _finish_stage(self) -> None:
        if self.current:
            seconds = time.monotonic() - self.current_since
            self.done.append((self.current, seconds))
            self.stage_finished(self.current, seconds)
            self.current = ""

    def close(self, ok: bool) -> None:
        if not ok:
            return  # the error that follows says what failed; nothing was "done"
        self._finish_stage()
        if self.done:
            total = time.monotonic() - self.started
            width = max(len(name) for name, _ in self.done)
            err.print(literal(f"done in {human_duration(total)}:", "green"))
            for name, seconds in self.done:
                err.print(literal(f"  {name:<{width}}  {human_duration(seconds):>7}"))


class _LiveView(_View):
    """A live line on a terminal: spinner, stage, elapsed time, step and detail."""

    MIN_STEP = 12  # narrower than this, a step says nothing: leave it out
    QUIET = 15.0  # seconds without a line before the live line says how long it has been

    def __init__(self, title: str) -> None:
        super().__init__(title)
        from rich.live import Live
        from rich.spinner import Spinner

        self.spinner = Spinner("dots", style="cyan")
        self.live = Live(self, console=err, refresh_per_second=8, transient=True)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.line(options.max_width)

    def line(self, width: int) -> Text:
        """The live line, fitted to width: the step (a long RUN command) gives way first,
        so the package being unpacked stays readable."""
        now = time.monotonic()
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        frame = self.spinner.render(now)
        line.append_text(frame if isinstance(frame, Text) else Text(str(frame)))
        line.append(" ")
        line.append_text(literal(self.current or self.title, "bold"))
        since = self.current_since if self.current else self.started
        line.append(f"  {human_duration(now - since)}", style="cyan")
        if self.current and self.done:
            line.append(f" (total {human_duration(now - self.started)})", style="dim")
        detail = literal(self.detail_text[: max(width // 2, 20)], "dim")
        quiet = now - self.last_news
        if quiet >= self.QUIET:
            # Docker saving a big layer, a slow mirror: silent, not stuck, and it says so.
            sep = " · " if self.detail_text else ""
            detail.append(f"{sep}quiet for {human_duration(quiet)}", style="yellow")
        room = width - len(line) - (len(detail) + 2 if detail else 0) - 2
        if self.step_text and room >= self.MIN_STEP:
            step = self.step_text
            if len(step) > room:
                step = step[: room - 1] + "…"
            line.append("  ")
            line.append_text(literal(step))
        if detail:
            line.append("  ")
            line.append_text(detail)
        return line

    def message(self, message: str) -> None:
        self.step_text = message if not self.current else self.step_text
        self.live.console.print(literal(f"· {message}", "dim"))

    def stage_finished(self, name: str, seconds: float) -> None:
        self.live.console.print(
            Text.assemble(("✓ ", "green"), literal(name), (f"  {human_duration(seconds)}", "dim"))
        )


class _PlainView(_View):
    """Plain lines for logs and --quiet: stages and steps as they come, and the latest
    detail at most every HEARTBEAT seconds, so a CI log shows the build is alive without
    a line per package."""

    HEARTBEAT = 30.0

    def __init__(self, title: str) -> None:
        super().__init__(title)
        self.last_line = self.started

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        stamp = human_duration(self.last_line - self.started)
        sys.stderr.write(_CONTROL.sub("?", f"· [{stamp:>6}] {text}") + "\n")
        sys.stderr.flush()

    def _where(self) -> str:
        return f"{self.current}: " if self.current else ""

    def message(self, message: str) -> None:
        self._line(message)

    def stage_started(self, name: str) -> None:
        self._line(name)

    def stage_finished(self, name: str, seconds: float) -> None:
        self._line(f"{name}: done in {human_duration(seconds)}")

    def step_changed(self) -> None:
        step = self.step_text  # a Dockerfile ENV or RUN can run to a thousand characters
        self._line(self._where() + (step if len(step) <= 150 else step[:149] + "…"))

    def detail_changed(self) -> None:
        if time.monotonic() - self.last_line >= self.HEARTBEAT:
            self._line(self._where() + self.detail_text)


@contextmanager
def progress(title: str, quiet: bool = False) -> Iterator[_View]:
    """A live line on a terminal; plain lines on stderr when it is not one (CI logs keep
    them) or with --quiet. Yields a reporter: call it with a message, or give a build's
    stage(), step() and detail()."""
    view: _View = _PlainView(title) if quiet or not err.is_terminal else _LiveView(title)
    live = getattr(view, "live", None)
    ok = False
    try:
        if live is not None:
            with live:
                yield view
        else:
            yield view
        ok = True
    finally:
        view.close(ok)
