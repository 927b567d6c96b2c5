"""The warm pool on the real engine: `pool fill` starts idle sessions, `up` claims them (each
once, whatever the number of `up`s at once), a claim gets fresh secrets, its own model,
keys and task, and `stop --all` leaves the pool alone unless told."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LLM_FLAGS, Cli
from vncsess.rfb import AuthFailed, RfbClient

pytestmark = pytest.mark.docker

FAST = "0"  # VNCSESS_DEMO_STEP_DELAY: the demo model without its pauses


def _fill(cli: Cli, n: int, *args: str, **env: str) -> list[str]:
    proc = cli.run_with(["pool", "fill", str(n), "--json", *args], env)
    assert proc.returncode == 0, f"pool fill failed ({proc.returncode}): {proc.stderr}"
    ids: list[str] = json.loads(proc.stdout)["pool"]
    cli.started.update(ids)  # the fixture stops them, claimed or not
    return ids


def _pool_ls(cli: Cli) -> dict[str, dict[str, Any]]:
    return {s["session_id"]: s for s in cli.json("pool", "ls")}


def _secret(url: str) -> str:
    return url.split("password=", 1)[1].split("&", 1)[0]


def _passwords(data_dir: str) -> tuple[str, str]:
    """(view, control) as x11vnc reads them, from the session's passwdfile."""
    lines = (Path(data_dir) / "secrets" / "vnc_passwd").read_text().splitlines()
    return lines[2], lines[0]


def test_concurrent_ups_claim_each_pool_session_once(cli: Cli) -> None:
    pool = _fill(cli, 5)
    assert len(pool) == 5
    listed = _pool_ls(cli)
    assert set(listed) == set(pool)
    assert {s["pool"] for s in listed.values()} == {"idle"}

    def up(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vncsess", "up", "--json"],
            capture_output=True, text=True, timeout=600, env=cli.env(), check=False,
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=20) as workers:
        procs = list(workers.map(up, range(20)))
    results = []
    for proc in procs:
        cli._remember(proc.stdout)
        assert proc.returncode == 0, f"an up failed ({proc.returncode}): {proc.stderr}"
        results.append(json.loads(proc.stdout))
    ids = [r["session_id"] for r in results]
    assert len(set(ids)) == 20, f"two ups got the same session: {sorted(ids)}"
    claimed = [r["session_id"] for r in results if r["pool"] == "claimed"]
    cold = [r["session_id"] for r in results if r["pool"] is None]
    assert sorted(claimed) == sorted(pool), "each pool session is claimed, once"
    assert len(cold) == 15
    # A claimed session is the claimer's, listed as such, and out of the pool for good.
    assert _pool_ls(cli) == {}
    every = {s["session_id"]: s for s in cli.json("ls")}
    assert all(every[sid]["pool"] == "claimed" for sid in claimed)


def test_a_claim_gets_fresh_secrets_and_the_old_ones_are_refused(cli: Cli) -> None:
    (sid,) = _fill(cli, 1)
    before = _pool_ls(cli)[sid]
    assert "password=" not in before["novnc_url"], "a pool session's URL is nobody's"
    old_view, old_control = _passwords(before["data_dir"])
    port = before["novnc_port"]
    with RfbClient("127.0.0.1", port) as c:  # they worked before the claim
        c.login(old_view)

    s = cli.up("--name", "claimed-one")
    assert s["session_id"] == sid and s["pool"] == "claimed"
    assert s["name"] == "claimed-one" and s["owner"]
    new_view, new_control = _passwords(s["data_dir"])
    assert _secret(s["novnc_url"]) == new_view
    assert {new_view, new_control}.isdisjoint({old_view, old_control})
    for old in (old_view, old_control):
        with RfbClient("127.0.0.1", port) as c, pytest.raises(AuthFailed):
            c.login(old)
    with RfbClient("127.0.0.1", port) as c:
        assert c.login(new_view).width == 1280
    with RfbClient("127.0.0.1", port) as c:
        assert c.login(new_control).width == 1280


def test_a_demo_task_runs_in_a_pooled_session(cli: Cli) -> None:
    # Filled with a slow demo model; the claimer's own setting must be the one applied.
    (sid,) = _fill(cli, 1, VNCSESS_DEMO_STEP_DELAY="9")
    s = cli.up("--task", "demo", "--ttl", "10m", VNCSESS_DEMO_STEP_DELAY=FAST)
    assert s["session_id"] == sid and s["pool"] == "claimed"
    assert s["expires_at"] is not None
    proc = cli.run("wait", sid, "--timeout", "120", "--json")
    logs = cli.run("logs", sid, "--service", "agent").stdout
    assert proc.returncode == 0, proc.stderr + logs[-3000:]
    res = json.loads(proc.stdout)["result"]
    assert res["success"] is True and res["task"] == 1
    assert "The demo secret is: vnc-rocks-42" in res["final_text"]
    assert f"demo_step_delay={FAST} " in logs, logs[-3000:]


def test_a_pooled_session_takes_the_claimers_model_and_keys(
    cli: Cli, scripted_llm: Callable[..., Callable[[], dict[str, Any]]], tmp_path: Path
) -> None:
    (sid,) = _fill(cli, 1)
    env = tmp_path / "keys.env"
    env.write_text("OPENAI_API_KEY=sk-test-pooled-claim\n")
    task = "Open the test page, press the reveal button and report what it reveals."
    s = cli.up("--task", task, *LLM_FLAGS, "--env-file", str(env))
    assert s["session_id"] == sid and s["pool"] == "claimed"
    assert s["llm"] == "openai:scripted-model"
    calls = scripted_llm(sid)
    proc = cli.run("wait", sid, "--timeout", "120", "--json")
    assert proc.returncode == 0, proc.stderr + cli.run("logs", sid).stdout[-3000:]
    res = json.loads(proc.stdout)["result"]
    seen = calls()
    assert res["success"] is True and res["llm"] == "openai:scripted-model"
    assert f"revealed: {seen['token']}" in res["final_text"]
    assert all(r["model"] == "scripted-model" for r in seen["requests"])
    key_sha = hashlib.sha256(b"sk-test-pooled-claim").hexdigest()
    assert {r["key_sha256"] for r in seen["requests"]} == {key_sha}
    logs = cli.run("logs", sid)
    assert "sk-test-pooled-claim" not in logs.stdout + logs.stderr


def test_another_resolution_is_not_claimed(cli: Cli) -> None:
    (sid,) = _fill(cli, 1)
    s = cli.up("--resolution", "1024x768")
    assert s["session_id"] != sid and s["pool"] is None
    assert s["resolution"] == "1024x768"
    assert _pool_ls(cli)[sid]["pool"] == "idle"


def test_stop_all_leaves_the_pool_unless_asked(cli: Cli) -> None:
    (sid,) = _fill(cli, 1)
    cold = cli.up("--resolution", "800x600")["session_id"]
    stopped = cli.json("stop", "--all")["stopped"]
    assert cold in stopped and sid not in stopped
    assert sid in _pool_ls(cli)
    stopped = cli.json("stop", "--all", "--pool")["stopped"]
    assert sid in stopped
    assert _pool_ls(cli) == {}
    cli.started -= {sid, cold}


def test_a_claims_ttl_counts_from_the_claim(cli: Cli) -> None:
    (sid,) = _fill(cli, 1)
    time.sleep(6)  # the pool session has lived a while before its claim
    s = cli.up("--ttl", "8s")
    assert s["session_id"] == sid and s["pool"] == "claimed"
    time.sleep(4)  # 10 s after the pool session started, 4 s after the claim
    assert cli.json("inspect", sid)["status"] == "running", "the TTL counted from the start"
    deadline = time.monotonic() + 40
    while (shown := cli.json("inspect", sid))["status"] != "expired":
        assert time.monotonic() < deadline, f"not expired: {shown['status']}"
        time.sleep(1)
    assert shown["expired_by"] == "ttl"


def _wait_pool(cli: Cli, n: int, timeout: float = 90) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        pool = {k: v for k, v in _pool_ls(cli).items() if v["pool"] == "idle"}
        cli.started.update(pool)
        if len(pool) == n:
            return pool
        assert time.monotonic() < deadline, f"the pool holds {sorted(pool)}, not {n}"
        time.sleep(0.5)


def test_serve_keeps_the_pool_topped_up_and_its_creates_claim(cli: Cli) -> None:
    from tests.test_api import Collector, start_server

    server = start_server(cli, "--pool", "2")
    try:
        first = _wait_pool(cli, 2)
        s = server.create(name="claimed-one")
        assert s["session_id"] in first and s["pool"] == "claimed"
        # The event stream says so, with the claimer's facts (its start announced nobody's).
        sid = s["session_id"]
        seen = Collector(server, f"/v1/sessions/{sid}/events?last_event_id=0")
        claimed = seen.until("session.claimed", 30)[-1]
        seen.close()
        assert claimed["name"] == "claimed-one" and claimed["llm"] == s["llm"], claimed
        created = [e for e in seen.seen if e["type"] == "session.created"]
        assert len(created) == 1 and created[0]["pool"] is True, created  # faces leave it out
        refilled = _wait_pool(cli, 2)
        assert s["session_id"] not in refilled
        assert len(set(refilled) - set(first)) == 1, "one new pool session took its place"
    finally:
        server.stop()  # SIGTERM: serve ends, and its keeper with it
    assert server.proc.returncode is not None
    assert set(_pool_ls(cli)) == set(refilled), "the pool stays after serve"
