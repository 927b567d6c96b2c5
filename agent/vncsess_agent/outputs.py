"""/data/status.json (updated as the run goes) and /data/result.json (written once at the end).

Both are written atomically: a temp file in the same directory, fsync, rename. Readers on the
host never see a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATES = ("starting", "running", "paused", "done", "failed", "idle")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Outputs:
    """Owns the two files. Thread-safe; never raises (a full disk must not kill the runner)."""

    def __init__(self, data_dir: Path, log) -> None:
        self.data_dir = data_dir
        self.log = log
        self._lock = threading.Lock()
        self.state = "starting"
        self.step = 0
        self.url: str | None = None
        self.result: dict[str, Any] | None = None

    def status(
        self, state: str | None = None, step: int | None = None, url: str | None = None
    ) -> None:
        with self._lock:
            if state is not None:
                assert state in STATES, state
                self.state = state
            if step is not None:
                self.step = step
            if url is not None:
                self.url = url
            data = {
                "state": self.state,
                "step": self.step,
                "url": self.url,
                "updated_at": utc_now(),
            }
            try:
                write_json_atomic(self.data_dir / "status.json", data)
            except OSError as exc:
                self.log.warning("cannot write status.json: %s", exc)

    def write_result(self, result: dict[str, Any]) -> bool:
        """Write result.json once; later calls are ignored (first outcome wins)."""
        with self._lock:
            if self.result is not None:
                return False
            self.result = result
            try:
                write_json_atomic(self.data_dir / "result.json", result)
            except OSError as exc:
                self.log.error("cannot write result.json: %s", exc)
            return True
