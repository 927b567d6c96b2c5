"""Recordings and screenshots. ffmpeg runs in the session's vnc container (x11grab on its
own display), driven by the image's `vnc-record` and `vnc-screenshot` scripts; files land in
the data dir. A recording is written as fragmented MP4 (`*.partial.mp4`), which survives the
recorder being killed, and remuxed to a seekable `*.mp4` when it ends, or on the next command
that touches it if it ended badly."""

from __future__ import annotations

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
    rc, out = docker.exec_in(_vnc(session), ["vnc-record", "status"])
    return Path(out.strip()).name if rc == 0 and out.strip() else ""


def start(settings: Settings, session: Session, fps: int | None = None) -> Path:
    _require_vnc(session)
    data = DataDir(session.data_dir)
    heal(settings, session)
    if shutil.disk_usage(data.recordings).free < MIN_FREE_BYTES:
        raise Conflict(
            f"not enough free disk space for a recording in {data.recordings}",
            hint="free some space (old recordings live in the data dirs)",
        )
    name = f"{session.id}-{_stamp()}.partial.mp4"
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
    _require_vnc(session)
    rc, out = docker.exec_in(_vnc(session), ["vnc-record", "stop"])
    if rc == 4:
        raise Conflict(
            f"no recording is running in session {session.id}",
            hint=f"`vncsess record start {session.id}` starts one",
        )
    if rc != 0:
        raise _recorder_error(out)
    return DataDir(session.data_dir).recordings / Path(out.strip().splitlines()[-1]).name


def _recorder_error(out: str) -> VncsessError:
    text = out.strip().splitlines()[-1] if out.strip() else "the recorder failed"
    if "No space left" in out:
        return Conflict(
            "the disk is full: the recording could not be written", hint="free some space"
        )
    return VncsessError(f"recording failed: {text}")


def stop_running(settings: Settings, session: Session) -> None:
    """Before a session goes: end its recording cleanly (a no-op when none runs)."""
    if session.services.get("vnc") == "running":
        docker.exec_in(_vnc(session), ["vnc-record", "stop"])


def heal(settings: Settings, session: Session) -> list[Path]:
    """Make interrupted recordings of a running session seekable (in its own container)."""
    data = DataDir(session.data_dir)
    live = running_file(session)
    fixed = []
    for partial in sorted(data.recordings.glob("*.partial.mp4")):
        if partial.name != live:
            docker.exec_in(_vnc(session), ["vnc-record", "finalize", f"{_INSIDE}/{partial.name}"])
            fixed.append(partial)
    return fixed


def finalize_partials(settings: Settings, data: DataDir) -> list[Path]:
    """Interrupted recordings of a session that is gone: remux them in a throwaway
    container of the vnc image (no display, no network), as the containers' user."""
    partials = sorted(data.recordings.glob("*.partial.mp4")) if data.recordings.is_dir() else []
    if not partials:
        return []
    uid, gid = container_ids()
    for partial in partials:
        docker.run_oneoff(
            settings.vnc_image,
            ["vnc-record", "finalize", f"{_INSIDE}/{partial.name}"],
            {data.recordings: _INSIDE},
            f"{uid}:{gid}",
        )
    return partials


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
            heal(settings, running[sid])
            live = running_file(running[sid])
        else:
            finalize_partials(settings, data)
        if not data.recordings.is_dir():
            continue
        for f in sorted(data.recordings.glob("*.mp4")):
            partial = f.name.endswith(".partial.mp4")
            state = "recording" if f.name == live else ("partial" if partial else "complete")
            out.append(
                Recording(sid, f, f.stat().st_size, None if partial else mp4_duration(f), state)
            )
    return out


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
    name = f"{session.id}-{_stamp()}.png"
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
