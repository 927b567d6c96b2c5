"""Recordings and screenshots. ffmpeg runs in the session's vnc container (x11grab on its
own display), driven by the image's `vnc-record` and `vnc-screenshot` scripts; files land in
the data dir. A recording is written as fragmented MP4 (`*.partial.mp4`), which survives the
recorder being killed, and remuxed to a seekable `*.mp4` when it ends, or on the next command
that touches it if it ended badly."""

from __future__ import annotations

import contextlib
import shutil
import struct
from datetime import UTC, datetime
from pathlib import Path

from vncsess import docker
from vncsess.config import Settings
from vncsess.datadir import DataDir, container_ids
from vncsess.errors import Conflict, NotFound, VncsessError
from vncsess.models import Recording, Session

MIN_FREE_BYTES = 200 * 1024 * 1024
_INSIDE = "/data/recordings"
_PARTIAL = ".partial.mp4"
_FINALIZING = ".finalizing.mp4"  # vnc-record's temporary file while it remuxes
# vnc container states in which no ffmpeg can be writing: finalise in a throwaway container.
# (paused, restarting, removing: an ffmpeg may still own the file, so leave it alone.)
_VNC_GONE = ("exited", "dead", "created", None)


def _vnc(session: Session) -> str:
    return f"{session.project}-vnc-1"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _require_vnc(session: Session) -> None:
    if session.services.get("vnc") != "running":
        raise Conflict(
            f"the display of session {session.id} is not running", hint="see `vncsess ls`"
        )


def running_file(session: Session) -> str:
    """The name of the recording ffmpeg is writing now, or ''."""
    if session.services.get("vnc") != "running":
        return ""
    try:
        return _status(session)
    except NotFound:  # the container stopped since the session was read
        return ""


def _status(session: Session) -> str:
    """running_file() of a running vnc container; NotFound if it is not running (any more)."""
    rc, out = docker.exec_in(_vnc(session), ["vnc-record", "status"])
    lines = out.strip().splitlines()
    return Path(lines[-1]).name if rc == 0 and lines else ""


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
    data = DataDir(session.data_dir)
    heal(settings, session)
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
    rc, out = docker.exec_in(_vnc(session), cmd)
    if rc == 3:
        raise Conflict(
            f"a recording is already running in session {session.id}",
            hint=f"`vncsess record stop {session.id}` ends it",
        )
    if rc != 0:
        raise _recorder_error(out)
    return data.recordings / name


def stop(settings: Settings, session: Session) -> Path:
    data = DataDir(session.data_dir)
    live = _heal(settings, session)  # a recording killed earlier is made seekable too
    _require_vnc(session)
    rc, out = docker.exec_in(_vnc(session), ["vnc-record", "stop"])
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


def stop_running(settings: Settings, session: Session) -> None:
    """Before a session goes: end its recording cleanly (a no-op when none runs).
    Never raises: the session must go even if its display died meanwhile."""
    if session.services.get("vnc") == "running":
        with contextlib.suppress(VncsessError):
            docker.exec_in(_vnc(session), ["vnc-record", "stop"])


def heal(settings: Settings, session: Session) -> list[Path]:
    """Make interrupted recordings of a session seekable: in its own vnc container while
    that runs, else (the container was killed) in a throwaway one. Returns the partials
    it made seekable."""
    data = DataDir(session.data_dir)
    before = _partials(data)
    _heal(settings, session)
    return [p for p in before if not p.exists()]


def _partials(data: DataDir) -> list[Path]:
    return sorted(data.recordings.glob("*" + _PARTIAL)) if data.recordings.is_dir() else []


def _heal(settings: Settings, session: Session) -> str:
    """heal(); returns the name of the partial ffmpeg is still writing ('' if none)."""
    data = DataDir(session.data_dir)
    state = session.services.get("vnc")
    if state == "running":
        try:
            live = _status(session)
            for partial in _partials(data):
                if partial.name != live:  # a failed remux keeps the partial (listed as such)
                    docker.exec_in(
                        _vnc(session), ["vnc-record", "finalize", f"{_INSIDE}/{partial.name}"]
                    )
            return live
        except NotFound:  # the container stopped since the session was read: no ffmpeg
            state = "exited"
    if state in _VNC_GONE:
        finalize_partials(settings, data)
    return ""


def finalize_partials(settings: Settings, data: DataDir) -> list[Path]:
    """Interrupted recordings of a session that is gone (or whose display was killed):
    remux them in a throwaway container of the vnc image (no display, no network), as the
    containers' user. A partial that cannot be remuxed stays (listed as `partial`) rather
    than failing the command; an empty one (ffmpeg never wrote its header) is removed."""
    partials = _partials(data)
    if not partials:
        return []
    uid, gid = container_ids()
    fixed = []
    for partial in partials:
        try:
            if partial.stat().st_size == 0:
                partial.unlink()
                continue
            docker.run_oneoff(
                settings.vnc_image,
                ["vnc-record", "finalize", f"{_INSIDE}/{partial.name}"],
                {data.recordings: _INSIDE},
                f"{uid}:{gid}",
            )
        except (VncsessError, OSError):
            continue
        fixed.append(partial)
    return fixed


def list_recordings(settings: Settings, ref: str | None = None) -> list[Recording]:
    from vncsess import sessions

    running = {s.id: s for s in sessions.list_sessions(settings)}
    if ref:
        dirs = [sessions.data_dir_of(settings, ref)]
    elif settings.sessions_dir.is_dir():
        dirs = [DataDir(p) for p in sorted(settings.sessions_dir.iterdir()) if p.is_dir()]
    else:
        dirs = []
    out: list[Recording] = []
    for data in dirs:
        sid = data.path.name
        live = ""
        if sid in running:
            live = _heal(settings, running[sid])
        else:
            finalize_partials(settings, data)
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
    rc, text = docker.exec_in(_vnc(session), ["vnc-screenshot", f"/data/screenshots/{name}"])
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
