"""The idle timeout: the shared rule (activity.py) on its own, and on the real Docker engine
an idle session that ends itself while one with a real RFB viewer connected does not."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, project_leftovers
from vncsess import activity
from vncsess.engines.base import Happening
from vncsess.events import Lifecycle
from vncsess.rfb import RfbClient

IDLE_S = 10


# ------------------------------------------------------------------ the rule


def test_a_session_is_idle_from_its_newest_activity(tmp_path: Path) -> None:
    now = 1_000_000.0
    activity.stamp(tmp_path, activity.START, now - 30)
    activity.stamp(tmp_path, activity.VIEWER, now - 12)
    activity.stamp(tmp_path, activity.AGENT, now - 20)
    assert activity.idle_for(tmp_path, now) == 12
    # Control: idle not at all while controlled, then from the hand-back.
    activity.write(tmp_path, activity.CONTROL, f"controlled {int(now - 100)}")
    assert activity.idle_for(tmp_path, now) == 0
    activity.write(tmp_path, activity.CONTROL, f"watching {int(now - 3)}")
    assert activity.idle_for(tmp_path, now) == 3
    # A file caught between truncation and write (the bash side) is activity now.
    (tmp_path / activity.VIEWER).write_text("")
    assert activity.idle_for(tmp_path, now) == 0


def test_the_watch_ends_at_the_timeout_and_follows_the_other_side(tmp_path: Path) -> None:
    now = time.time()
    activity.stamp(tmp_path, activity.START, now - 5)
    watch = activity.Watch(tmp_path, 10, activity.AGENT)
    watch.since = now - 100
    assert not watch.check(active=False, now=now)  # 5 s idle
    assert not watch.check(active=True, now=now + 20)  # a running task: stamps, not idle
    assert (tmp_path / activity.AGENT).read_text().strip() == str(int(now + 20))
    assert not watch.check(active=False, now=now + 29)
    assert watch.check(active=False, now=now + 30)
    assert activity.ended(tmp_path) == activity.IDLE
    # The other container finds `ended` and goes too, whatever it saw itself.
    other = activity.Watch(tmp_path, 10, activity.VIEWER)
    assert other.check(active=True, now=now + 30)


def test_an_empty_dir_counts_from_the_watch_start(tmp_path: Path) -> None:
    watch = activity.Watch(tmp_path, 10, activity.AGENT)
    assert not watch.check(active=False, now=watch.since + 9)
    assert watch.check(active=False, now=watch.since + 10)


def test_containers_ending_themselves_at_the_idle_timeout_are_an_expiry() -> None:
    life = Lifecycle()
    meta = {"idle-timeout": "10", "expires": ""}
    ended = life.feed(Happening("s1", "vnc", "exited", 50.0, meta, exit_code=0))
    assert [(f.type, f.data["expired_by"]) for f in ended] == [("session.expired", "idle")]
    broke = life.feed(Happening("s1", "agent", "exited", 50.0, meta, exit_code=1))
    assert [f.type for f in broke] == ["session.failed"]


# ------------------------------------------------------------------ real sessions


def _session(cli: Cli, sid: str) -> dict[str, Any]:
    found: dict[str, dict[str, Any]] = {x["session_id"]: x for x in cli.json("ls")}
    return found.get(sid, {})


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/", maxsplit=1)[0])


def _secret(url: str) -> str:
    return url.split("password=", 1)[1].split("&", 1)[0]


class Viewer:
    """A real RFB client (through noVNC's websockify, as a browser connects) that stays
    connected and asks for a frame now and then, until closed."""

    def __init__(self, url: str) -> None:
        self.rfb = RfbClient("127.0.0.1", _port(url), timeout=10)
        self.rfb.login(_secret(url))
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(3):
            try:
                self.rfb.frame()
                self.frames += 1
            except Exception:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self.rfb.ws.close()


@pytest.mark.docker
def test_an_idle_session_ends_while_a_watched_one_lives(cli: Cli) -> None:
    idle = cli.up("--idle-timeout", f"{IDLE_S}s")
    up_idle = time.monotonic()
    # Small frames: the viewer reads a whole one every 3 s, in pure Python.
    watched = cli.up("--idle-timeout", f"{IDLE_S}s", "--ttl", "10m", "--resolution", "640x400")
    viewer = Viewer(watched["novnc_url"])
    watched_from = time.monotonic()
    assert idle["idle_timeout_s"] == IDLE_S and idle["idle_left_s"] <= IDLE_S
    start = int((Path(idle["data_dir"]) / "activity" / "start").read_text())
    try:
        # The idle one ends by itself, as expired (idle).
        ended_after = None
        while time.monotonic() - up_idle < IDLE_S + 30:
            s = _session(cli, idle["session_id"])
            if s.get("status") == "expired":
                ended_after = time.monotonic() - up_idle
                break
            time.sleep(0.5)
        assert ended_after is not None, "the idle session did not end"
        assert s["expired_by"] == "idle" and s["idle_left_s"] is None
        decided = int((Path(idle["data_dir"]) / "activity" / "ended").read_text().split()[1])
        print(
            f"\nidle timeout {IDLE_S} s: the idle session ended {ended_after:.1f} s after "
            f"`up` returned, decided {decided - start} s after its creation"
        )
        assert IDLE_S <= decided - start <= IDLE_S + 10
        assert ended_after <= IDLE_S + 10
        res = json.loads(cli.run("result", idle["session_id"], "--json").stdout)["result"]
        assert res["status"] == "cancelled" and res["expired_by"] == "idle"
        table = cli.run("ls").stdout
        line = next(ln for ln in table.splitlines() if ln.startswith(idle["session_id"]))
        assert "expired (idle)" in line

        # The watched one lives on for at least twice the timeout, its idle time full.
        while time.monotonic() - watched_from < 2 * IDLE_S + 5:
            time.sleep(1)
        s = _session(cli, watched["session_id"])
        held = time.monotonic() - watched_from
        print(
            f"with a viewer connected ({viewer.frames} frames read): still {s['status']} "
            f"after {held:.1f} s, idle time left {s['idle_left_s']} s"
        )
        assert s["status"] == "running" and s["idle_left_s"] >= IDLE_S - 3
        assert viewer.frames >= 3
    finally:
        viewer.close()
    # Once the viewer leaves, the idle timeout counts again.
    left_at = time.monotonic()
    while time.monotonic() - left_at < IDLE_S + 30:
        if _session(cli, watched["session_id"]).get("status") == "expired":
            break
        time.sleep(0.5)
    after = time.monotonic() - left_at
    print(f"after the viewer left: ended {after:.1f} s later")
    assert after <= IDLE_S + 10

    # prune cleans both: they are ended sessions of this run.
    pruned = cli.json("prune")["stopped"]
    assert {idle["session_id"], watched["session_id"]} <= set(pruned)
    for sid in (idle["session_id"], watched["session_id"]):
        cli.started.discard(sid)
        assert project_leftovers(sid) == []


@pytest.mark.docker
def test_a_person_in_control_keeps_a_session_alive_and_ttl_still_caps_it(cli: Cli) -> None:
    """Control counts as activity (nobody connected), and --ttl ends an active session."""
    s = cli.up("--idle-timeout", "6s", "--ttl", "25s")
    sid = s["session_id"]
    t0 = time.monotonic()
    assert cli.run("control", sid).returncode == 0
    while time.monotonic() - t0 < 15:
        time.sleep(1)
    assert _session(cli, sid)["status"] == "running", "control did not keep it alive"
    while time.monotonic() - t0 < 45:
        st = _session(cli, sid)
        if st.get("status") == "expired":
            break
        time.sleep(0.5)
    print(f"\nin control: ended by its --ttl of 25 s after {time.monotonic() - t0:.1f} s")
    assert st["status"] == "expired" and st["expired_by"] == "ttl"


@pytest.mark.docker
def test_an_agent_at_work_is_activity_and_its_result_stays(cli: Cli) -> None:
    """A task whose every model call outlasts the idle timeout runs to its end (a task at
    work is activity); then the session idles out, and the task's result stays as it was."""
    s = cli.up("--task", "demo", "--idle-timeout", "5s", VNCSESS_DEMO_STEP_DELAY="7")
    sid = s["session_id"]
    t0 = time.monotonic()
    done = cli.run("wait", sid, "--json", "--timeout", "180")
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)["result"]
    assert res["status"] == "succeeded" and res["expired_by"] is None
    t1 = time.monotonic()
    while time.monotonic() - t1 < 5 + 30:
        st = _session(cli, sid)
        if st.get("status") == "expired":
            break
        time.sleep(0.5)
    after = time.monotonic() - t1
    print(f"\nidle timeout 5 s: the task ran {took:.1f} s ({res['steps']} steps, 7 s each), "
          f"then the session ended {after:.1f} s after its result")  # fmt: skip
    assert took > 2 * 5 and st["expired_by"] == "idle" and after <= 5 + 10
    again = json.loads(cli.run("result", sid, "--json").stdout)["result"]
    assert again["status"] == "succeeded" and again["expired_by"] is None
