"""The engine seam: what the use cases (sessions.py, recordings.py) ask of whatever runs the
containers. Compose on one Docker engine is one engine; Kubernetes is another. Nothing above
this line knows container names, compose projects or pods.

A session is two services, `vnc` (the display) and `agent` (the browser and its runner),
sharing the X11 socket and the IPC namespace. The engine starts them from a SessionSpec,
and reports what it sees as Observed records: the engine is the source of truth for which
sessions exist, and their metadata (labels on Docker, annotations on Kubernetes) is enough to
describe a session without any local state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

Progress = Callable[[str], None]

SERVICES = ("vnc", "agent")

# Metadata keys every engine stores with a session (as `vncsess.<key>` labels or annotations)
# and hands back in Observed.meta. Values are strings; "" means not set.
META_KEYS = (
    "session",  # the session id
    "name",
    "created",  # ISO 8601, UTC
    "resolution",  # WxH
    "data-dir",  # where the session's files live, as seen by vncsess
    "public-host",  # the host printed in URLs
    "llm",  # demo or PROVIDER:MODEL
    "no-internet",  # "1" or ""
    "recording",  # "1" if recording started with the session
    "expires",  # ISO 8601 end of --ttl, or ""
    "idle-timeout",  # --idle-timeout in seconds, or ""
    "owner",  # VNCSESS_OWNER: sets a group of sessions apart (a test run, a CI job)
    "pool",  # "1": started ahead of time for the warm pool (`pool fill`), to be claimed
)


@dataclass(frozen=True)
class SessionSecrets:
    """What must reach the containers without being in their environment or metadata."""

    xauth: bytes  # an Xauthority file with the display's cookie (both services)
    vnc_passwd: bytes  # x11vnc's passwdfile: full-access, then view-only password (vnc)
    llm_env: bytes  # the model keys, KEY=VALUE lines (agent)
    task: bytes  # the task text, byte for byte (agent)


@dataclass(frozen=True)
class SessionSpec:
    """Everything an engine needs to start one session, typed. The use case fills it in;
    the engine turns it into a compose project or a Pod."""

    session_id: str
    name: str
    created_at: str  # ISO 8601, UTC
    resolution: str  # WxH, validated
    data_dir: Path
    public_host: str
    bind: str  # host address noVNC is published on (Docker)
    port: int | None  # host port for noVNC, None = the engine picks (Docker)
    vnc_image: str
    agent_image: str
    uid: int
    gid: int
    llm: str
    llm_base_url: str
    max_steps: int
    demo_step_delay: float
    no_internet: bool
    record: bool
    record_fps: int
    ttl_s: int  # 0 = no time limit
    expires_at: str  # ISO 8601, "" when ttl_s == 0
    agent_cpus: str
    agent_memory: str
    secrets: SessionSecrets = field(repr=False)
    vnc_cpus: str = "1.0"
    vnc_memory: str = "512m"
    pids_limit: int = 1024
    owner: str = ""
    idle_timeout_s: int = 0  # 0 = none; see activity.py
    # Started for the warm pool: idle, with no task, keys or limits, until `up` claims it
    # (sessions.py writes the claim into its data dir; vnc and the runner read it there).
    pool: bool = False

    @property
    def meta(self) -> dict[str, str]:
        """The metadata an engine stores with the session (see META_KEYS)."""
        return {
            "session": self.session_id,
            "name": self.name,
            "created": self.created_at,
            "resolution": self.resolution,
            "data-dir": str(self.data_dir),
            "public-host": self.public_host,
            "llm": self.llm,
            "no-internet": "1" if self.no_internet else "",
            "recording": "1" if self.record else "",
            "expires": self.expires_at,
            "idle-timeout": str(self.idle_timeout_s) if self.idle_timeout_s else "",
            "owner": self.owner,
            # As every other key, always there ("" for a session `up` started): compose
            # renders the label either way, and the engines' metadata stay alike.
            "pool": "1" if self.pool else "",
        }


@dataclass(frozen=True)
class Observed:
    """One session as the engine sees it now."""

    session_id: str
    meta: dict[str, str]  # META_KEYS -> value
    # service -> running | created | exited | dead | paused ...; "dead": it cannot start
    # and will not without someone's help (Kubernetes: an image that cannot be pulled).
    services: dict[str, str]
    health: str = ""  # the display's health probe: healthy | unhealthy | starting | ""
    # Where vncsess reaches noVNC (host, port): a published port on Docker, the Pod's IP
    # on Kubernetes (reachable from inside the cluster: where `serve` and its proxy run).
    endpoint: tuple[str, int] | None = None
    novnc_port: int | None = None  # the published host port (Docker); None elsewhere
    reason: str = ""  # why a service ended, when the engine knows (OOMKilled, ...)


@dataclass(frozen=True)
class Happening:
    """One thing the engine saw happen to a session's service (Engine.watch)."""

    session_id: str
    service: str  # vnc | agent
    kind: str  # created | stopping (asked to end) | exited | removed
    at: float  # Unix time, as the engine tells it
    meta: dict[str, str]  # META_KEYS -> value
    exit_code: int | None = None  # with exited


class Watch(Protocol):
    """Happenings as they come, iterated in one thread; close() from any other ends it."""

    def __iter__(self) -> Iterator[Happening]: ...

    def close(self) -> None: ...


class Engine(Protocol):
    """What sessions.py and recordings.py need from a container engine."""

    name: str
    # True when images are built on this engine (Docker); False when they come from a
    # registry the engine pulls from (Kubernetes).
    builds_images: bool

    def check(self) -> None:
        """Raise a VncsessError (with a hint) when the engine cannot run sessions."""

    def plan(self, spec: SessionSpec) -> str:
        """What start(SPEC) would create, as the engine's own text (a compose file,
        Kubernetes manifests), creating nothing and printing no secret (`up --dry-run`)."""
        ...

    def start(self, spec: SessionSpec) -> None:
        """Create and start the session's services; return without waiting for readiness."""

    def observe(self, session_id: str | None = None) -> list[Observed]:
        """Every vncsess session on this engine (or one), from the engine itself."""
        ...

    def remove(self, session_ids: Sequence[str]) -> None:
        """Remove the sessions' containers and everything they own (networks, volumes, the
        X socket); never their data dirs. Idempotent: a missing session is not an error."""

    def logs(
        self, session_id: str, services: Sequence[str], follow: bool, tail: int | None
    ) -> Iterator[str]:
        """Log lines of the services (all when empty), prefixed with the service name."""
        ...

    def watch(self, since: float, until: float | None = None) -> Watch:
        """What happens to sessions' services from `since` (Unix time; as far back as the
        engine remembers) until `until`, or until closed. `serve`'s event stream reads it."""
        ...

    def exec(self, session_id: str, service: str, argv: Sequence[str]) -> tuple[int, str]:
        """Run a command in a running service: (exit code, stdout + stderr). Raises NotFound
        when the service is not running."""
        ...

    def signal(self, session_id: str, service: str, sig: str) -> None:
        """Send a signal (`SIGUSR1`...) to the service's main process."""

    def push_vnc_passwd(self, session_id: str, data_dir: Path, passwdfile: bytes) -> None:
        """Make the display's x11vnc see a new passwdfile (it re-reads it per client)."""

    def run_job(self, image: str, argv: Sequence[str], mounts: dict[Path, str]) -> str:
        """A throwaway container, no network, as the containers' user, for file work on a
        data dir after the session is gone. Returns its output; raises on failure."""
        ...
