"""Sessions on the real Docker engine: up, ls, inspect, logs, stop, isolation, concurrency,
and every bad input `up` can meet."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Cli, docker_json, project_leftovers
from vncsess.rfb import RfbClient

pytestmark = pytest.mark.docker


def _secret(url: str) -> str:
    return url.split("password=", 1)[1].split("&", 1)[0]


def test_up_serves_novnc_with_a_framebuffer_of_the_requested_size(cli: Cli) -> None:
    s = cli.up("--resolution", "1024x600", "--name", "first")
    assert s["status"] == "running"
    assert s["novnc_url"] == (
        f"http://127.0.0.1:{s['novnc_port']}/vnc.html?autoconnect=true&resize=scale"
        f"&view_only=true&password={_secret(s['novnc_url'])}"
    )
    page = urllib.request.urlopen(s["novnc_url"], timeout=5).read().decode()
    assert "noVNC" in page
    with RfbClient("127.0.0.1", s["novnc_port"]) as rfb:
        init = rfb.login(_secret(s["novnc_url"]))
        assert (init.width, init.height) == (1024, 600)
        assert len(rfb.frame()) == 1024 * 600 * init.bits_per_pixel // 8


def test_ls_inspect_logs_and_stop(cli: Cli) -> None:
    s = cli.up("--name", "lister")
    sid = s["session_id"]

    listed = {x["session_id"]: x for x in cli.json("ls")}
    assert sid in listed
    assert listed[sid]["resolution"] == "1280x720"
    assert listed[sid]["name"] == "lister"
    assert "password=***" in listed[sid]["novnc_url"]  # the secret only when asked

    table = cli.run("ls")
    assert sid in table.stdout and "running" in table.stdout

    detail = cli.json("inspect", "lister")  # by name
    assert detail["session_id"] == sid
    assert Path(detail["data_dir"]) == cli.home / "sessions" / sid
    assert detail["novnc_url"] == s["novnc_url"]

    logs = cli.run("logs", sid, "--service", "vnc", "--tail", "50")
    assert logs.returncode == 0
    assert "websockify" in logs.stdout.lower()

    stopped = cli.json("stop", sid)
    assert stopped == {"stopped": [sid]}
    cli.started.discard(sid)
    assert project_leftovers(sid) == []
    assert Path(detail["data_dir"]).is_dir(), "artifacts outlive the session"
    assert not (Path(detail["data_dir"]) / "secrets").exists()
    assert sid not in {x["session_id"] for x in cli.json("ls")}


def test_ls_reads_docker_not_the_data_dir(cli: Cli, tmp_path: Path) -> None:
    s = cli.up()
    other = Cli(home=tmp_path / "another-shell")  # as if started elsewhere
    import shutil

    shutil.rmtree(cli.home / "sessions" / s["session_id"])
    listed = {x["session_id"]: x for x in other.json("ls")}
    assert listed[s["session_id"]]["status"] == "running"
    assert other.run("stop", s["session_id"]).returncode == 0
    cli.started.discard(s["session_id"])
    assert project_leftovers(s["session_id"]) == []


def test_sessions_are_isolated(cli: Cli) -> None:
    a, b = cli.up(), cli.up()
    mounts = {}
    for s in (a, b):
        for svc in ("vnc", "agent"):
            info = docker_json("inspect", f"vncsess-{s['session_id']}-{svc}-1")[0]
            x11 = [m for m in info["Mounts"] if m["Destination"] == "/tmp/.X11-unix"]
            assert len(x11) == 1 and x11[0]["Type"] == "volume"
            mounts[s["session_id"], svc] = x11[0]["Name"]
            nets = set(info["NetworkSettings"]["Networks"])
            mounts[s["session_id"], svc + "-nets"] = nets  # type: ignore[assignment]
    for s in (a, b):
        sid = s["session_id"]
        assert mounts[sid, "vnc"] == mounts[sid, "agent"], "the pair shares its socket volume"
        assert not mounts[sid, "vnc-nets"] & mounts[sid, "agent-nets"], "and no network"  # type: ignore[operator]
    assert mounts[a["session_id"], "vnc"] != mounts[b["session_id"], "vnc"]

    # Each agent container sees one display socket: its own session's.
    inodes = {}
    for s in (a, b):
        out = subprocess.run(
            ["docker", "exec", f"vncsess-{s['session_id']}-agent-1", "ls", "-i", "/tmp/.X11-unix"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert out[1::2] == ["X99"]
        inodes[s["session_id"]] = out[0]
    vnc_out = subprocess.run(
        ["docker", "exec", f"vncsess-{a['session_id']}-vnc-1", "ls", "-i", "/tmp/.X11-unix"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert vnc_out[0] == inodes[a["session_id"]]


def test_ten_ups_at_once_get_distinct_ports(cli: Cli) -> None:
    def one(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vncsess", "up", "--json"],
            capture_output=True, text=True, env=cli.env(), timeout=300, check=False,
        )  # fmt: skip

    with ThreadPoolExecutor(10) as pool:
        procs = list(pool.map(one, range(10)))
    for p in procs:
        cli._remember(p.stdout)
    failures = [p.stderr for p in procs if p.returncode != 0]
    assert not failures, failures
    ports = {json.loads(p.stdout)["novnc_port"] for p in procs}
    assert len(ports) == 10
    stopped = cli.json("stop", *sorted(cli.started))["stopped"]
    assert len(stopped) == 10
    for sid in stopped:
        assert project_leftovers(sid) == []
    cli.started.clear()


def test_port_taken_is_a_clear_error(cli: Cli) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = cli.run("up", "--port", str(port))
    assert proc.returncode == 7
    assert f"port {port} is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_chosen_port_is_used(cli: Cli) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s = cli.up("--port", str(port))
    assert s["novnc_port"] == port


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["inspect", "nosuchid"], {}, 4, "no session 'nosuchid'"),
        (["logs", "nosuchid"], {}, 4, "no session"),
        (["stop", "nosuchid"], {}, 4, "no session"),
        (["up", "--resolution", "100x"], {}, 2, "malformed resolution"),
        (["ls"], {"DOCKER_HOST": "unix:///nonexistent.sock"}, 3, "Docker is not running"),
        (["ls"], {"PATH": "/nonexistent"}, 3, "Docker is not installed"),
        (["up"], {"DOCKER_CONFIG": "/nonexistent-docker-config"}, 3, "Compose v2"),
    ],
)
def test_bad_environment_and_input(
    cli: Cli, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    proc = cli.run(*args, **env)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # one line, and a hint


def test_failed_up_leaves_nothing_behind(cli: Cli) -> None:
    proc = cli.run("up", VNCSESS_READY_TIMEOUT="0.01")
    assert proc.returncode == 6, proc.stderr
    match = re.search(r"session ([0-9a-f]{8}) did not start", proc.stderr)
    assert match, proc.stderr
    sid = match.group(1)
    assert project_leftovers(sid) == []
    assert not (cli.home / "sessions" / sid).exists()


def test_build_failure_is_one_line(cli: Cli, tmp_path: Path) -> None:
    from vncsess import docker
    from vncsess.errors import BuildFailed

    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm-slim\nRUN exit 3\n")
    with pytest.raises(BuildFailed) as exc:
        list(docker.build(tmp_path, "vncsess-test-broken", {}))
    assert "building vncsess-test-broken failed" in exc.value.message


def test_ttl_ends_the_session_and_prune_removes_it(cli: Cli) -> None:
    s = cli.up("--ttl", "3s", "--record")
    sid = s["session_id"]
    assert s["expires_at"]
    deadline = time.monotonic() + 30
    status = ""
    while time.monotonic() < deadline:
        status = {x["session_id"]: x for x in cli.json("ls")}[sid]["status"]
        if status == "expired":
            break
        time.sleep(0.5)
    assert status == "expired"
    # Both containers ended themselves; the agent says why, the recording was finalised.
    res = cli.run("result", sid, "--json")
    assert json.loads(res.stdout)["result"]["status"] == "cancelled"
    recs = list((Path(s["data_dir"]) / "recordings").glob("*.mp4"))
    assert recs and not any(r.name.endswith(".partial.mp4") for r in recs)
    assert cli.json("prune") == {"stopped": [sid]}
    cli.started.discard(sid)
    assert project_leftovers(sid) == []
    assert Path(s["data_dir"]).is_dir()
