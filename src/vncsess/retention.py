"""Retention: what sessions keep on disk (`du`), and removing what the user asks for (`rm`,
`prune --older-than`). Returns data or raises a VncsessError; never prints.

A session's data dir outlives its containers on purpose (recordings, results, downloads).
Nothing here deletes a data dir the user did not name, or that `--older-than` does not
cover; never one of a session that is still running (unless `rm --force`, which stops it
first), and never a directory outside $VNCSESS_HOME/sessions.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vncsess import sessions
from vncsess.config import Settings, parse_duration
from vncsess.datadir import DataDir
from vncsess.engines.base import Progress
from vncsess.errors import BadInput, Conflict, NotFound, VncsessError
from vncsess.models import Batch, Session

# A start in progress has its data dir for a second or two before its containers exist:
# `--older-than` below this could take it for a stopped session.
MIN_OLDER_THAN_S = 60
STOPPED = "stopped"  # a data dir with no containers left on the engine

# What a file in a data dir counts as, by where it is (first match wins).
_FILES = ("screenshots/", "agent/downloads/", "uploads/", "files/", "agent/uploads/")
_LOGS = ("logs/",)
_LOG_SUFFIXES = (".log", ".jsonl")


def _quiet(_: str) -> None:
    """The default progress callback."""


@dataclass(frozen=True)
class Usage:
    """What one session keeps on disk, in bytes (apparent file sizes)."""

    session_id: str
    status: str  # the engine's status, or `stopped` when no container is left
    data_dir: Path
    ended_at: datetime | None  # when it was stopped (None while its containers exist)
    recordings: int = 0
    files: int = 0  # screenshots, downloads, uploads
    logs: int = 0  # the agent's event log and log files
    other: int = 0  # compose file, results, status, links...

    @property
    def total(self) -> int:
        return self.recordings + self.files + self.logs + self.other

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "status": self.status,
            "data_dir": str(self.data_dir),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "recordings_bytes": self.recordings,
            "files_bytes": self.files,
            "logs_bytes": self.logs,
            "other_bytes": self.other,
            "total_bytes": self.total,
        }


@dataclass(frozen=True)
class DiskUsage:
    home: Path
    sessions: list[Usage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        parts = ("recordings", "files", "logs", "other")
        totals = {f"{p}_bytes": sum(getattr(u, p) for u in self.sessions) for p in parts}
        return {
            "sessions_dir": str(self.home),
            "sessions": [u.to_dict() for u in self.sessions],
            "total": {**totals, "total_bytes": sum(u.total for u in self.sessions)},
        }


@dataclass(frozen=True)
class Pruned:
    """`prune`: the sessions whose containers went, the data dirs removed, bytes freed."""

    stopped: list[str]
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "removed": self.removed, "freed_bytes": self.freed_bytes}


# ---------------------------------------------------------------- reading


def _data_dirs(settings: Settings) -> list[Path]:
    root = settings.sessions_dir
    if not root.is_dir():
        return []
    # Hidden entries are vncsess's own (a write probe), never a session's.
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _kind(rel: str) -> str:
    if rel.startswith("recordings/"):
        return "recordings"
    if rel.startswith(_FILES):
        return "files"
    if rel.startswith(_LOGS) or rel.endswith(_LOG_SUFFIXES):
        return "logs"
    return "other"


def _sizes(path: Path) -> dict[str, int]:
    sizes = {"recordings": 0, "files": 0, "logs": 0, "other": 0}
    for top, _dirs, files in os.walk(path, onerror=lambda _: None):
        for name in files:
            full = os.path.join(top, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                sizes[_kind(os.path.relpath(full, path).replace(os.sep, "/"))] += st.st_size
    return sizes


def ended_at(data: DataDir) -> datetime:
    """When a stopped session stopped: as `stop` recorded it, else (a data dir from before
    vncsess recorded it) when its data dir last changed."""
    raw = data.read_json(data.stopped_file) or {}
    try:
        at = datetime.fromisoformat(str(raw["at"]))
        return at if at.tzinfo else at.replace(tzinfo=UTC)
    except (KeyError, ValueError):
        pass
    try:
        return datetime.fromtimestamp(data.path.stat().st_mtime, UTC)
    except OSError:
        return datetime.now(UTC)


def _usage(data: DataDir, live: Session | None) -> Usage:
    return Usage(
        session_id=data.path.name,
        status=live.status if live else STOPPED,
        data_dir=data.path,
        ended_at=None if live else ended_at(data),
        **_sizes(data.path),
    )


def du(settings: Settings) -> DiskUsage:
    """Every data dir under $VNCSESS_HOME/sessions, largest first."""
    live = {s.id: s for s in sessions.list_sessions(settings)}
    found = [_usage(DataDir(p), live.get(p.name)) for p in _data_dirs(settings)]
    return DiskUsage(settings.sessions_dir, sorted(found, key=lambda u: -u.total))


# ---------------------------------------------------------------- removing


def _remove_tree(path: Path) -> None:
    """Delete a data dir, also what a container left read-only (Chromium's profile dirs,
    the secrets at 0400 in a 0700 dir); one clear error when it cannot be done."""

    def retry(func: Any, target: str, *_: Any) -> None:
        parent = os.path.dirname(target)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU)
        func(target)

    try:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=retry)
        else:
            shutil.rmtree(path, onerror=retry)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise VncsessError(
            f"cannot remove {path}: {exc.strerror or exc}",
            hint="check its owner and permissions (files made by a container as root?)",
        ) from None


def _inside(settings: Settings, path: Path) -> bool:
    try:
        return path.resolve().parent == settings.sessions_dir.resolve()
    except OSError:
        return False


def _resolve(ref: str, ids: list[str], live: dict[str, Session]) -> str:
    """A stopped or live session's id from its id, a unique prefix of it, or (while it is on
    the engine) its name."""
    ref = ref.strip()
    if not ref:
        raise BadInput("empty session id", hint="see `vncsess du` for the sessions on disk")
    if ref in ids:
        return ref
    named = [s for s in live.values() if s.name == ref]
    if len(named) == 1:
        return named[0].id
    matches = [i for i in ids if i.startswith(ref)] or [s.id for s in named]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise BadInput(
            f"{ref!r} matches {len(matches)} sessions: " + ", ".join(matches),
            hint="use more characters of the id",
        )
    raise NotFound(f"no session or data dir {ref!r}", hint="`vncsess du` lists what is on disk")


def rm(
    settings: Settings, refs: list[str], force: bool = False, progress: Progress = _quiet
) -> tuple[Batch, int]:
    """Delete stopped sessions' data dirs, as `docker rm` removes stopped containers: acts
    on every reference it can and reports each other one in the Batch's errors. A session
    whose containers still run is refused unless FORCE, which stops it first; one that
    ended by itself (expired, exited) is stopped and removed. Returns the bytes freed."""
    if not refs:
        raise BadInput("no session given", hint="name one or more ids (`vncsess du` lists them)")
    live = {s.id: s for s in sessions.list_sessions(settings)}
    ids = sorted({p.name for p in _data_dirs(settings)} | set(live))
    errors: list[VncsessError] = []
    chosen: list[str] = []
    for ref in refs:
        try:
            sid = _resolve(ref, ids, live)
        except VncsessError as exc:
            errors.append(exc)
            continue
        s = live.get(sid)
        if s is not None and s.status not in sessions.ENDED and not force:
            errors.append(
                Conflict(
                    f"session {sid} is {s.status}: its data dir stays while it runs",
                    hint=f"`vncsess stop {sid}` first, or `vncsess rm --force {sid}`",
                )
            )
            continue
        path = s.data_dir if s is not None else settings.session_dir(sid)
        if not _inside(settings, path):
            errors.append(
                Conflict(
                    f"the data dir of {sid} ({path}) is not under {settings.sessions_dir}",
                    hint="it belongs to another VNCSESS_HOME: remove it from there",
                )
            )
            continue
        if sid not in chosen:
            chosen.append(sid)
    to_stop = [sid for sid in chosen if sid in live]
    if to_stop:
        batch = sessions.stop(settings, to_stop, progress=progress)
        errors += batch.errors
    freed = 0
    done: list[str] = []
    for sid in chosen:
        path = live[sid].data_dir if sid in live else settings.session_dir(sid)
        progress(f"removing {path}")
        freed += sum(_sizes(path).values())
        try:
            _remove_tree(path)
        except VncsessError as exc:
            errors.append(exc)
            continue
        done.append(sid)
    return Batch(done=done, errors=errors), freed


def older_than_seconds(value: str) -> int:
    seconds = parse_duration(value)
    if seconds < MIN_OLDER_THAN_S:
        raise BadInput(
            f"--older-than {value} is too short",
            hint="at least 1m: a session being started has a data dir and no containers yet",
        )
    return seconds


def prune(settings: Settings, older_than: str = "", progress: Progress = _quiet) -> Pruned:
    """Remove the sessions that ended by themselves (as `stop` does: data dirs kept); with
    OLDER_THAN (a duration), also delete the data dirs of sessions stopped longer ago."""
    cutoff = time.time() - older_than_seconds(older_than) if older_than else None
    stopped = sessions.prune(settings, progress=progress)
    if cutoff is None:
        return Pruned(stopped)
    live = {s.id for s in sessions.list_sessions(settings)}
    removed: list[str] = []
    freed = 0
    for path in _data_dirs(settings):
        if path.name in live:
            continue
        if ended_at(DataDir(path)).timestamp() > cutoff:
            continue
        progress(f"removing {path}")
        size = sum(_sizes(path).values())
        _remove_tree(path)
        removed.append(path.name)
        freed += size
    return Pruned(stopped, removed, freed)
