"""The contract between the agent runner (in its container) and vncsess (on the host): the
files the runner writes into its data dir, and what their fields mean.

One file under two import names: `vncsess_agent.protocol` in the agent image, and
`vncsess.protocol` on the host (src/vncsess/protocol.py is a symlink to this file). Standard
library only, Python 3.11: it runs on both sides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

STATUS_FILE = "status.json"  # rewritten as the run goes
RESULT_FILE = "result.json"  # written once, when the run ends
EVENTS_FILE = "events.jsonl"  # appended, never rewritten: one JSON line per event
# Follow-up tasks. The host drops each one into INBOX_DIR as `N.task` (written beside it under
# a dot-name, then renamed: the runner never sees half a file); the runner renames it to
# `N.taken` when it starts it, and writes its result to TASKS_DIR/N.json (result.json is
# always the latest result). The task text only: never a key.
INBOX_DIR = "inbox"
TASKS_DIR = "tasks"
TASK_SUFFIX, TAKEN_SUFFIX = ".task", ".taken"
# `up --script`: the user's script and its arguments, mounted read-only into the agent
# container at SCRIPT_MOUNT. SCRIPT_FILE is the script, SCRIPT_ARGS_FILE a JSON list of str.
SCRIPT_MOUNT = "/opt/vncsess-script"
SCRIPT_FILE = "agent_script.py"
SCRIPT_ARGS_FILE = "args.json"
# The warm pool: a session started ahead of time (VNCSESS_POOL=1) waits, idle, for `up` to
# claim it. The claim is CLAIM_FILE in the data dir, written once (beside it under a dot-name,
# then renamed) before the claimer's first task reaches the inbox: {"llm", "llm_base_url",
# "max_steps", "demo_step_delay", "ttl_s", "idle_timeout_s"}. The claimer's model keys are
# not in it: they were written over the secret file llm_env (in place, so the mount shows
# them), which the runner reads again once it sees the claim. The vnc container reads its
# own half from the activity dir (activity.CLAIM: "TTL_S IDLE_S").
CLAIM_FILE = "claim.json"

# events.jsonl: each line {"seq": N, "type": T, "at": ISO 8601 UTC, ...fields}, written with
# one append, so a reader sees whole lines (it leaves a last line without its newline for
# later). It is what `vncsess serve` streams from, also after a restart of serve.
#   agent.step      step, url, goal (the model's next_goal), actions
#   agent.paused    SIGUSR1: someone took control
#   agent.resumed   SIGUSR2: handed back
#   agent.finished  result (the result.json object)
# Each of them also carries `task` (1, 2, ...: which task of the session it belongs to).
AGENT_EVENTS = ("agent.step", "agent.paused", "agent.resumed", "agent.finished")

# The agent's state in status.json.
STARTING, IDLE, RUNNING, PAUSED, DONE, FAILED = (
    "starting",
    "idle",
    "running",
    "paused",
    "done",
    "failed",
)
AGENT_STATES = (STARTING, IDLE, RUNNING, PAUSED, DONE, FAILED)

# A result's status.
SUCCEEDED, CANCELLED = "succeeded", "cancelled"
RESULT_STATUSES = (SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class Result:
    """result.json: how the task ended."""

    status: str  # RESULT_STATUSES
    success: bool
    final_text: str | None
    steps: int  # model steps taken
    urls: list[str]  # pages the browser opened, in order
    errors: list[str]
    llm: str
    started_at: str | None  # ISO 8601, UTC
    finished_at: str | None
    duration_s: float | None
    first_navigation_s: float | None  # runner start to the first page load
    # "idle" or "ttl" when the session's own limit ended the run (--idle-timeout, --ttl)
    expired_by: str | None = None
    task: int | None = None  # which task of the session (1, 2, ... follow-ups); None: older
    exit_code: int | None = None  # `up --script`: the script's exit code
    output: Any = None  # `up --script`: the last JSON value the script printed on stdout

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """Lenient: a result written by an older runner still reads."""
        return cls(
            status=str(d.get("status", FAILED)),
            success=bool(d.get("success", False)),
            final_text=d.get("final_text"),
            steps=int(d.get("steps") or 0),
            urls=[str(u) for u in d.get("urls") or []],
            errors=[str(e) for e in d.get("errors") or []],
            llm=str(d.get("llm", "")),
            started_at=d.get("started_at"),
            finished_at=d.get("finished_at"),
            duration_s=d.get("duration_s"),
            first_navigation_s=d.get("first_navigation_s"),
            expired_by=d.get("expired_by"),
            task=d.get("task"),
            exit_code=d.get("exit_code"),
            output=d.get("output"),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Status:
    """status.json: what the agent is doing now."""

    state: str  # AGENT_STATES
    step: int
    url: str | None
    updated_at: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Status:
        return cls(
            state=str(d.get("state", STARTING)),
            step=int(d.get("step") or 0),
            url=d.get("url"),
            updated_at=str(d.get("updated_at", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
