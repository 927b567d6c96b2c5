"""Recordings and screenshots. ffmpeg runs in the session's vnc container (x11grab on its
own display), driven by the image's `vnc-record` and `vnc-screenshot` scripts; files land in
the data dir. A recording is written as fragmented MP4 (`*.partial.mp4`), which survives the
recorder being killed, and remuxed to a seekable `*.mp4` when it ends, or on the next command
that touches it if it ended badly."""

from __future__ import annotations

import contextlib
import shutil
import struct
import time
from datetime import UTC, datetime
from pathlib import Path

from vncsess import engines
from vncsess.config import Settings
from vncsess.datadir import DataDir
from vncsess.engines.base import Engine
from vncsess.errors import Conflict, NotFound, VncsessError
from vncsess.models import Recording, Session

MIN_FREE_BYTES = 200 * 1024 * 1024
_INSIDE = "/data/recordings"
_PARTIAL = ".partial.mp4"
_FINALIZING = ".finalizing.mp4"  # vnc-record's temporary file while it remuxes
# vnc container states in which no ffmpeg can be writing: finalise in a throwaway container.
# (paused, restarting, removing: an ffmpeg may still own the file, so leave it alone.)
_VNC_GONE = ("exited", "dead", "created", None)


def _vnc(engine: Engine, session: Session, argv: list[str]) -> tuple[int, str]:
    """Run one of the vnc image's tools in the session's display container."""
    return engine.exec(session.id, "vnc", argv)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _require_vnc(session: Session) -> None:
    if session.services.get("vnc") != "running":
        raise Conflict(
            f"the display of session {session.id} is not running", hint="see `vncsess ls`"
        )


def _status(engine: Engine, session: Session) -> str:
    """The recording ffmpeg is writing in a running vnc container ('' if none); NotFound
    if the container is not running (any more)."""
    rc, out = _vnc(engine, session, ["vnc-record", "status"])
    lines = out.strip().splitlines()
    return Path(lines[-1]).name if rc == 0 and lines else ""


def recording_now(data: DataDir) -> str:
    """The recording being written, judged without an exec into the container (ls must stay
    fast): ffmpeg flushes every packet, so a live partial changes all the time; a stale one
    was killed and waits for the next command that repairs it."""
    if not data.recordings.is_dir():
        return ""
    now = time.time()
    live = [p for p in data.recordings.glob("*" + _PARTIAL) if now - p.stat().st_mtime < 5]
    return max(live, key=lambda p: p.stat().st_mtime).name if live else ""


def _new_stem(session: Session, folder: Path, exts: tuple[str, ...]) -> str:
    """`ID-YYYYmmdd-HHMMSS`, with `-2`, `-3`... when a file of that second already exists
    with one of EXTS (a second recording or screenshot in the same second)."""
    base = f"{session.id}-{_stamp()}"
    stem, n = base, 1
    while any((folder / f"{stem}{ext}").exists() for ext in exts):
        n += 1
        stem = f"{base}-{n}"
    return stem


def start(settings: Settings, session: Session, fps: int | None = None) -> Path:
    engine = engines.load(settings)
    data = DataDir(session.data_dir)
    _heal(settings, engine, session)
    _require_vnc(session)
    if not data.recordings.is_dir():
        raise NotFound(
            f"the recordings folder of session {session.id} is gone: {data.recordings}",
            hint=f"`vncsess stop {session.id}` and start a new session",
        )
    if shutil.disk_usage(data.recordings).free < MIN_FREE_BYTES:
        raise Conflict(
            f"not enough free disk space for a recording in {data.recordings}",
            hint="free some space (old recordings live in the data dirs)",
        )
    # vnc-record refuses to overwrite: a second recording in the same second needs a name.
    name = _new_stem(session, data.recordings, (_PARTIAL, ".mp4", _FINALIZING)) + _PARTIAL
    cmd = ["vnc-record", "start", f"{_INSIDE}/{name}"] + ([str(fps)] if fps else [])
    rc, out = _vnc(engine, session, cmd)
    if rc == 3:
        raise Conflict(
            f"a recording is already running in session {session.id}",
            hint=f"`vncsess record stop {session.id}` ends it",
        )
    if rc != 0:
        raise _recorder_error(out)
    return data.recordings / name


def stop(settings: Settings, session: Session) -> Path:
    engine = engines.load(settings)
    data = DataDir(session.data_dir)
    live = _heal(settings, engine, session)  # a recording killed earlier is made seekable too
    _require_vnc(session)
    rc, out = _vnc(engine, session, ["vnc-record", "stop"])
    if rc == 4:
        raise Conflict(
            f"no recording is running in session {session.id}",
            hint=f"`vncsess record start {session.id}` starts one",
        )
    if rc != 0:
        raise _recorder_error(out)
    # stdout and stderr come back together; stderr (ffmpeg's complaints about a truncated
    # last fragment, a forced kill) may follow the path, so look for the path itself.
    finals = [
        ln.strip()
        for ln in out.splitlines()
        if ln.strip().startswith(_INSIDE + "/") and ln.strip().endswith(".mp4")
    ]
    if finals:
        return data.recordings / Path(finals[-1]).name
    return data.recordings / (live.removesuffix(_PARTIAL) + ".mp4")


def _recorder_error(out: str) -> VncsessError:
    text = out.strip().splitlines()[-1] if out.strip() else "the recorder failed"
    if "No space left" in out:
        return Conflict(
            "the disk is full: the recording could not be written", hint="free some space"
        )
    return VncsessError(f"recording failed: {text}")


def stop_running(engine: Engine, session: Session) -> None:
    """Before a session goes: end its recording cleanly (a no-op when none runs).
    Never raises: the session must go even if its display died meanwhile."""
    # No partial file, no recording: no exec (one costs ~0.1 s, for each session stopped).
    # A recording started in the same instant is still ended by the container's own stop.
    if session.services.get("vnc") == "running" and _partials(DataDir(session.data_dir)):
        with contextlib.suppress(VncsessError):
            _vnc(engine, session, ["vnc-record", "stop"])


def heal(settings: Settings, session: Session) -> list[Path]:
    """Make interrupted recordings of a session seekable: in its own vnc container while
    that runs, else (the container was killed) in a throwaway one. Returns the partials
    it made seekable."""
    data = DataDir(session.data_dir)
    before = _partials(data)
    _heal(settings, engines.load(settings), session)
    return [p for p in before if not p.exists()]


def _partials(data: DataDir) -> list[Path]:
    return sorted(data.recordings.glob("*" + _PARTIAL)) if data.recordings.is_dir() else []


def _heal(settings: Settings, engine: Engine, session: Session) -> str:
    """heal(); returns the name of the partial ffmpeg is still writing ('' if none)."""
    data = DataDir(session.data_dir)
    state = session.services.get("vnc")
    if state == "running":
        try:
            live = _status(engine, session)
            for partial in _partials(data):
                if partial.name != live:  # a failed remux keeps the partial (listed as such)
                    _vnc(engine, session, ["vnc-record", "finalize", f"{_INSIDE}/{partial.name}"])
            return live
        except NotFound:  # the container stopped since the session was read: no ffmpeg
            state = "exited"
    if state in _VNC_GONE:
        finalize_partials(settings, engine, data)
    return ""


def finalize_partials(settings: Settings, engine: Engine, data: DataDir) -> list[Path]:
    """Interrupted recordings of a session that is gone (or whose display was killed):
    remux them in a throwaway container of the vnc image (no display, no network), as the
    containers' user. A partial that cannot be remuxed stays (listed as `partial`) rather
    than failing the command; an empty one (ffmpeg never wrote its header) is removed."""
    partials = _partials(data)
    if not partials:
        return []
    fixed = []
    for partial in partials:
        try:
            if partial.stat().st_size == 0:
                partial.unlink()
                continue
            engine.run_job(
                settings.vnc_image,
                ["vnc-record", "finalize", f"{_INSIDE}/{partial.name}"],
                {data.recordings: _INSIDE},
            )
        except (VncsessError, OSError):
            continue
        fixed.append(partial)
    return fixed


def list_recordings(
    settings: Settings, artifacts: list[tuple[DataDir, Session | None]]
) -> list[Recording]:
    """The recordings in these data dirs (see sessions.artifacts), each with its live
    session if it has one; interrupted recordings are repaired first."""
    engine = engines.load(settings)
    out: list[Recording] = []
    for data, session in artifacts:
        sid = data.path.name
        live = ""
        if session is not None:
            live = _heal(settings, engine, session)
        else:
            finalize_partials(settings, engine, data)
        if not data.recordings.is_dir():
            continue
        files = [f for f in data.recordings.glob("*.mp4") if not f.name.endswith(_FINALIZING)]
        for f in sorted(files, key=_order):
            partial = f.name.endswith(_PARTIAL)
            try:
                size = f.stat().st_size
            except OSError:  # finalised (renamed) by another command meanwhile
                continue
            state = "recording" if f.name == live else ("partial" if partial else "complete")
            out.append(Recording(sid, f, size, None if partial else mp4_duration(f), state))
    return out


def _order(f: Path) -> str:
    """Start order: `X-123456.mp4`, then `X-123456-2.partial.mp4` (same second)."""
    return f.name.removesuffix(_PARTIAL).removesuffix(".mp4")


def mp4_duration(path: Path) -> float | None:
    """Duration from the movie header (`moov/mvhd`) of a finalised MP4, in seconds."""
    try:
        with open(path, "rb") as fh:
            return _find_mvhd(fh.read(4 * 1024 * 1024))  # +faststart puts moov first
    except OSError:
        return None


def _find_mvhd(buf: bytes) -> float | None:
    pos = 0
    while pos + 8 <= len(buf):
        size, kind = struct.unpack(">I4s", buf[pos : pos + 8])
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", buf[pos + 8 : pos + 16])
            header = 16
        if size < header:
            return None
        if kind == b"moov":
            return _find_mvhd(buf[pos + header : pos + size])
        if kind == b"mvhd":
            body = buf[pos + header : pos + size]
            if body[0] == 1:
                timescale, duration = struct.unpack(">IQ", body[20:32])
            else:
                timescale, duration = struct.unpack(">II", body[12:20])
            return round(duration / timescale, 3) if timescale else None
        pos += size
    return None


def screenshot(settings: Settings, session: Session, out: Path | None = None) -> Path:
    _require_vnc(session)
    data = DataDir(session.data_dir)
    name = _new_stem(session, data.screenshots, (".png", ".tmp.png")) + ".png"
    rc, text = _vnc(
        engines.load(settings), session, ["vnc-screenshot", f"/data/screenshots/{name}"]
    )
    saved = data.screenshots / name
    if rc != 0 or not saved.exists():
        raise VncsessError(f"screenshot failed: {text.strip()[-200:] or 'no file written'}")
    if out is None:
        return saved
    if out.is_dir():
        out = out / name
    try:
        shutil.copyfile(saved, out)
    except OSError as exc:
        raise NotFound(f"cannot write {out}: {exc.strerror}", hint="check the -o path") from None
    return out


def snapshot(settings: Settings, session: Session) -> bytes:
    """A screenshot that is not kept: its PNG bytes, its file removed at once (a live
    thumbnail refreshed every few seconds would otherwise fill the data dir)."""
    path = screenshot(settings, session)
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
