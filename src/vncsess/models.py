"""Plain, frozen data returned by the core and rendered by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vncsess.errors import VncsessError
from vncsess.protocol import Result

__all__ = ["Batch", "Recording", "Result", "Session", "novnc_url", "project_name", "redact_url"]


def project_name(session_id: str) -> str:
    """The one place a session id becomes the engine's name for it (the compose project on
    Docker, the Pod on Kubernetes)."""
    return f"vncsess-{session_id}"


def novnc_url(host: str, port: int, password: str = "", view_only: bool = True) -> str:
    """noVNC URL ready for an iframe; the password makes noVNC answer the server's VNC auth."""
    url = f"http://{host}:{port}/vnc.html?autoconnect=true&resize=scale"
    if view_only:
        url += "&view_only=true"
    if password:
        url += f"&password={password}"
    return url


@dataclass(frozen=True)
class Session:
    id: str
    name: str
    status: str  # running | unhealthy | starting | degraded | exited | expired
    created_at: datetime
    resolution: str
    novnc_port: int | None  # the published host port (Docker); None elsewhere
    url_host: str
    data_dir: Path
    llm: str
    services: dict[str, str] = field(default_factory=dict)  # service -> docker state
    agent_state: str = "unknown"  # from the runner's status.json
    control: str = "watching"  # watching | paused | controlled
    no_internet: bool = False
    recording: str = ""  # file name of the running recording, if any
    expires_at: datetime | None = None  # --ttl: when the session ends itself
    endpoint: tuple[str, int] | None = None  # where this machine reaches noVNC
    owner: str = ""  # VNCSESS_OWNER when the session was started
    idle_timeout_s: int = 0  # --idle-timeout; 0 = none
    # When the session was last active (a viewer, an agent step, control); None when it has
    # no idle timeout or has ended. With no activity from now on, it ends at this + timeout.
    last_active_at: datetime | None = None
    expired_by: str = ""  # "ttl" or "idle" once status is "expired"
    # The warm pool: "" (started by `up`), "starting" or "idle" (started by `pool fill`,
    # not claimed yet: still in the pool), "claimed" (taken out of the pool by an `up`).
    pool: str = ""
    view_secret: str = field(default="", repr=False)
    control_secret: str = field(default="", repr=False)

    @property
    def in_pool(self) -> bool:
        """Started for the warm pool and not claimed: nobody's session yet."""
        return self.pool in ("starting", "idle")

    @property
    def project(self) -> str:
        return project_name(self.id)

    @property
    def age_seconds(self) -> float:
        return (datetime.now(UTC) - self.created_at).total_seconds()

    @property
    def idle_expires_at(self) -> datetime | None:
        """When the idle timeout ends the session if nothing happens from now on."""
        if not self.idle_timeout_s or self.last_active_at is None:
            return None
        return self.last_active_at + timedelta(seconds=self.idle_timeout_s)

    @property
    def idle_left_s(self) -> float | None:
        end = self.idle_expires_at
        return None if end is None else max((end - datetime.now(UTC)).total_seconds(), 0.0)

    @property
    def shown_status(self) -> str:
        """The status for people: `expired (idle)` / `expired (ttl)` say which limit."""
        return f"{self.status} ({self.expired_by})" if self.expired_by else self.status

    @property
    def novnc_url(self) -> str:
        """The watch URL (view-only), with the viewer secret when it is known."""
        if self.novnc_port is None:
            return ""
        return novnc_url(self.url_host, self.novnc_port, self.view_secret)

    @property
    def control_url(self) -> str:
        if self.novnc_port is None or not self.control_secret:
            return ""
        return novnc_url(self.url_host, self.novnc_port, self.control_secret, view_only=False)

    def to_dict(self, show_secrets: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "session_id": self.id,
            "name": self.name,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "age_s": round(self.age_seconds, 1),
            "resolution": self.resolution,
            "novnc_port": self.novnc_port,
            "novnc_url": self.novnc_url if show_secrets else redact_url(self.novnc_url),
            "data_dir": str(self.data_dir),
            "llm": self.llm,
            "services": dict(self.services),
            "agent_state": self.agent_state,
            "control": self.control,
            "no_internet": self.no_internet,
            "recording": self.recording,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "expired_by": self.expired_by or None,
            "idle_timeout_s": self.idle_timeout_s or None,
            "idle_expires_at": self.idle_expires_at.isoformat() if self.idle_expires_at else None,
            "idle_left_s": None if self.idle_left_s is None else round(self.idle_left_s, 1),
            "owner": self.owner,
            "pool": self.pool or None,
        }
        if show_secrets and self.control_url and self.control != "watching":
            d["control_url"] = self.control_url
        return d


def redact_url(url: str) -> str:
    """Hide the viewer secret in a URL (`password=…`)."""
    if "password=" not in url:
        return url
    head, _, _ = url.partition("password=")
    return head + "password=***"


@dataclass(frozen=True)
class Recording:
    session_id: str
    path: Path
    size_bytes: int
    duration_s: float | None
    state: str  # complete | recording | partial (interrupted, not yet made seekable)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "file": str(self.path),
            "name": self.path.name,
            "size_bytes": self.size_bytes,
            "duration_s": self.duration_s,
            "state": self.state,
        }


@dataclass(frozen=True)
class Batch:
    """What a command given several sessions did: like `docker rm a b`, it acts on every
    one it can and reports each one it could not."""

    done: list[str]
    errors: list[VncsessError] = field(default_factory=list)
