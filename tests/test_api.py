"""`vncsess serve` on the real engine: a real uvicorn (`vncsess serve --port 0`) in a
subprocess, driven through HTTP. The seeds' exact requests, sessions shared with the CLI,
events of a real demo agent with replay (also across a restart of serve), recordings over
HTTP Range, ten creates at once, and schemathesis against the served /openapi.json."""

from __future__ import annotations

import json
import queue
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.conftest import Cli, project_leftovers
from tests.test_recording import probe_and_decode
from vncsess.rfb import RfbClient

pytestmark = pytest.mark.docker

TOKEN = "api-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Server:
    """One `vncsess serve` process, its stderr kept (to check that no token is logged)."""

    cli: Cli
    proc: subprocess.Popen[str]
    base: str
    stderr: list[str] = field(default_factory=list)

    @property
    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=AUTH, timeout=300)

    def create(self, path: str = "/v1/sessions", **body: Any) -> dict[str, Any]:
        with self.http as c:
            r = c.post(path, json=body)
        assert r.status_code in (200, 201), r.text
        data: dict[str, Any] = r.json()
        self.cli.started.add(data["session_id"])
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def start_server(cli: Cli, *args: str, **env: str) -> Server:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vncsess", "serve", "--port", "0", *args],
        env=cli.env(VNCSESS_API_TOKEN=TOKEN, **env),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    base = ""
    deadline = time.monotonic() + 60
    while not base and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"API at (http://127\.0\.0\.1:\d+)/v1", line)
        base = m.group(1) if m else ""
    assert base, f"serve did not start: {''.join(lines)}"
    server = Server(cli, proc, base, lines)

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    for _ in range(100):
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("serve does not answer /healthz")


@pytest.fixture
def server(cli: Cli) -> Iterator[Server]:
    s = start_server(cli, VNCSESS_DEMO_STEP_DELAY="1")
    yield s
    s.stop()


def _secret(url: str) -> str:
    return url.split("password=", 1)[1].split("&", 1)[0]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def _sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Server-Sent Events from a line iterator: {"event", "id", "data"} each."""
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in event or "event" in event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        event[key] = event[key] + "\n" + value if key == "data" and key in event else value


# ------------------------------------------------------------------ the seeds, and the CLI


def test_seed_request_serves_a_desktop_shared_with_the_cli(cli: Cli, server: Server) -> None:
    # browser-use-vnc's README, word for word, plus the token.
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", "-H", "Content-Type: application/json",
         "-H", f"Authorization: Bearer {TOKEN}", "-d", "{}", f"{server.base}/sessions"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    seed = json.loads(out)
    assert set(seed) == {"session_id", "novnc_url"}
    sid = seed["session_id"]
    cli.started.add(sid)
    page = urllib.request.urlopen(seed["novnc_url"], timeout=10).read().decode()
    assert "noVNC" in page
    with RfbClient("127.0.0.1", int(seed["novnc_url"].split(":")[2].split("/")[0])) as rfb:
        init = rfb.login(_secret(seed["novnc_url"]))
        assert (init.width, init.height) == (1280, 720)
        assert len(rfb.frame()) == 1280 * 720 * init.bits_per_pixel // 8

    http = server.http
    detail = http.get(f"/sessions/{sid}").json()
    assert set(detail) == {
        "session_id",
        "compose_project",
        "novnc_port",
        "url",
        "status",
        "started_at",
    }
    assert detail["compose_project"] == f"vncsess-{sid}"
    assert detail["url"] == seed["novnc_url"] and detail["status"] == "running"

    # The API's session is the CLI's, and the other way round.
    assert sid in {s["session_id"] for s in cli.json("ls")}
    b = cli.up("--name", "from-cli")
    listed = {s["session_id"]: s for s in http.get("/v1/sessions").json()}
    assert {sid, b["session_id"]} <= set(listed)
    assert "password=***" in listed[sid]["novnc_url"]  # as `ls`: secrets only when asked
    assert [s["session_id"] for s in http.get("/v1/sessions", params={"name": "m-cl"}).json()] == [
        b["session_id"]
    ]
    assert http.get("/v1/sessions/from-cli").json()["novnc_url"] == b["novnc_url"]

    # 401 on every route, on the real server, without the token or with a wrong one. No
    # body (were auth broken, a create would fail on it), and prune is left to the unit
    # test, which has no Docker to prune.
    schema = http.get("/openapi.json").json()
    for path, ops in schema["paths"].items():
        for method in set(ops) - ({"post"} if path == "/v1/prune" else set()):
            url = path.replace("{session_id}", sid).replace("{name}", "x.mp4")
            for headers in ({}, {"Authorization": "Bearer not-the-token-0123456789"}):
                r = httpx.request(method, server.base + url, headers=headers, timeout=30)
                assert r.status_code == (200 if path == "/healthz" else 401), (method, path)

    # wait: a long poll that holds up nothing, and says 504 when its time is up.
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        pending = pool.submit(http.get, f"/v1/sessions/{sid}/wait", params={"timeout": 3})
        assert http.get(f"/v1/sessions/{sid}").status_code == 200
        assert not pending.done(), "a GET was answered while the wait went on"
        timed_out = pending.result()
    assert timed_out.status_code == 504 and time.monotonic() - t0 >= 3
    assert timed_out.json()["type"] == "urn:vncsess:problem:wait-timeout"

    shot = http.get(f"/v1/sessions/{sid}/screenshot.png")
    assert shot.headers["content-type"] == "image/png" and _png_size(shot.content) == (1280, 720)

    ctl = http.post(f"/v1/sessions/{sid}/control").json()
    assert ctl["control"] == "controlled" and "view_only" not in ctl["control_url"]
    assert http.post(f"/v1/sessions/{sid}/resume").json()["control"] == "watching"

    # Logs as SSE: a dump ends with `end`; a follower's docker command goes with its client.
    with http.stream("GET", f"/v1/sessions/{sid}/logs", params={"tail": 5}) as r:
        got = list(_sse(r.iter_lines()))
    assert got[-1]["event"] == "end" and any("vnc-1" in e.get("data", "") for e in got)
    with http.stream("GET", f"/v1/sessions/{sid}/logs", params={"follow": True, "tail": 1}) as r:
        first = next(_sse(r.iter_lines()))
        assert first["event"] == "log"
    assert _gone(lambda: _processes(f"vncsess-{sid} logs") == 0), "a follower outlived its client"

    assert http.delete(f"/v1/sessions/{sid}").json() == {"stopped": [sid]}
    cli.started.discard(sid)
    assert project_leftovers(sid) == []
    assert sid not in {s["session_id"] for s in cli.json("ls")}
    assert http.get(f"/v1/sessions/{sid}").status_code == 404

    # A client that leaves mid-create leaves a session that is listed and can be stopped.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.base}/v1/sessions", json={"name": "abandoned"}, headers=AUTH, timeout=0.5
        )
    found: list[dict[str, Any]] = []

    def abandoned_is_listed() -> bool:
        found.extend(cli.json("ls"))
        return any(s["name"] == "abandoned" and s["status"] == "running" for s in found[-20:])

    assert _gone(abandoned_is_listed, 120), "the abandoned create never showed in ls"
    abandoned = next(s["session_id"] for s in found if s["name"] == "abandoned")
    cli.started.add(abandoned)
    assert http.delete("/v1/sessions/abandoned").json() == {"stopped": [abandoned]}
    cli.started.discard(abandoned)
    assert project_leftovers(abandoned) == []

    # The token was printed at start, and never logged after (even when sent in a URL), and
    # no session file holds it.
    http.get("/v1/sessions", params={"token": TOKEN})
    time.sleep(0.5)
    banner = [i for i, line in enumerate(server.stderr) if TOKEN in line]
    assert banner and max(banner) < 6, "the token appears in the log"
    assert any("token=***" in line for line in server.stderr)
    files = [f for f in (cli.home / "sessions").rglob("*") if f.is_file()]
    assert files and not [f for f in files if TOKEN.encode() in f.read_bytes()]


def _processes(pattern: str) -> int:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return sum(pattern in line for line in out.stdout.splitlines())


def _gone(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


def test_visual_runtime_body_recording_range_and_stop(
    cli: Cli, server: Server, tmp_path: Path
) -> None:
    # The visual-runtime README's request body, as it is.
    body = {
        "resolution": "1600x900",
        "timeout_minutes": 60,
        "idle_timeout_minutes": 15,
        "enable_recording": True,
        "enable_file_transfer": True,
    }
    s = server.create("/api/visual-sessions", **body)
    sid = s["session_id"]
    assert s["resolution"] == "1600x900" and s["timeout_minutes"] == 60
    assert s["expires_at"] and s["idle_timeout_minutes"] == 15
    assert not s["warnings"]  # both idle timeout and file transfer are enforced now
    assert s["enable_file_transfer"] is True
    with RfbClient("127.0.0.1", int(s["novnc_url"].split(":")[2].split("/")[0])) as rfb:
        init = rfb.login(_secret(s["novnc_url"]))
        assert (init.width, init.height) == (1600, 900)
    http = server.http
    got = http.get(f"/api/visual-sessions/{sid}").json()
    assert got["session_id"] == sid and got["resolution"] == "1600x900"
    # enable_recording does what it says: the recorder starts with the session.
    assert _gone(lambda: http.get(f"/api/visual-sessions/{sid}").json()["enable_recording"], 60)
    time.sleep(3)  # some video

    assert http.post(f"/api/visual-sessions/{sid}/stop").json() == {
        "session_id": sid,
        "status": "stopped",
    }
    cli.started.discard(sid)
    assert project_leftovers(sid) == [], "stop removes every Docker object"

    # The recording, after the session is gone: listed, and served with Range.
    recs = http.get(f"/v1/sessions/{sid}/recordings").json()
    assert [r["state"] for r in recs] == ["complete"] and recs[0]["duration_s"] > 1
    url, size = recs[0]["download_url"], recs[0]["size_bytes"]
    on_disk = Path(recs[0]["file"]).read_bytes()
    part = http.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 1000-1999/{size}"
    assert part.content == on_disk[1000:2000]
    tail = http.get(url, headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == on_disk[-500:]
    assert http.get(url, headers={"Range": f"bytes={size + 10}-"}).status_code == 416
    whole = http.get(url)
    assert (
        whole.headers["accept-ranges"] == "bytes" and whole.headers["content-type"] == "video/mp4"
    )
    copy = tmp_path / "downloaded.mp4"
    copy.write_bytes(whole.content)
    info, errors = probe_and_decode(copy)
    assert errors == "", errors
    assert (info["streams"][0]["width"], info["streams"][0]["height"]) == (1600, 900)
    assert http.get(url.replace(".mp4", "x.mp4")).status_code == 404


# ------------------------------------------------------------------ events


class Collector:
    """Reads an SSE stream in a thread; `until` waits for an event."""

    def __init__(self, server: Server, path: str, last_event_id: str | None = None) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        headers = {**AUTH, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        self._thread = threading.Thread(
            target=self._run, args=(server.base + path, headers), daemon=True
        )
        self._thread.start()

    def _run(self, url: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", url, headers=headers, timeout=None) as r:
            assert r.status_code == 200
            for e in _sse(r.iter_lines()):
                data = json.loads(e["data"])
                assert str(data["id"]) == e["id"] and data["type"] == e["event"]
                self.events.put(data)
                if self._stop.is_set():
                    return

    def until(self, kind: str, timeout: float = 180) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(deadline - time.monotonic(), 0.1))
            self.seen.append(event)
            if event["type"] == kind:
                return self.seen

    def close(self) -> None:
        self._stop.set()


def _kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] + (f":{e['step']}" if e["type"] == "agent.step" else "") for e in events]


def test_events_of_a_demo_task_arrive_in_order_and_replay(cli: Cli, server: Server) -> None:
    s = server.create(task="demo")
    sid = s["session_id"]
    stream = f"/v1/sessions/{sid}/events?last_event_id=0"
    full = Collector(server, stream)
    early = Collector(server, stream)
    first_step = early.until("agent.step")
    early.close()
    left_at = str(first_step[-1]["id"])

    http = server.http
    assert http.post(f"/v1/sessions/{sid}/control").status_code == 200
    full.until("agent.paused", 30)
    assert http.post(f"/v1/sessions/{sid}/resume").status_code == 200
    events = full.until("agent.finished")

    kinds = _kinds(events)
    assert kinds[:3] == ["session.created", "session.ready", "agent.step:1"], kinds
    assert events[0]["pool"] is False and events[0]["llm"] == "demo", events[0]
    assert (
        kinds.index("agent.paused") < kinds.index("agent.resumed") < kinds.index("agent.finished")
    )
    steps = [e["step"] for e in events if e["type"] == "agent.step"]
    assert steps == sorted(steps) and len(steps) >= 2
    assert all(e["goal"] and e["session_id"] == sid for e in events if e["type"] == "agent.step")
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids increase"
    result = events[-1]["result"]
    assert result["success"] is True and "vnc-rocks-42" in result["final_text"]

    # A reconnect with Last-Event-ID gets exactly what it missed.
    missed = [e for e in events if e["id"] > int(left_at)]
    again = Collector(server, f"/v1/sessions/{sid}/events", last_event_id=left_at)
    assert again.until("agent.finished", 30) == missed
    again.close()

    # So does one to a restarted serve: the numbering is new, the events are the same.
    server.stop()
    restarted = start_server(cli)
    try:
        after = Collector(restarted, f"/v1/sessions/{sid}/events", last_event_id=left_at)
        replayed = after.until("agent.finished", 60)
        assert _kinds(replayed) == _kinds(missed)
        assert [e["time"] for e in replayed] == [e["time"] for e in missed]
        assert restarted.http.delete(f"/v1/sessions/{sid}").status_code == 200
        cli.started.discard(sid)
        after.until("session.stopped", 30)
        after.close()
    finally:
        restarted.stop()


# ------------------------------------------------------------------ concurrency


def test_ten_creates_at_once_while_reads_stay_answered(cli: Cli, server: Server) -> None:
    def create(i: int) -> httpx.Response:
        return httpx.post(
            f"{server.base}/v1/sessions", json={"name": f"many-{i}"}, headers=AUTH, timeout=600
        )

    with ThreadPoolExecutor(10) as pool:
        pending = [pool.submit(create, i) for i in range(10)]
        time.sleep(1)
        reads = []
        with server.http as http:
            for _ in range(3):
                t0 = time.monotonic()
                assert http.get("/v1/sessions").status_code == 200
                assert http.get("/healthz").status_code == 200
                reads.append(time.monotonic() - t0)
        answered_while_busy = sum(not p.done() for p in pending)
        responses = [p.result() for p in pending]
    for r in responses:
        if r.status_code == 201:
            cli.started.add(r.json()["session_id"])
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    assert answered_while_busy > 0, "the reads waited for the creates"
    print(f"reads during ten creates: {', '.join(f'{t:.2f}s' for t in reads)}")
    ports = {r.json()["novnc_port"] for r in responses}
    assert len(ports) == 10
    with ThreadPoolExecutor(5) as pool:
        stopped = list(
            pool.map(
                lambda r: server.http.delete(f"/v1/sessions/{r.json()['session_id']}"), responses
            )
        )
    assert all(r.status_code == 200 for r in stopped), [r.text for r in stopped]
    for r in responses:
        cli.started.discard(r.json()["session_id"])
        assert project_leftovers(r.json()["session_id"]) == []


# ------------------------------------------------------------------ schemathesis


def test_the_api_keeps_its_schema(cli: Cli, server: Server) -> None:
    """Schemathesis against the served /openapi.json: valid and invalid requests to every
    operation, a bounded number each; no 5xx, and every response as the schema says (status,
    content type, body, auth enforced). Driven through Hypothesis directly: schemathesis's
    pytest plugin does not run on pytest 9."""
    from schemathesis.core.result import Ok
    from schemathesis.generation import GenerationMode

    idle = server.create(name="schemathesis")["session_id"]
    schema = (
        schemathesis.openapi.from_url(f"{server.base}/openapi.json", headers=AUTH)
        # Nothing that starts sessions (or prunes the engine's), and no endless streams.
        .exclude(
            method="POST", path=["/sessions", "/api/visual-sessions", "/v1/sessions", "/v1/prune"]
        )
        .exclude(path_regex=r"/(events|logs)$")
    )

    from schemathesis.checks import negative_data_rejection, positive_data_acceptance

    def run(case: Any) -> None:
        params = case.path_parameters or {}
        ref = str(params.get("session_id", ""))
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", ref):
            # Reads look at a real session of this test; writes go to one that does not
            # exist: a random prefix must never reach a session another test (or person) runs.
            # (wait on the idle session would time out by design, a 504: that is tested
            # above, and "no 5xx" here keeps its meaning for everything else.)
            read = case.method == "GET" and not case.path.endswith("/wait")
            params["session_id"] = idle if read else "nosuchsession"
        # The two checks of whether the data was accepted judge the data as generated, not
        # as rewritten above (a valid id for a random one, our token for a random header).
        case.call_and_validate(
            headers=AUTH, excluded_checks=[negative_data_rejection, positive_data_acceptance]
        )

    tested = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema has an operation it cannot test: {result}"
        op = result.ok()
        tested.append(f"{op.method.upper()} {op.path}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            check = given(case=op.as_strategy(generation_mode=mode))(run)
            check = settings(
                max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck),
            )(check)  # fmt: skip
            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                continue
            except Exception as exc:
                raise AssertionError(
                    f"{op.method.upper()} {op.path} ({mode.value}): {exc}"
                ) from exc
    print(f"schemathesis: {len(tested)} operations, up to {EXAMPLES} examples each way")
    assert len(tested) >= 15 and "DELETE /v1/sessions/{session_id}" in tested, tested
    assert "POST /v1/sessions" not in tested


EXAMPLES = 8
