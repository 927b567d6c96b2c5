"""The agent end to end on the real engine, no internet: the demo model, the real ChatOpenAI
path against a scripted OpenAI-compatible server inside the session's network, failures,
and task text that must arrive intact."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LLM_FLAGS, Cli, project_leftovers

pytestmark = pytest.mark.docker

FAST = "0"  # VNCSESS_DEMO_STEP_DELAY: the demo model without its pauses


def test_demo_model_completes_its_task(cli: Cli) -> None:
    proc = cli.run(
        "up", "--task", "demo", "--wait", "--json", "--timeout", "120",
        VNCSESS_DEMO_STEP_DELAY=FAST,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    cli.started.add(out["session_id"])
    res = out["result"]
    assert res["status"] == "succeeded" and res["success"] is True
    assert "The demo secret is: vnc-rocks-42" in res["final_text"]
    assert res["llm"] == out["llm"] == "demo"
    assert any(u.startswith("http://127.0.0.1:8765/") for u in res["urls"])
    assert res["steps"] >= 2 and res["errors"] == []
    # The same result later, from the file, also after the session is gone.
    cli.run("stop", out["session_id"])
    cli.started.discard(out["session_id"])
    later = cli.run("result", out["session_id"], "--json")
    assert later.returncode == 0
    assert json.loads(later.stdout)["result"]["final_text"] == res["final_text"]


def test_wait_prints_the_result_and_exits_0(cli: Cli) -> None:
    s = cli.up("--task", "demo", VNCSESS_DEMO_STEP_DELAY=FAST)
    assert s["llm"] == "demo"
    proc = cli.run("wait", s["session_id"], "--timeout", "120")
    assert proc.returncode == 0, proc.stderr
    assert "The demo secret is: vnc-rocks-42" in proc.stdout
    assert "succeeded" in proc.stderr


def test_without_a_task_the_browser_idles(cli: Cli) -> None:
    s = cli.up()
    status = Path(s["data_dir"]) / "agent" / "status.json"
    state, deadline = "", time.monotonic() + 30
    while state != "idle" and time.monotonic() < deadline:  # "starting" is not idle yet
        state = json.loads(status.read_text())["state"] if status.exists() else ""
        time.sleep(0.2)
    assert state == "idle"
    timeout = cli.run("wait", s["session_id"], "--timeout", "2")
    assert timeout.returncode == 5
    assert "no result" in timeout.stderr


def _browser_pid(container: str) -> int:
    """The pid of the browser process browser-use launched (the one with a CDP port)."""
    ps = subprocess.run(
        ["docker", "exec", container, "ps", "-eo", "pid=,args="],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    pids = [
        int(line.split()[0])
        for line in ps.splitlines()
        if line.split()[1].endswith("/chromium")
        and "--remote-debugging-port" in line
        and "--type=" not in line  # its helpers (renderers) inherit the flag
    ]
    assert len(pids) == 1, ps
    return pids[0]


def test_a_browser_crash_mid_task_fails_the_result_and_says_how(cli: Cli) -> None:
    s = cli.up("--task", "demo", VNCSESS_DEMO_STEP_DELAY="3")
    sid = s["session_id"]
    status = Path(s["data_dir"]) / "agent" / "status.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the browser is at work on the task
        st = json.loads(status.read_text()) if status.exists() else {}
        if st.get("state") == "running" and st.get("url"):
            break
        time.sleep(0.1)
    agent = f"vncsess-{sid}-agent-1"
    subprocess.run(["docker", "exec", agent, "kill", "-KILL", str(_browser_pid(agent))], check=True)
    proc = cli.run("wait", sid, "--timeout", "60", "--json")
    assert proc.returncode == 1, proc.stderr
    res = json.loads(proc.stdout)["result"]
    assert res["status"] == "failed" and res["success"] is False
    assert res["errors"][0] == "the browser (Chromium) died: killed by signal SIGKILL", res
    human = cli.run("result", sid)
    assert "the browser (Chromium) died: killed by signal SIGKILL" in human.stderr + human.stdout


def _task_session(cli: Cli, task: str, *extra: str) -> dict[str, Any]:
    # An agent started this way keeps retrying the model for a few seconds, which gives the
    # test time to start the scripted server beside it.
    return cli.up("--task", task, *LLM_FLAGS, *extra)


def test_chatopenai_path_against_a_scripted_server(
    cli: Cli, scripted_llm: Callable[..., Callable[[], dict[str, Any]]], tmp_path: Path
) -> None:
    env = tmp_path / "keys.env"
    env.write_text("OPENAI_API_KEY=sk-test-scripted\n")
    task = "Open the test page, press the reveal button and report what it reveals."
    s = _task_session(cli, task, "--env-file", str(env))
    calls = scripted_llm(s["session_id"])
    proc = cli.run("wait", s["session_id"], "--timeout", "120", "--json")
    assert proc.returncode == 0, proc.stderr + cli.run("logs", s["session_id"]).stdout[-3000:]
    res = json.loads(proc.stdout)["result"]
    seen = calls()
    assert res["success"] is True
    assert f"revealed: {seen['token']}" in res["final_text"]
    assert seen["calls"] >= 3 and seen["page_loads"] >= 1
    assert {r["schema_name"] for r in seen["requests"]} == {"agent_output"}
    assert all(r["model"] == "scripted-model" for r in seen["requests"])
    key_sha = hashlib.sha256(b"sk-test-scripted").hexdigest()
    assert {r["key_sha256"] for r in seen["requests"]} == {key_sha}
    assert any(u.startswith("http://127.0.0.1:8000/page") for u in res["urls"])


@pytest.mark.parametrize(
    ("mode", "error_words"),
    [
        ("garbage", "consecutive failed steps"),
        ("unauthorized", "401"),
        ("http500", "500"),
    ],
)
def test_a_broken_model_gives_a_failed_result(
    cli: Cli,
    scripted_llm: Callable[..., Callable[[], dict[str, Any]]],
    mode: str,
    error_words: str,
) -> None:
    s = _task_session(cli, "Open the test page and report what it says.", "--max-steps", "4")
    calls = scripted_llm(s["session_id"], mode)
    proc = cli.run("wait", s["session_id"], "--timeout", "180", "--json")
    assert proc.returncode == 1, proc.stderr
    res = json.loads(proc.stdout)["result"]
    assert res["success"] is False and res["status"] == "failed"
    assert res["errors"], "a failed result says why"
    assert error_words in " ".join(res["errors"])
    assert calls()["calls"] >= 1
    stop = cli.run("stop", s["session_id"])
    assert stop.returncode == 0
    cli.started.discard(s["session_id"])
    # The scripted server, a container from outside the session, still shares the agent's
    # network namespace: stop removes the session all the same.
    assert project_leftovers(s["session_id"]) == []


def test_an_unreachable_model_gives_a_failed_result(cli: Cli) -> None:
    s = cli.up("--task", "anything", "--llm", "openai:x", "--base-url", "http://127.0.0.1:9/v1")
    proc = cli.run("wait", s["session_id"], "--timeout", "120")
    assert proc.returncode == 1, proc.stderr
    assert "127.0.0.1:9" in proc.stderr or "reach" in proc.stderr.lower()


TASKS = {
    "quotes": """He said "don't" and 'won't' and `backticks` \\ back\\slash""",
    "newlines": "line one\nline two\r\n\ttabbed\n\n",
    "unicode": "Lisbon ✈️ 最便宜的航班 — Ünïcödé ñ 🙂",
    "shell": "$(rm -rf /) ; `id` && echo $HOME | cat > /tmp/x & %s %d {} ${VAR}",
    "10kB": ("0123456789abcdef" * 640)[:10_000] + " — end",
}


@pytest.mark.parametrize("case", list(TASKS))
def test_task_text_arrives_intact(
    cli: Cli,
    scripted_llm: Callable[..., Callable[[], dict[str, Any]]],
    tmp_path: Path,
    case: str,
) -> None:
    task = TASKS[case]
    task_file = tmp_path / "task.txt"
    task_file.write_text(task, encoding="utf-8", newline="")
    s = cli.up("--task-file", str(task_file), *LLM_FLAGS, "--max-steps", "3")
    calls = scripted_llm(s["session_id"])
    cli.run("wait", s["session_id"], "--timeout", "120")
    want = hashlib.sha256(task.encode("utf-8")).hexdigest()
    assert want in calls()["task_sha256"], f"the model saw another task than {case!r}"
    logs = cli.run("logs", s["session_id"], "--service", "agent").stdout
    assert f"sha256={want}" in logs
