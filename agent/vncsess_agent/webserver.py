"""A tiny static web server on 127.0.0.1 for the demo page and the "waiting for a task" page.

It runs in a daemon thread of the runner, so the pages exist only inside the agent container.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WWW_DIR = Path(__file__).resolve().parent.parent / "www"


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # page loads are not worth a log line

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


def start(port: int, directory: Path = WWW_DIR) -> ThreadingHTTPServer:
    handler = functools.partial(_Handler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="www", daemon=True)
    thread.start()
    return server
