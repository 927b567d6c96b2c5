"""Secure by default, proved on the real engine: secrets at the RFB level, server-enforced
view-only, hardened containers, isolation between sessions, --no-internet, no key leaks."""

from __future__ import annotations

import hashlib
import http.server
import ipaddress
import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AGENT_IMAGE, LLM_FLAGS, VNC_IMAGE, Cli, docker_json
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
    secret = _secret(s["novnc_url"])
    # The secret with its last character changed (to "x", unless it was "x": then "y").
    near = secret[:7] + ("y" if secret[7:8] == "x" else "x")
    for wrong in ("", "WRONGpw1", near):
        with RfbClient("127.0.0.1", port) as c, pytest.raises(AuthFailed):
            c.login(wrong)
    with RfbClient("127.0.0.1", port) as c:
        assert c.login(secret).width == 1280


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


def _ip(container: str, network: str | None = None) -> str:
    nets = docker_json("inspect", container)[0]["NetworkSettings"]["Networks"]
    return str((nets[network] if network else next(iter(nets.values())))["IPAddress"])


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


def _host_can_connect(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


# A listener on every interface of a container, so "cannot connect" means the network
# refused, not that nothing listened (x11vnc and the runner's pages listen on loopback only).
_LISTEN = "import socket; s = socket.socket(); s.bind(('0.0.0.0', 7777)); s.listen(); input()"

# The X11 connection setup, read as far as the first screen's size: which display a socket
# leads to, and whether a cookie opens it. argv: socket path, cookie as hex.
_X_SCREEN = r"""
import socket, struct, sys
name, data = b"MIT-MAGIC-COOKIE-1", bytes.fromhex(sys.argv[2])
pad = lambda b: b + b"\0" * (-len(b) % 4)
s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect(sys.argv[1])
s.sendall(struct.pack("<cxHHHHxx", b"l", 11, 0, len(name), len(data)) + pad(name) + pad(data))
head = s.recv(8, socket.MSG_WAITALL)
if head[0] != 1:
    print("refused"); sys.exit()
body = s.recv(struct.unpack("<H", head[6:8])[0] * 4, socket.MSG_WAITALL)
vendor, formats = struct.unpack("<H", body[16:18])[0], body[21]
screen = 32 + vendor + (-vendor % 4) + 8 * formats
print(*struct.unpack("<HH", body[screen + 20 : screen + 24]))
"""


def _cookie(s: dict[str, Any]) -> str:
    return (Path(s["data_dir"]) / "secrets" / "xauth").read_bytes()[-16:].hex()


def test_one_session_cannot_reach_another(cli: Cli) -> None:
    a, b = cli.up("--resolution", "1024x600"), cli.up("--resolution", "800x600")
    agent_a, vnc_a = (f"vncsess-{a['session_id']}-{svc}-1" for svc in ("agent", "vnc"))
    vnc_b, agent_b = (f"vncsess-{b['session_id']}-{svc}-1" for svc in ("vnc", "agent"))
    listeners = [
        subprocess.Popen(
            ["docker", "exec", "-i", c, "python3", "-c", _LISTEN], stdin=subprocess.PIPE
        )
        for c in (vnc_b, agent_b)
    ]
    try:
        time.sleep(1)
        # Controls: each listener is reachable from this host through its bridge, so a
        # refusal below is the isolation's doing.
        assert _host_can_connect(_ip(agent_b), 7777)
        assert _host_can_connect(_ip(vnc_b), 7777) and _host_can_connect(_ip(vnc_b), 6080)

        for target in (vnc_b, agent_b):
            for port in (7777, 6080):
                assert not _can_connect(agent_a, _ip(target), port), (target, port)
        # The agents share one network, and the vnc containers another, each with
        # inter-container traffic off: on the same bridge, A's agent still cannot reach B's.
        for container, network in ((agent_a, "vncsess-agents"), (vnc_a, "vncsess-display")):
            net = docker_json("inspect", container)[0]["NetworkSettings"]["Networks"]
            assert set(net) == {network}, (container, set(net))
        assert not _can_connect(vnc_a, _ip(vnc_b), 7777)
        assert not _can_connect(vnc_a, _ip(vnc_b), 6080)
        # Not even its own display's network ports: only the X socket (and IPC) is shared.
        assert _host_can_connect(_ip(vnc_a), 6080)
        assert not _can_connect(agent_a, _ip(vnc_a), 6080)
    finally:
        for proc in listeners:
            proc.kill()
            proc.wait()

    # A's agent sees one X socket, and it leads to A's display (A's size), which A's cookie
    # opens and B's does not.
    assert _exec(agent_a, "ls", "-A", "/tmp/.X11-unix").stdout.split() == ["X99"]
    sock = "/tmp/.X11-unix/X99"
    assert _exec(agent_a, "python3", "-c", _X_SCREEN, sock, _cookie(a)).stdout.split() == [
        "1024",
        "600",
    ]
    assert _exec(agent_a, "python3", "-c", _X_SCREEN, sock, _cookie(b)).stdout.strip() == (
        "refused"
    )


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
    results: dict[str, Any] = {}
    for label, (s, _) in runs.items():
        proc = cli.run("wait", s["session_id"], "--timeout", "150", "--json")
        results[label] = json.loads(proc.stdout)["result"] if proc.stdout else proc.stderr
    assert "/from-open" in hits, "control case: a normal session's browser reaches it"
    assert "/from-closed" not in hits, "the --no-internet browser got out"
    closed = runs["closed"][0]
    agent = f"vncsess-{closed['session_id']}-agent-1"
    nets = docker_json("inspect", agent)[0]["NetworkSettings"]["Networks"]
    assert set(nets) == {"vncsess-agents-offline"}
    assert docker_json("network", "inspect", "vncsess-agents-offline")[0]["Internal"]
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
    for image in (VNC_IMAGE, AGENT_IMAGE):
        places[f"image {image}"] = json.dumps(docker_json("image", "inspect", image))
    leaks = [where for where, text in places.items() if key in text]
    assert not leaks, f"the key leaked into: {leaks}"
    # The agent did get the key (as a secret file), or the test proves nothing.
    agent = f"vncsess-{sid}-agent-1"
    assert key in _exec(agent, "cat", "/run/secrets/llm_env").stdout
    cli.run("stop", sid)
    cli.started.discard(sid)
    found = subprocess.run(
        ["grep", "-rl", key, str(data)], capture_output=True, text=True, check=False
    )
    assert found.stdout == "", "the key stayed in the data dir after stop"


# Every process in a container, as its own uid sees it: does its environment hold the key, and
# does its memory? /proc/PID/environ alone cannot tell for Chromium, which writes its process
# title over its environment block (a renderer's environ file holds the end of its title), so
# the writable memory is searched too. A control string that every process inherits (from the
# container's environment) must be found in each memory, or the search proves nothing. Input
# (key, control) comes on stdin, so it is in no command line; the output says per process what
# was found, never the environment itself.
_PROCESS_SCAN = r"""
import json, os, sys
want = json.load(sys.stdin)
key, control = want["key"].encode(), want["control"].encode()

def search(pid, needles):
    found, tail = set(), b""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            f = line.split()
            if not f[1].startswith("rw") or (len(f) > 5 and f[5].startswith("/")):
                continue  # writable and not a file: heap, stack, anonymous (the environ copies)
            start, end = (int(x, 16) for x in f[0].split("-"))
            tail = b""
            for at in range(start, end, 8 << 20):
                try:
                    mem.seek(at)
                    chunk = tail + mem.read(min(8 << 20, end - at))
                except OSError:
                    break
                found |= {n for n in needles if n in chunk}
                tail = chunk[-256:]
    return found

seen = []
for pid in sorted(filter(str.isdigit, os.listdir("/proc")), key=int):
    if int(pid) == os.getpid():
        continue
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        memory = search(pid, (key, control))
    except (FileNotFoundError, ProcessLookupError):
        continue  # it ended while we looked
    except OSError as e:
        seen.append({"pid": int(pid), "unreadable": str(e)})
        continue
    seen.append({"pid": int(pid), "command": command[:120], "environ": key in environ,
                 "memory": key in memory, "control": control in memory})
print(json.dumps(seen))
"""


def _process_scan(container: str, key: str, control: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["docker", "exec", "-i", container, "python3", "-c", _PROCESS_SCAN],
        input=json.dumps({"key": key, "control": control}),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    procs: list[dict[str, Any]] = json.loads(out)
    assert not [p for p in procs if "unreadable" in p], f"the scan is blind to some: {procs}"
    # The search finds an inherited variable in every process's memory: it would find a key.
    assert all(p["control"] for p in procs), procs
    return procs


def _kind(p: dict[str, Any]) -> str:
    """The runner, tini, or Chromium's browser / renderer / other helper process."""
    command = str(p["command"])
    if "-m vncsess_agent" in command:
        return "tini" if command.startswith("/usr/bin/tini") else "runner"
    if command.startswith("/usr/lib/chromium/chromium"):
        if "--type=" not in command:
            return "chromium browser"
        return "chromium renderer" if "--type=renderer" in command else "chromium helper"
    return command.split(" ", 1)[0]


def _leaks(procs: list[dict[str, Any]]) -> list[str]:
    """Where the key is, beyond the runner's own memory."""
    return [
        f"{_kind(p)} (pid {p['pid']}) {where}"
        for p in procs
        for where in ("environ", "memory")
        if p[where] and not (where == "memory" and _kind(p) == "runner")
    ]


def _state(s: dict[str, Any]) -> str:
    path = Path(s["data_dir"]) / "agent" / "status.json"
    try:
        return str(json.loads(path.read_text())["state"])
    except (OSError, ValueError, KeyError):
        return ""


def test_the_key_is_in_the_runner_only(
    cli: Cli, scripted_llm: Callable[..., Callable[[], dict[str, Any]]], tmp_path: Path
) -> None:
    """The runner holds the model key in its memory and uses it; no other process in the
    agent container (Chromium runs without its sandbox) has it in its environment or its
    memory, and neither does the runner's environment: while the agent works, after it
    finished, and in an idle session, whose Chromium the runner launches itself."""
    key = "sk-planted-" + secrets.token_hex(12)
    env_file = tmp_path / "keys.env"
    env_file.write_text(f"OPENAI_API_KEY={key}\n")
    task = "Open the test page, press the reveal button and report what it reveals."
    busy = cli.up("--task", task, *LLM_FLAGS, "--env-file", str(env_file))
    idle = cli.up("--env-file", str(env_file))
    calls = scripted_llm(busy["session_id"])
    agent = f"vncsess-{busy['session_id']}-agent-1"
    control = f"SESSION_ID={busy['session_id']}"
    scans: list[tuple[str, list[dict[str, Any]]]] = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        state = _state(busy)
        scans.append((state, _process_scan(agent, key, control)))
        if state in ("done", "failed"):
            break
    assert scans[-1][0] == "done", scans[-1]
    for state, procs in scans:
        assert not _leaks(procs), (state, _leaks(procs))
        runner = [p for p in procs if _kind(p) == "runner"]
        assert runner and runner[0]["memory"], (
            f"the scan did not find the key in the runner: {procs}"
        )
    # The scans saw the processes that matter, while the agent worked and after.
    wanted = {"runner", "chromium browser", "chromium renderer"}
    assert any(wanted <= {_kind(p) for p in procs} for state, procs in scans if state == "running")
    assert wanted <= {_kind(p) for p in scans[-1][1]}
    # The model was called with the key: the runner had it to give.
    assert {r["key_sha256"] for r in calls()["requests"]} == {
        hashlib.sha256(key.encode()).hexdigest()
    }
    deadline = time.monotonic() + 60
    while _state(idle) != "idle" and time.monotonic() < deadline:
        time.sleep(0.2)
    idle_scan = _process_scan(
        f"vncsess-{idle['session_id']}-agent-1", key, f"SESSION_ID={idle['session_id']}"
    )
    assert {"runner", "chromium browser"} <= {_kind(p) for p in idle_scan}, idle_scan
    assert not _leaks(idle_scan), _leaks(idle_scan)
    assert [p["memory"] for p in idle_scan if _kind(p) == "runner"] == [True]


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
