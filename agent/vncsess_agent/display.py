"""Wait for the X display of the vnc container: its socket, then a real X connection; and
notice when it dies.

The check speaks the first X11 handshake message itself (with the MIT-MAGIC-COOKIE-1 from
$XAUTHORITY), so it needs no X client package and tells apart "no socket yet", "refused: bad
cookie" and "ready". Polled every 100 ms up to a deadline: never a fixed sleep. The watch
holds one such connection open and returns when the X server closes it: no polling at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from pathlib import Path

FAMILY_WILD = 0xFFFF
COOKIE = b"MIT-MAGIC-COOKIE-1"


class DisplayError(RuntimeError):
    pass


def _read_counted(data: bytes, pos: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">H", data, pos)
    pos += 2
    return data[pos : pos + length], pos + length


def read_cookie(xauthority: str | None, display_number: int) -> tuple[bytes, bytes]:
    """(auth name, auth data) for the display from an Xauthority file; (b'', b'') if none."""
    if not xauthority:
        return b"", b""
    try:
        data = Path(xauthority).read_bytes()
    except OSError:
        return b"", b""
    wanted = str(display_number).encode()
    best: tuple[bytes, bytes] | None = None
    pos = 0
    try:
        while pos < len(data):
            (family,) = struct.unpack_from(">H", data, pos)
            _address, pos = _read_counted(data, pos + 2)
            number, pos = _read_counted(data, pos)
            name, pos = _read_counted(data, pos)
            cookie, pos = _read_counted(data, pos)
            usable = name == COOKIE and number in (wanted, b"")
            if usable and (best is None or family == FAMILY_WILD):
                best = (name, cookie)
    except struct.error:
        pass  # truncated file: use what was parsed
    return best or (b"", b"")


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _setup_request(auth: tuple[bytes, bytes]) -> bytes:
    name, data = auth
    return struct.pack("<cxHHHHxx", b"l", 11, 0, len(name), len(data)) + _pad(name) + _pad(data)


def try_connect(socket_path: str, auth: tuple[bytes, bytes], timeout: float = 2.0) -> str | None:
    """None if the X server accepts us; otherwise the reason it does not (yet)."""
    request = _setup_request(auth)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
            sock.sendall(request)
            head = b""
            while len(head) < 8:
                chunk = sock.recv(8 - len(head))
                if not chunk:
                    return "the X server closed the connection during the handshake"
                head += chunk
        except OSError as exc:
            return f"cannot connect to {socket_path}: {exc.strerror or exc}"
        status = head[0]
        if status == 1:
            return None
        if status == 0:
            reason_len = head[1]
            reason = b""
            try:
                while len(reason) < reason_len:
                    chunk = sock.recv(reason_len - len(reason))
                    if not chunk:
                        break
                    reason += chunk
            except OSError:
                pass
            return "the X server refused the connection: " + reason.decode("latin-1").strip()
        return "the X server asked for further authentication"


async def wait_for_display(
    display_number: int, xauthority: str | None, timeout: float, log: logging.Logger
) -> float:
    """Wait until the display accepts a connection; returns the seconds waited."""
    socket_path = f"/tmp/.X11-unix/X{display_number}"
    start = time.monotonic()
    deadline = start + timeout
    last = "not checked"
    logged = False
    if xauthority and not os.path.exists(xauthority):
        log.warning("XAUTHORITY=%s does not exist; connecting without a cookie", xauthority)
    elif xauthority and not os.access(xauthority, os.R_OK):
        log.warning(
            "XAUTHORITY=%s is not readable by uid %d; connecting without a cookie",
            xauthority,
            os.getuid(),
        )
    while True:
        if not os.path.exists(socket_path):
            last = (
                f"no X socket at {socket_path} "
                "(is the vnc container running and the x11 volume mounted?)"
            )
        else:
            auth = read_cookie(xauthority, display_number)
            reason = await asyncio.to_thread(try_connect, socket_path, auth)
            if reason is None:
                return time.monotonic() - start
            last = reason
        if not logged and time.monotonic() - start > 1.0:
            log.info("waiting for display :%d: %s", display_number, last)
            logged = True
        if time.monotonic() >= deadline:
            raise DisplayError(f"display :{display_number} not ready after {timeout:.0f} s: {last}")
        await asyncio.sleep(0.1)


async def watch_display(display_number: int, xauthority: str | None) -> str:
    """Hold an X connection to the display; return (why) when the X server drops it.

    An X server sends a client nothing it did not ask for, so the connection stays silent
    until the server goes: then the read sees the end of the stream. Returns at once if the
    display cannot be reached now.
    """
    path = f"/tmp/.X11-unix/X{display_number}"
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError as exc:
        return f"cannot connect to {path}: {exc.strerror or exc}"
    try:
        writer.write(_setup_request(read_cookie(xauthority, display_number)))
        await writer.drain()
        head = await reader.readexactly(8)
        if head[0] != 1:
            return "the X server refused the connection"
        while await reader.read(65536):
            pass  # the setup reply; after it, nothing until the server closes the connection
        return "the X server closed the connection"
    except (OSError, asyncio.IncompleteReadError) as exc:
        return f"the X connection broke: {exc}"
    finally:
        writer.close()
