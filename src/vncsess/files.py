"""File transfer: files put into a session (uploads), and what its browser downloaded.

Both live in the session's data dir and outlive it: `<data dir>/agent/uploads/` (the agent
container sees it at /data/uploads, mounted read-only; the runner hands its files to
browser-use as `available_file_paths`, and a person in control finds it in Chromium's file
dialog as ~/Uploads) and `<data dir>/agent/downloads/` (Chromium's download folder).

Everything sent in passes here: name checks, the limits, the scan hook, then an atomic move
into the session, so the agent never sees half a file, nor one the scan refused. The agent
container writes downloads/ (as the containers' uid), so nothing under the agent dir is
trusted: each path is opened a step at a time without following links, and only regular
files count.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shlex
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from vncsess import commands
from vncsess.config import Settings
from vncsess.datadir import DataDir, container_ids, unwritable
from vncsess.errors import BadInput, Conflict, NotFound, VncsessError

UPLOADS, DOWNLOADS = "uploads", "downloads"
AREAS = (UPLOADS, DOWNLOADS)
# Where the agent container sees each area (compose/session.yml).
INSIDE = {UPLOADS: "/data/uploads", DOWNLOADS: "/data/downloads"}
MAX_NAME_BYTES = 200
SCAN_TIMEOUT_S = 300
_CHUNK = 1 << 20
# Chromium writes a download as NAME.crdownload (or `Unconfirmed N.crdownload`) until it
# is complete: not a file to hand out yet.
_IN_PROGRESS = ".crdownload"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NAME_HINT = (
    "use a plain file name: no '/', no control characters, not starting with '.' or '-', "
    f"at most {MAX_NAME_BYTES} bytes"
)


class TransferOff(Conflict):
    """File transfer is off for this session (`up --no-file-transfer`, or the visual-runtime
    API's enable_file_transfer=false). The API answers 403."""


class TooLarge(BadInput):
    """A file over VNCSESS_UPLOAD_MAX_BYTES. The API answers 413."""


class Refused(BadInput):
    """The scan command refused a file (or could not say it was clean)."""


@dataclass(frozen=True)
class FileEntry:
    session_id: str
    area: str  # uploads | downloads
    name: str
    size_bytes: int
    modified_at: datetime

    @property
    def ref(self) -> str:
        """What `vncsess cp` takes to fetch it: `ID:downloads/NAME`."""
        return f"{self.session_id}:{self.area}/{self.name}"

    def to_dict(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "area": self.area,
            "name": self.name,
            "path": f"{self.area}/{self.name}",
            "size_bytes": self.size_bytes,
            "modified_at": self.modified_at.isoformat(timespec="seconds"),
        }


# ------------------------------------------------------------------ names and places


def check_name(name: str) -> str:
    """A file name safe to put in a session folder and to show: the name itself, or a
    BadInput that says what is wrong with it."""
    shown = repr(name)  # repr shows control characters as escapes
    if not name:
        raise BadInput("empty file name", hint=_NAME_HINT)
    if "/" in name or name in (".", ".."):
        raise BadInput(f"file name {shown} leads out of its folder", hint=_NAME_HINT)
    if any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in name):
        raise BadInput(f"file name {shown} has control characters", hint=_NAME_HINT)
    if name[0] in ".-":
        raise BadInput(f"file name {shown} starts with {name[0]!r}", hint=_NAME_HINT)
    if name != name.strip():
        raise BadInput(f"file name {shown} starts or ends with a space", hint=_NAME_HINT)
    if len(name.encode("utf-8", errors="surrogateescape")) > MAX_NAME_BYTES:
        raise BadInput(f"file name {name[:40]!r}... is too long", hint=_NAME_HINT)
    return name


def _listable(name: str) -> bool:
    if name.endswith(_IN_PROGRESS):
        return False
    try:
        check_name(name)
    except BadInput:
        return False
    return True


@dataclass(frozen=True)
class Remote:
    """`ID:`, `ID:uploads/NAME` or `ID:downloads/NAME`: a place in a session, for `cp`."""

    session: str
    area: str
    name: str  # "" = the folder (uploads: keep each source's own name)


_REMOTE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63}):(.*)$", re.DOTALL)
_CP_HINT = "send with `vncsess cp FILE ID:`; fetch with `vncsess cp ID:downloads/NAME DEST`"


def parse_remote(arg: str) -> Remote | None:
    """A session place (`ID:...`), or None for a local path (write `./a:b` for a local
    file whose name has a colon)."""
    m = _REMOTE.match(arg)
    if not m:
        return None
    ref, rest = m.groups()
    area, _, name = rest.rstrip("/").partition("/") if rest else (UPLOADS, "", "")
    if area not in AREAS:
        raise BadInput(f"{arg!r}: a session has no {area!r} folder", hint=_CP_HINT)
    if name:
        check_name(name)
    return Remote(ref, area, name)


def _area_fd(data: DataDir, area: str, create: bool = False) -> int | None:
    """The area's folder, opened a step at a time without following links (the agent can
    write under agent/), or None when it is not there."""
    fds: list[int] = []
    try:
        fds.append(os.open(data.path, _DIR_FLAGS))
        fds.append(os.open("agent", _DIR_FLAGS, dir_fd=fds[-1]))
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(area, 0o750, dir_fd=fds[-1])
                if os.getuid() == 0:
                    uid, gid = container_ids()
                    os.chown(area, uid, gid, dir_fd=fds[-1], follow_symlinks=False)
        fd = os.open(area, _DIR_FLAGS, dir_fd=fds[-1])
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise VncsessError(
                f"the {area} folder of session {data.path.name} is not a plain folder",
                hint="it was replaced by a link or a file; nothing was read or written there",
            ) from None
        raise unwritable(data.path / "agent" / area, exc) from None
    finally:
        for f in fds:
            os.close(f)
    return fd


# ------------------------------------------------------------------ on or off


def set_enabled(data: DataDir, enabled: bool) -> None:
    """Record whether file transfer is on for a new session (its data dir keeps it)."""
    data.write_json(data.files_file, {"enabled": enabled})


def enabled(data: DataDir) -> bool:
    """On unless the session was started with it off (older sessions have no record)."""
    return bool((data.read_json(data.files_file) or {}).get("enabled", True))


def require_enabled(data: DataDir) -> None:
    if not enabled(data):
        raise TransferOff(
            f"file transfer is off for session {data.path.name}",
            hint="it was started without file transfer (--no-file-transfer, or "
            "enable_file_transfer=false); start a new session with it on",
        )


# ------------------------------------------------------------------ listing


def _entries(data: DataDir, area: str) -> list[FileEntry]:
    fd = _area_fd(data, area)
    if fd is None:
        return []
    found = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if not _listable(entry.name):
                    continue
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    continue  # links, folders, pipes the agent made: not files to hand out
                found.append(
                    FileEntry(
                        session_id=data.path.name,
                        area=area,
                        name=entry.name,
                        size_bytes=st.st_size,
                        modified_at=datetime.fromtimestamp(st.st_mtime, UTC),
                    )
                )
    finally:
        os.close(fd)
    return sorted(found, key=lambda e: (e.area, e.name))


def list_files(settings: Settings, ref: str) -> list[FileEntry]:
    """A session's uploads and downloads (also after `stop`)."""
    from vncsess import sessions

    data = sessions.data_dir_of(settings, ref)
    require_enabled(data)
    return entries(data)


def entries(data: DataDir) -> list[FileEntry]:
    """A data dir's uploads and downloads: regular files with plain names only."""
    return _entries(data, UPLOADS) + _entries(data, DOWNLOADS)


# ------------------------------------------------------------------ fetching


def open_file(settings: Settings, ref: str, area: str, name: str) -> tuple[FileEntry, BinaryIO]:
    """A session's file, opened for reading (the caller closes it), also after `stop`."""
    from vncsess import sessions

    if area not in AREAS:
        raise BadInput(f"a session has no {area!r} folder", hint="use uploads or downloads")
    check_name(name)
    data = sessions.data_dir_of(settings, ref)
    require_enabled(data)
    return open_in(data, area, name)


def open_in(data: DataDir, area: str, name: str) -> tuple[FileEntry, BinaryIO]:
    """A file of a data dir's area, opened without following any link."""
    check_name(name)
    sid = data.path.name
    missing = NotFound(
        f"no file {area}/{name} in session {sid}", hint=f"`vncsess files {sid}` lists them"
    )
    if name.endswith(_IN_PROGRESS):
        raise Conflict(f"{name} is a download in progress", hint="fetch it once it is complete")
    dfd = _area_fd(data, area)
    if dfd is None:
        raise missing
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        raise missing from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInput(
                f"{area}/{name} in session {sid} is a link", hint="links are not followed"
            ) from None
        raise VncsessError(f"cannot read {area}/{name}: {exc.strerror or exc}") from None
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(f"{area}/{name} in session {sid} is not a regular file")
    os.set_blocking(fd, True)
    entry = FileEntry(sid, area, name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
    return entry, os.fdopen(fd, "rb")


def fetch(settings: Settings, remote: Remote, dest: Path) -> Path:
    """`cp ID:downloads/NAME DEST`: the file written to DEST (or into DEST, a folder),
    whole or not at all."""
    if not remote.name:
        raise BadInput("name the file to fetch", hint="for example ID:downloads/report.pdf")
    entry, src = open_file(settings, remote.session, remote.area, remote.name)
    target = dest / entry.name if dest.is_dir() else dest
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        with src, open(tmp, "xb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        tmp.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise VncsessError(
            f"cannot write {target}: {exc.strerror or exc}", hint="check the destination"
        ) from None
    return target


# ------------------------------------------------------------------ sending


def open_local(path: Path) -> tuple[str, BinaryIO]:
    """A local file to send: its name, checked, and the file opened. Links, folders,
    devices and pipes are refused, also when one is swapped in while it is opened."""
    name = check_name(path.name)
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}", hint="check the path") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(before.st_mode):
        raise BadInput(
            f"{path} is a symbolic link", hint="give the file it points to: links are not followed"
        )
    if stat.S_ISDIR(before.st_mode):
        raise BadInput(f"{path} is a folder", hint="send files (a folder can go as a zip or tar)")
    if not stat.S_ISREG(before.st_mode):
        raise BadInput(
            f"{path} is not a regular file (a device, pipe or socket)", hint="send regular files"
        )
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(now.st_mode):
        os.close(fd)
        raise BadInput(f"{path} changed while it was opened", hint="try again")
    os.set_blocking(fd, True)
    return name, os.fdopen(fd, "rb")


@dataclass(frozen=True)
class Staged:
    name: str
    path: Path  # the scanned copy, in the staging folder (outside every session)
    size: int


class Prepared:
    """Uploads copied to a private staging folder and scanned, not yet in any session.
    `place` moves them in; `discard` (always called: a context manager) removes the rest."""

    def __init__(self, folder: Path | None, staged: list[Staged]) -> None:
        self.folder = folder
        self.staged = staged

    def __enter__(self) -> Prepared:
        return self

    def __exit__(self, *_: object) -> None:
        self.discard()

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def place(self, data: DataDir) -> list[FileEntry]:
        """Each file moved into the session's uploads, by a rename (atomic: the agent sees
        the whole file or none of it), readable by the containers' user."""
        if not self.staged:
            return []
        fd = _area_fd(data, UPLOADS, create=True)
        if fd is None:
            raise NotFound(f"session {data.path.name} has no uploads folder")
        uid, gid = container_ids()
        try:
            for s in self.staged:
                if os.getuid() == 0:
                    os.chown(s.path, uid, gid)
                os.chmod(s.path, 0o444)
                try:
                    os.rename(s.path, s.name, dst_dir_fd=fd)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    # Another file system (a data volume mounted at sessions/): copy under a
                    # hidden name in place, then rename.
                    hidden = f".incoming-{secrets.token_hex(4)}"
                    with (
                        open(s.path, "rb") as src,
                        open(
                            hidden, "xb", opener=lambda p, f: os.open(p, f, 0o444, dir_fd=fd)
                        ) as out,
                    ):
                        shutil.copyfileobj(src, out, _CHUNK)
                    if os.getuid() == 0:
                        os.chown(hidden, uid, gid, dir_fd=fd)
                    os.rename(hidden, s.name, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            raise unwritable(data.uploads, exc) from None
        finally:
            os.close(fd)
        names = {s.name for s in self.staged}
        return [e for e in _entries(data, UPLOADS) if e.name in names]


def _scan_argv(settings: Settings) -> list[str]:
    try:
        argv = shlex.split(settings.scan_command)
    except ValueError as exc:
        raise BadInput(
            f"malformed scan command {settings.scan_command!r}: {exc}",
            hint="quote it as a shell would: --scan-command 'clamdscan --fdpass --no-summary'",
        ) from None
    return argv


def _scan(settings: Settings, staged: Staged) -> None:
    """The scan hook: the command with the staged copy's path appended; anything but exit
    0 refuses the file (a scanner that cannot run refuses it too)."""
    argv = _scan_argv(settings)
    if not argv:
        return
    try:
        proc = commands.result([*argv, str(staged.path)], timeout=SCAN_TIMEOUT_S)
    except VncsessError as exc:
        raise Refused(
            f"{staged.name} was not scanned: {exc.message}",
            hint="check --scan-command (VNCSESS_SCAN_COMMAND); nothing of the file entered "
            "the session",
        ) from None
    if proc.returncode != 0:
        said = commands.last_line(proc.stdout.decode(errors="replace")) or commands.last_line(
            proc.stderr.decode(errors="replace")
        )
        said = said.replace(str(staged.path), staged.name)
        raise Refused(
            f"the scan refused {staged.name} (exit {proc.returncode})"
            + (f": {said[:300]}" if said else ""),
            hint="nothing of it entered the session",
        )


def prepare(
    settings: Settings, items: Sequence[tuple[str, BinaryIO]], existing: Sequence[str] = ()
) -> Prepared:
    """Check, copy and scan files to send (name, open file): all of them, or a VncsessError
    and nothing kept. EXISTING: names already in the session (they count to the limit,
    and a file of the same name is replaced)."""
    if not items:
        return Prepared(None, [])
    names = [check_name(n) for n, _ in items]
    if len(set(names)) != len(names):
        raise BadInput("two files to send have the same name", hint="send one of them at a time")
    total = len(set(existing) | set(names))
    if total > settings.upload_max_files:
        raise Conflict(
            f"a session holds at most {settings.upload_max_files} uploads ({total} with these)",
            hint="VNCSESS_UPLOAD_MAX_FILES raises the limit",
        )
    _scan_argv(settings)  # a malformed command says so before anything is copied
    folder = settings.home / "staging" / secrets.token_hex(8)
    prepared = Prepared(folder, [])
    try:
        folder.mkdir(parents=True, mode=0o700)
        for name, src in items:
            prepared.staged.append(_copy(settings, src, folder / name))
        for s in prepared.staged:
            _scan(settings, s)
    except OSError as exc:
        prepared.discard()
        raise unwritable(folder, exc) from None
    except BaseException:
        prepared.discard()
        raise
    return prepared


def _copy(settings: Settings, src: BinaryIO, dest: Path) -> Staged:
    limit = settings.upload_max_bytes
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(
                    f"{dest.name} is larger than the upload limit ({_human(limit)})",
                    hint="VNCSESS_UPLOAD_MAX_BYTES raises the limit",
                )
            out.write(chunk)
    return Staged(dest.name, dest, size)


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:g} {unit}"
        n //= 1024
    return f"{n:g} GiB"


@contextlib.contextmanager
def _opened(paths: Sequence[Path], rename: str = "") -> Iterator[list[tuple[str, BinaryIO]]]:
    with contextlib.ExitStack() as stack:
        items = []
        for p in paths:
            name, fh = open_local(p)
            stack.enter_context(fh)
            items.append((rename or name, fh))
        yield items


def prepare_paths(settings: Settings, paths: Sequence[Path]) -> Prepared:
    """`up --upload FILE...`: the files checked, staged and scanned before the session
    starts (a refused file starts nothing)."""
    with _opened(paths) as items:
        return prepare(settings, items)


def upload(settings: Settings, ref: str, items: Sequence[tuple[str, BinaryIO]]) -> list[FileEntry]:
    """Send files (name, open file) into a running session's uploads."""
    from vncsess import sessions

    session = sessions.get(settings, ref)
    if session.status in sessions.ENDED:
        raise Conflict(
            f"session {session.id} has ended: it takes no uploads",
            hint="start a new one with `vncsess up --upload FILE`",
        )
    data = DataDir(session.data_dir)
    require_enabled(data)
    existing = [e.name for e in _entries(data, UPLOADS)]
    with prepare(settings, items, existing) as prepared:
        return prepared.place(data)


def send(settings: Settings, paths: Sequence[Path], remote: Remote) -> list[FileEntry]:
    """`cp FILE... ID:` (or `ID:uploads/NAME` for one file, under that name)."""
    if remote.area != UPLOADS:
        raise BadInput(
            f"files go into a session's uploads, not its {remote.area}",
            hint=f"`vncsess cp FILE {remote.session}:`",
        )
    if remote.name and len(paths) != 1:
        raise BadInput(
            "a new name fits one file only", hint=f"`vncsess cp FILE... {remote.session}:`"
        )
    with _opened(paths, remote.name) as items:
        return upload(settings, remote.session, items)


def copy(settings: Settings, sources: Sequence[str], dest: str) -> list[FileEntry] | Path:
    """`vncsess cp`: local files into a session, or one session file out of it."""
    if not sources:
        raise BadInput("nothing to copy", hint=_CP_HINT)
    to = parse_remote(dest)
    froms = [parse_remote(s) for s in sources]
    if to is not None:
        if any(f is not None for f in froms):
            raise BadInput("copy between sessions is not supported", hint=_CP_HINT)
        return send(settings, [Path(s) for s in sources], to)
    remote = froms[0]
    if len(sources) != 1 or remote is None:
        raise BadInput("one side of `cp` must be a session (ID:...)", hint=_CP_HINT)
    return fetch(settings, remote, Path(dest))
