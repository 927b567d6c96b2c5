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
    TASKS_DIR,
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
        self.result: dict[str, Any] | None = None  # the latest task's result, once written
        self.task = 0  # the task running (1, 2, ... follow-ups); 0: none yet
        self._finished: set[int] = set()
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

    def has_result(self, task: int | None = None) -> bool:
        """Whether `task` (default: the one running) has its result written."""
        task = self.task if task is None else task
        return task in self._finished if task else self.result is not None

    def start_task(self, task: int) -> None:
        """A new task begins: its events carry its number, and it will have its own result."""
        with self._lock:
            self.task = task
            self.result = None

    def write_result(self, result: dict[str, Any]) -> bool:
        """Write the running task's result once (first outcome wins; later calls are
        ignored): tasks/N.json, and result.json, which is always the latest result."""
        with self._lock:
            if self.has_result():
                return False
            self.result = result
            if self.task:
                self._finished.add(self.task)
            try:
                if self.task:
                    write_json_atomic(self.data_dir / TASKS_DIR / f"{self.task}.json", result)
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
            if self.task:
                line.setdefault("task", self.task)
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
