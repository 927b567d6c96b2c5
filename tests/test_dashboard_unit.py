"""The dashboard's server side, without Docker: sign-in (form and `?token=`), the cookie as a
second credential of the API, the refusal of forged changes, sign-out, which files need the
sign-in, the pages' headers, and /v1/models. Driven in-process like tests/test_api_unit.py;
the pages in a real browser on the real engine are tests/test_dashboard.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import offline_client
from vncsess import api, config, dashboard, webauth

TOKEN = "dashboard-unit-token-0123456789"
ORIGIN = {"Origin": "http://testserver"}
PAGES = ["/", "/new", "/s/abc123", "/s/abc123?fullscreen"]


@pytest.fixture
def settings(offline_settings: config.Settings) -> config.Settings:
    return offline_settings


@pytest.fixture
def client(settings: config.Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with offline_client(settings, TOKEN, monkeypatch, follow_redirects=False) as c:
        yield c


def _sign_in(client: TestClient) -> tuple[str, str]:
    """Sign in with the form, as a browser would: the client keeps both cookies. Returns
    (session cookie, CSRF token)."""
    r = client.post("/signin", data={"token": TOKEN, "next": "/"}, headers=ORIGIN)
    assert r.status_code == 303, r.text
    return r.cookies[webauth.SESSION_COOKIE], r.cookies[webauth.CSRF_COOKIE]


def _only(client: TestClient, **cookies: str) -> None:
    """The client sends these cookies and no others."""
    client.cookies.clear()
    for name, value in cookies.items():
        client.cookies.set(name, value)


def _set_cookies(r: httpx.Response) -> dict[str, str]:
    """Each Set-Cookie header by name, whole (attributes included)."""
    return {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}


# ------------------------------------------------------------------ the way in


@pytest.mark.parametrize("path", PAGES)
def test_pages_send_a_stranger_to_the_sign_in_form(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 303
    assert r.headers["location"] == "/signin?" + httpx.QueryParams({"next": path}).__str__()
    form = client.get(r.headers["location"])
    assert form.status_code == 200 and 'name="token"' in form.text
    assert 'type="password"' in form.text


def test_the_form_signs_in_with_a_cookie_that_is_not_the_token(client: TestClient) -> None:
    r = client.post("/signin", data={"token": TOKEN, "next": "/s/abc?fullscreen"}, headers=ORIGIN)
    assert r.status_code == 303 and r.headers["location"] == "/s/abc?fullscreen"
    cookies = _set_cookies(r)
    session = cookies[webauth.SESSION_COOKIE].lower()
    assert "httponly" in session and "samesite=strict" in session and "path=/" in session
    csrf = cookies[webauth.CSRF_COOKIE].lower()
    assert "httponly" not in csrf and "samesite=strict" in csrf  # the page's script reads it
    assert "secure" not in session  # plain http here; https below
    assert TOKEN not in " ".join(cookies.values()) and TOKEN not in r.text
    page = client.get("/")  # with the cookies just set
    assert page.status_code == 200 and '<main id="main"' in page.text
    assert TOKEN not in page.text


def test_over_https_the_cookies_are_secure(settings: config.Settings) -> None:
    app = api.create_app(settings, TOKEN, watch=False)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as c:
        r = c.post("/signin", data={"token": TOKEN}, headers={"Origin": "https://testserver"})
    assert r.status_code == 303
    assert all("; secure" in v.lower() for v in _set_cookies(r).values())


@pytest.mark.parametrize(
    ("form", "headers", "status"),
    [
        ({"token": "wrong-token-0123456789"}, ORIGIN, 401),
        ({"token": ""}, ORIGIN, 401),
        ({"token": TOKEN + "x"}, ORIGIN, 401),
        ({"token": TOKEN}, {}, 403),  # no Origin: not our form
        ({"token": TOKEN}, {"Origin": "http://evil.example"}, 403),
        ({"token": TOKEN}, {"Origin": "null"}, 403),
    ],
    ids=["wrong", "empty", "longer", "no-origin", "other-origin", "null-origin"],
)
def test_a_bad_sign_in_sets_no_cookie(
    client: TestClient, form: dict[str, str], headers: dict[str, str], status: int
) -> None:
    r = client.post("/signin", data=form, headers=headers)
    assert r.status_code == status
    assert not r.headers.get_list("set-cookie")
    assert TOKEN not in r.text


def test_sign_in_never_sends_anyone_to_another_site(client: TestClient) -> None:
    for bad in ("//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:x"):
        r = client.post("/signin", data={"token": TOKEN, "next": bad}, headers=ORIGIN)
        assert r.headers["location"] == "/", bad
    form = client.get("/signin", params={"next": '"><script>alert(1)</script>'})
    assert "<script>alert" not in form.text  # the next field is escaped, and refused


def test_token_in_the_address_signs_in_once_and_leaves_it(client: TestClient) -> None:
    r = client.get("/s/abc123", params={"token": TOKEN, "fullscreen": ""})
    assert r.status_code == 303
    assert r.headers["location"] == "/s/abc123?fullscreen="  # the rest of the address stays
    assert set(_set_cookies(r)) == {webauth.SESSION_COOKIE, webauth.CSRF_COOKIE}
    wrong = client.get("/", params={"token": "not-the-token-0123456789"})
    assert wrong.status_code == 401 and not wrong.headers.get_list("set-cookie")
    assert "not-the-token" not in wrong.text


def test_signed_in_the_sign_in_form_goes_on(client: TestClient) -> None:
    session, _ = _sign_in(client)
    _only(client, **{webauth.SESSION_COOKIE: session})
    r = client.get("/signin?next=/new")
    assert (r.status_code, r.headers["location"]) == (303, "/new")


def test_sign_out_clears_both_cookies_and_wants_our_origin(client: TestClient) -> None:
    _sign_in(client)
    assert client.post("/signout").status_code == 403
    r = client.post("/signout", headers=ORIGIN)
    assert (r.status_code, r.headers["location"]) == (303, "/signin")
    cleared = _set_cookies(r)
    assert set(cleared) == {webauth.SESSION_COOKIE, webauth.CSRF_COOKIE}
    assert all("max-age=0" in v.lower() for v in cleared.values())


# ------------------------------------------------------------------ the cookie in the API


def test_the_cookie_lets_reads_in(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 401
    session, _ = _sign_in(client)
    _only(client, **{webauth.SESSION_COOKIE: session})
    r = client.get("/v1/models")
    assert r.status_code == 200 and r.json()["default"] == "demo"
    # Past auth, to the engine (absent here): 503, not 401.
    assert client.get("/v1/sessions").status_code == 503


@pytest.mark.parametrize(
    "cookie",
    [
        "v1.1.x",
        "v1.notanumber.abc",
        "v2.123.abc",
        "",
        webauth.new_session("another-servers-token-012345"),
        webauth.new_session(TOKEN, now=1_000_000),  # long expired
        webauth.new_session(TOKEN, now=4_000_000_000),  # from the future
    ],
    ids=["bad-mac", "bad-time", "version", "empty", "other-token", "expired", "future"],
)
def test_a_forged_or_old_cookie_is_refused(client: TestClient, cookie: str) -> None:
    _only(client, **{webauth.SESSION_COOKIE: cookie})
    r = client.get("/v1/models")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    page = client.get("/")
    assert page.status_code == 303 and page.headers["location"].startswith("/signin")


def test_a_tampered_cookie_is_refused(client: TestClient) -> None:
    session, _ = _sign_in(client)
    version, issued, mac = session.split(".")
    # The MAC's first character is changed: all its bits count (the last one of unpadded
    # base64 may carry bits the decoder ignores, and may already be the replacement).
    other = "B" if mac[0] == "A" else "A"
    for forged in (f"{version}.{int(issued) + 1}.{mac}", f"{version}.{issued}.{other}{mac[1:]}"):
        _only(client, **{webauth.SESSION_COOKIE: forged})
        assert client.get("/v1/models").status_code == 401


CHANGES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/sessions", {}),
    ("DELETE", "/v1/sessions/abc123", None),
    ("POST", "/v1/sessions/abc123/control", None),
    ("POST", "/v1/sessions/abc123/record/start", {}),
    ("POST", "/v1/prune", None),
    ("DELETE", "/v1/sessions/abc123/data", None),
    ("POST", "/sessions", {}),
    ("POST", "/api/visual-sessions/abc123/stop", None),
]


@pytest.mark.parametrize(("method", "path", "body"), CHANGES)
def test_a_change_with_the_cookie_needs_the_csrf_token_and_our_origin(
    client: TestClient, method: str, path: str, body: object
) -> None:
    _, csrf = _sign_in(client)

    def send(headers: dict[str, str]) -> httpx.Response:
        response: httpx.Response = client.request(method, path, json=body, headers=headers)
        return response

    for headers, why in [
        ({**ORIGIN}, "header"),
        ({**ORIGIN, webauth.CSRF_HEADER: "x" * len(csrf)}, "header"),
        ({**ORIGIN, webauth.CSRF_HEADER: webauth.csrf_token("v1.1.x", TOKEN)}, "header"),
        ({webauth.CSRF_HEADER: csrf}, "Origin"),
        ({"Origin": "http://evil.example", webauth.CSRF_HEADER: csrf}, "Origin"),
        ({"Origin": "http://testserver:8080", webauth.CSRF_HEADER: csrf}, "Origin"),
    ]:
        r = send(headers)
        assert r.status_code == 403, (headers, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["type"] == "urn:vncsess:problem:forbidden" and why in problem["detail"]
    # Both: past auth, on to the engine (absent here: 503; or 404 for a stop of nothing).
    r = send({**ORIGIN, webauth.CSRF_HEADER: csrf})
    assert r.status_code in (404, 503), r.text


def test_bearer_clients_need_no_csrf_token(client: TestClient) -> None:
    r = client.post("/v1/sessions", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 503  # past auth, no Origin, no CSRF header
    # A wrong Bearer is not rescued by a good cookie: the header decides.
    _sign_in(client)
    r = client.get("/v1/models", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert r.status_code == 401


def test_the_csrf_cookie_alone_is_no_credential(client: TestClient) -> None:
    _, csrf = _sign_in(client)
    _only(client, **{webauth.CSRF_COOKIE: csrf})
    r = client.post("/v1/sessions", json={}, headers={**ORIGIN, webauth.CSRF_HEADER: csrf})
    assert r.status_code == 401


# ------------------------------------------------------------------ files and headers


def test_the_sign_in_page_s_files_are_open_and_the_app_s_are_not(client: TestClient) -> None:
    for name in sorted(dashboard.PUBLIC_FILES):
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200, name
        assert r.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "api.js", "session.js", "wall.js", "live.js", "index.html"):
        r = client.get(f"/ui/{name}")
        assert r.status_code == 401, name
        assert r.headers["content-type"] == "application/problem+json"
    _sign_in(client)
    r = client.get("/ui/app.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    client.cookies.clear()
    r = client.get("/ui/app.js", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/..%2Fapi.py",
        "/ui/../api.py",
        "/ui/%2e%2e/dashboard.py",
        "/ui/web/app.js",
    ],
)
def test_only_files_that_ship_are_served(client: TestClient, path: str) -> None:
    _sign_in(client)
    r = client.get(path)
    assert r.status_code in (404, 422), path
    assert "import" not in r.text


def test_pages_keep_to_this_server(client: TestClient) -> None:
    _sign_in(client)
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200, path
        csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
        assert csp["default-src"] == csp["script-src"] == csp["connect-src"] == "'self'"
        assert csp["frame-src"] == "'self'"  # the live view comes through serve's proxy
        # The bare view may be embedded (it has no buttons); the others only by themselves.
        assert csp["frame-ancestors"] == ("*" if "fullscreen" in path else "'self'")
        assert r.headers["referrer-policy"] == "same-origin"
        assert r.headers["cache-control"] == "no-store"
    html = client.get("/").text
    # Everything the page loads is its own (no CDN): every src= and href= is a local path.
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith(("/", "#")) and not url.startswith("//"), url


def test_the_app_files_refer_to_nothing_outside(client: TestClient) -> None:
    """No script or style names another host: what the page loads comes from this server."""

    for name, path in dashboard._FILES.items():
        text = path.read_text(encoding="utf-8")
        hosts = re.findall(r"https?://[^\s\"'`)<>]+", text)
        # Only placeholders and examples for a person to read, never a resource to load.
        assert all(h.startswith(("http://host:", "http://www.w3.org/2000/svg")) for h in hosts), (
            name,
            hosts,
        )


# ------------------------------------------------------------------ /v1/models


def test_models_name_what_is_configured_never_the_key(
    tmp_path: Path, settings: config.Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    app = api.create_app(settings, TOKEN, watch=False)
    with TestClient(app) as c:
        assert c.get("/v1/models", headers=headers).json() == {
            "default": "demo",
            "configured": [],
            "providers": ["openai", "anthropic", "google", "ollama"],
        }
    env = tmp_path / "keys.env"
    env.write_text("ANTHROPIC_API_KEY=sk-ant-SECRET1\nGEMINI_API_KEY=SECRET2\nOPENAI_API_KEY=\n")
    monkeypatch.setenv("VNCSESS_ENV_FILE", str(env))
    app = api.create_app(config.load(), TOKEN, watch=False)
    with TestClient(app) as c:
        r = c.get("/v1/models", headers=headers)
    assert r.json()["default"] == "anthropic:claude-sonnet-4-0"
    assert r.json()["configured"] == ["anthropic:claude-sonnet-4-0", "google:gemini-2.5-flash"]
    assert "SECRET" not in r.text and "API_KEY" not in r.text


# ------------------------------------------------------------------ the signed values


def test_session_values_expire_and_are_bound_to_the_token() -> None:
    now = 2_000_000_000.0
    value = webauth.new_session(TOKEN, now=now)
    assert webauth.valid_session(value, TOKEN, now=now + webauth.MAX_AGE_S - 1)
    assert not webauth.valid_session(value, TOKEN, now=now + webauth.MAX_AGE_S + 1)
    assert not webauth.valid_session(value, TOKEN + "x", now=now)
    assert webauth.csrf_token(value, TOKEN) != webauth.csrf_token(value, TOKEN + "x")
    assert webauth.csrf_token(value, TOKEN) != webauth.csrf_token(
        webauth.new_session(TOKEN, now=now + 1), TOKEN
    )
    assert TOKEN not in value and TOKEN not in webauth.csrf_token(value, TOKEN)
