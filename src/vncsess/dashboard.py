"""The dashboard: the browser face of `vncsess serve` (pages, sign-in, static files).

Pages are static files (web/, package data: no build step, nothing from a CDN) whose script
speaks only to the API, as any client would. What lives here is only what a browser needs
around that: a page for each address (`/`, `/new`, `/s/{id}`), the sign-in that turns the API
token into a cookie (webauth.py), sign-out, and the files, each with headers that keep the
page to itself (a Content-Security-Policy that allows no origin but this server; the live
view comes through serve's own proxy). Access itself is decided in api.authenticate.
"""

from __future__ import annotations

import html
import mimetypes
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from vncsess import webauth
from vncsess.api import SessionRef, Unauthorized, problem

WEB = Path(__file__).resolve().parent / "web"
# What the sign-in page itself needs: open to all (it holds nothing that is not in the
# public source). Every other file is behind the sign-in, as every route is.
PUBLIC_FILES = frozenset({"app.css", "favicon.svg"})
_FILES = {p.relative_to(WEB).as_posix(): p for p in WEB.rglob("*") if p.is_file()}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_NEXT = re.compile(r"/(?!/)[^\s\\]{0,500}")
MAX_FORM = 4096

router = APIRouter(include_in_schema=False)


def signed_in(request: Request) -> bool:
    """A valid sign-in cookie, or the API token as a Bearer header (for curl)."""
    token: str = request.app.state.token
    cookie = request.cookies.get(webauth.SESSION_COOKIE)
    if cookie is not None and webauth.valid_session(cookie, token):
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(given) and webauth.same(given, token)


def _csp(embeddable: bool = False) -> str:
    """Only this server, frames included: the live view comes through serve's own proxy
    (signed links). `?fullscreen` is meant to be embedded, by other pages of the same site
    (the cookie is SameSite=Strict): it has no buttons to trick anyone into pressing."""
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' blob: data:",
            "media-src 'self'",
            "connect-src 'self'",
            "frame-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            f"frame-ancestors {'*' if embeddable else chr(39) + 'self' + chr(39)}",
        ]
    )


def _headers(request: Request, embeddable: bool = False) -> dict[str, str]:
    return {
        "Content-Security-Policy": _csp(embeddable),
        "X-Content-Type-Options": "nosniff",
        # No address of ours goes to another origin. (Not `no-referrer`: it would make the
        # browser send `Origin: null` on our own POSTs, which the forgery check refuses.)
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def _safe_next(value: str) -> str:
    """Where to go after sign-in: a path of this server, never another site's."""
    return value if _NEXT.fullmatch(value) else "/"


def _without_token(request: Request) -> str:
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    return request.url.path + (f"?{urlencode(rest)}" if rest else "")


def _page(request: Request) -> Response:
    """The app's one page (it draws the wall, a session or the form from the address), or
    the way in: `?token=` signs in once and leaves the address bar; no sign-in goes to the
    form."""
    token: str = request.app.state.token
    given = request.query_params.get("token")
    if given is not None:
        target = _without_token(request)
        if not webauth.same(given, token):
            return _signin_page(request, target, "That token is not this server's.", 401)
        response = RedirectResponse(target, status_code=303, headers=_headers(request))
        webauth.set_cookies(response, request, token)
        return response
    if not signed_in(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?{urlencode({'next': target})}", status_code=303)
    embeddable = "fullscreen" in request.query_params
    return FileResponse(WEB / "index.html", headers=_headers(request, embeddable))


@router.get("/")
def wall(request: Request) -> Response:
    return _page(request)


@router.get("/new")
def new_session(request: Request) -> Response:
    return _page(request)


@router.get("/s/{session_id}")
def session_page(request: Request, session_id: SessionRef) -> Response:
    return _page(request)


# ---------------------------------------------------------------- sign-in and sign-out


_SIGNIN = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · vncsess</title>
<link rel="stylesheet" href="/ui/app.css">
<link rel="icon" href="/ui/favicon.svg" type="image/svg+xml">
</head>
<body class="signin">
<main id="main">
  <h1><span class="logo" aria-hidden="true"></span>vncsess</h1>
  <form method="post" action="/signin" class="card">
    <label for="token">API token</label>
    <input id="token" name="token" type="password" required autofocus
           autocomplete="current-password" spellcheck="false">
    <input type="hidden" name="next" value="{next}">
    {error}
    <button type="submit" class="primary">Sign in</button>
    <p class="hint">The token is printed by <code>vncsess serve</code> when it starts, and kept
    in <code>$VNCSESS_HOME/api-token</code>. Signing in keeps a cookie in this browser for 7
    days; it is not the token, and the page never sees either.</p>
  </form>
</main>
</body>
</html>
"""


def _signin_page(request: Request, next_: str, error: str = "", status: int = 200) -> Response:
    shown = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    body = _SIGNIN.replace("{next}", html.escape(_safe_next(next_))).replace("{error}", shown)
    return HTMLResponse(body, status_code=status, headers=_headers(request))


@router.get("/signin")
def signin_form(request: Request, next: str = "/") -> Response:
    if signed_in(request):
        return RedirectResponse(_safe_next(next), status_code=303)
    return _signin_page(request, next)


@router.post("/signin")
async def signin(request: Request) -> Response:
    """The form's POST (application/x-www-form-urlencoded: token, next)."""
    if not webauth.same_origin(request):
        return problem(403, "forbidden", "Forbidden", "the form was not sent by this server")
    raw = await request.body()
    if len(raw) > MAX_FORM:
        return problem(413, "body-too-large", "Body too large", f"at most {MAX_FORM} bytes")
    form = parse_qs(raw.decode("utf-8", errors="replace"), max_num_fields=10)
    given = (form.get("token") or [""])[0].strip()
    next_ = _safe_next((form.get("next") or ["/"])[0])
    if not given or not webauth.same(given, request.app.state.token):
        return _signin_page(request, next_, "That token is not this server's.", 401)
    response = RedirectResponse(next_, status_code=303)
    webauth.set_cookies(response, request, request.app.state.token)
    return response


@router.post("/signout")
def signout(request: Request) -> Response:
    """Forget the sign-in in this browser (the cookie cannot be revoked elsewhere: it
    expires, or a new API token voids them all)."""
    if not webauth.same_origin(request):
        return problem(403, "forbidden", "Forbidden", "the form was not sent by this server")
    response = RedirectResponse("/signin", status_code=303)
    webauth.clear_cookies(response)
    return response


# ---------------------------------------------------------------- files


@router.get("/ui/{name:path}")
def asset(
    request: Request,
    name: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,100}$")],
) -> Response:
    path = _FILES.get(name)  # only files that ship: no path ever reaches the file system
    if path is None:
        return problem(404, "not-found", "Not found", f"no file {name!r}", "", request)
    if name not in PUBLIC_FILES and not signed_in(request):
        raise Unauthorized()
    kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return FileResponse(path, media_type=kind, headers=headers)


async def _on_forgery(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, webauth.ForgeryRefused)
    return problem(
        403,
        "forbidden",
        "Forbidden",
        exc.detail,
        "a change made with the sign-in cookie must come from the dashboard's page "
        "(or send `Authorization: Bearer TOKEN` instead of the cookie)",
        request,
    )


def install(app: FastAPI) -> None:
    """Add the dashboard to the API's app."""
    app.add_exception_handler(webauth.ForgeryRefused, _on_forgery)
    app.include_router(router)
