"""A small RFB (VNC) client that speaks through websockify, as noVNC does.

`up` uses it to know the whole chain (Xvfb -> x11vnc -> websockify) answers before it prints
a URL; tests and benchmarks use it to authenticate, read real frames and send input.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Self

SEC_NONE, SEC_VNC = 1, 2


class RfbError(Exception):
    """The server answered, but not as a working VNC server would (or refused us)."""


class AuthFailed(RfbError):
    pass


class WebSocket:
    """Just enough RFC 6455 for a binary stream: client frames masked, no extensions."""

    def __init__(self, host: str, port: int, path: str = "/websockify", timeout: float = 5) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RfbError("websockify closed the connection during the upgrade")
            head += chunk
        head, _, self._buf = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise RfbError(f"no websocket upgrade: {status.decode(errors='replace')}")
        self._payload = b""

    def send(self, data: bytes, opcode: int = 0x2) -> None:
        """One frame: binary by default, text (0x1) for JSON protocols such as CDP."""
        mask = os.urandom(4)
        n = len(data)
        first = 0x80 | opcode
        if n < 126:
            header = struct.pack("!BB", first, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def _raw(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RfbError("connection closed by the server")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _frame(self) -> bytes:
        b0, b1 = self._raw(2)
        opcode, n = b0 & 0x0F, b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._raw(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._raw(8))
        mask = self._raw(4) if b1 & 0x80 else b""
        data = self._raw(n)
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        if opcode == 0x8:
            raise RfbError("server closed the websocket")
        if opcode == 0x9:  # ping
            self.sock.sendall(struct.pack("!BB", 0x8A, 0x80) + b"\0\0\0\0")
            return b""
        return data

    def message(self) -> bytes:
        """The next whole (unfragmented) message's payload."""
        while True:
            data = self._frame()
            if data:
                return data

    def recv(self, n: int) -> bytes:
        while len(self._payload) < n:
            self._payload += self._frame()
        out, self._payload = self._payload[:n], self._payload[n:]
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def vnc_des_response(password: str, challenge: bytes) -> bytes:
    """VNC auth: DES-encrypt the challenge with the password (8 bytes, bits mirrored).
    DES is single-key triple DES (the key three times), as `cryptography` keeps it."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = password.encode()[:8].ljust(8, b"\0")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in key)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


@dataclass
class ServerInit:
    width: int
    height: int
    bits_per_pixel: int
    name: str


class RfbClient:
    """`with RfbClient(host, port) as c: c.login(pw)` then frames and input."""

    def __init__(self, host: str, port: int, timeout: float = 5, path: str = "/websockify") -> None:
        self.ws = WebSocket(host, port, path=path, timeout=timeout)
        self.version = ""
        self.security_types: list[int] = []
        self.init: ServerInit | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ws.close()

    def hello(self) -> list[int]:
        """Version exchange; returns the security types the server offers."""
        banner = self.ws.recv(12)
        if not banner.startswith(b"RFB "):
            raise RfbError(f"not an RFB server: {banner!r}")
        self.version = banner.decode().strip()
        self.ws.send(b"RFB 003.008\n")
        (count,) = self.ws.recv(1)
        if count == 0:
            (n,) = struct.unpack("!I", self.ws.recv(4))
            raise RfbError(f"server refused: {self.ws.recv(n).decode(errors='replace')}")
        self.security_types = list(self.ws.recv(count))
        return self.security_types

    def login(self, password: str = "", shared: bool = True) -> ServerInit:
        if not self.security_types:
            self.hello()
        if SEC_VNC in self.security_types:
            self.ws.send(bytes([SEC_VNC]))
            self.ws.send(vnc_des_response(password, self.ws.recv(16)))
        elif SEC_NONE in self.security_types:
            self.ws.send(bytes([SEC_NONE]))
        else:
            raise RfbError(f"no supported security type in {self.security_types}")
        (ok,) = struct.unpack("!I", self.ws.recv(4))
        if ok != 0:
            (n,) = struct.unpack("!I", self.ws.recv(4))
            raise AuthFailed(self.ws.recv(n).decode(errors="replace") or "authentication failed")
        self.ws.send(bytes([1 if shared else 0]))
        w, h = struct.unpack("!HH", self.ws.recv(4))
        pixel_format = self.ws.recv(16)
        (n,) = struct.unpack("!I", self.ws.recv(4))
        self.init = ServerInit(w, h, pixel_format[0], self.ws.recv(n).decode(errors="replace"))
        return self.init

    def frame(self) -> bytes:
        """One full (non-incremental) framebuffer in the server's raw pixel format."""
        assert self.init is not None, "login() first"
        w, h, bpp = self.init.width, self.init.height, self.init.bits_per_pixel // 8
        self.ws.send(struct.pack("!BBHi", 2, 0, 1, 0))  # SetEncodings: Raw only
        self.ws.send(struct.pack("!BBHHHH", 3, 0, 0, 0, w, h))
        pixels = bytearray(w * h * bpp)
        while True:
            (msg,) = self.ws.recv(1)
            if msg == 0:
                break
            if msg == 2:  # bell
                continue
            if msg == 3:  # server cut text
                self.ws.recv(3)
                (n,) = struct.unpack("!I", self.ws.recv(4))
                self.ws.recv(n)
                continue
            raise RfbError(f"unexpected server message {msg}")
        _, nrects = struct.unpack("!BH", self.ws.recv(3))
        for _ in range(nrects):
            x, y, rw, rh, enc = struct.unpack("!HHHHi", self.ws.recv(12))
            if enc != 0:
                raise RfbError(f"unexpected encoding {enc}")
            data = self.ws.recv(rw * rh * bpp)
            for row in range(rh):
                start = ((y + row) * w + x) * bpp
                pixels[start : start + rw * bpp] = data[row * rw * bpp : (row + 1) * rw * bpp]
        return bytes(pixels)

    def pointer(self, x: int, y: int, buttons: int = 0) -> None:
        self.ws.send(struct.pack("!BBHH", 5, buttons, x, y))

    def key(self, keysym: int, down: bool) -> None:
        self.ws.send(struct.pack("!BBxxI", 4, 1 if down else 0, keysym))


def wait_ready(
    host: str, port: int, deadline: float, poll: float = 0.02, banner: bool = True
) -> float:
    """Poll until an RFB banner arrives through websockify; returns seconds waited.
    Without BANNER, until websockify takes the websocket (for a display that said it is
    ready: x11vnc sends a new client its banner 0.1-0.3 s late while none is connected).

    Reaching x11vnc through websockify means Xvfb, x11vnc and websockify all run.
    Raises TimeoutError with the last reason when `deadline` (time.monotonic) passes.
    A try that fails costs a refused connect, or websockify's failed connect to x11vnc,
    both on this machine: polling every 20 ms (not 100) cuts 40 ms off the mean wait.
    """
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with RfbClient(host, port, timeout=1) as c:
                if banner:
                    c.hello()
                return time.monotonic() - start
        except (OSError, RfbError) as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(poll)
    raise TimeoutError(last)
