"""The one door for every live view: `serve` relays a session's noVNC page and its VNC
websocket under /sessions/{id}/l/{token}/, on serve's own port. This module is the door to
the sessions' noVNC (websockify) over HTTP and WebSocket; links.py decides who may pass.

The websocket is not relayed blindly. The proxy answers the session's VNC authentication
itself, with the password of the link's mode (view-only or full access), and offers the
browser a connection with no VNC password (security type None). So no VNC password is ever
in a URL or in the browser, the VNC server still refuses anyone without one (a second
barrier behind the link), and view-only stays enforced by the VNC server itself. After the
handshake the bytes pass through untouched, until either side leaves or the link stops
being valid (revoked, or its control period ended), checked every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from vncsess.rfb import SEC_NONE, SEC_VNC, RfbError, vnc_des_response

LOG = logging.getLogger("vncsess.proxy")

RECHECK_S = 1.0  # how often an open connection's link is checked again
_RFB_38 = b"RFB 003.008\n"


class _Side(Protocol):
    async def read_message(self) -> bytes: ...
    async def send(self, data: bytes) -> None: ...


class _Reader:
    """Exact byte counts over a message stream (websockify cuts RFB where TCP did)."""

    def __init__(self, side: _Side) -> None:
        self.side = side
        self.buf = b""

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += await self.side.read_message()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        out, self.buf = self.buf, b""
        return out


async def login_upstream(up: _Reader, password: str) -> None:
    """Speak RFB 3.8 to the session's VNC server up to a successful VNC authentication."""
    banner = await up.read(12)
    if not banner.startswith(b"RFB "):
        raise RfbError("the session's display did not answer as a VNC server")
    await up.side.send(_RFB_38)
    (count,) = await up.read(1)
    if count == 0:
        (n,) = struct.unpack("!I", await up.read(4))
        raise RfbError("the VNC server refused: " + (await up.read(n)).decode(errors="replace"))
    types = await up.read(count)
    if SEC_VNC in types:
        await up.side.send(bytes([SEC_VNC]))
        await up.side.send(vnc_des_response(password, await up.read(16)))
    elif SEC_NONE in types:
        await up.side.send(bytes([SEC_NONE]))
    else:
        raise RfbError(f"no supported VNC security type in {list(types)}")
    (status,) = struct.unpack("!I", await up.read(4))
    if status != 0:
        raise RfbError("the session's VNC server refused the link's password")


async def greet_browser(browser: _Reader) -> None:
    """Offer the browser (noVNC) a connection with no VNC password, in its RFB version."""
    await browser.side.send(_RFB_38)
    version = await browser.read(12)
    try:
        minor = int(version[8:11])
    except ValueError:
        raise RfbError("the viewer did not speak RFB") from None
    if minor >= 7:
        await browser.side.send(bytes([1, SEC_NONE]))
        (choice,) = await browser.read(1)
        if choice != SEC_NONE:
            raise RfbError("the viewer chose a security type that was not offered")
        if minor >= 8:
            await browser.side.send(struct.pack("!I", 0))
    else:  # 3.3: the server decides
        await browser.side.send(struct.pack("!I", SEC_NONE))


async def relay(
    browser: _Side,
    upstream: _Side,
    password: str,
    still_valid: Callable[[], Awaitable[bool]],
) -> str:
    """Authenticate both ways, then pass bytes until one side leaves or the link dies.
    Returns why it ended (for the log)."""
    up, br = _Reader(upstream), _Reader(browser)
    await login_upstream(up, password)
    await greet_browser(br)

    async def pump(src: _Reader, dst: _Side) -> str:
        first = src.rest()
        if first:
            await dst.send(first)
        while True:
            await dst.send(await src.side.read_message())

    async def watch() -> str:
        while True:
            await asyncio.sleep(RECHECK_S)
            if not await still_valid():
                return "the link is no longer valid"

    tasks = {
        asyncio.create_task(pump(up, browser), name="to-browser"),
        asyncio.create_task(pump(br, upstream), name="to-session"),
        asyncio.create_task(watch(), name="recheck"),
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
    ended = next(iter(done))
    exc = ended.exception()
    if exc is None:
        return str(ended.result())
    return f"{ended.get_name()}: {type(exc).__name__}"


# ---------------------------------------------------------------- the two kinds of side


class BrowserSide:
    """The viewer's websocket, as Starlette gives it."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def read_message(self) -> bytes:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise ConnectionError("the viewer left")
        data = message.get("bytes")
        return data if data is not None else str(message.get("text") or "").encode()

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)


class UpstreamSide:
    """The session's websockify, through the `websockets` client."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def read_message(self) -> bytes:
        data = await self.conn.recv()
        return data if isinstance(data, bytes) else data.encode()

    async def send(self, data: bytes) -> None:
        await self.conn.send(data)


def connect_upstream(host: str, port: int) -> Any:
    """A websocket to the session's websockify (an async context manager)."""
    from websockets.asyncio.client import connect

    return connect(
        f"ws://{host}:{port}/websockify",
        subprotocols=["binary"],  # type: ignore[list-item]
        max_size=None,
        open_timeout=10,
        ping_interval=None,  # websockify does not need them; the viewer's side has its own
        compression=None,
        # Leaving waits for websockify's answer to our close. Busy sending a frame nobody
        # reads any more, it may not answer soon, and the viewer's socket is closed only
        # after this one: by default up to 10 s after a link was revoked.
        close_timeout=1,
    )


async def fetch(client: Any, host: str, port: int, path: str) -> tuple[int, bytes, str]:
    """GET one of noVNC's files from the session: (status, body, content type)."""
    r = await client.get(f"http://{host}:{port}/{path}")
    return r.status_code, r.content, r.headers.get("content-type", "application/octet-stream")
