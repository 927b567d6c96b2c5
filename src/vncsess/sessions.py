"""The use cases: start, list, inspect, stop, logs, wait, result, control.

Everything here returns data or raises a VncsessError; nothing prints. Docker is the source
of truth for which sessions exist (labels); the data dir holds what outlives them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vncsess import docker, images, rfb
from vncsess.config import Settings, parse_duration, parse_resolution
from vncsess.datadir import DataDir, container_ids, new_password
from vncsess.errors import (
    BadInput,
    Conflict,
    NotFound,
    SessionFailed,
    VncsessError,
    WaitTimeout,
)
from vncsess.models import Result, Session, project_name

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    """The default progress callback: the core reports, only the CLI prints."""


PROVIDERS = ("openai", "anthropic", "google", "ollama")
# Keys the agent's providers read; any of them means "a model is configured".
KEY_NAMES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY")
DEFAULT_MODELS = {
    "OPENAI_API_KEY": "openai:gpt-4.1-mini",
    "ANTHROPIC_API_KEY": "anthropic:claude-sonnet-4-0",
    "GOOGLE_API_KEY": "google:gemini-2.5-flash",
    "GEMINI_API_KEY": "google:gemini-2.5-flash",
}
DISPLAY_NETWORK = "vncsess-display"
MAX_TASK_BYTES = 256 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SIZE = re.compile(r"^\d+(\.\d+)?[kmg]?$", re.IGNORECASE)


@dataclass(frozen=True)
class UpOptions:
    name: str = ""
    port: int | None = None
    resolution: str = ""
    task: str = ""
    llm: str = ""  # "" = demo unless a key is configured
    llm_base_url: str = ""
    max_steps: int = 25
    record: bool = False
    record_fps: int = 15
    ttl: str = ""  # a duration; "" = no time limit
    no_internet: bool = False
    cpus: str = "1.5"
    memory: str = "2g"
    # How long `up` waits for the display to answer before it gives up and cleans away.
    ready_timeout: float = field(
        default_factory=lambda: float(os.environ.get("VNCSESS_READY_TIMEOUT", "60"))
    )


# ------------------------------------------------------------------ validation


def resolve_llm(opts: UpOptions, env: dict[str, str]) -> str:
    """The model a session will use; says no early rather than inside the container."""
    llm = opts.llm.strip()
    if not llm:
        key = next((k for k in KEY_NAMES if env.get(k)), None)
        return DEFAULT_MODELS[key] if key else "demo"
    if llm == "demo":
        return llm
    provider, sep, model = llm.partition(":")
    if not sep or not model or provider not in PROVIDERS:
        raise BadInput(
            f"unknown model {llm!r}",
            hint="use demo or PROVIDER:MODEL with PROVIDER one of " + ", ".join(PROVIDERS),
        )
    return llm


def validate(opts: UpOptions) -> None:
    if opts.port is not None and not 1 <= opts.port <= 65535:
        raise BadInput(f"port {opts.port} is out of range", hint="use 1-65535, or leave it out")
    if opts.name and not _NAME.match(opts.name):
        raise BadInput(
            f"invalid session name {opts.name!r}",
            hint="use letters, digits, '.', '_' or '-', up to 63 characters",
        )
    if len(opts.task.encode()) > MAX_TASK_BYTES:
        raise BadInput("the task is too long", hint=f"keep it under {MAX_TASK_BYTES // 1024} KiB")
    if not 1 <= opts.max_steps <= 500:
        raise BadInput("--max-steps must be between 1 and 500")
    if not 1 <= opts.record_fps <= 60:
        raise BadInput("--fps must be between 1 and 60")
    if not _SIZE.match(opts.memory):
        raise BadInput(f"malformed memory limit {opts.memory!r}", hint="for example 2g or 1500m")
    try:
        if float(opts.cpus) <= 0:
            raise ValueError
    except ValueError:
        raise BadInput(f"malformed CPU limit {opts.cpus!r}", hint="for example 1.5") from None


def read_env_file(path: Path | None, explicit: bool) -> tuple[str, dict[str, str]]:
    """The LLM env file's text (passed to the agent as a secret file) and its values."""
    if path is None:
        return "", {}
    if not path.is_file():
        if explicit:
            raise BadInput(f"env file not found: {path}", hint="check the --env-file path")
        return "", {}
    from dotenv import dotenv_values

    values = {k: v for k, v in dotenv_values(path).items() if v}
    text = "".join(f"{k}={_quote_env(v)}\n" for k, v in values.items())
    return text, values


def _quote_env(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_port_free(bind: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as s:
        try:
            s.bind((bind, port))
        except OSError:
            raise Conflict(
                f"port {port} is already in use on {bind}",
                hint="choose another --port, or leave it out to get a free one",
            ) from None


# ------------------------------------------------------------------ up


def up(
    settings: Settings, opts: UpOptions, progress: Progress, explicit_env: bool = False
) -> Session:
    resolution = opts.resolution or settings.resolution
    w, h = parse_resolution(resolution)
    resolution = f"{w}x{h}"
    ttl = parse_duration(opts.ttl) if opts.ttl else 0
    validate(opts)
    llm_env, env_values = read_env_file(settings.env_file, explicit_env)
    llm = resolve_llm(opts, env_values)
    task = opts.task

    docker.require_compose()
    built = images.ensure(settings, progress)
    if built:
        progress("built " + ", ".join(built))
    if opts.port is not None:
        _check_port_free(settings.bind, opts.port)

    session_id = secrets.token_hex(4)
    data = DataDir(settings.session_dir(session_id))
    project = project_name(session_id)
    started = time.monotonic()
    try:
        data.create(task, llm_env, view_secret=new_password(), control_secret=new_password())
        files = _render_compose(data, opts.no_internet)
        uid, gid = container_ids()
        now = datetime.now(UTC)
        expires = (now + timedelta(seconds=ttl)).isoformat(timespec="seconds") if ttl else ""
        env = {
            "SESSION_ID": session_id,
            "SESSION_NAME": opts.name,
            "CREATED_AT": now.isoformat(timespec="seconds"),
            "TTL": str(ttl) if ttl else "",
            "EXPIRES_AT": expires,
            "RESOLUTION": resolution,
            "DATA_DIR": str(data.path),
            "PUBLIC_HOST": settings.public_host,
            "BIND": settings.bind,
            "NOVNC_PORT": str(opts.port) if opts.port else "",
            "DISPLAY_NETWORK": DISPLAY_NETWORK,
            "VNC_IMAGE": settings.vnc_image,
            "AGENT_IMAGE": settings.agent_image,
            "VNCSESS_UID": str(uid),
            "VNCSESS_GID": str(gid),
            "PIDS_LIMIT": "1024",
            "VNC_CPUS": "1.0",
            "VNC_MEMORY": "512m",
            "AGENT_CPUS": opts.cpus,
            "AGENT_MEMORY": opts.memory,
            "LLM": llm,
            "LLM_BASE_URL": opts.llm_base_url,
            "MAX_STEPS": str(opts.max_steps),
            # The demo model pauses between steps so people can follow it; tests set 0.
            "DEMO_STEP_DELAY": os.environ.get("VNCSESS_DEMO_STEP_DELAY", "1.0"),
            "NO_INTERNET": "1" if opts.no_internet else "",
            "RECORD": "1" if opts.record else "",
            "RECORD_FPS": str(opts.record_fps),
        }
        data.env_file.write_text("".join(f"{k}={_quote_env(v)}\n" for k, v in env.items()))
        progress(f"starting session {session_id}")
        docker.ensure_display_network(DISPLAY_NETWORK)
        docker.compose_up(project, files, data.env_file)
        session = _wait_ready(settings, session_id, started + opts.ready_timeout)
    except BaseException:
        # A failed (or interrupted) up leaves nothing behind: no containers, no data dir.
        try:
            docker.compose_down(project)
        finally:
            data.remove()
        raise
    return session


def _render_compose(data: DataDir, no_internet: bool) -> list[Path]:
    """Copy the compose template (and the no-internet override) into the data dir:
    the session is then reproducible with plain `docker compose` from there."""
    src = images.asset_dir("compose")
    shutil.copyfile(src / "session.yml", data.compose_file)
    files = [data.compose_file]
    if no_internet:
        override = data.path / "no-internet.yml"
        shutil.copyfile(src / "no-internet.yml", override)
        files.append(override)
    return files


def _connect_host(settings: Settings) -> str:
    return "127.0.0.1" if settings.bind in ("0.0.0.0", "", "::") else settings.bind


def _wait_ready(settings: Settings, session_id: str, deadline: float) -> Session:
    """Until an RFB banner comes back through noVNC's websockify. Checks the containers
    now and then so a crash fails fast with its own words rather than a timeout."""
    session = get(settings, session_id)
    while session.novnc_port is None and time.monotonic() < deadline:
        time.sleep(0.1)
        session = get(settings, session_id)
    if session.novnc_port is None:
        raise SessionFailed("the vnc container published no port", hint=_logs_hint(session_id))
    while True:
        try:
            rfb.wait_ready(
                _connect_host(settings), session.novnc_port, min(deadline, time.monotonic() + 2)
            )
            return get(settings, session_id)
        except TimeoutError as exc:
            session = get(settings, session_id)
            dead = [
                s for s, state in session.services.items() if state not in ("running", "created")
            ]
            if dead or time.monotonic() >= deadline:
                why = f"{', '.join(dead)} exited" if dead else f"no VNC answer ({exc})"
                tail = _last_log_line(session_id, dead[0] if dead else "vnc")
                raise SessionFailed(
                    f"session {session_id} did not start: {why}" + (f": {tail}" if tail else ""),
                    hint="`vncsess build` rebuilds the images; the logs were removed with it",
                ) from None


def _last_log_line(session_id: str, service: str) -> str:
    try:
        lines = list(docker.compose_logs(project_name(session_id), [service], False, 5))
    except VncsessError:
        return ""
    lines = [ln.split("|", 1)[-1].strip() for ln in lines if ln.strip()]
    return lines[-1] if lines else ""


def _logs_hint(session_id: str) -> str:
    return f"see `vncsess logs {session_id}`"


# ------------------------------------------------------------------ listing


def _labels(container: dict[str, Any]) -> dict[str, str]:
    return dict(container.get("Config", {}).get("Labels") or {})


def _session_from(containers: list[dict[str, Any]], settings: Settings) -> Session:
    labels = _labels(containers[0])
    services: dict[str, str] = {}
    health = ""
    port: int | None = None
    for c in containers:
        svc = _labels(c).get("vncsess.service", "?")
        state = c.get("State", {})
        services[svc] = state.get("Status", "unknown")
        if svc == "vnc":
            health = (state.get("Health") or {}).get("Status", "")
            bindings = (c.get("NetworkSettings", {}).get("Ports") or {}).get("6080/tcp") or []
            if bindings and state.get("Status") == "running":
                port = int(bindings[0]["HostPort"])
    expires = labels.get("vncsess.expires") or ""
    expires_at = datetime.fromisoformat(expires) if expires else None
    status = _status(services, health)
    if status == "exited" and expires_at and expires_at <= datetime.now(UTC):
        status = "expired"
    sid = labels["vncsess.session"]
    data = DataDir(Path(labels.get("vncsess.data-dir") or settings.session_dir(sid)))
    agent = data.read_json(data.status_file) or {}
    control = (data.read_json(data.control_file) or {}).get("state", "watching")
    agent_state = str(
        agent.get("state", "unknown" if services.get("agent") == "running" else "stopped")
    )
    if agent_state == "paused" and control == "watching":
        control = "paused"
    view, ctl = data.vnc_secrets()
    created = datetime.fromisoformat(labels.get("vncsess.created") or "1970-01-01T00:00:00+00:00")
    return Session(
        id=sid,
        name=labels.get("vncsess.name", ""),
        status=status,
        created_at=created,
        resolution=labels.get("vncsess.resolution", ""),
        novnc_port=port,
        url_host=labels.get("vncsess.public-host") or settings.url_host(),
        data_dir=data.path,
        llm=labels.get("vncsess.llm", ""),
        services=services,
        agent_state=agent_state,
        control=control,
        no_internet=bool(labels.get("vncsess.no-internet")),
        recording=_recording_now(data),
        expires_at=expires_at,
        view_secret=view,
        control_secret=ctl,
    )


def _recording_now(data: DataDir) -> str:
    """The recording being written, judged without a docker exec (ls must stay fast): ffmpeg
    flushes every packet, so a live partial changes all the time; a stale one was killed and
    waits for the next command that repairs it."""
    if not data.recordings.is_dir():
        return ""
    now = time.time()
    live = [p for p in data.recordings.glob("*.partial.mp4") if now - p.stat().st_mtime < 5]
    return max(live, key=lambda p: p.stat().st_mtime).name if live else ""


def _status(services: dict[str, str], health: str) -> str:
    states = set(services.values())
    if states == {"running"}:
        # Docker's first health probe comes a full interval after start, later than `up`
        # sees the display answer; "not probed yet" is not a reason to say "starting".
        return "unhealthy" if health == "unhealthy" else "running"
    if "running" in states:
        return "degraded"
    if states <= {"created"}:
        return "starting"
    return "exited"


def list_sessions(settings: Settings) -> list[Session]:
    """All sessions on this engine, newest first, from one listing of labelled containers."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for c in docker.session_containers():
        sid = _labels(c).get("vncsess.session")
        if sid:
            by_id.setdefault(sid, []).append(c)
    sessions = [_session_from(cs, settings) for cs in by_id.values()]
    return sorted(sessions, key=lambda s: s.created_at, reverse=True)


def get(settings: Settings, ref: str) -> Session:
    """A running session by id, unique id prefix or name."""
    ref = ref.strip()
    if not ref:
        raise BadInput("empty session id", hint="see `vncsess ls`")
    exact = docker.session_containers(ref)
    if exact:
        return _session_from(exact, settings)
    matches = [s for s in list_sessions(settings) if s.id.startswith(ref) or s.name == ref]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise BadInput(
            f"{ref!r} matches {len(matches)} sessions",
            hint="use more characters of the id: " + ", ".join(s.id for s in matches),
        )
    raise NotFound(f"no session {ref!r}", hint="see `vncsess ls` for running sessions")


def data_dir_of(settings: Settings, ref: str) -> DataDir:
    """A session's data dir, also after `stop` (artifacts outlive the session)."""
    try:
        return DataDir(get(settings, ref).data_dir)
    except NotFound:
        pass
    d = settings.sessions_dir
    candidates = [p for p in d.iterdir() if p.name.startswith(ref)] if d.is_dir() else []
    if len(candidates) == 1:
        return DataDir(candidates[0])
    raise NotFound(f"no session or data dir {ref!r}", hint=f"data dirs live in {d}")


# ------------------------------------------------------------------ stop, logs


def stop(
    settings: Settings, refs: list[str], stop_all: bool = False, progress: Progress = _quiet
) -> list[str]:
    """Remove each session's containers, networks and volumes; keep its data dir
    (recordings finalised first, secrets deleted). Returns the ids stopped."""
    if stop_all:
        targets = list_sessions(settings)
    else:
        if not refs:
            raise BadInput("no session given", hint="name one or more ids, or use --all")
        targets = [get(settings, r) for r in refs]
    from vncsess import recordings

    stopped = []
    for s in targets:
        progress(f"stopping {s.id}")
        recordings.stop_running(settings, s)
        docker.compose_down(s.project)
        data = DataDir(s.data_dir)
        data.forget_secrets()
        recordings.finalize_partials(settings, data)
        stopped.append(s.id)
    return stopped


def prune(settings: Settings, progress: Progress = _quiet) -> list[str]:
    """Remove every session that has ended by itself (expired, or all containers exited),
    as `stop` would: recordings finalised, data dirs kept."""
    ended = [s.id for s in list_sessions(settings) if s.status in ("expired", "exited")]
    return stop(settings, ended, progress=progress) if ended else []


def logs(
    settings: Settings, ref: str, service: str | None, follow: bool, tail: int | None
) -> Iterator[str]:
    session = get(settings, ref)
    services = [service] if service else []
    return docker.compose_logs(session.project, services, follow, tail)


# ------------------------------------------------------------------ results


def result(settings: Settings, ref: str) -> Result:
    data = data_dir_of(settings, ref)
    raw = data.read_json(data.result_file)
    if raw is None:
        raise NotFound(
            f"session {data.path.name} has no result yet",
            hint=f"`vncsess wait {data.path.name}` blocks until the agent finishes",
        )
    return Result.from_dict(raw)


def wait(
    settings: Settings, ref: str, timeout: float | None, poll: float = 0.25
) -> tuple[Session, Result]:
    """Block until the agent writes its result. Fails fast if the session dies first."""
    session = get(settings, ref)
    data = DataDir(session.data_dir)
    deadline = None if timeout is None else time.monotonic() + timeout
    checked = time.monotonic()
    while True:
        raw = data.read_json(data.result_file)
        if raw is not None:
            return session, Result.from_dict(raw)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise WaitTimeout(
                f"no result from session {session.id} after {timeout:g}s",
                hint="the session keeps running; wait again or `vncsess stop` it",
            )
        if now - checked > 2:  # a dead agent will never write a result
            checked = now
            try:
                session = get(settings, session.id)
            except NotFound:
                raise SessionFailed(
                    f"session {data.path.name} was stopped before the agent finished"
                ) from None
            if session.services.get("agent") not in ("running", "created"):
                raise SessionFailed(
                    f"the agent of session {session.id} exited without a result",
                    hint=_logs_hint(session.id),
                )
        time.sleep(poll)


# ------------------------------------------------------------------ take control


def set_control(settings: Settings, ref: str, take: bool) -> Session:
    """`control`: pause the agent (browser-use pause) and hand out the interactive URL.
    `resume`: hand back; the agent continues where it paused."""
    session = get(settings, ref)
    if session.status not in ("running", "degraded"):
        raise Conflict(f"session {session.id} is {session.status}", hint="see `vncsess ls`")
    data = DataDir(session.data_dir)
    if take and session.control == "controlled":
        raise Conflict(
            f"session {session.id} is already under control",
            hint=f"`vncsess resume {session.id}` hands it back",
        )
    if not take and session.control == "watching":
        raise Conflict(f"session {session.id} is not under control", hint="nothing to resume")
    if session.services.get("agent") == "running":
        docker.signal(f"{session.project}-agent-1", "SIGUSR1" if take else "SIGUSR2")
    # A fresh interactive password each time control is taken, and another at resume, so
    # a control URL handed out earlier no longer opens a new connection.
    data.rotate_control_secret()
    data.write_json(
        data.control_file,
        {"state": "controlled" if take else "watching", "since": datetime.now(UTC).isoformat()},
    )
    return get(settings, session.id)
