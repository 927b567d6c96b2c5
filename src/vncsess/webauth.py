"""The dashboard's sign-in: a cookie that stands for the API token, and the proof against
cross-site request forgery that a change of state made with it must carry.

Stateless, keyed by the API token (no store of our own, as everywhere in vncsess):
- the session cookie (HttpOnly, SameSite=Strict) is `v1.ISSUED.MAC`, MAC = HMAC-SHA256 of
  ISSUED under the token. It is not the token itself, so the token is sent once, at sign-in,
  and never again; it expires after MAX_AGE_S; a new token voids every cookie.
- the CSRF token is an HMAC of that cookie under the token, in a second cookie that the
  page's script can read (not HttpOnly) and sends back as the `X-CSRF-Token` header. A page
  of another site can neither read it nor set the header, and SameSite=Strict already keeps
  the session cookie off cross-site requests; the Origin check is a third wall.

api.authenticate is where these are applied; dashboard.py sets and clears the cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "vncsess_session"
CSRF_COOKIE = "vncsess_csrf"
CSRF_HEADER = "X-CSRF-Token"
MAX_AGE_S = 7 * 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CLOCK_SKEW_S = 60


class ForgeryRefused(Exception):
    """A cookie-authenticated change of state without the proof that our page sent it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _mac(token: str, message: str) -> str:
    digest = hmac.new(token.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def same(given: str, expected: str) -> bool:
    """Constant-time equality of two strings (as bytes: compare_digest refuses non-ASCII)."""
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def new_session(token: str, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return f"v1.{issued}.{_mac(token, f'session|{issued}')}"


def valid_session(value: str, token: str, now: float | None = None) -> bool:
    version, _, rest = value.partition(".")
    issued, _, mac = rest.partition(".")
    if version != "v1" or not issued.isdigit() or len(issued) > 12:
        return False
    age = (time.time() if now is None else now) - int(issued)
    if not -_CLOCK_SKEW_S <= age <= MAX_AGE_S:
        return False
    return same(mac, _mac(token, f"session|{issued}"))


def csrf_token(session: str, token: str) -> str:
    return _mac(token, f"csrf|{session}")


def same_origin(request: Request) -> bool:
    """The request's Origin names this server (the host and port the browser used). Browsers
    send Origin on every POST, PUT, PATCH and DELETE, also same-origin ones."""
    origin = request.headers.get("origin", "")
    host = request.headers.get("host", "")
    if not origin or not host or origin == "null":
        return False
    try:
        return urlsplit(origin).netloc.lower() == host.lower()
    except ValueError:
        return False


def check_forgery(request: Request, session: str, token: str) -> None:
    """A cookie-authenticated state change must come from our own page: same Origin, and
    the CSRF token that only our page can read. Raises ForgeryRefused."""
    if not same_origin(request):
        raise ForgeryRefused("the request's Origin is not this server")
    given = request.headers.get(CSRF_HEADER, "")
    if not given or not same(given, csrf_token(session, token)):
        raise ForgeryRefused(f"the {CSRF_HEADER} header is missing or wrong")


def set_cookies(response: Response, request: Request, token: str) -> None:
    session = new_session(token)
    secure = request.url.scheme == "https"
    common = {"max_age": MAX_AGE_S, "path": "/", "secure": secure, "samesite": "strict"}
    response.set_cookie(SESSION_COOKIE, session, httponly=True, **common)  # type: ignore[arg-type]
    # Read by the page's script, which sends it back as a header: not HttpOnly, by design.
    response.set_cookie(CSRF_COOKIE, csrf_token(session, token), httponly=False, **common)  # type: ignore[arg-type]


def clear_cookies(response: Response) -> None:
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", samesite="strict")
