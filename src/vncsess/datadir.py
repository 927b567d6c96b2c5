"""A session's data dir: what outlives its containers (compose file, result, recordings,
downloads, logs) and the secret files mounted into them. The one module that lays it out."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import string
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vncsess import activity as act
from vncsess.engines.base import SessionSecrets
from vncsess.errors import VncsessError
from vncsess.protocol import CLAIM_FILE, INBOX_DIR, SCRIPT_ARGS_FILE, SCRIPT_FILE, TASKS_DIR

# What the containers run as. On a host where vncsess runs as root the containers still
# run as this unprivileged uid, and vncsess hands them their directories.
CONTAINER_UID = 1000
_ALPHABET = string.ascii_letters + string.digits


def container_ids() -> tuple[int, int]:
    """The uid:gid for the containers: the caller's own, or 1000 when the caller is root,
    so files the containers write stay the user's and nothing in a container is root."""
    uid, gid = os.getuid(), os.getgid()
    return (CONTAINER_UID, CONTAINER_UID) if uid == 0 else (uid, gid)


def new_password() -> str:
    """8 characters: x11vnc (VNC auth) ignores anything past the eighth."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(8))


def xauthority(cookie: bytes, display: str = "99") -> bytes:
    """An Xauthority file with one FamilyWild MIT-MAGIC-COOKIE-1 entry: valid from any
    hostname, so the vnc and agent containers can share it."""

    def field(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    return (
        struct.pack(">H", 0xFFFF)
        + field(b"")
        + field(display.encode())
        + field(b"MIT-MAGIC-COOKIE-1")
        + field(cookie)
    )


def _passwdfile(control: str, view: str) -> bytes:
    """x11vnc's passwdfile: the full-access password, then the view-only one."""
    return f"{control}\n__BEGIN_VIEWONLY__\n{view}\n".encode()


def new_secrets(task: str, llm_env: str) -> SessionSecrets:
    """A new session's secrets: a display cookie, a view-only and a full-access password."""
    return SessionSecrets(
        xauth=xauthority(secrets.token_bytes(16)),
        vnc_passwd=_passwdfile(control=new_password(), view=new_password()),
        llm_env=llm_env.encode(),
        task=task.encode("utf-8"),
    )


def quote_env(value: str) -> str:
    """A value for a KEY=VALUE env file, read back intact by compose and python-dotenv."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def env_text(values: dict[str, str]) -> str:
    return "".join(f"{k}={quote_env(v)}\n" for k, v in values.items())


# A new session writes a few small files; recordings grow later and are watched by `doctor`.
MIN_FREE_BYTES = 16 * 1024 * 1024


def check_room(sessions_dir: Path) -> None:
    """Before a session starts (before any image build or container): its data dir can be
    made there, and the disk has room. One line with a hint, not a traceback."""
    try:
        sessions_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(sessions_dir).free
        # A probe of its own: `serve` checks for many creates at once, in one process.
        with tempfile.NamedTemporaryFile(dir=sessions_dir, prefix=".write-test-") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as exc:
        raise unwritable(sessions_dir, exc) from None
    if free < MIN_FREE_BYTES:
        raise unwritable(sessions_dir, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


def unwritable(path: Path, exc: OSError) -> VncsessError:
    return VncsessError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="set VNCSESS_HOME to a writable directory with free space",
    )


@dataclass(frozen=True)
class DataDir:
    path: Path

    # layout -------------------------------------------------------------
    @property
    def secrets(self) -> Path:
        return self.path / "secrets"

    @property
    def agent(self) -> Path:
        return self.path / "agent"

    @property
    def recordings(self) -> Path:
        return self.path / "recordings"

    @property
    def screenshots(self) -> Path:
        return self.path / "screenshots"

    @property
    def script_dir(self) -> Path:
        """`up --script`: the user's script and its arguments, mounted read-only."""
        return self.path / "script"

    @property
    def inbox(self) -> Path:
        """Follow-up tasks waiting for the runner (`vncsess task`), and those it took."""
        return self.agent / INBOX_DIR

    @property
    def tasks_dir(self) -> Path:
        """Each task's own result, N.json (result.json is the latest)."""
        return self.agent / TASKS_DIR

    @property
    def downloads(self) -> Path:
        return self.agent / "downloads"

    @property
    def uploads(self) -> Path:
        """Files put into the session (files.py); the agent sees them read-only."""
        return self.agent / "uploads"

    @property
    def files_file(self) -> Path:
        """Whether file transfer is on for this session: {"enabled": bool}."""
        return self.path / "files.json"

    @property
    def result_file(self) -> Path:
        return self.agent / "result.json"

    @property
    def status_file(self) -> Path:
        return self.agent / "status.json"

    @property
    def events_file(self) -> Path:
        """The runner's append-only record of steps, pauses and the end (events.jsonl)."""
        return self.agent / "events.jsonl"

    @property
    def ready_file(self) -> Path:
        """Written by `up` when the display first answered: {"at", "novnc_port"}."""
        return self.path / "ready.json"

    @property
    def control_file(self) -> Path:
        return self.path / "control.json"

    @property
    def links_file(self) -> Path:
        """The live-view links `serve` minted for this session, and which were revoked."""
        return self.path / "links.json"

    @property
    def activity(self) -> Path:
        """The idle timeout's shared clock, mounted at /activity in both containers
        (activity.py describes its files)."""
        return self.path / "activity"

    @property
    def stopped_file(self) -> Path:
        """Written by `stop` (and `prune`): {"at"}, when the session's containers went. What
        `prune --older-than` measures a stopped session's age from."""
        return self.path / "stopped.json"

    @property
    def pool_free(self) -> Path:
        """A warm-pool session ready to be claimed: {what it was started with}. Claiming is
        renaming it to pool_claimed: of several `up`s at once, exactly one rename succeeds."""
        return self.path / "pool.free"

    @property
    def pool_claimed(self) -> Path:
        return self.path / "pool.claimed"

    @property
    def claim_file(self) -> Path:
        """A claimed pool session's own facts (name, created, expires, llm, owner...), laid
        over its labels, which cannot change: what `ls`, `inspect` and the API show."""
        return self.path / "claim.json"

    @property
    def runner_claim_file(self) -> Path:
        """The claim as the runner reads it (protocol.CLAIM_FILE, in /data)."""
        return self.agent / CLAIM_FILE

    @property
    def compose_file(self) -> Path:
        return self.path / "compose.yml"

    @property
    def env_file(self) -> Path:
        return self.path / "session.env"

    # creation -----------------------------------------------------------
    def create(self, keys: SessionSecrets) -> None:
        """Make the tree and its secret files, owned by the containers' user. A data dir
        that cannot be written (read-only, full, not a directory) is one clear error."""
        try:
            self.path.mkdir(parents=True, mode=0o700)
            self.secrets.mkdir(mode=0o700)
            for d in (
                self.agent, self.downloads, self.uploads, self.recordings, self.screenshots,
                self.activity,
            ):  # fmt: skip
                d.mkdir(mode=0o750)
            self.script_dir.mkdir(mode=0o750)  # mounted even when empty
            self._secret("xauth", keys.xauth)
            self._secret("vnc_passwd", keys.vnc_passwd)
            self._secret("llm.env", keys.llm_env)
            (self.path / "task.txt").write_bytes(keys.task)
            self._own(self.path / "task.txt", 0o400)
            for d in (
                self.agent, self.downloads, self.uploads, self.recordings, self.screenshots,
                self.activity,
            ):  # fmt: skip
                self._own(d, 0o750)
            self._own(self.script_dir, 0o750)
            act.stamp(self.activity, act.START)
        except OSError as exc:
            raise unwritable(self.path, exc) from None

    def write_script(self, text: str, args: list[str]) -> None:
        """The user's script and its arguments, readable by the containers' user only."""
        try:
            for name, data in (
                (SCRIPT_FILE, text.encode("utf-8")),
                (SCRIPT_ARGS_FILE, json.dumps(args).encode("utf-8")),
            ):
                path = self.script_dir / name
                path.write_bytes(data)
                self._own(path, 0o400)
        except OSError as exc:
            raise unwritable(self.path, exc) from None

    def _secret(self, name: str, data: bytes) -> None:
        path = self.secrets / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        self._own(path, 0o400)

    @staticmethod
    def _own(path: Path, mode: int) -> None:
        uid, gid = container_ids()
        if os.getuid() == 0:
            os.chown(path, uid, gid)
        path.chmod(mode)

    def rotate_control_secret(self) -> bytes:
        """A new full-access password, written in place: the file is bind-mounted into the
        vnc container (a rename would leave the container reading the old inode), and x11vnc
        re-reads it for each new client. Connections made with the old one stay as they are.
        Returns the new passwdfile (for engines that must push it into the container)."""
        view, _ = self.vnc_secrets()
        data = _passwdfile(new_password(), view)
        path = self.secrets / "vnc_passwd"
        path.chmod(0o600)
        with open(path, "r+b") as fh:
            fh.write(data)
            fh.truncate()
        path.chmod(0o400)
        return data

    def rotate_vnc_secrets(self) -> bytes:
        """New view-only and full-access passwords at once (a pool session's claim), written
        in place as rotate_control_secret does; the old ones let no new client in."""
        return self._rewrite_secret("vnc_passwd", _passwdfile(new_password(), new_password()))

    def replace_llm_env(self, text: str) -> None:
        """The model keys of a claimed pool session: the claimer's, written in place over
        the file mounted as /run/secrets/llm_env (empty when the claimer has none)."""
        self._rewrite_secret("llm.env", text.encode())

    def _rewrite_secret(self, name: str, data: bytes) -> bytes:
        path = self.secrets / name
        path.chmod(0o600)
        try:
            with open(path, "r+b") as fh:
                fh.write(data)
                fh.truncate()
        finally:
            path.chmod(0o400)
        return data

    def forget_secrets(self) -> None:
        """After stop: keys and passwords have no use any more; the artifacts stay."""
        shutil.rmtree(self.secrets, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # reading ------------------------------------------------------------
    def vnc_secrets(self) -> tuple[str, str]:
        """(view secret, control secret), or empty strings when no longer known."""
        try:
            lines = (self.secrets / "vnc_passwd").read_text().splitlines()
        except OSError:
            return "", ""
        return (lines[2] if len(lines) > 2 else ""), (lines[0] if lines else "")

    def read_json(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(path)
