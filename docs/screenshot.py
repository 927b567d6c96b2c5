"""Open a URL in headless Chromium (Debian's `chromium`) as a person would, wait until noVNC
has connected and drawn, and save a PNG of the page. Used for the pictures in docs/.

    python docs/screenshot.py URL OUT.png [--wait SECONDS]

Headless Chromium's --screenshot flag shoots on a virtual clock that starves websockets, so
this drives the browser over the DevTools protocol instead and waits on noVNC's own state.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import tempfile
import time
import urllib.request

from vncsess.rfb import WebSocket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cdp:
    def __init__(self, ws: WebSocket) -> None:
        self.ws, self.n = ws, 0

    def call(self, method: str, **params: object) -> dict[str, object]:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}).encode(), 0x1)
        while True:
            msg = json.loads(self.ws.message())
            if msg.get("id") == self.n:
                return dict(msg.get("result") or {})

    def js(self, expression: str) -> object:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return dict(r.get("result") or {}).get("value")  # type: ignore[call-overload]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("out")
    ap.add_argument("--wait", type=float, default=20)
    args = ap.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1280,800", f"--remote-debugging-port={port}",
             f"--user-data-dir={profile}", args.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + args.wait
            page = None
            while page is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as r:
                        page = next(t for t in json.load(r) if t["type"] == "page")
                except (OSError, StopIteration):
                    time.sleep(0.2)
            assert page, "Chromium did not come up"
            path = page["webSocketDebuggerUrl"].split(str(port), 1)[1]
            cdp = Cdp(WebSocket("127.0.0.1", port, path=path, timeout=args.wait))
            state = None
            while time.monotonic() < deadline:
                # noVNC marks the page itself once the RFB session is up.
                state = cdp.js("document.documentElement.className")
                if "noVNC_connected" in str(state):
                    time.sleep(3)  # the first framebuffer, and the "connected" banner fades
                    break
                time.sleep(0.2)
            shot = cdp.call("Page.captureScreenshot", format="png")
            with open(args.out, "wb") as fh:
                fh.write(base64.b64decode(str(shot["data"])))
            print(f"{args.out} (noVNC state: {state})")
        finally:
            browser.terminate()
            browser.wait(10)


if __name__ == "__main__":
    main()
