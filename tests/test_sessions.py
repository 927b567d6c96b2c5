"""Sessions on the real Docker engine: up, ls, inspect, logs, stop, isolation, concurrency,
and every bad input `up` can meet."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import (
    RUN_OWNER,
    VNC_IMAGE,
    Cli,
    _diagnose,
    _sweep,
    docker_json,
    project_leftovers,
)
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
    # What `up` waited for: the display's own word that it answers.
    assert (Path(s["data_dir"]) / "activity" / "display-ready").read_text().strip().isdigit()
    with RfbClient("127.0.0.1", s["novnc_port"]) as rfb:
        init = rfb.login(_secret(s["novnc_url"]))
        assert (init.width, init.height) == (1024, 600)
        assert len(rfb.frame()) == 1024 * 600 * init.bits_per_pixel // 8


def test_the_display_says_it_is_ready_only_once_it_answers(
    docker_ready: None, tmp_path: Path
) -> None:
    """`up` waits for activity/display-ready, not for x11vnc's banner (which a new client
    gets 0.1-0.3 s late while nobody is connected), so the vnc container must write it only
    once the display answers. With no display at all, its session program writes nothing;
    every other `up` in these tests is the case where it does."""
    activity = tmp_path / "activity"
    activity.mkdir(mode=0o777)
    activity.chmod(0o777)
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{activity}:/activity",
         "--entrypoint", "timeout", VNC_IMAGE, "2", "vnc-service", "session"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 124, proc.stderr  # still waiting for the display when cut off
    assert not (activity / "display-ready").exists()


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
    volumes: dict[tuple[str, str], str] = {}
    networks: dict[tuple[str, str], set[str]] = {}
    for s in (a, b):
        for svc in ("vnc", "agent"):
            info = docker_json("inspect", f"vncsess-{s['session_id']}-{svc}-1")[0]
            x11 = [m for m in info["Mounts"] if m["Destination"] == "/tmp/.X11-unix"]
            assert len(x11) == 1 and x11[0]["Type"] == "volume"
            volumes[s["session_id"], svc] = x11[0]["Name"]
            networks[s["session_id"], svc] = set(info["NetworkSettings"]["Networks"])
    for s in (a, b):
        sid = s["session_id"]
        assert volumes[sid, "vnc"] == volumes[sid, "agent"], "the pair shares its socket volume"
        assert not networks[sid, "vnc"] & networks[sid, "agent"], "and no network"
    assert volumes[a["session_id"], "vnc"] != volumes[b["session_id"], "vnc"]

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
    ],
)
def test_bad_environment_and_input(
    cli: Cli, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    proc = cli.run_with(args, env)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # one line, and a hint


# Where the docker CLI looks for system-wide plugins (besides $DOCKER_CONFIG/cli-plugins).
PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


def test_compose_missing_is_one_clear_error(cli: Cli, tmp_path: Path) -> None:
    """Compose v2 hidden wherever it is installed: per user (DOCKER_CONFIG), and system-wide
    (an empty directory mounted over each plugin directory, in a mount namespace of this
    command alone)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    hide = [d for d in PLUGIN_DIRS if Path(d).is_dir()]
    mounts = "".join(f"mount --bind {empty} {d} && " for d in hide)
    cmd = [sys.executable, "-m", "vncsess", "up"]
    if hide:
        assert os.geteuid() == 0, f"hiding {hide} needs root (CI runs as root)"
        cmd = ["unshare", "--mount", "--", "sh", "-c", mounts + 'exec "$@"', "sh", *cmd]
    env = cli.env(DOCKER_CONFIG=str(tmp_path / "docker-config"))
    check = subprocess.run(
        ["sh", "-c", mounts + "docker compose version"] if not hide else
        ["unshare", "--mount", "--", "sh", "-c", mounts + "docker compose version"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert check.returncode != 0, "compose is still visible: the test would prove nothing"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "Compose v2" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2  # the error and its hint


def test_failed_up_leaves_nothing_behind(cli: Cli) -> None:
    proc = cli.run("up", VNCSESS_READY_TIMEOUT="0.01")
    assert proc.returncode == 6, proc.stderr
    match = re.search(r"session ([0-9a-f]{8}) did not start", proc.stderr)
    assert match, proc.stderr
    sid = match.group(1)
    assert project_leftovers(sid) == []
    assert not (cli.home / "sessions" / sid).exists()


def test_build_failure_is_one_line(cli: Cli, tmp_path: Path) -> None:
    from vncsess.engines import docker
    from vncsess.errors import BuildFailed

    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm-slim\nRUN exit 3\n")
    with pytest.raises(BuildFailed) as exc:
        list(docker.build(tmp_path, "vncsess-test-broken", {}))
    assert exc.value.message.startswith("building vncsess-test-broken failed: ")
    assert "\n" not in exc.value.message and exc.value.hint


def test_ttl_ends_the_session_and_prune_removes_it(cli: Cli) -> None:
    s = cli.up("--ttl", "10s", "--record")
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
    # prune takes the sessions of this run's VNCSESS_OWNER (another run's are left alone):
    # ours must be among them, and no live session of this run may be.
    live = {x["session_id"] for x in cli.json("ls") if x["status"] not in ("exited", "expired")}
    pruned = cli.json("prune")["stopped"]
    assert sid in pruned
    assert not live & set(pruned)
    cli.started.discard(sid)
    assert project_leftovers(sid) == []
    assert Path(s["data_dir"]).is_dir()


def test_stop_all_with_an_owner_leaves_other_owners_sessions_alone(cli: Cli) -> None:
    """A CI job's teardown (`stop --all` with VNCSESS_OWNER set) on a shared engine."""
    ours = cli.up()["session_id"]
    theirs = cli.up(VNCSESS_OWNER=f"{RUN_OWNER}-neighbour")["session_id"]
    stopped = cli.json("stop", "--all")
    assert ours in stopped["stopped"] and theirs not in stopped["stopped"]
    assert {x["session_id"]: x for x in cli.json("ls")}[theirs]["status"] == "running"
    cli.started.discard(ours)
    assert project_leftovers(ours) == []


def test_stop_acts_on_every_id_it_finds_and_reports_the_rest(cli: Cli) -> None:
    """Like `docker rm nosuch real`: the real session goes, the missing one is reported,
    and the exit code says something was missing."""
    s = cli.up()
    sid = s["session_id"]
    proc = cli.run("stop", "nosuch", sid)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.split() == [sid]
    assert "no session 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr
    cli.started.discard(sid)
    assert project_leftovers(sid) == []


def test_a_name_belongs_to_one_live_session(cli: Cli) -> None:
    first = cli.up("--name", "only-one")
    proc = cli.run("up", "--name", "only-one", "--json")
    assert proc.returncode == 7, proc.stderr
    assert f"in use by session {first['session_id']}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2  # the error and its hint
    named = [x["session_id"] for x in cli.json("ls") if x["name"] == "only-one"]
    assert named == [first["session_id"]], "nothing was started"
    assert sorted(p.name for p in (cli.home / "sessions").iterdir()) == [first["session_id"]]
    assert cli.json("inspect", "only-one")["session_id"] == first["session_id"]


def test_the_run_owner_sets_test_sessions_apart_and_the_sweep_removes_strays(cli: Cli) -> None:
    """The harness itself: a session a test started without --json (the fixture never saw
    it, as a crashed test leaves it) carries this run's owner label, a failed test's report
    shows its containers' state and logs, and the end-of-run sweep removes it."""
    proc = cli.run("up")
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"session ([0-9a-f]{8})", proc.stderr)
    assert match, proc.stderr
    sid = match.group(1)
    assert sid not in cli.started, "the fixture must not know it, or this proves nothing"
    try:
        assert {s["session_id"]: s["owner"] for s in cli.json("ls")}[sid] == RUN_OWNER
        labels = docker_json("inspect", f"vncsess-{sid}-agent-1")[0]["Config"]["Labels"]
        assert labels["vncsess.owner"] == RUN_OWNER
        report = _diagnose(cli, sid)
        for svc in ("vnc", "agent"):
            assert re.search(rf'docker inspect {svc}: \{{"Status":"running"', report), report
        assert "vnc: ready after" in report, report  # the logs, too
        _sweep()
        assert project_leftovers(sid) == []
    finally:
        cli.started.add(sid)  # if anything above failed, the fixture removes it all the same


def test_an_ended_session_gives_its_name_up(cli: Cli) -> None:
    """As with `docker run --name`, but kinder: a session that ended by itself (here its
    time limit) no longer holds its name, and the name then means the live one."""
    # Long enough for `up` to see it start on a loaded machine (a session that expires
    # before its display answers fails `up`), short enough not to wait long.
    old = cli.up("--name", "reused", "--ttl", "8s")
    deadline, status = time.monotonic() + 40, ""
    while status != "expired" and time.monotonic() < deadline:
        status = {x["session_id"]: x["status"] for x in cli.json("ls")}[old["session_id"]]
        time.sleep(0.5)
    assert status == "expired"
    new = cli.up("--name", "reused")
    assert new["session_id"] != old["session_id"]
    assert cli.json("inspect", "reused")["session_id"] == new["session_id"]


def test_first_ups_at_once_leave_one_display_network(docker_ready: None) -> None:
    """Docker makes a second network of the same name when two creates race, and compose
    then refuses every session ("multiple networks with name"): seen with ten first `up`s.
    Here on a network name of the test's own, ten at once, three times."""
    from vncsess.engines import docker

    name = f"vncsess-test-display-{os.getpid()}"

    def networks() -> list[str]:
        return subprocess.run(
            ["docker", "network", "ls", "-q", "--filter", f"name=^{name}$"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip

    try:
        for _ in range(3):
            with ThreadPoolExecutor(max_workers=10) as pool:
                list(pool.map(lambda _: docker.ensure_network(name), range(10)))
            ids = networks()
            assert len(ids) == 1, f"one network, not several: {ids}"
            subprocess.run(["docker", "network", "rm", *ids], check=True, capture_output=True)
    finally:
        for left in networks():
            subprocess.run(["docker", "network", "rm", left], capture_output=True, check=False)


@pytest.mark.parametrize("flags", [(), ("--no-internet",)], ids=["agents", "offline"])
def test_an_up_on_an_engine_without_the_shared_networks_makes_them(
    cli: Cli, flags: tuple[str, ...]
) -> None:
    """A fresh engine has none of the shared networks: the first `up` must make both of
    its session's, whatever words this compose uses to say one is missing (CI's clean engine
    met "declared as external, but could not be found", which the retry did not know, and
    refused them all), and compose names only one at a time."""
    wanted = ["vncsess-display", "vncsess-agents-offline" if flags else "vncsess-agents"]
    for network in wanted:
        gone = subprocess.run(
            ["docker", "network", "rm", network], capture_output=True, text=True, check=False
        )
        inspect = ["docker", "network", "inspect", network]
        if subprocess.run(inspect, capture_output=True, check=False).returncode == 0:
            # a session outside this run is attached: docker refused the rm
            problem = f"{network} is in use by another session: {gone.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(problem)
            pytest.skip(problem)
    s = cli.up(*flags)
    agent = docker_json("inspect", f"vncsess-{s['session_id']}-agent-1")[0]
    assert set(agent["NetworkSettings"]["Networks"]) == {wanted[1]}
    s = cli.up()
    assert s["status"] == "running"
    with RfbClient("127.0.0.1", s["novnc_port"]) as rfb:
        rfb.login(_secret(s["novnc_url"]))
