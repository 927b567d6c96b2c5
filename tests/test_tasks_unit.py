"""Follow-up tasks and `--script`, the parts without Docker: task numbers, the inbox's
atomic hand-over, per-task results, the refusals, and the CLI's and API's one-line errors."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from vncsess import api, config, sessions, tasks
from vncsess.cli import app
from vncsess.datadir import DataDir, new_secrets
from vncsess.errors import BadInput, Conflict, NotFound
from vncsess.models import Session


def _data(tmp_path: Path, task: str = "demo", script: str = "") -> DataDir:
    data = DataDir(tmp_path / "abcd1234")
    data.create(new_secrets(task, ""))
    if script:
        data.write_script(script, ["--x", "1"])
    return data


def _session(data: DataDir, status: str = "running", agent: str = "running") -> Session:
    return Session(
        id=data.path.name, name="", status=status, created_at=datetime.now(UTC),
        resolution="1280x720", novnc_port=None, url_host="127.0.0.1", data_dir=data.path,
        llm="demo", services={"vnc": "running", "agent": agent},
    )  # fmt: skip


def test_follow_ups_are_numbered_after_the_first_task_and_written_whole(tmp_path: Path) -> None:
    data = _data(tmp_path)
    assert tasks.count(data) == 1
    assert tasks.submit(_session(data), "second") == 2
    assert tasks.submit(_session(data), "third ✓") == 3
    assert sorted(p.name for p in data.inbox.iterdir()) == ["2.task", "3.task"]
    assert (data.inbox / "3.task").read_text(encoding="utf-8") == "third ✓"
    # Taken by the runner (renamed), a number is still used.
    for n in (2, 3):
        (data.inbox / f"{n}.task").rename(data.inbox / f"{n}.taken")
    assert tasks.submit(_session(data), "fourth") == 4


def test_an_idle_session_s_first_task_is_task_1(tmp_path: Path) -> None:
    data = _data(tmp_path, task="")
    assert tasks.count(data) == 0
    assert tasks.resolve(data, None) is None  # `wait` on an idle browser: the old way
    assert tasks.submit(_session(data), "go") == 1


def test_tasks_at_once_get_distinct_numbers(tmp_path: Path) -> None:
    data = _data(tmp_path)
    got: list[int] = []
    threads = [
        threading.Thread(target=lambda: got.append(tasks.submit(_session(data), "t")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(2, 10))


def test_refusals(tmp_path: Path) -> None:
    data = _data(tmp_path)
    with pytest.raises(Conflict, match="is exited: it takes no more tasks"):
        tasks.submit(_session(data, status="exited", agent="exited"), "x")
    with pytest.raises(Conflict, match="without its agent"):
        tasks.submit(_session(data, status="degraded", agent="exited"), "x")
    with pytest.raises(BadInput, match="empty"):
        tasks.submit(_session(data), "  \n")
    with pytest.raises(BadInput, match="too long"):
        tasks.submit(_session(data), "x" * (tasks.MAX_TASK_BYTES + 1))
    scripted = _data(tmp_path / "s", task="", script="print(1)\n")
    with pytest.raises(Conflict, match="runs a script"):
        tasks.submit(_session(scripted), "x")
    assert not data.inbox.exists() or not list(data.inbox.iterdir())


def test_each_task_keeps_its_result_and_the_default_is_the_latest(tmp_path: Path) -> None:
    data = _data(tmp_path)
    tasks.submit(_session(data), "second")
    assert tasks.read(data, 1) is None and tasks.resolve(data, None) == 2
    data.tasks_dir.mkdir()
    for n in (1, 2):
        res = {"status": "succeeded", "success": True, "final_text": f"r{n}", "task": n}
        (data.tasks_dir / f"{n}.json").write_text(json.dumps(res))
        data.result_file.write_text(json.dumps(res))
    one, two, latest = tasks.read(data, 1), tasks.read(data, 2), tasks.read(data, None)
    assert one and two and latest
    assert (one.final_text, two.final_text, latest.final_text) == ("r1", "r2", "r2")
    with pytest.raises(NotFound, match="has no task 3"):
        tasks.resolve(data, 3)


def test_a_result_from_before_follow_ups_is_task_1(tmp_path: Path) -> None:
    data = _data(tmp_path)
    data.result_file.write_text(json.dumps({"status": "failed", "final_text": "old"}))
    old = tasks.read(data, 1)
    assert old is not None and old.final_text == "old" and old.task is None


def test_the_script_is_written_for_the_container_to_read(tmp_path: Path) -> None:
    data = _data(tmp_path, task="", script="print('hi')\n")
    assert (data.script_dir / "agent_script.py").read_text() == "print('hi')\n"
    assert json.loads((data.script_dir / "args.json").read_text()) == ["--x", "1"]
    assert (data.script_dir / "agent_script.py").stat().st_mode & 0o777 == 0o400
    assert tasks.runs_script(data) and tasks.count(data) == 1


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (sessions.UpOptions(task="x", script="print(1)"), "a task or a script, not both"),
        (sessions.UpOptions(script_args=("a",)), "--script-arg needs --script"),
        (sessions.UpOptions(script="x" * (sessions.MAX_SCRIPT_BYTES + 1)), "too big"),
        (sessions.UpOptions(script="a\0b"), "NUL"),
        (sessions.UpOptions(script="x", script_args=("a\0",)), "NUL"),
        (sessions.UpOptions(script="x", script_args=("a",) * 101), "too many"),
        (sessions.UpOptions(agent_image="bad image"), "malformed --agent-image"),
    ],
)
def test_bad_script_options_are_one_line(opts: sessions.UpOptions, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        sessions.validate(opts)


def test_the_cli_says_what_is_wrong_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VNCSESS_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    missing = runner.invoke(app, ["up", "--script", str(tmp_path / "nope.py")])
    assert missing.exit_code == 2 and "cannot read script" in missing.output
    binary = tmp_path / "x.pyc"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8 text" in runner.invoke(app, ["up", "--script", str(binary)]).output
    orphan = runner.invoke(app, ["up", "--script-arg", "a"])
    assert orphan.exit_code == 2 and "--script-arg needs --script" in orphan.output
    bad = runner.invoke(app, ["result", "x", "--task", "0"])
    assert bad.exit_code == 2
    assert "Traceback" not in missing.output + orphan.output + bad.output


def test_the_api_routes_need_the_token_and_check_their_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VNCSESS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    token = "unit-test-token-0123456789"
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(api.create_app(config.load(), token, watch=False)) as c:
        assert c.post("/v1/sessions/abc/tasks", json={"task": "x"}).status_code == 401
        for body in ({}, {"task": ""}, {"task": "x", "extra": 1}):
            r = c.post("/v1/sessions/abc/tasks", json=body, headers=auth)
            assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        r = c.get("/v1/sessions/abc/result?task=0", headers=auth)
        assert r.status_code == 422
        r = c.post("/v1/sessions", json={"script": "x", "task": "y"}, headers=auth)
        assert r.status_code == 400 and "not both" in r.json()["detail"]
