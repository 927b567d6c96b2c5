"""Secure by default, proved on the real engine: secrets at the RFB level, server-enforced
view-only, hardened containers, isolation between sessions, --no-internet, no key leaks."""

from __future__ import annotations

import http.server
import ipaddress
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LLM_FLAGS, Cli, docker_json
from vncsess.rfb import SEC_VNC, AuthFailed, RfbClient

pytestmark = pytest.mark.docker


def _secret(url: str) -> str:
    return url.split("password=", 1)[1].split("&", 1)[0]


def _exec(container: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", container, *cmd], capture_output=True, text=True, check=check
    )


# XQueryPointer through libX11, run inside the vnc container (it has python3 and libX11).
_POINTER = r"""
import ctypes
x = ctypes.cdll.LoadLibrary("libX11.so.6")
x.XOpenDisplay.restype = ctypes.c_void_p
x.XDefaultRootWindow.restype = ctypes.c_ulong
x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
d = x.XOpenDisplay(b":99")
assert d, "cannot open display"
root = x.XDefaultRootWindow(d)
w1, w2 = ctypes.c_ulong(), ctypes.c_ulong()
rx, ry, wx, wy, m = (ctypes.c_int() for _ in range(5))
x.XQueryPointer.argtypes = [ctypes.c_void_p, ctypes.c_ulong] + [ctypes.c_void_p] * 7
x.XQueryPointer(d, root, ctypes.byref(w1), ctypes.byref(w2), ctypes.byref(rx),
                ctypes.byref(ry), ctypes.byref(wx), ctypes.byref(wy), ctypes.byref(m))
print(rx.value, ry.value)
"""


def _pointer(sid: str) -> tuple[int, int]:
    x, y = _exec(f"vncsess-{sid}-vnc-1", "python3", "-c", _POINTER).stdout.split()
    return int(x), int(y)


def _move(port: int, password: str, x: int, y: int) -> None:
    with RfbClient("127.0.0.1", port) as c:
        c.login(password)
        for step in range(5):  # a few events, as a hand on a mouse would send
            c.pointer(x - 4 + step, y)
        c.pointer(x, y)
        c.frame()  # a round trip: the server has handled our input before we hang up


def test_secret_is_required_at_the_rfb_level(cli: Cli) -> None:
    s = cli.up()
    port = s["novnc_port"]
    with RfbClient("127.0.0.1", port) as c:
        assert c.hello() == [SEC_VNC], "no unauthenticated security type is offered"
    for wrong in ("", "WRONGpw1", _secret(s["novnc_url"])[:7] + "x"):
        with RfbClient("127.0.0.1", port) as c, pytest.raises(AuthFailed):
            c.login(wrong)
    with RfbClient("127.0.0.1", port) as c:
        assert c.login(_secret(s["novnc_url"])).width == 1280


def test_view_only_is_enforced_by_the_server_and_control_gives_input(cli: Cli) -> None:
    s = cli.up()
    sid, port = s["session_id"], s["novnc_port"]
    before = _pointer(sid)
    target = (before[0] + 200) % 1000 + 50, (before[1] + 150) % 600 + 50
    _move(port, _secret(s["novnc_url"]), *target)
    assert _pointer(sid) == before, "a view-only viewer moved the pointer"

    ctl = cli.json("control", sid)
    assert ctl["control"] == "controlled"
    assert "view_only" not in ctl["control_url"]
    _move(port, _secret(ctl["control_url"]), *target)
    assert _pointer(sid) == target, "the control URL gives no input"
    listed = {x["session_id"]: x for x in cli.json("ls")}
    assert listed[sid]["control"] == "controlled"
    assert cli.json("resume", sid)["control"] == "watching"
    # Resume rotates the interactive password: the old control URL no longer gets in,
    # while the watch URL still does.
    with RfbClient("127.0.0.1", port) as c, pytest.raises(AuthFailed):
        c.login(_secret(ctl["control_url"]))
    with RfbClient("127.0.0.1", port) as c:
        assert c.login(_secret(s["novnc_url"])).width == 1280


def test_containers_are_hardened(cli: Cli) -> None:
    s = cli.up("--cpus", "1.25", "--memory", "1500m")
    for svc in ("vnc", "agent"):
        info = docker_json("inspect", f"vncsess-{s['session_id']}-{svc}-1")[0]
        hc = info["HostConfig"]
        user = info["Config"]["User"]
        assert user and user.split(":")[0] not in ("0", "root"), user
        assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
        assert hc["ReadonlyRootfs"] is True
        assert "no-new-privileges:true" in hc["SecurityOpt"]
        assert not hc["Privileged"]
        assert hc["PidsLimit"] and hc["PidsLimit"] > 0
        assert hc["NanoCpus"] > 0 and hc["Memory"] > 0
        assert not any("docker.sock" in m["Source"] for m in info["Mounts"])
        # The running process really is unprivileged.
        status = _exec(info["Name"].lstrip("/"), "cat", "/proc/1/status").stdout
        uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
        assert uid_line.split()[1] != "0"
        cap_eff = next(ln for ln in status.splitlines() if ln.startswith("CapEff:"))
        assert int(cap_eff.split()[1], 16) == 0
        if svc == "agent":
            assert hc["NanoCpus"] == 1_250_000_000
            assert hc["Memory"] == 1500 * 1024 * 1024
            assert not hc["PortBindings"], "the agent publishes nothing"
        else:
            bindings = hc["PortBindings"]["6080/tcp"]
            assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    # The display: a cookie is required and X does not listen on TCP.
    vnc = f"vncsess-{s['session_id']}-vnc-1"
    assert _exec(vnc, "xdpyinfo", "-display", ":99").returncode == 0
    no_cookie = _exec(
        vnc, "env", "XAUTHORITY=/dev/null", "xdpyinfo", "-display", ":99", check=False
    )
    assert no_cookie.returncode != 0
    tcp = _exec(vnc, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/6099", check=False)
    assert tcp.returncode != 0, "X answers on TCP port 6099"


def _ip(container: str) -> str:
    nets = docker_json("inspect", container)[0]["NetworkSettings"]["Networks"]
    return next(iter(nets.values()))["IPAddress"]


_CONNECT = """
import socket, sys
s = socket.socket(); s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open")
except OSError as e:
    print("closed", e)
"""


def _can_connect(container: str, host: str, port: int) -> bool:
    out = _exec(container, "python3", "-c", _CONNECT, host, str(port)).stdout
    return out.startswith("open")


def test_one_session_cannot_reach_another(cli: Cli) -> None:
    a, b = cli.up(), cli.up()
    agent_a = f"vncsess-{a['session_id']}-agent-1"
    vnc_b, agent_b = (f"vncsess-{b['session_id']}-{svc}-1" for svc in ("vnc", "agent"))
    assert _exec(agent_a, "ls", "/tmp/.X11-unix").stdout.split() == ["X99"]
    for target in (vnc_b, agent_b):
        for port in (6080, 5900, 8765):
            assert not _can_connect(agent_a, _ip(target), port), (target, port)
    # The vnc containers share one display network, with inter-container traffic off.
    vnc_a = f"vncsess-{a['session_id']}-vnc-1"
    net = docker_json("inspect", vnc_a)[0]["NetworkSettings"]["Networks"]
    assert set(net) == {"vncsess-display"}
    assert not _can_connect(vnc_a, _ip(vnc_b), 6080)
    assert not _can_connect(vnc_a, _ip(vnc_b), 5900)
    # Not even its own display's network ports: only the X socket is shared.
    assert not _can_connect(agent_a, _ip(f"vncsess-{a['session_id']}-vnc-1"), 6080)
    # B's display with A's cookie from A's container: B's socket is simply not there.
    assert _exec(agent_a, "test", "-S", "/tmp/.X11-unix/X99").returncode == 0


@pytest.fixture
def host_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on this machine, reachable from containers through the bridge."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"outside")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()


def test_no_internet_confines_the_browser(
    cli: Cli,
    host_server: tuple[int, list[str]],
    scripted_llm: Callable[..., Callable[[], dict[str, Any]]],
) -> None:
    """The browser of a --no-internet session cannot open an address outside the session
    (here: a server on this machine, the nearest thing outside), while a normal session's
    browser can, and the session's own containers stay reachable."""
    port, hits = host_server
    ipam = docker_json("network", "inspect", "bridge")[0]["IPAM"]["Config"][0]
    # The default bridge's gateway: this machine itself (Docker takes the subnet's first host).
    outside = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    runs = {}
    for label, extra in (("open", ()), ("closed", ("--no-internet",))):
        task = f"Open http://{outside}:{port}/from-{label} then press the reveal button."
        s = cli.up("--task", task, *LLM_FLAGS, "--max-steps", "6", *extra)
        runs[label] = (s, scripted_llm(s["session_id"]))
    results = {}
    for label, (s, _) in runs.items():
        proc = cli.run("wait", s["session_id"], "--timeout", "150", "--json")
        results[label] = json.loads(proc.stdout)["result"] if proc.stdout else proc.stderr
    assert "/from-open" in hits, "control case: a normal session's browser reaches it"
    assert "/from-closed" not in hits, "the --no-internet browser got out"
    closed = runs["closed"][0]
    assert docker_json("network", "inspect", f"vncsess-{closed['session_id']}_agent")[0]["Internal"]
    # Inside the session everything still works: the model and its page were reached.
    assert results["closed"]["success"] is True, results["closed"]
    assert runs["closed"][1]()["page_loads"] >= 1
    assert cli.json("inspect", closed["session_id"])["no_internet"] is True


def test_a_planted_key_appears_nowhere(cli: Cli, tmp_path: Path) -> None:
    key = "sk-planted-" + secrets.token_hex(12)
    env_file = tmp_path / "keys.env"
    env_file.write_text(f"OPENAI_API_KEY={key}\n")
    up = cli.run(
        "up", "--json", "--wait", "--timeout", "120", "--env-file", str(env_file),
        "--llm", "openai:gpt-test", "--base-url", "http://127.0.0.1:9/v1",
        "--task", "Say hello", "--max-steps", "2",
    )  # fmt: skip
    assert up.returncode == 1, up.stderr  # the model is unreachable: a failed result
    s = json.loads(up.stdout)
    sid = s["session_id"]
    cli.started.add(sid)
    assert s["result"]["success"] is False and s["result"]["errors"]
    places = {
        "up output": up.stdout + up.stderr,
        "ls --json": cli.run("ls", "--json", "--show-secrets").stdout,
        "inspect": cli.run("inspect", sid, "--json").stdout,
        "logs": cli.run("logs", sid).stdout,
        "result": cli.run("result", sid, "--json").stdout,
    }
    for svc in ("vnc", "agent"):
        places[f"docker inspect {svc}"] = json.dumps(
            docker_json("inspect", f"vncsess-{sid}-{svc}-1")
        )
    data = Path(s["data_dir"])
    for f in ("compose.yml", "session.env", "agent/result.json", "agent/status.json"):
        places[f] = (data / f).read_text()
    for image in ("vncsess-vnc", "vncsess-agent"):
        places[f"image {image}"] = json.dumps(docker_json("image", "inspect", image))
    leaks = [where for where, text in places.items() if key in text]
    assert not leaks, f"the key leaked into: {leaks}"
    # The agent did get the key (as a secret file), or the test proves nothing.
    agent = f"vncsess-{sid}-agent-1"
    assert key in _exec(agent, "cat", "/run/secrets/llm_env").stdout
    assert key not in _exec(agent, "cat", "/proc/1/environ").stdout
    cli.run("stop", sid)
    cli.started.discard(sid)
    found = subprocess.run(
        ["grep", "-rl", key, str(data)], capture_output=True, text=True, check=False
    )
    assert found.stdout == "", "the key stayed in the data dir after stop"


def test_control_pauses_the_agent_until_resume(cli: Cli) -> None:
    s = cli.up("--task", "demo", VNCSESS_DEMO_STEP_DELAY="1.5")
    sid = s["session_id"]
    status_file = Path(s["data_dir"]) / "agent" / "status.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the agent is really working
        st = json.loads(status_file.read_text()) if status_file.exists() else {}
        if st.get("state") == "running" and st.get("url"):
            break
        time.sleep(0.1)
    cli.json("control", sid)
    time.sleep(1)  # let a step that was already under way finish
    paused = json.loads(status_file.read_text())
    assert paused["state"] == "paused"
    time.sleep(6)  # four demo steps' worth: a running agent would have finished by now
    still = json.loads(status_file.read_text())
    assert still["step"] == paused["step"] and still["state"] == "paused"
    assert not (Path(s["data_dir"]) / "agent" / "result.json").exists()
    assert cli.json("inspect", sid)["control"] == "controlled"
    cli.json("resume", sid)
    done = cli.run("wait", sid, "--timeout", "90", "--json")
    assert done.returncode == 0, done.stderr
    assert "demo secret" in json.loads(done.stdout)["result"]["final_text"].lower()
