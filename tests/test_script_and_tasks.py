"""Your own agent script (`up --script`) and follow-up tasks (`vncsess task`) on the real
engine: the example script's result read by `wait`, a failing script's exit code, a custom
agent image, and two tasks that share one browser, each with its own result."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.docker

FAST = "0"  # VNCSESS_DEMO_STEP_DELAY: the demo model without its pauses
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "demo_agent.py"
SECRET = "The demo secret is: vnc-rocks-42"


def test_the_example_script_runs_offline_and_wait_reads_its_result(
    cli: Cli, tmp_path: Path
) -> None:
    env_file = tmp_path / "keys.env"
    env_file.write_text("OPENAI_API_KEY=sk-script-test-key-0123456789\n")
    started = time.monotonic()
    s = cli.up(
        "--script", str(EXAMPLE), "--script-arg=--label", "--script-arg", "run 1",
        "--llm", "demo", "--env-file", str(env_file),
        VNCSESS_DEMO_STEP_DELAY=FAST,
    )  # fmt: skip
    sid = s["session_id"]
    proc = cli.run("wait", sid, "--timeout", "180", "--json")
    print(f"figure: up --script to its result in {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)["result"]
    assert res["status"] == "succeeded" and res["success"] is True, res
    assert res["exit_code"] == 0 and res["task"] == 1
    assert res["final_text"] and SECRET in res["final_text"]
    assert res["output"]["label"] == "run 1", "the --script-arg reached the script intact"
    assert res["urls"] and res["urls"][0].startswith("http://127.0.0.1:8765/")
    # The script's own output is in the logs; the key is in neither the logs nor inspect.
    logs = cli.run("logs", sid, "--service", "agent")
    assert "[run 1] the agent finished on http://127.0.0.1:8765/" in logs.stdout
    agent = f"vncsess-{sid}-agent-1"
    inspect = subprocess.run(
        ["docker", "inspect", agent], capture_output=True, text=True, check=True
    ).stdout
    for text in (logs.stdout + logs.stderr, inspect):
        assert "sk-script-test-key" not in text
    mounts = json.loads(inspect)[0]["Mounts"]
    script_mount = next(m for m in mounts if m["Destination"] == "/opt/vncsess-script")
    assert script_mount["RW"] is False, "the script is mounted read-only"
    # The same result from `result`, also after stop.
    cli.run("stop", sid)
    cli.started.discard(sid)
    later = cli.run("result", sid, "--json")
    assert json.loads(later.stdout)["result"]["output"]["label"] == "run 1"


def test_a_failing_script_fails_with_its_exit_code_and_error(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text(
        "import json, sys\n"
        "print(json.dumps({'final_text': 'half done', 'steps': 2}))\n"
        "raise SystemExit('could not log in: ' + sys.argv[1])\n"
    )
    proc = cli.run(
        "up", "--script", str(script), "--script-arg", "alice", "--wait", "--json",
        "--timeout", "120",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    res = json.loads(proc.stdout)["result"]
    assert res["status"] == "failed" and res["success"] is False
    assert res["exit_code"] == 1 and res["final_text"] == "half done" and res["steps"] == 2
    assert res["errors"][:2] == ["the script exited with code 1", "could not log in: alice"]


@pytest.fixture
def custom_image() -> Iterator[str]:
    """An image `FROM vncsess-agent` (here: a second tag of it; the build itself needs a
    registry or PyPI, see examples/Dockerfile)."""
    import os

    base = os.environ.get("VNCSESS_AGENT_IMAGE", "vncsess-agent:latest")
    tag = f"vncsess-test-custom-agent:{os.getpid()}"
    subprocess.run(["docker", "tag", base, tag], check=True)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True, check=False)


def test_agent_image_is_used_and_a_missing_one_is_one_line(cli: Cli, custom_image: str) -> None:
    missing = cli.run("up", "--agent-image", "no-such-vncsess-image:1", "--json")
    assert missing.returncode == 2 and missing.stdout == ""
    assert "no image 'no-such-vncsess-image:1' on this Docker engine" in missing.stderr
    assert "FROM vncsess-agent" in missing.stderr and "Traceback" not in missing.stderr
    s = cli.up("--agent-image", custom_image, "--task", "demo", VNCSESS_DEMO_STEP_DELAY=FAST)
    agent = f"vncsess-{s['session_id']}-agent-1"
    image = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.Image}}", agent],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert image == custom_image
    assert cli.run("wait", s["session_id"], "--timeout", "120").returncode == 0


def test_two_tasks_share_the_browser_and_keep_their_own_results(cli: Cli) -> None:
    # Task 1 reveals the demo secret (navigate, click, done). Task 2 names no page: the
    # demo model can report the secret at once only if the page task 1 left is still the
    # one on screen, in the same browser; a fresh browser would show no secret (and the
    # demo model would open the page and click again: three steps, not one).
    s = cli.up("--task", "demo", VNCSESS_DEMO_STEP_DELAY=FAST)
    sid = s["session_id"]
    queued = cli.json("task", sid, "Report the secret sentence the page shows now.")
    assert queued == {"session_id": sid, "task": 2}, "queued while task 1 runs"
    second = cli.run("wait", sid, "--json", "--timeout", "180")  # the latest: task 2
    assert second.returncode == 0, second.stderr
    res2 = json.loads(second.stdout)["result"]
    res1 = cli.json("result", sid, "--task", "1")["result"]
    assert res1["task"] == 1 and res1["success"] and SECRET in res1["final_text"]
    assert res1["steps"] >= 2, res1  # it clicked before it could report
    assert res2["task"] == 2 and res2["success"] and SECRET in res2["final_text"], res2
    assert res2["steps"] == 1, f"task 2 found the page task 1 left: {res2}"
    assert cli.json("result", sid)["result"]["task"] == 2, "result's default is the latest"
    # Events carry the task number.
    lines = (Path(s["data_dir"]) / "agent" / "events.jsonl").read_text().splitlines()
    finished = [json.loads(x) for x in lines if '"agent.finished"' in x]
    assert [e["task"] for e in finished] == [1, 2]
    # A task that does not exist, and a stopped session: one line each.
    none = cli.run("result", sid, "--task", "3")
    assert none.returncode == 4 and "has no task 3" in none.stderr
    cli.run("stop", sid)
    cli.started.discard(sid)
    stopped = cli.run("task", sid, "one more")  # its containers are gone: no such session
    assert stopped.returncode == 4 and f"no session {sid!r}" in stopped.stderr, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert cli.json("result", sid, "--task", "1")["result"]["task"] == 1, "kept after stop"


def test_an_idle_session_takes_a_task_and_task_wait_returns_it(cli: Cli) -> None:
    s = cli.up(VNCSESS_DEMO_STEP_DELAY=FAST)
    proc = cli.run("task", s["session_id"], "demo", "--wait", "--json", "--timeout", "180")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)["result"]
    assert res["task"] == 1 and res["success"] and SECRET in res["final_text"]


def test_the_api_queues_tasks_and_scripts_behind_the_token(cli: Cli) -> None:
    """POST /v1/sessions/{id}/tasks, result?task=N and wait?task=N on a real `serve`; a
    script in the create body; problem+json for a task that does not exist or cannot run."""
    from tests.test_api import AUTH, start_server

    server = start_server(cli, VNCSESS_DEMO_STEP_DELAY=FAST)
    try:
        s = server.create()  # an idle desktop
        sid = s["session_id"]
        with server.http as c:
            assert c.post(f"/v1/sessions/{sid}/tasks", json={"task": "demo"}, headers={
                "Authorization": "Bearer wrong-token-0123456789"}).status_code == 401  # fmt: skip
            r = c.post(f"/v1/sessions/{sid}/tasks", json={"task": "demo"})
            assert r.status_code == 202 and r.json() == {"session_id": sid, "task": 1}, r.text
            done = c.get(f"/v1/sessions/{sid}/wait", params={"task": 1, "timeout": 180})
            assert done.status_code == 200, done.text
            assert SECRET in done.json()["result"]["final_text"]
            one = c.get(f"/v1/sessions/{sid}/result", params={"task": 1}).json()["result"]
            assert one["task"] == 1 and one["success"] is True
            none = c.get(f"/v1/sessions/{sid}/result", params={"task": 2})
            assert none.status_code == 404
            assert none.headers["content-type"] == "application/problem+json"
            assert "has no task 2" in none.json()["detail"]
            # A script session, from the create body; it takes no follow-up (409).
            script = "import json\nprint(json.dumps({'final_text': 'from the API'}))\n"
            sc = server.create(script=script, script_args=["a b"])
            r = c.post(f"/v1/sessions/{sc['session_id']}/tasks", json={"task": "more"})
            assert r.status_code == 409 and "runs a script" in r.json()["detail"]
            res = c.get(f"/v1/sessions/{sc['session_id']}/wait", params={"timeout": 120}).json()
            assert res["result"]["final_text"] == "from the API" and res["result"]["exit_code"] == 0
        token = AUTH["Authorization"].split()[1]
        printed = [i for i, line in enumerate(server.stderr) if token in line]
        assert max(printed) < 6, "the token is printed in serve's banner only"
    finally:
        server.stop()
