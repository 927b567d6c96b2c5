"""The HTTP face's pure parts, without Docker: the token, auth on every route, problem JSON,
input limits, the event log's numbering, Docker events to session events, data-dir scans,
and the access log's redaction. The API is driven in-process (Starlette's TestClient); the
real server on the real engine is tests/test_api.py."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import offline_client
from vncsess import api, config, events
from vncsess.datadir import DataDir
from vncsess.engines.docker import DockerWatch
from vncsess.errors import (
    BadInput,
    Conflict,
    DockerUnavailable,
    NotFound,
    SessionFailed,
    VncsessError,
    WaitTimeout,
)

TOKEN = "unit-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings(offline_settings: config.Settings) -> config.Settings:
    return offline_settings


@pytest.fixture
def client(settings: config.Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with offline_client(settings, TOKEN, monkeypatch) as c:
        yield c


# ------------------------------------------------------------------ the token


def test_token_is_made_once_with_mode_0600(settings: config.Settings) -> None:
    token, path = api.load_token(settings)
    assert path == settings.home / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40
    again, _ = api.load_token(settings)
    assert again == token, "a restart keeps the token"


def test_a_given_token_wins_and_is_not_written(settings: config.Settings) -> None:
    token, path = api.load_token(settings, "given-token-0123456789")
    assert (token, path) == ("given-token-0123456789", None)
    assert not (settings.home / "api-token").exists()
    with pytest.raises(BadInput, match="too short"):
        api.load_token(settings, "short")


def test_a_readable_token_file_is_closed_and_an_empty_one_refused(
    settings: config.Settings,
) -> None:
    settings.home.mkdir(parents=True)
    path = settings.home / "api-token"
    path.write_text("x" * 30)
    path.chmod(0o644)
    assert api.load_token(settings)[0] == "x" * 30
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("")
    with pytest.raises(BadInput, match="empty"):
        api.load_token(settings)


# ------------------------------------------------------------------ auth on every route


def _routes(client: TestClient) -> list[tuple[str, str]]:
    """Every route the schema lists, and the schema itself."""
    schema = api._openapi(client.app)  # type: ignore[arg-type]
    out = [("GET", "/openapi.json")]
    for path, ops in schema["paths"].items():
        for method in ops:
            out.append(
                (method.upper(), path.replace("{session_id}", "abc").replace("{name}", "x.mp4"))
            )
    return out


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": ("Bearer " + "é" * 30).encode("latin-1")},  # not ASCII: no 500
    ],
    ids=["none", "wrong", "longer", "basic", "latin1"],
)
def test_every_route_but_health_needs_the_token(
    client: TestClient, headers: dict[str, Any]
) -> None:
    routes = _routes(client)
    assert len(routes) >= 25
    for method, path in routes:
        r = client.request(method, path, headers=headers, json={})
        if path == "/healthz":
            assert r.status_code == 200
            continue
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["type"] == "urn:vncsess:problem:unauthorized"
        assert TOKEN not in r.text


def test_the_schema_is_behind_the_token_and_no_cdn_docs(client: TestClient) -> None:
    assert client.get("/openapi.json").status_code == 401
    schema = client.get("/openapi.json", headers=AUTH).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert client.get("/docs", headers=AUTH).status_code == 404


# ------------------------------------------------------------------ problems


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (BadInput("x"), 400),
        (NotFound("x"), 404),
        (Conflict("x"), 409),
        (SessionFailed("x"), 502),
        (DockerUnavailable("x"), 503),
        (VncsessError("docker compose up failed: x"), 503),
        (WaitTimeout("x"), 504),
    ],
)
def test_core_errors_map_to_http_statuses(exc: VncsessError, status: int) -> None:
    assert api.problem_of(exc)[0] == status


def test_docker_down_is_a_503_problem(client: TestClient) -> None:
    r = client.get("/v1/sessions", headers=AUTH)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["detail"] == "Docker is not running (cannot reach the Docker daemon)"
    assert body["hint"] and body["instance"] == "/v1/sessions" and body["status"] == 503


BAD_BODIES: list[tuple[Any, int, str]] = [
    ({"resolution": "100x"}, 422, "resolution"),
    ({"resolution": "100x100"}, 400, "out of range"),  # the core's range, before any Docker
    ({"max_steps": 0}, 422, "max_steps"),
    ({"max_steps": "many"}, 422, "max_steps"),
    ({"name": "../etc"}, 422, "name"),
    ({"ttl": "soon"}, 400, "malformed duration"),
    ({"ttl": "99999999999h"}, 400, "too long"),
    ({"idle_timeout": "soon"}, 400, "malformed duration"),
    ({"idle_timeout": "3s"}, 400, "too short"),
    ({"idle_timeout": "31d"}, 400, "too long"),
    ({"llm": "nosuch:model"}, 400, "unknown model"),
    ({"base_url": "file:///etc/passwd", "llm": "openai:x"}, 400, "base-url"),
    ({"task": "x" * (256 * 1024 + 1)}, 422, "task"),
    ({"task": 5}, 422, "task"),
    ({"surprise": 1}, 422, "surprise"),
    ([1, 2], 422, "body"),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_BODIES)
def test_bad_bodies_are_problems_not_500s(
    client: TestClient, body: Any, status: int, words: str
) -> None:
    r = client.post("/v1/sessions", headers=AUTH, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert words in r.json()["detail"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("raw", "headers", "status"),
    [
        (b"{not json", {}, 400),
        (b'{"task": "a\\ud800b"}', {}, 422),  # a lone surrogate: not text a file can hold
        (b"{}", {"content-type": "text/plain"}, 422),
        (b"x" * (api.MAX_BODY + 1), {}, 413),
        (b"{}", {"content-length": "12abc"}, 400),
    ],
    ids=["malformed", "surrogate", "text-plain", "too-big", "bad-length"],
)
def test_hostile_bodies(
    client: TestClient, raw: bytes, headers: dict[str, str], status: int
) -> None:
    r = client.post(
        "/v1/sessions",
        content=raw,
        headers={**AUTH, "content-type": "application/json", **headers},
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_a_streamed_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * (api.MAX_BODY // 10)

    r = client.post("/v1/sessions", content=chunks(), headers=AUTH)
    assert r.status_code == 413


@pytest.mark.parametrize(
    "path",
    [
        "/v1/sessions/..%2F..%2Fetc",
        "/v1/sessions/" + "a" * 65,
        "/v1/sessions/abc/recordings/..%2Fsecret.mp4",
        "/v1/sessions/abc/wait?timeout=0",
        "/v1/sessions/abc/wait?timeout=nan",
        "/v1/sessions/abc/logs?tail=-1",
        "/v1/sessions/abc/logs?service=db",
        "/v1/sessions?status=bogus",
    ],
)
def test_hostile_paths_and_queries_are_422(client: TestClient, path: str) -> None:
    r = client.get(path, headers=AUTH)
    assert r.status_code in (404, 422), r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_a_bad_last_event_id_is_a_400(client: TestClient) -> None:
    r = client.get("/v1/events", headers={**AUTH, "Last-Event-ID": "abc"})
    assert r.status_code == 400
    assert "Last-Event-ID" in r.json()["detail"]


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    r = client.get("/nope", headers=AUTH)
    assert (r.status_code, r.headers["content-type"]) == (404, "application/problem+json")
    r = client.put("/healthz")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"


def test_a_bug_is_a_500_problem_without_internals(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vncsess import sessions

    def broken(*_: Any, **__: Any) -> Any:
        raise ZeroDivisionError("secret internals /root/.cache")

    monkeypatch.setattr(sessions, "list_sessions", broken)
    r = client.get("/v1/sessions", headers=AUTH)
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert "internals" not in r.text and "ZeroDivision" not in r.text


def test_the_schema_documents_problems_and_every_route(client: TestClient) -> None:
    schema = client.get("/openapi.json", headers=AUTH).json()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            ok = [c for c in responses if c.startswith("2")]
            assert ok, (method, path)
            assert responses[ok[0]].get("content"), f"{method} {path}: no documented body"
            if path != "/healthz":
                for code in ("401", "404", "422"):
                    assert list(responses[code]["content"]) == ["application/problem+json"]
    assert "Problem" in schema["components"]["schemas"]


# ------------------------------------------------------------------ the access log


def test_the_access_log_redacts_secrets_in_query_strings() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:1", "GET", "/s/ab?token=SECRET1&x=1&password=SECRET2", "1.1", 200), None,
    )  # fmt: skip
    assert api.RedactQuery().filter(record)
    message = record.getMessage()
    assert "SECRET" not in message
    assert "token=***" in message and "x=1" in message


# ------------------------------------------------------------------ the event log


def test_event_ids_increase_strictly_and_follow_the_clock() -> None:
    log = events.EventLog()
    a = log.publish("agent.step", "s1", {"step": 1}, at=100.0, id_floor=100.0)
    b = log.publish("agent.step", "s1", {"step": 2}, at=100.0, id_floor=100.0)
    c = log.publish("agent.step", "s2", {"step": 1}, at=50.0, id_floor=50.0)  # late, older
    d = log.publish("session.stopped", "s1", {}, at=200.0, id_floor=200.0)
    assert a.id == 100_000_000 and b.id == a.id + 1 and c.id == b.id + 1
    assert d.id == 200_000_000
    assert [e.id for e in log.after(a.id)] == [b.id, c.id, d.id]
    assert [e.id for e in log.after(0, "s2")] == [c.id]
    assert log.after(d.id) == []
    assert d.to_dict()["time"] == "1970-01-01T00:03:20.000Z"


def test_the_event_log_is_bounded() -> None:
    log = events.EventLog(capacity=3)
    for i in range(5):
        log.publish("agent.step", "s", {"step": i}, at=float(i + 1), id_floor=float(i + 1))
    assert [e.data["step"] for e in log.after(0)] == [2, 3, 4]


def test_follow_replays_then_waits_for_new_events() -> None:
    log = events.EventLog()
    first = log.publish("session.created", "s", {}, at=1.0, id_floor=1.0)
    log.publish("session.ready", "s", {}, at=2.0, id_floor=2.0)

    async def main() -> list[str]:
        seen: list[str] = []

        async def reader() -> None:
            async for e in log.follow(first.id, "s"):
                seen.append(e.type)
                if e.type == "agent.step":
                    return

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.05)
        # From another thread, as the sources publish.
        await asyncio.to_thread(log.publish, "agent.step", "s", {}, 3.0, 3.0)
        await asyncio.wait_for(task, 2)
        return seen

    assert asyncio.run(main()) == ["session.ready", "agent.step"]


# ------------------------------------------------------------------ Docker's events


def _docker(
    action: str,
    service: str = "vnc",
    t: float = 1000.0,
    labels: Mapping[str, str] | None = None,
    **attrs: str,
) -> Any:
    """A line of `docker events --format '{{json .}}'`, as the Docker engine reads it:
    ATTRS are the event's attributes, LABELS the ones whose names are not identifiers."""
    line = {
        "Type": "container",
        "Action": action,
        "Actor": {
            "ID": f"c-{service}",
            "Attributes": {
                "vncsess.session": "s1",
                "vncsess.service": service,
                **(labels or {}),
                **attrs,
            },
        },
        "timeNano": int(t * 1e9),
    }
    return DockerWatch.parse(json.dumps(line))


def _feed(life: events.Lifecycle, happening: Any) -> list[events.Fact]:
    return life.feed(happening) if happening is not None else []


def test_docker_events_become_session_events() -> None:
    life = events.Lifecycle()
    labels = {"vncsess.name": "n1", "vncsess.resolution": "1x1"}
    created = _feed(life, _docker("create", labels=labels))
    assert [(f.type, f.at, f.data["name"]) for f in created] == [("session.created", 1000.0, "n1")]
    assert _feed(life, _docker("create", service="agent")) == []
    assert _docker("start") is None  # not a happening vncsess tells
    # `stop`: Docker is asked to end the containers, they die, they are removed.
    assert _feed(life, _docker("kill", signal="15")) == []
    assert _feed(life, _docker("die", exitCode="143")) == []
    assert [f.type for f in _feed(life, _docker("destroy"))] == ["session.stopped"]


def test_a_container_that_ends_by_itself_expired_or_failed() -> None:
    life = events.Lifecycle()
    expires = "1970-01-01T00:16:40+00:00"  # = 1000 s
    ended = _feed(life, _docker("die", t=1001, labels={"vncsess.expires": expires}))
    assert [f.type for f in ended] == ["session.expired"]
    failed = _feed(life, _docker("die", service="agent", t=500, exitCode="1"))
    assert [(f.type, f.data) for f in failed] == [
        ("session.failed", {"service": "agent", "exit_code": 1})
    ]


def test_a_control_signal_does_not_hide_a_failure() -> None:
    life = events.Lifecycle()
    assert _docker("kill", service="agent", signal="10") is None  # SIGUSR1: control
    died = _feed(life, _docker("die", service="agent", exitCode="137"))
    assert [f.type for f in died] == ["session.failed"]


def test_foreign_and_odd_docker_events_are_ignored() -> None:
    assert DockerWatch.parse('{"Type": "container", "Action": "create", "Actor": {}}') is None
    assert DockerWatch.parse("not json") is None
    assert DockerWatch.parse('{"Type": "network", "Action": "create"}') is None
    assert _docker("exec_create: vnc-health") is None


def test_pods_that_come_and_go_are_created_and_removed() -> None:
    from vncsess.engines.base import Observed
    from vncsess.engines.kubernetes import PodWatch

    listings = [["a"], ["a", "b"], ["b"]]

    def observe() -> list[Observed]:
        ids = listings.pop(0) if listings else ["b"]
        if not listings:
            watch.close()
        return [Observed(sid, {"name": sid}, {"vnc": "running"}) for sid in ids]

    PodWatch.POLL_S = 0.01
    watch = PodWatch(observe, until=None)
    seen = [(h.session_id, h.kind) for h in watch]
    assert seen == [("b", "created"), ("a", "removed")]  # "a" was there before: not news
    assert list(PodWatch(observe, until=0.0)) == []  # no history to replay


# ------------------------------------------------------------------ data dirs


def _watched(tmp_path: Path) -> events._Watched:
    data = DataDir(tmp_path / "s1")
    data.agent.mkdir(parents=True)
    data.recordings.mkdir()
    return events._Watched(data)


def _append(w: events._Watched, text: str) -> None:
    with open(w.data.events_file, "a", encoding="utf-8") as fh:
        fh.write(text)


def test_agent_lines_are_read_whole_and_once(tmp_path: Path) -> None:
    w = _watched(tmp_path)
    step = {"seq": 1, "type": "agent.step", "at": "2026-01-01T00:00:01.500Z", "step": 1}
    _append(w, json.dumps(step) + "\n" + '{"seq": 2, "type": "agent.st')  # half a line
    facts = events.scan("s1", w, now=9.0, live=True)
    assert [(f.type, f.data) for f in facts] == [("agent.step", {"step": 1})]
    assert facts[0].at == 1767225601.5  # the runner's own time
    assert events.scan("s1", w, now=9.0, live=True) == []
    _append(w, 'ep", "at": "x", "step": 2}\n')
    assert [f.data["step"] for f in events.scan("s1", w, now=9.0, live=True)] == [2]


def test_hostile_agent_lines_are_skipped(tmp_path: Path) -> None:
    w = _watched(tmp_path)
    lines = [
        "not json",
        "[1, 2]",
        json.dumps({"type": "session.stopped", "at": "x"}),  # the agent cannot stop sessions
        json.dumps({"type": "agent.step", "session_id": "other", "step": 3}),
        "x" * 100,
    ]
    _append(w, "\n".join(lines) + "\n")
    facts = events.scan("s1", w, now=5.0, live=True)
    assert [(f.type, f.session_id, f.data) for f in facts] == [("agent.step", "s1", {"step": 3})]


def test_recordings_start_then_become_ready(tmp_path: Path) -> None:
    w = _watched(tmp_path)
    rec = w.data.recordings
    (rec / "s1-20260101-000000.partial.mp4").write_bytes(b"x")
    facts = events.scan("s1", w, now=7.0, live=True)
    assert [(f.type, f.data["name"], f.at) for f in facts] == [
        ("recording.started", "s1-20260101-000000.mp4", 7.0)
    ]
    (rec / "s1-20260101-000000.partial.mp4").unlink()
    (rec / "s1-20260101-000000.finalizing.mp4").write_bytes(b"y")  # being remuxed: not yet
    assert events.scan("s1", w, now=8.0, live=True) == []
    (rec / "s1-20260101-000000.mp4").write_bytes(b"yy")
    facts = events.scan("s1", w, now=9.0, live=True)
    assert [(f.type, f.data["size_bytes"]) for f in facts] == [("recording.ready", 2)]


def test_read_back_at_start_uses_the_files_own_times(tmp_path: Path) -> None:
    w = _watched(tmp_path)
    (w.data.recordings / "s1-20260101-000000.mp4").write_bytes(b"z")
    facts = events.scan("s1", w, now=1e10, live=False)
    assert [(f.type, f.at) for f in facts] == [
        ("recording.started", 1767225600.0),  # from its name
        ("recording.ready", (w.data.recordings / "s1-20260101-000000.mp4").stat().st_mtime),
    ]


# ------------------------------------------------------------------ links and the door


def _linked_session(tmp_path: Path, view: str = "viewpw12", control: str = "ctlpw123") -> Any:
    """A session as the core describes it, with a data dir holding its VNC passwords."""
    from datetime import UTC, datetime

    from vncsess.models import Session

    data = DataDir(tmp_path / "s1")
    data.secrets.mkdir(parents=True)
    (data.secrets / "vnc_passwd").write_text(f"{control}\n__BEGIN_VIEWONLY__\n{view}\n")
    return Session(
        id="s1", name="", status="running", created_at=datetime.now(UTC), resolution="1280x720",
        novnc_port=1, url_host="127.0.0.1", data_dir=data.path, llm="demo",
        endpoint=("127.0.0.1", 1), control="controlled", view_secret=view, control_secret=control,
    )  # fmt: skip


def _mint(monkeypatch: pytest.MonkeyPatch, session: Any, mode: str, ttl: int = 60) -> Any:
    from vncsess import links, sessions

    monkeypatch.setattr(sessions, "get", lambda _settings, _ref: session)
    return links.mint(None, TOKEN, "s1", mode, ttl)  # type: ignore[arg-type]


def test_a_link_is_checked_for_signature_session_revocation_and_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vncsess import links

    session = _linked_session(tmp_path)
    link, token = _mint(monkeypatch, session, "view")
    assert links.check(links.decode(TOKEN, "s1", token), session) == link
    assert "viewpw12" not in token and "ctlpw123" not in token
    for bad_token, session_id, why in [
        (token, "s2", "another session"),
        (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), "s1", "not valid"),
        ("x" * 40, "s1", "not valid"),
    ]:
        with pytest.raises(links.LinkRefused, match=why):
            links.decode(TOKEN, session_id, bad_token)
    with pytest.raises(links.LinkRefused, match="not valid"):
        links.decode("another-api-token-0123456789", "s1", token)  # the API token changed
    monkeypatch.setattr("vncsess.sessions.data_dir_of", lambda _s, _r: DataDir(session.data_dir))
    assert links.revoke(None, "s1", link.id).revoked  # type: ignore[arg-type]
    with pytest.raises(links.LinkRefused, match="revoked"):
        links.check(links.decode(TOKEN, "s1", token), session)
    assert not links.still_valid(DataDir(session.data_dir), link, "viewpw12")


def test_a_control_link_ends_with_its_control_period_and_links_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from vncsess import links

    session = _linked_session(tmp_path)
    link, token = _mint(monkeypatch, session, "control")
    data = DataDir(session.data_dir)
    assert links.still_valid(data, link, "ctlpw123")
    data.rotate_control_secret()  # what `resume` does
    with pytest.raises(links.LinkRefused, match="ended"):
        links.check(links.decode(TOKEN, "s1", token), session)
    assert not links.still_valid(data, link, "ctlpw123")
    _, short = _mint(monkeypatch, session, "view", ttl=10)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 11)  # itsdangerous reads time.time
    with pytest.raises(links.LinkRefused, match="expired"):
        links.decode(TOKEN, "s1", short)


def test_links_are_refused_in_bad_shapes_and_control_needs_control(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    session = _linked_session(tmp_path)
    with pytest.raises(BadInput):
        _mint(monkeypatch, session, "admin")
    for ttl in (0, 9, 8 * 24 * 3600):
        with pytest.raises(BadInput):
            _mint(monkeypatch, session, "view", ttl)
    with pytest.raises(Conflict, match="not under your control"):
        _mint(monkeypatch, dataclasses.replace(session, control="watching"), "control")
    with pytest.raises(Conflict, match="no live view"):
        _mint(monkeypatch, dataclasses.replace(session, endpoint=None), "view")


def test_the_door_refuses_without_a_valid_link(client: TestClient) -> None:
    """The door takes no bearer token (the link is the credential), and a bad link is a
    403 problem, also for the websocket, which is refused before it opens."""
    from starlette.websockets import WebSocketDisconnect

    fake = "A" * 40
    for path in (f"/sessions/abc/l/{fake}/vnc.html", f"/sessions/abc/l/{fake}/"):
        r = client.get(path, headers=AUTH)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "urn:vncsess:problem:link-refused"
    assert client.get("/sessions/abc/l/short/vnc.html").status_code == 422
    socket = f"/sessions/abc/l/{fake}/websockify"
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(socket):
        pass
    assert refused.value.code == 1008


def test_a_link_token_is_masked_in_the_access_log() -> None:
    line = "GET /sessions/abc/l/SECRET.tok-en_x/app/ui.js HTTP/1.1"
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s "%s" %s', ("1.2.3.4", line, 200), None
    )
    api.RedactQuery().filter(record)
    assert "SECRET" not in str(record.args) and "/l/***/app/ui.js" in str(record.args)
