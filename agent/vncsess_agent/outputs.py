"""/data/status.json (updated as the run goes), /data/result.json (written once at the end)
and /data/events.jsonl (one line per step, pause, resume and the end; see protocol.py).

status.json and result.json are written atomically: a temp file in the same directory,
fsync, rename. Readers on the host never see a half-written file. events.jsonl is appended
a whole line at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vncsess_agent.protocol import (
    AGENT_EVENTS,
    AGENT_STATES,
    EVENTS_FILE,
    RESULT_FILE,
    STARTING,
    STATUS_FILE,
    Status,
)


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

    def __init__(self, data_dir: Path, log: logging.Logger) -> None:
        self.data_dir = data_dir
        self.log = log
        self._lock = threading.Lock()
        self.state = STARTING
        self.step = 0
        self.url: str | None = None
        self.result: dict[str, Any] | None = None
        self._seq = 0

    def status(
        self, state: str | None = None, step: int | None = None, url: str | None = None
    ) -> None:
        with self._lock:
            if state is not None:
                assert state in AGENT_STATES, state
                self.state = state
            if step is not None:
                self.step = step
            if url is not None:
                self.url = url
            data = Status(self.state, self.step, self.url, utc_now()).to_dict()
            try:
                write_json_atomic(self.data_dir / STATUS_FILE, data)
            except OSError as exc:
                self.log.warning("cannot write status.json: %s", exc)

    def write_result(self, result: dict[str, Any]) -> bool:
        """Write result.json once; later calls are ignored (first outcome wins)."""
        with self._lock:
            if self.result is not None:
                return False
            self.result = result
            try:
                write_json_atomic(self.data_dir / RESULT_FILE, result)
            except OSError as exc:
                self.log.error("cannot write result.json: %s", exc)
            return True

    def event(self, kind: str, **fields: Any) -> None:
        """Append one line to events.jsonl: one write() of a whole line, on an O_APPEND
        descriptor, so a reader never sees half a line in the middle of the file."""
        assert kind in AGENT_EVENTS, kind
        with self._lock:
            self._seq += 1
            line = {"seq": self._seq, "type": kind, "at": utc_now(), **fields}
            data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
            try:
                fd = os.open(
                    self.data_dir / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
                )
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.log.warning("cannot append to %s: %s", EVENTS_FILE, exc)
