"""Follow-up tasks (`vncsess task ID "..."`) and each task's own result.

A session's tasks are numbered 1, 2, ...: task 1 is the one it was started with (`up --task`,
or `up --script`), the next ones come from `task`. A follow-up is handed to the running agent
through the session's data dir, with no daemon: it is written into agent/inbox/ under a
dot-name and renamed to `N.task` (the runner never sees half a file), and the runner takes
them in number order once the task before is done (see protocol.py). Each task's result is
agent/tasks/N.json; result.json stays the latest one, as before follow-ups existed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from vncsess.datadir import DataDir, unwritable
from vncsess.errors import BadInput, Conflict, NotFound
from vncsess.models import Session
from vncsess.protocol import (
    SCRIPT_FILE,
    TAKEN_SUFFIX,
    TASK_SUFFIX,
    Result,
)

MAX_TASK_BYTES = 256 * 1024  # as `up --task`
# A session ends its agent by exiting; these are the states in which it still takes work.
_LIVE = ("running", "degraded", "unhealthy")


def runs_script(data: DataDir) -> bool:
    return (data.script_dir / SCRIPT_FILE).is_file()


def _started_with_task(data: DataDir) -> bool:
    """Whether task 1 is the one the session was started with (a task text or a script)."""
    try:
        return (data.path / "task.txt").stat().st_size > 0 or runs_script(data)
    except OSError:
        return runs_script(data)


def _numbers(folder: Path, *suffixes: str) -> list[int]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        for suffix in suffixes:
            stem = name.removesuffix(suffix)
            if stem != name and stem.isdigit():
                found.append(int(stem))
    return found


def count(data: DataDir) -> int:
    """How many tasks the session was given so far (its latest task's number)."""
    given = _numbers(data.inbox, TASK_SUFFIX, TAKEN_SUFFIX) + _numbers(data.tasks_dir, ".json")
    return max([1 if _started_with_task(data) else 0, *given])


def check_text(text: str) -> str:
    if not text.strip():
        raise BadInput("the task is empty", hint='say what the agent should do: task ID "..."')
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadInput("the task is not valid Unicode text") from None
    if size > MAX_TASK_BYTES:
        raise BadInput("the task is too long", hint=f"keep it under {MAX_TASK_BYTES // 1024} KiB")
    return text


def submit(session: Session, text: str) -> int:
    """Queue TEXT as the session's next task; its number. The agent runs it once the task
    before is done (at once if it is idle or done)."""
    check_text(text)
    data = DataDir(session.data_dir)
    if session.status not in _LIVE or session.services.get("agent") != "running":
        state = session.status if session.status not in _LIVE else "without its agent"
        raise Conflict(
            f"session {session.id} is {state}: it takes no more tasks",
            hint="start another with `vncsess up --task ...`",
        )
    if runs_script(data):
        raise Conflict(
            f"session {session.id} runs a script (`up --script`): it takes no follow-up tasks",
            hint="your script decides what the browser does; start another session for a task",
        )
    try:
        return queue(data, text)
    except OSError as exc:
        raise unwritable(data.inbox, exc) from None


def queue(data: DataDir, text: str) -> int:
    """Put TEXT into the session's inbox as its next task (also a claimed pool session's
    first); its number. Raises OSError."""
    data.inbox.mkdir(mode=0o750, exist_ok=True)
    DataDir._own(data.inbox, 0o750)
    with open(data.path / "tasks.lock", "w") as lock:
        # Two `task` at once: each gets its own number.
        fcntl.flock(lock, fcntl.LOCK_EX)
        n = count(data) + 1
        tmp = data.inbox / f".{n}.tmp"
        tmp.write_bytes(text.encode("utf-8"))
        DataDir._own(tmp, 0o640)
        os.replace(tmp, data.inbox / f"{n}{TASK_SUFFIX}")
    return n


def resolve(data: DataDir, task: int | None) -> int | None:
    """The task a `wait` is about: TASK, checked; by default the latest given (None when the
    session never had one: an idle browser)."""
    given = count(data)
    if task is None:
        return given or None
    if not 1 <= task <= given:
        sid = data.path.name
        raise NotFound(
            f"session {sid} has no task {task}",
            hint=f"it has tasks 1 to {given}" if given else "it was given no task yet",
        )
    return task


def read(data: DataDir, task: int | None) -> Result | None:
    """Task TASK's result (None: the latest, result.json), or None while there is none."""
    if task is None:
        raw = data.read_json(data.result_file)
    else:
        raw = data.read_json(data.tasks_dir / f"{task}.json")
        if raw is None and task == 1:
            # A runner from before follow-ups wrote result.json alone, for its one task.
            latest = data.read_json(data.result_file)
            raw = latest if latest and latest.get("task") in (None, 1) else None
    return None if raw is None else Result.from_dict(raw)
