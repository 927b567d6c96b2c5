"""The idle timeout's contract: what counts as activity in a session, and when a session
has been idle too long. Read and written by three parties, with one rule:

- vncsess on the host (`up` writes `start`; `control`/`resume` write `control`; `ls` and
  `inspect` read it all to show the idle time left),
- the vnc container (compose/vnc/vnc-service, in bash: it writes `viewer` while a VNC
  client is connected, and ends the session when it is idle),
- the agent runner (it writes `agent` at every step and while its task runs, and ends
  itself when the session is idle).

One file under two import names, as protocol.py: `vncsess_agent.activity` in the agent
image, `vncsess.activity` on the host (a symlink). Standard library only.

The activity dir ($DATA_DIR/activity, mounted at /activity in both containers) holds one
small text file per source, each the Unix time (whole seconds) it last saw activity:

  start     the session's creation (vncsess)
  viewer    the last poll that saw a VNC client connected to x11vnc (vnc container)
  agent     the last step, or poll while a task runs (agent runner)
  control   `controlled SINCE` while a person has control (never idle), `watching SINCE`
            once handed back (vncsess)
  ended     `idle AT`: written by the container that found the session idle; the other
            one sees it at its next poll and ends too
  claim     `TTL_S IDLE_S`: a warm-pool session's limits, written by the `up` that claimed
            it (vncsess); the vnc container counts both from when it sees it. `start` is
            written again at the claim.
  display-ready  the time the display first answered: Xvfb, and x11vnc and websockify
            accepting connections (vnc container). `up` waits for it, not for x11vnc's
            banner, which a new client gets 0.1-0.3 s late while nobody is connected.

An empty file is one being written at this very moment (a writer in bash truncates, then
writes): it counts as activity now. A session is idle for now - max(times), and not at all
while controlled.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

DIR_IN_CONTAINERS = "/activity"
START, VIEWER, AGENT, CONTROL, ENDED = "start", "viewer", "agent", "control", "ended"
CLAIM = "claim"
DISPLAY_READY = "display-ready"
SOURCES = (START, VIEWER, AGENT)
POLL_S = 1.0  # how often each container looks (the bash side polls every second too)
IDLE = "idle"  # the reason in `ended`, and a result's / session's expired_by


def _read(path: Path) -> list[str] | None:
    """The file's words; [] when it is empty (being written); None when it is missing."""
    try:
        return path.read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return None


def _time(word: str) -> float | None:
    try:
        return float(word)
    except ValueError:
        return None


def controlled(folder: Path) -> bool:
    words = _read(folder / CONTROL)
    return words is not None and words[:1] == ["controlled"]


def last_activity(folder: Path, now: float | None = None) -> float | None:
    """When the session was last active (Unix time), or None when nothing is recorded."""
    now = time.time() if now is None else now
    if controlled(folder):
        return now
    times: list[float] = []
    for name in (*SOURCES, CONTROL):
        words = _read(folder / name)
        if words is None:
            continue
        if not words:  # being written now
            return now
        t = _time(words[-1])
        if t is not None:
            times.append(t)
    return max(times) if times else None


def idle_for(folder: Path, now: float | None = None) -> float:
    """Seconds without activity (0 when something is active now or nothing is recorded)."""
    now = time.time() if now is None else now
    last = last_activity(folder, now)
    return max(now - last, 0.0) if last is not None else 0.0


def ended(folder: Path) -> str:
    """Why the session ended itself (`idle`), or "" while it has not."""
    words = _read(folder / ENDED)
    return words[0] if words else ""


def write(folder: Path, name: str, text: str) -> None:
    """Replace one file atomically (readers never see half of it). Never raises: a full
    disk must not end a session, nor make it look idle."""
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        tmp.write_text(text + "\n", encoding="ascii")
        tmp.chmod(0o644)
        tmp.replace(folder / name)


def stamp(folder: Path, name: str, now: float | None = None) -> None:
    write(folder, name, str(int(time.time() if now is None else now)))


class Watch:
    """One container's side of the rule: call check() every POLL_S seconds."""

    def __init__(self, folder: Path, timeout_s: float, source: str) -> None:
        self.folder = folder
        self.timeout_s = timeout_s
        self.source = source  # the file this side writes (AGENT for the runner)
        self.since = time.time()  # a floor, should the dir hold nothing yet

    def check(self, active: bool, now: float | None = None) -> bool:
        """True when the session must end now for idleness: idle for the timeout (then
        `ended` is written for the other side), or the other side found it so first."""
        now = time.time() if now is None else now
        if ended(self.folder):
            return True
        if active:
            stamp(self.folder, self.source, now)
            return False
        last = max(last_activity(self.folder, now) or self.since, self.since)
        if now - last >= self.timeout_s:
            write(self.folder, ENDED, f"{IDLE} {int(now)}")
            return True
        return False
