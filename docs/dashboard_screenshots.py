"""Take the dashboard's pictures in docs/: a real `vncsess serve`, a few real sessions (the
demo agent), and headless Chromium (Debian's, driven by Playwright) looking at the wall and
at a session's page, as a person would. The sessions are stopped at the end.

    python docs/dashboard_screenshots.py [--out docs]

Needs what `make setup` installs, and the images (`make images`)."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright


def _serve(token: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "VNCSESS_API_TOKEN": token, "VNCSESS_DEMO_STEP_DELAY": "1.5"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vncsess", "serve", "--port", "0", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.search(r"API at (http://127\.0\.0\.1:\d+)/v1", line)
        if m:
            return proc, m.group(1)
    raise SystemExit("serve did not start")


def _thumbnails(page: Page, count: int) -> None:
    page.wait_for_function(
        "n => [...document.querySelectorAll('.tile:not([hidden]) img')]"
        ".filter(i => i.src.startsWith('blob:')).length >= n",
        arg=count,
        timeout=120_000,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    token = secrets.token_urlsafe(24)
    proc, base = _serve(token)
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=600)
    made: list[str] = []
    try:
        for body in (
            {"name": "docs-demo", "task": "demo", "record": True},
            {"name": "docs-demo-2", "task": "demo", "ttl": "30m"},
            {"name": "docs-idle", "resolution": "1600x900", "ttl": "2h"},
        ):
            made.append(api.post("/v1/sessions", json=body).raise_for_status().json()["session_id"])
        for sid in made[:2]:
            api.get(f"/v1/sessions/{sid}/wait", params={"timeout": 300}).raise_for_status()
        api.post(f"/v1/sessions/{made[0]}/record/stop").raise_for_status()

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(f"{base}/?token={token}&name=docs-")  # only this script's sessions
            _thumbnails(page, 3)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(args.out / "dashboard-wall.png"))

            page.set_viewport_size({"width": 1280, "height": 900})
            page.goto(f"{base}/s/{made[0]}")
            page.locator("[data-field=result]").wait_for(state="visible", timeout=60_000)
            page.locator("[data-field=recs] tr").first.wait_for()
            page.wait_for_function(  # noVNC connected (the view is on this origin)
                "() => document.querySelector('iframe[data-field=iframe]')"
                ".contentDocument?.documentElement?.classList.contains('noVNC_connected')",
                timeout=90_000,
            )
            page.wait_for_timeout(2000)  # and drew the desktop
            page.screenshot(path=str(args.out / "dashboard-session.png"), full_page=True)

            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(f"{base}/?name=docs-")
            _thumbnails(page, 1)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(args.out / "dashboard-phone.png"))
            browser.close()
        for name in ("dashboard-wall.png", "dashboard-session.png", "dashboard-phone.png"):
            print(args.out / name)
    finally:
        for sid in made:
            api.delete(f"/v1/sessions/{sid}")
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
