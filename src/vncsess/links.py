"""Links to a session's live view: signed, expiring, scoped (view or control), revocable.

`serve` mints them (POST /v1/sessions/{id}/links) and its proxy (proxy.py) checks them on
every request under /sessions/{id}/l/{token}/. A link is a capability in a URL, like the
noVNC URL with its password, but it carries no VNC password: the proxy logs in to the
session's VNC server itself, with the view-only or the full-access password, which stay a
second barrier inside.

What a token holds, signed with a key derived from the API token (so changing the API token
voids every link): the session id, the mode, the link's id, and a fingerprint of the VNC
password the mode uses. `control` and `resume` rotate the full-access password, so a control
link dies when its control period ends, with no list to keep. Expiry is the signature's age.
Revocation is the one piece of state: the ids revoked, with every link minted, in the
session's data dir (links.json), so a restarted `serve` knows them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from vncsess import sessions
from vncsess.config import Settings
from vncsess.datadir import DataDir
from vncsess.errors import BadInput, Conflict, NotFound, VncsessError
from vncsess.models import Session

Mode = Literal["view", "control"]
MODES: tuple[Mode, ...] = ("view", "control")
MIN_TTL_S, MAX_TTL_S, DEFAULT_TTL_S = 10, 7 * 24 * 3600, 3600
_LOCK = threading.Lock()  # links.json is rewritten by many requests of one serve


class LinkRefused(VncsessError):
    """A link that is malformed, expired, revoked, for another session, or out of scope."""


@dataclass(frozen=True)
class Link:
    id: str
    session_id: str
    mode: Mode
    created_at: str
    expires_at: str
    revoked: bool = False

    def to_dict(self) -> dict[str, Any]:
        expired = datetime.fromisoformat(self.expires_at) <= datetime.now(UTC)
        return {
            "link_id": self.id,
            "session_id": self.session_id,
            "mode": self.mode,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "state": "revoked" if self.revoked else "expired" if expired else "active",
        }


def _serializer(api_token: str) -> Any:
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(api_token, salt="vncsess.link.v1")


def _fingerprint(password: str) -> str:
    return hashlib.sha256(b"vncsess.link\0" + password.encode()).hexdigest()[:16]


def _password(session: Session, mode: Mode) -> str:
    return session.control_secret if mode == "control" else session.view_secret


def _read(data: DataDir) -> list[dict[str, Any]]:
    raw = data.read_json(data.links_file) or {}
    links = raw.get("links")
    return [x for x in links if isinstance(x, dict)] if isinstance(links, list) else []


def _link(raw: dict[str, Any]) -> Link:
    return Link(
        id=str(raw["id"]),
        session_id=str(raw["session_id"]),
        mode="control" if raw.get("mode") == "control" else "view",
        created_at=str(raw["created_at"]),
        expires_at=str(raw["expires_at"]),
        revoked=bool(raw.get("revoked")),
    )


def mint(settings: Settings, api_token: str, ref: str, mode: str, ttl_s: int) -> tuple[Link, str]:
    """A new link to the session's live view, and its token (to put in a URL)."""
    if mode not in MODES:
        raise BadInput(f"unknown link mode {mode!r}", hint="use view or control")
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise BadInput(
            f"a link lives {MIN_TTL_S} s to {MAX_TTL_S // 86400} days, not {ttl_s} s",
            hint="choose ttl_s in that range",
        )
    session = sessions.get(settings, ref)
    if session.endpoint is None:
        raise Conflict(
            f"session {session.id} is {session.status}: it has no live view",
            hint=f"see `vncsess logs {session.id}`",
        )
    if mode == "control" and session.control == "watching":
        raise Conflict(
            f"session {session.id} is not under your control (the agent has it)",
            hint=f"POST /v1/sessions/{session.id}/control first (`vncsess control`)",
        )
    scope: Mode = "control" if mode == "control" else "view"
    password = _password(session, scope)
    if not password:
        raise Conflict(f"session {session.id} has no {mode} password any more")
    now = datetime.now(UTC)
    link = Link(
        id=secrets.token_hex(6),
        session_id=session.id,
        mode=scope,
        created_at=now.isoformat(timespec="seconds"),
        expires_at=(now + timedelta(seconds=ttl_s)).isoformat(timespec="seconds"),
    )
    data = DataDir(session.data_dir)
    with _LOCK:
        kept = _read(data)
        kept.append(dataclasses.asdict(link))
        data.write_json(data.links_file, {"links": kept})
    token = _serializer(api_token).dumps(
        {"s": session.id, "m": mode, "i": link.id, "t": ttl_s, "g": _fingerprint(password)}
    )
    return link, token


def decode(api_token: str, session_id: str, token: str) -> dict[str, Any]:
    """What a token says, if its signature holds, it has not expired and it is for this
    session; LinkRefused otherwise. Pure: no file or engine is read."""
    from itsdangerous import BadSignature

    try:
        payload, signed_at = _serializer(api_token).loads(token, return_timestamp=True)
    except BadSignature:
        raise LinkRefused("this link is not valid", hint="ask for a new one") from None
    if not isinstance(payload, dict) or payload.get("m") not in MODES:
        raise LinkRefused("this link is not valid", hint="ask for a new one")
    age = time.time() - signed_at.timestamp()
    if age > int(payload.get("t", 0)):
        raise LinkRefused("this link has expired", hint="ask for a new one")
    if payload.get("s") != session_id:
        raise LinkRefused("this link is for another session", hint="ask for a link to this one")
    return payload


def check(payload: dict[str, Any], session: Session) -> Link:
    """The link a decoded token stands for, if it was not revoked and the password of its
    mode is still the one it was minted for; LinkRefused otherwise. Reads the data dir."""
    link_id = str(payload.get("i", ""))
    data = DataDir(session.data_dir)
    found = next((x for x in _read(data) if x.get("id") == link_id), None)
    if found is None:
        raise LinkRefused("this link is not valid", hint="ask for a new one")
    link = _link(found)
    if link.revoked:
        raise LinkRefused("this link was revoked", hint="ask for a new one")
    if payload.get("g") != _fingerprint(password_of(data, link)):
        # The password of its mode changed: control was handed back (or taken again), or
        # the session was stopped (its passwords are forgotten).
        raise LinkRefused(
            f"this {link.mode} link belongs to a control period or session that has ended",
            hint="ask for a new one",
        )
    return link


def verify(settings: Settings, api_token: str, session_id: str, token: str) -> tuple[Link, Session]:
    """The link a token stands for and its session, or LinkRefused saying why."""
    payload = decode(api_token, session_id, token)
    try:
        session = sessions.get(settings, session_id)
    except NotFound:
        raise LinkRefused(f"session {session_id} is gone", hint="see the session list") from None
    return check(payload, session), session


def list_links(settings: Settings, ref: str) -> list[Link]:
    data = sessions.data_dir_of(settings, ref)
    return [_link(x) for x in _read(data)]


def revoke(settings: Settings, ref: str, link_id: str) -> Link:
    """Revoke a link: no new connection through it, and the proxy closes open ones."""
    data = sessions.data_dir_of(settings, ref)
    with _LOCK:
        kept = _read(data)
        found = next((x for x in kept if x.get("id") == link_id), None)
        if found is None:
            raise NotFound(
                f"no link {link_id!r} in session {data.path.name}",
                hint=f"GET /v1/sessions/{data.path.name}/links lists them",
            )
        found["revoked"] = True
        data.write_json(data.links_file, {"links": kept})
    return _link(found)


def still_valid(data: DataDir, link: Link, password: str) -> bool:
    """For an open connection, checked again every second: not revoked since, and the
    password of its mode is still the one it logged in with (the session was not stopped,
    control was not handed back). Reads two small files, no engine call."""
    if password_of(data, link) != password:
        return False
    found = next((x for x in _read(data) if x.get("id") == link.id), None)
    return found is not None and not found.get("revoked")


def password_of(data: DataDir, link: Link) -> str:
    """The VNC password the proxy logs in with for this link (never sent to a viewer), as
    the data dir holds it now."""
    view, control = data.vnc_secrets()
    return control if link.mode == "control" else view


def page_path(session_id: str, token: str, mode: str) -> str:
    """Where a link opens: noVNC's page through the proxy, told where its websocket is."""
    base = f"sessions/{session_id}/l/{token}"
    query = "autoconnect=true&resize=scale&reconnect=true&reconnect_delay=1000"
    if mode != "control":
        query += "&view_only=true"
    return f"/{base}/vnc.html?{query}&path={base}/websockify"
