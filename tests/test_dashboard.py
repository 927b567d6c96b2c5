"""The dashboard in a real browser on the real engine: headless Chromium (Debian's, driven by
Playwright) against a real `vncsess serve`, as a person would use it. Each flow is a test:
sign in; start a session from the form and see noVNC draw it; follow the demo agent's steps
to its result; take control, type into the session's browser, hand back; record and play the
recording; stop a session and see its tile go. Every test also checks that the page asked
nothing of any server but `serve` (whose proxy also serves the sessions' noVNC).

A failing test leaves a screenshot and the page's console under its tmp dir (path printed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Cli, lose_once, project_leftovers
from tests.test_api import TOKEN, Server, start_server
from tests.test_pool import _wait_pool

pytestmark = pytest.mark.docker

# What the page may load from elsewhere than serve: nothing but data it made itself.
OWN_SCHEMES = ("data:", "blob:", "about:")


@pytest.fixture
def server(cli: Cli) -> Iterator[Server]:
    s = start_server(cli, VNCSESS_DEMO_STEP_DELAY="1.5")
    yield s
    s.stop()


@dataclass
class Dash:
    """A browser tab on the dashboard, what it asked for, and the sessions the test made."""

    server: Server
    page: Any
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def goto(self, path: str) -> None:
        self.page.goto(self.server.base + path)

    def sign_in(self) -> None:
        self.goto("/signin")
        self.page.fill("#token", TOKEN)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(self.server.base + "/")

    def session(self, **body: Any) -> dict[str, Any]:
        """A session started through the API."""
        return self.server.create(**body)

    def outside(self) -> list[str]:
        """Requests to anything but serve: not even to the sessions' own noVNC ports, since
        the live view comes through serve's proxy."""
        base = urlsplit(self.server.base).netloc
        return [
            url
            for url in self.requests
            if not url.startswith(OWN_SCHEMES)
            and not (urlsplit(url).scheme in ("http", "ws") and urlsplit(url).netloc == base)
        ]


@pytest.fixture
def dash(
    browser: Any, server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Dash]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    d = Dash(server, page)
    page.on("request", lambda r: d.requests.append(r.url))
    page.on("websocket", lambda ws: d.requests.append(ws.url))
    page.on("console", lambda m: d.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: d.console.append(f"pageerror: {e}"))
    page.on("dialog", lambda dialog: dialog.accept())  # "Stop session?": yes
    yield d
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        shot, log = tmp_path / "page.png", tmp_path / "console.log"
        try:
            page.screenshot(path=str(shot), full_page=True)
        except Exception as exc:  # the page may be what broke
            d.console.append(f"(no screenshot: {exc})")
        log.write_text("\n".join([*d.console, "", "requests:", *d.requests]) + "\n")
        print(f"\ndashboard test failed: screenshot {shot}, console {log}")
    context.close()
    # After every flow: the page asked nothing of any other server.
    assert d.outside() == [], "the page made requests to another server than serve"


def _frame(page: Any, view_only: bool, timeout: float = 60) -> Any:
    """The noVNC frame of the live view, once it shows the URL of the mode asked for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in page.frames:
            if "vnc.html" in f.url and ("view_only=true" in f.url) == view_only:
                return f
        page.wait_for_timeout(100)  # not time.sleep: Playwright's events arrive in its calls
    raise AssertionError(f"no noVNC frame (view_only={view_only}): {[f.url for f in page.frames]}")


# Pixels of noVNC's canvas that are not black: the remote desktop was drawn.
_DRAWN = """() => {
  const c = document.querySelector('canvas');
  if (!c || c.width < 100) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4 * 97) if (d[i] + d[i + 1] + d[i + 2] > 60) n++;
  return n;
}"""


def _drawn(frame: Any) -> int:
    """_DRAWN of the frame; 0 while it is between two pages (the view loads itself again
    when it never connected, and a look at that moment finds no page to look at)."""
    from playwright.sync_api import Error

    try:
        return int(frame.evaluate(_DRAWN))
    except Error as exc:
        if "Execution context was destroyed" in exc.message:
            return 0
        raise


# Share of a screenshot's pixels, fetched through the API as the page would, that are pure
# lime (the colour the test types into the session's page).
_LIME = """async (path) => {
  const r = await fetch(path);
  const img = await createImageBitmap(await r.blob());
  const c = new OffscreenCanvas(img.width, img.height);
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, img.width, img.height).data;
  let lime = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] < 30 && d[i + 1] > 225 && d[i + 2] < 30) lime++;
  return lime / (d.length / 4);
}"""


def _until(page: Any, check: Any, timeout: float = 60, every: float = 0.25) -> Any:
    """check() until it is true or time is up. Waits in Playwright (not time.sleep): its
    events and route handlers run only inside its calls."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        page.wait_for_timeout(every * 1000)


# ------------------------------------------------------------------ the flows


def test_sign_in_with_the_form_or_the_address_and_sign_out(dash: Dash) -> None:
    page, base = dash.page, dash.server.base
    dash.goto("/s/nosuchsession")
    assert page.url.startswith(base + "/signin?next=")
    page.fill("#token", "not-the-token-0123456789")
    page.click("button[type=submit]")
    assert "not this server's" in page.locator(".error").inner_text()
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/s/nosuchsession")  # back where it was going
    page.locator("text=There is no session nosuchsession").wait_for()

    # The token is nowhere the page can see: not in the address, the page, or its cookies.
    cookies = {c["name"]: c for c in page.context.cookies()}
    signed = cookies["vncsess_session"]
    assert signed["httpOnly"] and signed["sameSite"] == "Strict"
    assert TOKEN not in page.content() and TOKEN not in page.evaluate("document.cookie")
    assert all(TOKEN not in c["value"] for c in cookies.values())

    dash.goto("/")
    listed = dash.server.http.get("/v1/sessions").json()
    if listed:  # an engine others use: their sessions show; the empty wall is for a fresh one
        page.locator(".tile").first.wait_for()
    else:
        assert "vncsess up --task demo" in page.locator(".empty").inner_text()

    page.click("text=Sign out")
    page.wait_for_url(base + "/signin")
    assert page.context.cookies() == []
    dash.goto("/")
    assert page.url.startswith(base + "/signin")

    # `?token=` once: signed in, and the address no longer holds it.
    dash.goto(f"/?token={TOKEN}&name=zz-no-such-name")
    assert page.url == base + "/?name=zz-no-such-name"
    # Signed in: the wall, with the filter from the address. What it says depends on the
    # engine: a fresh one has no session at all (how to start one), a shared one has
    # others' sessions, none of them named so.
    assert page.locator("input[name=name]").input_value() == "zz-no-such-name"
    if dash.server.http.get("/v1/sessions").json():
        page.locator("text=No session matches these filters").wait_for()
    else:
        page.locator("text=No sessions yet").wait_for()
    assert not any(TOKEN in line for line in dash.server.stderr[6:]), "the token was logged"


def test_start_a_session_from_the_form_and_see_the_desktop(cli: Cli, dash: Dash) -> None:
    page = dash.page
    dash.sign_in()
    page.click("text=New session")
    page.wait_for_url("**/new")
    page.locator("#f-llm option[value=demo]").wait_for(state="attached")
    assert page.input_value("#f-llm") == "demo"  # no key configured: the demo is offered
    page.fill("#f-task", "demo")
    page.select_option("#f-res", "1600x900")
    page.select_option("#f-ttl", "30m")
    page.fill("#f-name", "from-the-form")
    # One of noVNC's files is lost on the way, as when the browser sees the network change:
    # the page notices the view never connected and loads it again.
    lost = lose_once(page, "**/core/websock.js")
    page.click("button:has-text('Start session')")
    page.locator("text=Starting the containers and the display").wait_for()
    page.wait_for_url("**/s/*", timeout=180_000)
    sid = page.url.rsplit("/", 1)[1]
    cli.started.add(sid)
    s = dash.server.http.get(f"/v1/sessions/{sid}").json()
    assert (s["name"], s["resolution"], s["llm"]) == ("from-the-form", "1600x900", "demo")
    assert s["expires_at"] is not None

    frame = _frame(page, view_only=True)
    drawn = _until(page, lambda: _drawn(frame) > 200, 90)
    assert drawn, "noVNC's canvas stayed blank"
    assert lost, "no file was lost: the test proved nothing about the recovery"
    assert page.locator("[data-field=overlay]").is_hidden()
    assert page.locator("[data-field=resolution]").inner_text() == "1600x900"
    assert page.locator("[data-field=left]").inner_text() not in ("", "no limit")


def test_the_demo_agent_s_steps_and_result_appear(dash: Dash) -> None:
    page = dash.page
    dash.sign_in()
    s = dash.session(task="demo")
    dash.goto(f"/s/{s['session_id']}")
    result = page.locator("[data-field=result]")
    result.wait_for(state="visible", timeout=180_000)
    assert "succeeded" in result.inner_text() and "vnc-rocks-42" in result.inner_text()
    steps = page.locator(".steps .step")
    assert steps.count() >= 2
    first = steps.first.inner_text()
    assert "Step 1" in first and "http://127.0.0.1:8765/" in first
    assert all(steps.nth(i).locator(".goal").inner_text() for i in range(steps.count()))
    assert page.locator("[data-field=agent]").inner_text() == "done"
    # Live, not only replayed: the wall's tile says so too, from the event stream.
    dash.goto("/")
    tile = page.locator(f".tile:has(a[href='/s/{s['session_id']}'])")
    assert tile.locator("[data-field=agent]").inner_text() == "done"


def test_a_follow_up_task_from_the_page_runs_in_the_same_browser(dash: Dash) -> None:
    page = dash.page
    dash.sign_in()
    s = dash.session(task="demo", idle_timeout="30m")
    dash.goto(f"/s/{s['session_id']}")
    # The idle timeout is the sooner end, so the time left names it.
    assert _until(page, lambda: "(idle)" in page.locator("[data-field=left]").inner_text())
    result = page.locator("[data-field=result]")
    result.wait_for(state="visible", timeout=180_000)
    page.fill("#f-next-task", "demo")
    page.click("[data-action=send-task]")
    page.get_by_text("Task 2 queued").wait_for()
    assert page.locator("#f-next-task").input_value() == ""
    # Its steps come under a marker, then its own result.
    page.locator(".steps .mark", has_text="Task 2").wait_for(timeout=180_000)
    assert _until(page, lambda: "Task 2 done: succeeded" in result.inner_text(), timeout=180)
    assert "vnc-rocks-42" in result.inner_text()
    with dash.server.http as c:
        res = c.get(f"/v1/sessions/{s['session_id']}/result", params={"task": 2}).json()
    assert res["result"]["task"] == 2 and res["result"]["success"] is True, res


def test_take_control_type_into_the_session_s_page_and_hand_back(dash: Dash) -> None:
    page, http = dash.page, dash.server.http
    dash.sign_in()
    s = dash.session(name="typing")
    sid = s["session_id"]
    dash.goto(f"/s/{sid}")
    take, back = page.locator("[data-action=take]"), page.locator("[data-action=back]")
    view = _frame(page, view_only=True)
    assert _until(page, lambda: _drawn(view) > 200, 90), "the view never drew"
    assert take.get_attribute("aria-pressed") == "false"
    assert back.get_attribute("aria-pressed") == "true"

    take.click()
    page.locator("[data-field=control-state][data-state=controlled]").wait_for()
    assert take.get_attribute("aria-pressed") == "true" and take.is_disabled()
    assert http.get(f"/v1/sessions/{sid}").json()["control"] == "controlled"
    control = _frame(page, view_only=False)
    assert _until(page, lambda: _drawn(control) > 200, 60), "the control view never drew"

    # Through noVNC into the session's Chromium: open a page with a text box, and type into
    # it a colour that the page then paints itself with.
    canvas = control.locator("canvas").first
    box = canvas.bounding_box()
    canvas.click(position={"x": box["width"] / 2, "y": box["height"] * 0.8})
    page.keyboard.press("Control+l")
    page.wait_for_timeout(500)
    page.keyboard.type(
        'data:text/html,<input autofocus oninput="document.body.style.background=this.value">',
        delay=15,
    )
    page.keyboard.press("Enter")
    page.wait_for_timeout(2000)
    page.keyboard.type("lime", delay=60)
    shot = f"/v1/sessions/{sid}/screenshot.png?keep=false"
    lime = _until(page, lambda: page.evaluate(_LIME, shot) > 0.5, 30, every=1)
    assert lime, "what was typed did not reach the session's page"

    back.click()
    page.locator("[data-field=control-state][data-state=watching]").wait_for()
    assert back.get_attribute("aria-pressed") == "true"
    assert http.get(f"/v1/sessions/{sid}").json()["control"] == "watching"
    _frame(page, view_only=True)


def test_record_stop_and_play_the_recording_with_seeking(dash: Dash) -> None:
    page = dash.page
    dash.sign_in()
    s = dash.session(name="recorded")
    ranges: list[int] = []
    page.on(
        "response",
        lambda r: ranges.append(r.status) if r.url.endswith(".mp4") else None,
    )
    dash.goto(f"/s/{s['session_id']}")
    start, stop = page.locator("[data-action=rec-start]"), page.locator("[data-action=rec-stop]")
    start.click()
    page.locator("[data-field=recs] tr:has-text('recording')").wait_for()
    # Stop is offered (a reload answered before the start may disable it for a moment:
    # the recording.started event's reload puts it right).
    page.locator("[data-action=rec-stop]:enabled").wait_for(timeout=10_000)
    page.wait_for_timeout(4000)  # some video
    stop.click()
    row = page.locator("[data-field=recs] tr:has-text('complete')")
    row.wait_for(timeout=120_000)
    assert row.locator("a:has-text('Download')").get_attribute("download")
    row.locator("button:has-text('Play')").click()
    video = page.locator("video[data-field=player]")
    video.wait_for(state="visible")
    page.wait_for_function(
        "() => { const v = document.querySelector('video'); "
        "return v.readyState >= 1 && v.duration > 2 }"
    )
    video.evaluate("v => { v.pause(); v.currentTime = v.duration / 2 }")
    page.wait_for_function(
        "() => { const v = document.querySelector('video'); "
        "return !v.seeking && v.currentTime > 1 && v.readyState >= 2 && !v.error }"
    )
    assert 206 in ranges, f"no Range request was answered: {ranges}"


def test_tiles_come_and_go_without_a_reload(cli: Cli, dash: Dash) -> None:
    page, http = dash.page, dash.server.http
    dash.sign_in()
    page.locator("[data-field=count]:not(:empty)").wait_for()
    page.evaluate("window.notReloaded = true")
    # From here the wall may not list the sessions again: only the event stream can tell it
    # that a session came or went.
    page.route("**/v1/sessions", lambda route: route.abort())
    s = dash.session(name="come-and-go")
    sid = s["session_id"]
    tile = page.locator(f".tile:has(a[href='/s/{sid}'])")
    tile.wait_for(timeout=30_000)
    assert tile.locator(".title").inner_text() == "come-and-go"
    page.unroute("**/v1/sessions")  # listed again: the tile learns the display runs
    img = tile.locator("img")
    assert _until(page, lambda: (img.get_attribute("src") or "").startswith("blob:"), 90)

    page.fill("input[name=name]", "come-and")  # the filters
    assert tile.is_visible()
    page.fill("input[name=name]", "zz-nothing")
    assert tile.is_hidden()
    page.fill("input[name=name]", "")

    # Stopped from its own page, in another tab: this tab's tile goes.
    page.route("**/v1/sessions", lambda route: route.abort())
    other = page.context.new_page()
    other.on("dialog", lambda dialog: dialog.accept())
    other.on("request", lambda r: dash.requests.append(r.url))
    other.goto(f"{dash.server.base}/s/{sid}")
    other.locator("[data-action=stop]").click()
    other.locator("text=Session come-and-go stopped").wait_for(timeout=120_000)
    cli.started.discard(sid)
    tile.wait_for(state="detached", timeout=30_000)
    assert page.evaluate("window.notReloaded") is True
    assert http.get(f"/v1/sessions/{sid}").status_code == 404
    assert project_leftovers(sid) == []


def test_the_pages_fit_a_phone(dash: Dash) -> None:
    """A phone's width: nothing wider than the screen, every control still reachable."""
    page = dash.page
    page.set_viewport_size({"width": 390, "height": 844})
    dash.sign_in()
    s = dash.session(name="phone")
    for path in ("/", "/new", f"/s/{s['session_id']}"):
        dash.goto(path)
        page.locator("main > *:not(.loading)").first.wait_for()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390 px screen"
    # The keyboard reaches the controls, and focus can be seen.
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline


def test_a_wall_of_twenty_fetches_pictures_only_for_the_tiles_in_view(dash: Dash) -> None:
    """Twenty sessions: the listing is a real session's JSON repeated (stubbed in the browser,
    so as not to start twenty desktops on a shared machine), the pictures real screenshots."""
    import json

    page, http = dash.page, dash.server.http
    s = dash.session(name="one-of-twenty")
    real = http.get("/v1/sessions", params={"name": "one-of-twenty"}).json()[0]
    many = [
        {**real, "session_id": f"{i:02d}{real['session_id'][2:]}", "name": f"wall-{i:02d}"}
        for i in range(20)
    ]
    png = http.get(f"/v1/sessions/{s['session_id']}/screenshot.png?keep=false").content
    asked: list[str] = []

    def listing(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(many))

    def picture(route: Any) -> None:
        asked.append(route.request.url.split("/sessions/")[1].split("/")[0])
        route.fulfill(status=200, content_type="image/png", body=png)

    page.route("**/v1/sessions", listing)
    page.route("**/v1/sessions/*/screenshot.png?keep=false", picture)
    dash.sign_in()
    tiles = page.locator(".tile")
    assert _until(page, lambda: tiles.count() == 20, 30)
    in_view = set(
        page.evaluate(
            "() => [...document.querySelectorAll('.tile')].filter(t => "
            "t.getBoundingClientRect().top < innerHeight).map(t => t.dataset.id)"
        )
    )
    assert 0 < len(in_view) < 20
    assert _until(page, lambda: in_view <= set(asked), 30), "a tile in view got no picture"
    page.wait_for_timeout(3000)  # time enough to fetch them all, were it not holding back
    assert set(asked) == in_view, (sorted(set(asked)), sorted(in_view))
    page.locator(".tile").last.scroll_into_view_if_needed()
    order = page.evaluate("() => [...document.querySelectorAll('.tile')].map(t => t.dataset.id)")
    assert _until(page, lambda: order[-1] in asked, 30), "the last tile never got its picture"
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280


_TILES_EVER = """() => {
  window.tilesEver = [];
  new MutationObserver((changes) => {
    for (const c of changes)
      for (const n of c.addedNodes)
        if (n.classList?.contains('tile')) window.tilesEver.push(n.dataset.id);
  }).observe(document.body, { childList: true, subtree: true });
}"""


def test_the_warm_pool_is_counted_on_the_wall_not_shown_as_tiles(cli: Cli, browser: Any) -> None:
    """`serve --pool 2`: two idle sessions nobody owns yet. The wall counts them apart from
    the sessions; the one a create claims becomes a tile like any other."""
    server = start_server(cli, "--pool", "2")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        Dash(server, page).sign_in()
        # Every tile ever put on the wall, however briefly: a pool session's start is none.
        page.evaluate(_TILES_EVER)
        count = page.locator("[data-field=count]")
        # The wall relists every 30 s, and at once on the pool's own session events.
        assert _until(page, lambda: "2 waiting in the warm pool" in count.inner_text(), 150)
        _wait_pool(cli, 2)  # both idle (the count took starting ones too): claimable
        assert page.locator(".tile:visible").count() == 0
        assert page.evaluate("window.tilesEver") == [], "a pool session was shown as a tile"
        s = server.create()
        assert s["pool"] == "claimed"
        page.locator(f".tile:has(a[href='/s/{s['session_id']}'])").wait_for()
        # The keeper starts one in its place while the page watches: counted, never a tile.
        refilled = "1 · 2 waiting in the warm pool"
        assert _until(page, lambda: count.inner_text() == refilled, 120), count.inner_text()
        assert set(page.evaluate("window.tilesEver")) == {s["session_id"]}
    finally:
        context.close()
        server.stop()
        cli.started.update(s["session_id"] for s in cli.json("pool", "ls"))
