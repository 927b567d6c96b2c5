"""The use cases: start, list, inspect, stop, logs, wait, result, control.

Everything here returns data or raises a VncsessError; nothing prints. Docker is the source
of truth for which sessions exist (labels); the data dir holds what outlives them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import random
import re
import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vncsess import activity, engines, images, recordings, rfb, tasks
from vncsess.config import Settings, for_new_session, parse_duration, parse_resolution
from vncsess.datadir import DataDir, check_room, container_ids, env_text, new_secrets, unwritable
from vncsess.engines.base import Engine, Observed, Progress, SessionSecrets, SessionSpec
from vncsess.errors import (
    BadInput,
    Conflict,
    NotFound,
    SessionFailed,
    VncsessError,
    WaitTimeout,
)
from vncsess.models import Batch, Result, Session
from vncsess.protocol import CLAIM_FILE, PAUSED, Status

if TYPE_CHECKING:
    from vncsess import files


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
MAX_TASK_BYTES = 256 * 1024
# The API's body limit (1 MiB) must hold it, with JSON's escapes.
MAX_SCRIPT_BYTES = 512 * 1024
MAX_SCRIPT_ARGS = 100
MAX_SCRIPT_ARG_BYTES = 4096
MAX_TTL_S = 30 * 24 * 3600
MIN_IDLE_S = 5
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
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
    idle_timeout: str = ""  # a duration without activity, then the session ends; "" = none
    no_internet: bool = False
    cpus: str = "1.5"
    memory: str = "2g"
    uploads: tuple[Path, ...] = ()  # files put into the session before it starts (files.py)
    file_transfer: bool = True  # off: no uploads, no downloads handed out (files.py)
    script: str = ""  # `--script`: the text of the user's Python script, run instead of a task
    script_args: tuple[str, ...] = ()
    agent_image: str = ""  # "" = the configured agent image (VNCSESS_AGENT_IMAGE)


# ------------------------------------------------------------------ validation


def resolve_llm(opts: UpOptions, env: dict[str, str]) -> str:
    """The model a session will use; says no early rather than inside the container."""
    llm = opts.llm.strip()
    if not llm:
        key = next((k for k in KEY_NAMES if env.get(k)), None)
        if key:
            return DEFAULT_MODELS[key]
        if opts.task.strip() not in ("", "demo"):
            # The demo model can only do the demo task: running it on a real task fails
            # minutes later with words that teach a newcomer nothing.
            raise BadInput(
                "no model is configured, and only `--task demo` runs without one",
                hint="put a key in agent/.env (OPENAI_API_KEY=...) or give --env-file, or "
                "choose one with --llm PROVIDER:MODEL (--base-url URL for an "
                "OpenAI-compatible server); `--task demo` runs the offline demo",
            )
        return "demo"
    if llm == "demo":
        return llm
    provider, sep, model = llm.partition(":")
    if not sep or not model or provider not in PROVIDERS:
        raise BadInput(
            f"unknown model {llm!r}",
            hint="use demo or PROVIDER:MODEL with PROVIDER one of " + ", ".join(PROVIDERS),
        )
    return llm


def models(settings: Settings) -> dict[str, Any]:
    """Which models a new session can use here, for a form to offer: the default (what an
    empty --llm resolves to), the providers' models whose key is configured, and the
    providers. Names only: never a key, nor which variable holds it."""
    _, env = read_env_file(settings.env_file, explicit=False)
    configured = list(dict.fromkeys(DEFAULT_MODELS[k] for k in KEY_NAMES if env.get(k)))
    return {
        "default": configured[0] if configured else "demo",
        "configured": configured,
        "providers": list(PROVIDERS),
    }


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
    validate_script(opts)
    if opts.llm_base_url and not re.match(r"^https?://[^\s/]+", opts.llm_base_url):
        raise BadInput(
            f"malformed --base-url {opts.llm_base_url!r}", hint="for example http://host:8000/v1"
        )
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


def validate_script(opts: UpOptions) -> None:
    """`--script`, its arguments and `--agent-image`: one line each for what is wrong."""
    if opts.script and opts.task:
        raise BadInput("give a task or a script, not both", hint="the script is the task")
    if opts.script_args and not opts.script:
        raise BadInput("--script-arg needs --script", hint="pass --script my_agent.py")
    if opts.script:
        if len(opts.script.encode("utf-8", errors="replace")) > MAX_SCRIPT_BYTES:
            raise BadInput(
                "the script is too big",
                hint=f"keep it under {MAX_SCRIPT_BYTES // 1024} KiB; put libraries in an image "
                "built FROM vncsess-agent (--agent-image)",
            )
        if "\0" in opts.script:
            raise BadInput("the script is not text (it holds a NUL byte)")
    if len(opts.script_args) > MAX_SCRIPT_ARGS:
        raise BadInput(f"too many --script-arg (at most {MAX_SCRIPT_ARGS})")
    for arg in opts.script_args:
        if "\0" in arg or len(arg.encode("utf-8", errors="replace")) > MAX_SCRIPT_ARG_BYTES:
            raise BadInput(
                "a --script-arg is too long or holds a NUL byte",
                hint=f"each at most {MAX_SCRIPT_ARG_BYTES} bytes; pass bigger data in the script",
            )
    if opts.agent_image and not _IMAGE.match(opts.agent_image):
        raise BadInput(
            f"malformed --agent-image {opts.agent_image!r}", hint="for example my-agent:1"
        )


def _check_agent_image(engine: Engine, opts: UpOptions) -> None:
    """A custom agent image must be there (Docker builds nothing but its own two), and a
    script needs the Docker engine, which mounts it from the data dir."""
    if opts.script and engine.name != "docker":
        raise BadInput(
            f"--script runs on the docker engine only (this is {engine.name})",
            hint="build an image FROM vncsess-agent with the script in it, and use --agent-image",
        )
    if opts.agent_image and engine.builds_images:
        from vncsess.engines import docker

        if not docker.image_id(opts.agent_image):
            raise BadInput(
                f"no image {opts.agent_image!r} on this Docker engine",
                hint="build it FROM vncsess-agent first: "
                "docker build -t my-agent -f examples/Dockerfile examples",
            )


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
    return env_text(values), values


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


@contextmanager
def cache_lock(settings: Settings, name: str) -> Iterator[None]:
    """An exclusive lock across processes (CLI, `serve`), on a file in the cache dir."""
    settings.cache.mkdir(parents=True, exist_ok=True)
    with open(settings.cache / name, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _name_lock(settings: Settings) -> AbstractContextManager[None]:
    """Two `up --name X` at once: the second waits until the first's containers exist
    (and carry the name), then sees it taken. Unnamed sessions never wait."""
    return cache_lock(settings, "names.lock")


def _check_name_free(settings: Settings, engine: Engine, name: str) -> None:
    """A name belongs to one live session at a time, as `docker run --name` does; a session
    that has ended (exited, expired) gives its name up."""
    for s in _sessions(settings, engine.observe()):
        if s.name == name and s.status not in ENDED:
            raise Conflict(
                f"the name {name!r} is in use by session {s.id}",
                hint=f"choose another --name, or `vncsess stop {s.id}` first",
            )


@dataclass(frozen=True)
class _Checked:
    """UpOptions checked and resolved: what every session of these options shares."""

    resolution: str
    ttl: int
    llm: str
    llm_env: str
    idle_timeout: int = 0


def _check(settings: Settings, opts: UpOptions, explicit_env: bool) -> _Checked:
    resolution = opts.resolution or settings.resolution
    w, h = parse_resolution(resolution)
    ttl = parse_duration(opts.ttl) if opts.ttl else 0
    if ttl > MAX_TTL_S:
        raise BadInput(f"--ttl {opts.ttl} is too long", hint="at most 30 days (720h)")
    idle = parse_duration(opts.idle_timeout) if opts.idle_timeout else 0
    if idle > MAX_TTL_S:
        raise BadInput(
            f"--idle-timeout {opts.idle_timeout} is too long", hint="at most 30 days (720h)"
        )
    if 0 < idle < MIN_IDLE_S:
        raise BadInput(
            f"--idle-timeout {opts.idle_timeout} is too short",
            hint=f"at least {MIN_IDLE_S} s: a session needs a few seconds to start",
        )
    validate(opts)
    llm_env, env_values = read_env_file(settings.env_file, explicit_env)
    return _Checked(f"{w}x{h}", ttl, resolve_llm(opts, env_values), llm_env, idle)


def _spec(
    settings: Settings, opts: UpOptions, checked: _Checked, session_id: str, keys: SessionSecrets
) -> SessionSpec:
    uid, gid = container_ids()
    now = datetime.now(UTC)
    ttl = checked.ttl
    return SessionSpec(
        session_id=session_id,
        name=opts.name,
        created_at=now.isoformat(timespec="seconds"),
        resolution=checked.resolution,
        data_dir=settings.session_dir(session_id),
        public_host=settings.public_host,
        bind=settings.bind,
        port=opts.port,
        vnc_image=settings.vnc_image,
        agent_image=opts.agent_image or settings.agent_image,
        uid=uid,
        gid=gid,
        llm=checked.llm,
        llm_base_url=opts.llm_base_url,
        max_steps=opts.max_steps,
        demo_step_delay=settings.demo_step_delay,
        no_internet=opts.no_internet,
        record=opts.record,
        record_fps=opts.record_fps,
        ttl_s=ttl,
        expires_at=(now + timedelta(seconds=ttl)).isoformat(timespec="seconds") if ttl else "",
        agent_cpus=opts.cpus,
        agent_memory=opts.memory,
        secrets=keys,
        owner=settings.owner,
        idle_timeout_s=checked.idle_timeout,
    )


def plan(settings: Settings, opts: UpOptions, explicit_env: bool = False) -> str:
    """What `up` would ask the engine to create (`up --dry-run`), in the engine's own words
    (Kubernetes manifests, the compose file); nothing is created, no secret is shown."""
    settings = for_new_session(settings)
    checked = _check(settings, opts, explicit_env)
    keys = new_secrets(opts.task, checked.llm_env)
    return engines.load(settings).plan(_spec(settings, opts, checked, secrets.token_hex(4), keys))


def up(
    settings: Settings, opts: UpOptions, progress: Progress = _quiet, explicit_env: bool = False
) -> Session:
    """Start a session and return it once its display answers through noVNC."""
    settings = for_new_session(settings)
    checked = _check(settings, opts, explicit_env)
    check_room(settings.sessions_dir)

    if opts.uploads and not opts.file_transfer:
        raise BadInput("--upload needs file transfer", hint="leave out --no-file-transfer")
    from vncsess import files

    # Checked, copied and scanned before anything starts: a refused file starts nothing.
    with files.prepare_paths(settings, opts.uploads) as uploads:
        if poolable(settings, opts):
            claimed = _claim(settings, opts, checked, progress)
            if claimed is not None:
                return claimed
        return _start(settings, opts, checked, uploads, progress)


def start_pool_session(settings: Settings, resolution: str, progress: Progress = _quiet) -> Session:
    """One warm-pool session (`pool fill`): started as `up` with no options starts one, by the
    same path, but labelled for the pool, with no task, no model keys and no limits, and
    marked free to be claimed once its display answers."""
    from vncsess import files

    settings = for_new_session(settings)
    opts = UpOptions(resolution=resolution)
    checked = dataclasses.replace(_check(settings, opts, False), llm="demo", llm_env="")
    check_room(settings.sessions_dir)
    with files.prepare_paths(settings, ()) as uploads:
        return _start(settings, opts, checked, uploads, progress, pool=True)


def _start(
    settings: Settings,
    opts: UpOptions,
    checked: _Checked,
    uploads: files.Prepared,
    progress: Progress,
    pool: bool = False,
) -> Session:
    from vncsess import files

    engine = engines.load(settings)
    engine.check()
    _check_agent_image(engine, opts)
    if engine.builds_images:
        built = images.ensure(settings, progress)
        if built:
            progress("built " + ", ".join(built))
    if opts.port is not None:
        _check_port_free(settings.bind, opts.port)

    with _name_lock(settings) if opts.name else nullcontext():
        if opts.name:
            _check_name_free(settings, engine, opts.name)
        session_id = secrets.token_hex(4)
        data = DataDir(settings.session_dir(session_id))
        started = time.monotonic()
        keys = new_secrets(opts.task, checked.llm_env)
        spec = dataclasses.replace(_spec(settings, opts, checked, session_id, keys), pool=pool)
        try:
            data.create(keys)
            files.set_enabled(data, opts.file_transfer)
            uploads.place(data)
            if opts.script:
                data.write_script(opts.script, list(opts.script_args))
            progress(f"starting session {session_id}")
            engine.start(spec)
        except BaseException:
            _discard(engine, session_id, data)
            raise
    try:
        session = _wait_ready(settings, engine, session_id, started + settings.ready_timeout)
        if opts.record:
            _wait_recording(engine, session_id, data, started + settings.ready_timeout)
        # When the display first answered: the event stream's `session.ready`, durable so
        # that a restarted `serve` tells it too.
        data.write_json(data.ready_file, {"at": _now_iso(), "novnc_port": session.novnc_port})
        if pool:  # now, and not before, an `up` may claim it
            data.write_json(data.pool_free, _pool_terms(settings, spec))
        return session
    except BaseException:
        # A failed (or interrupted) up leaves nothing behind: no containers, no data dir.
        _discard(engine, session_id, data)
        raise


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _discard(engine: Engine, session_id: str, data: DataDir) -> None:
    try:
        engine.remove([session_id])
    finally:
        data.remove()


def _wait_ready(settings: Settings, engine: Engine, session_id: str, deadline: float) -> Session:
    """Until an RFB banner comes back through noVNC's websockify. Checks the containers
    now and then so a crash fails fast with its own words rather than a timeout."""
    seen = _observe_exact(engine, session_id)
    while seen.endpoint is None and time.monotonic() < deadline:
        if "dead" in seen.services.values():  # it will not start (an image not pulled...)
            raise SessionFailed(
                f"session {session_id} did not start: {seen.reason or 'a container is dead'}",
                hint="nothing was left behind; fix the cause and start it again",
            )
        time.sleep(0.1)
        seen = _observe_exact(engine, session_id)
    session = _session_from(seen, settings)
    if session.endpoint is None:
        raise SessionFailed("the vnc container published no port", hint=_logs_hint(session_id))
    host, port = session.endpoint
    said_ready = DataDir(settings.session_dir(session_id)).activity / activity.DISPLAY_READY
    while True:
        try:
            step = min(deadline, time.monotonic() + 2)
            if engine.builds_images:  # this tree's vnc image: the display says when it is ready
                _wait_for(said_ready, step)
                rfb.wait_ready(host, port, step, banner=False)
            else:  # a registry's image, perhaps of another version: ask x11vnc itself
                rfb.wait_ready(host, port, step)
            # What the engine said a moment ago still holds (both services were running);
            # the agent's own state is read afresh from the data dir.
            return _session_from(seen, settings)
        except TimeoutError as exc:
            session = _get_exact(settings, engine, session_id)
            dead = [
                s for s, state in session.services.items() if state not in ("running", "created")
            ]
            if dead or time.monotonic() >= deadline:
                why = f"{', '.join(dead)} exited" if dead else f"no VNC answer ({exc})"
                tail = _last_log_line(engine, session_id, dead[0] if dead else "vnc")
                raise SessionFailed(
                    f"session {session_id} did not start: {why}" + (f": {tail}" if tail else ""),
                    hint="`vncsess build` rebuilds the images; the logs were removed with it",
                ) from None


def _wait_for(path: Path, until: float) -> None:
    """Until PATH exists (a stat every 20 ms, which costs nothing), or TimeoutError."""
    while not path.exists():
        if time.monotonic() >= until:
            raise TimeoutError(f"the display has not said it is ready ({path.name})")
        time.sleep(0.02)


def _wait_recording(engine: Engine, session_id: str, data: DataDir, deadline: float) -> None:
    """`up --record` returns once the recorder runs, not only the display: the vnc container
    starts ffmpeg when the display is healthy, which can come a moment after noVNC answers
    (0.2 s after `up` returned was seen under load), and whatever follows `up` must be on
    the recording."""
    while not recordings.recording_now(data):
        if time.monotonic() >= deadline:
            tail = _last_log_line(engine, session_id, "vnc")
            raise SessionFailed(
                f"session {session_id} started, but its recording did not"
                + (f": {tail}" if tail else ""),
                hint="nothing was left behind; start it again, or without --record",
            )
        time.sleep(0.05)


def _observe_exact(engine: Engine, session_id: str) -> Observed:
    found = engine.observe(session_id)
    if not found:
        raise SessionFailed(f"session {session_id} vanished while starting")
    return found[0]


def _get_exact(settings: Settings, engine: Engine, session_id: str) -> Session:
    return _session_from(_observe_exact(engine, session_id), settings)


def _last_log_line(engine: Engine, session_id: str, service: str) -> str:
    try:
        lines = list(engine.logs(session_id, [service], False, 5))
    except VncsessError:
        return ""
    lines = [ln.split("|", 1)[-1].strip() for ln in lines if ln.strip()]
    return lines[-1] if lines else ""


def _logs_hint(session_id: str) -> str:
    return f"see `vncsess logs {session_id}`"


# ------------------------------------------------------------------ the warm pool

# What a pool session was started with, besides the engine's own metadata: a claim must
# match all of it (pool.free holds it).
_POOL_TERMS = ("resolution", "vnc_image", "agent_image", "bind", "cpus", "memory", "engine")


def _pool_terms(settings: Settings, spec: SessionSpec) -> dict[str, str]:
    return {
        "resolution": spec.resolution,
        "vnc_image": spec.vnc_image,
        "agent_image": spec.agent_image,
        "bind": spec.bind,
        "cpus": spec.agent_cpus,
        "memory": spec.agent_memory,
        "engine": settings.engine,
        "at": _now_iso(),
    }


def poolable(settings: Settings, opts: UpOptions) -> bool:
    """Whether an `up` with these options may take a pool session at all: one started as
    the pool starts them (no script, image, port, network or resource choices, no
    uploads). The resolution and the rest are matched per pool session (_claim)."""
    defaults = UpOptions()
    return (
        settings.engine == "docker"
        and not opts.script
        and not opts.agent_image
        and not opts.no_internet
        and opts.port is None
        and opts.cpus == defaults.cpus
        and opts.memory == defaults.memory
        and not opts.uploads
        and opts.file_transfer
    )


def _pool_state(meta: dict[str, str], data: DataDir) -> str:
    """ "" for a session `up` started; for a pool one: "claimed" once an `up` took it,
    "idle" while it waits to be, "starting" before its display answered."""
    if meta.get("pool") != "1":
        return ""
    if data.claim_file.exists() or data.pool_claimed.exists():
        return "claimed"
    return "idle" if data.pool_free.exists() else "starting"


def _in_our_pool(settings: Settings, o: Observed) -> bool:
    """A pool session this caller may claim or count: its owner (VNCSESS_OWNER, or none)
    and its data dir under this VNCSESS_HOME, so one test run or CI job never takes
    another's, nor a session whose files another home holds."""
    data_dir = Path(o.meta.get("data-dir") or settings.session_dir(o.session_id))
    return (
        o.meta.get("pool") == "1"
        and o.meta.get("owner", "") == settings.owner
        and data_dir.parent == settings.sessions_dir
    )


def _claim(
    settings: Settings, opts: UpOptions, checked: _Checked, progress: Progress
) -> Session | None:
    """Take a free pool session for this `up`, or None (then `up` starts one cold).

    The claim is one rename (pool.free -> pool.claimed) in the session's data dir: of any
    number of `up`s at once, from any process, exactly one wins each session. The winner
    hands the session over (_hand_over); a session that fails that is removed, never put
    back, and the next one is tried."""
    engine = engines.load(settings)
    wanted = {
        "resolution": checked.resolution,
        "vnc_image": settings.vnc_image,
        "agent_image": settings.agent_image,
        "bind": settings.bind,
        "cpus": opts.cpus,
        "memory": opts.memory,
        "engine": settings.engine,
    }
    # Free pool sessions of this home mark themselves in their data dirs: without one, a
    # cold `up` asks the engine nothing more than it did before the pool existed.
    free = {p.parent.name for p in settings.sessions_dir.glob("*/pool.free")}
    if not free:
        return None
    seen = [o for o in engine.observe() if o.session_id in free and _in_our_pool(settings, o)]
    if not seen:
        return None
    random.shuffle(seen)  # `up`s at once try different ones first: fewer lost renames
    with _name_lock(settings) if opts.name else nullcontext():
        if opts.name:
            _check_name_free(settings, engine, opts.name)
        for o in seen:
            if _status(o.services, o.health) != "running" or o.endpoint is None:
                continue
            data = DataDir(Path(o.meta.get("data-dir") or settings.session_dir(o.session_id)))
            terms = data.read_json(data.pool_free)
            if terms is None or any(terms.get(k) != v for k, v in wanted.items()):
                continue  # claimed meanwhile, or started otherwise (another resolution...)
            try:
                os.rename(data.pool_free, data.pool_claimed)
            except FileNotFoundError:
                continue  # another `up` won it
            except OSError as exc:
                raise unwritable(data.path, exc) from None
            progress(f"claiming pool session {o.session_id}")
            try:
                return _hand_over(settings, engine, o, data, opts, checked)
            except VncsessError as exc:
                progress(f"pool session {o.session_id} failed its claim ({exc.message})")
                _discard(engine, o.session_id, data)
            except BaseException:
                _discard(engine, o.session_id, data)
                raise
    return None


def _hand_over(
    settings: Settings,
    engine: Engine,
    seen: Observed,
    data: DataDir,
    opts: UpOptions,
    checked: _Checked,
) -> Session:
    """Make a claimed pool session this `up`'s: fresh viewer and control passwords (the
    old ones let no new client in), the claimer's model keys, its facts (laid over the
    labels for `ls`), its limits counted from now, its model and its task."""
    sid = seen.session_id
    now = datetime.now(UTC)
    at = now.isoformat(timespec="seconds")
    try:
        engine.push_vnc_passwd(sid, data.path, data.rotate_vnc_secrets())
        data.replace_llm_env(checked.llm_env)
        data.write_json(
            data.claim_file,
            {
                "claimed_at": _now_iso(),
                "name": opts.name,
                "created": at,
                "expires": (now + timedelta(seconds=checked.ttl)).isoformat(timespec="seconds")
                if checked.ttl
                else "",
                "idle-timeout": str(checked.idle_timeout) if checked.idle_timeout else "",
                "llm": checked.llm,
                "owner": settings.owner,
                "public-host": settings.public_host,
                "recording": "1" if opts.record else "",
            },
        )
        # The idle clock starts again from the claim; the vnc container reads its limits.
        activity.stamp(data.activity, activity.START)
        activity.write(data.activity, activity.CLAIM, f"{checked.ttl} {checked.idle_timeout}")
        tmp = data.agent / f".{CLAIM_FILE}.tmp"
        tmp.write_text(
            json.dumps(
                {
                    "llm": checked.llm,
                    "llm_base_url": opts.llm_base_url,
                    "max_steps": opts.max_steps,
                    "demo_step_delay": settings.demo_step_delay,
                    "ttl_s": checked.ttl,
                    "idle_timeout_s": checked.idle_timeout,
                }
            ),
            encoding="utf-8",
        )
        DataDir._own(tmp, 0o640)
        os.replace(tmp, data.runner_claim_file)
        if opts.task:  # after the claim, which the runner applies before taking a task
            tasks.queue(data, opts.task)
    except OSError as exc:
        raise unwritable(data.path, exc) from None
    # Its display answered through noVNC before it was marked free, and both containers
    # were running a moment ago: a connection to the published port is check enough here.
    # A whole RFB exchange cost 0.3 s (x11vnc naps while nobody is connected), as much
    # again as the rest of a claim, and the claimer's viewer pays that wait anyway.
    if seen.endpoint is not None:
        try:
            socket.create_connection(seen.endpoint, timeout=2).close()
        except OSError as exc:
            raise SessionFailed(f"its noVNC port does not answer ({exc})") from None
    session = _session_from(seen, settings)
    if opts.record:
        recordings.start(settings, session, opts.record_fps)
        session = _get_exact(settings, engine, sid)
    return session


# ------------------------------------------------------------------ listing

ENDED = ("exited", "expired")


# What a claim lays over a pool session's labels (see _hand_over).
_CLAIMED = ("name", "created", "expires", "idle-timeout", "llm", "owner", "public-host",
            "recording")  # fmt: skip


def _session_from(seen: Observed, settings: Settings) -> Session:
    meta = seen.meta
    data = DataDir(Path(meta.get("data-dir") or settings.session_dir(seen.session_id)))
    pool = _pool_state(meta, data)
    if pool == "claimed":
        claim = data.read_json(data.claim_file) or {}
        meta = {**meta, **{k: str(claim[k]) for k in _CLAIMED if k in claim}}
    expires = meta.get("expires") or ""
    expires_at = datetime.fromisoformat(expires) if expires else None
    status = _status(seen.services, seen.health)
    idle = meta.get("idle-timeout", "")
    idle_timeout = int(idle) if idle.isdigit() else 0
    expired_by = ""
    # The idle timeout ended it: the container that found it idle said so in `ended`.
    if idle_timeout and status in ("exited", "degraded") and activity.ended(data.activity):
        status, expired_by = "expired", activity.IDLE
    elif status == "exited" and expires_at and expires_at <= datetime.now(UTC):
        status, expired_by = "expired", "ttl"
    created = datetime.fromisoformat(meta.get("created") or "1970-01-01T00:00:00+00:00")
    last_active = None
    if idle_timeout and status not in ENDED:
        last = activity.last_activity(data.activity)
        # Nothing recorded (a data dir from elsewhere): count from its creation.
        last_active = datetime.fromtimestamp(last, UTC) if last else created
    raw = data.read_json(data.status_file)
    control = (data.read_json(data.control_file) or {}).get("state", "watching")
    if raw is not None:
        agent_state = Status.from_dict(raw).state
    else:
        agent_state = "unknown" if seen.services.get("agent") == "running" else "stopped"
    if agent_state == PAUSED and control == "watching":
        control = "paused"
    # A session still in the pool is nobody's: its URLs are handed out to no one.
    view, ctl = ("", "") if pool in ("idle", "starting") else data.vnc_secrets()
    return Session(
        id=seen.session_id,
        name=meta.get("name", ""),
        status=status,
        created_at=created,
        resolution=meta.get("resolution", ""),
        novnc_port=seen.novnc_port,
        endpoint=seen.endpoint,
        url_host=meta.get("public-host") or settings.url_host(),
        data_dir=data.path,
        llm=meta.get("llm", ""),
        services=dict(seen.services),
        agent_state=agent_state,
        control=control,
        no_internet=bool(meta.get("no-internet")),
        recording=recordings.recording_now(data),
        expires_at=expires_at,
        view_secret=view,
        control_secret=ctl,
        owner=meta.get("owner", ""),
        idle_timeout_s=idle_timeout,
        last_active_at=last_active,
        expired_by=expired_by,
        pool=pool,
    )


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


def _sessions(settings: Settings, seen: list[Observed]) -> list[Session]:
    found = [_session_from(o, settings) for o in seen]
    return sorted(found, key=lambda s: s.created_at, reverse=True)


def list_sessions(settings: Settings, status: str = "", name: str = "") -> list[Session]:
    """All sessions on this engine, newest first, from what the engine reports. `status`
    keeps those in that status; `name` those whose name contains it (as docker's own name
    filter does)."""
    found = _sessions(settings, engines.load(settings).observe())
    return [s for s in found if (not status or s.status == status) and (not name or name in s.name)]


def completions(settings: Settings) -> list[tuple[str, str]]:
    """What a shell completes a session reference with: each session's id (described by its
    name and state) and its name, from the engine's metadata alone (no data dirs read)."""
    seen = engines.load(settings).observe()
    out = []
    for o in seen:
        name = o.meta.get("name", "")
        state = _status(o.services, o.health)
        out.append((o.session_id, f"{name}, {state}" if name else state))
    out += [(o.meta["name"], o.session_id) for o in seen if o.meta.get("name")]
    return out


def get(settings: Settings, ref: str) -> Session:
    """A session by id, unique id prefix or name."""
    ref = ref.strip()
    if not ref:
        raise BadInput("empty session id", hint="see `vncsess ls`")
    engine = engines.load(settings)
    exact = engine.observe(ref)
    if exact:
        return _session_from(exact[0], settings)
    return _match(ref, _sessions(settings, engine.observe()))


def _match(ref: str, candidates: list[Session]) -> Session:
    by_name = [s for s in candidates if s.name == ref]
    live = [s for s in by_name if s.status not in ENDED]
    # A name is unique among live sessions; an ended one may share it with a live one.
    matches = live or by_name or [s for s in candidates if s.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise BadInput(
            f"{ref!r} matches {len(matches)} sessions: " + ", ".join(s.id for s in matches),
            hint="use more characters of the id",
        )
    raise NotFound(f"no session {ref!r}", hint="see `vncsess ls` for running sessions")


def get_many(settings: Settings, refs: list[str]) -> tuple[list[Session], list[VncsessError]]:
    """Each reference resolved on its own, as `docker rm a b` does: the sessions found
    (once each), and an error for every reference that names none or several."""
    if not refs:
        raise BadInput("no session given", hint="name one or more ids, or use --all")
    engine = engines.load(settings)
    every = _sessions(settings, engine.observe())
    by_id = {s.id: s for s in every}
    found: dict[str, Session] = {}
    errors: list[VncsessError] = []
    for ref in refs:
        try:
            s = by_id.get(ref.strip()) or _match(ref.strip(), every)
        except VncsessError as exc:
            errors.append(exc)
            continue
        found.setdefault(s.id, s)
    return list(found.values()), errors


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


def artifacts(settings: Settings, ref: str | None = None) -> list[tuple[DataDir, Session | None]]:
    """Data dirs (every one, or one session's) with the live session of each, if any:
    what recordings and files are listed from."""
    live = {s.id: s for s in list_sessions(settings)}
    if ref:
        dirs = [data_dir_of(settings, ref)]
    elif settings.sessions_dir.is_dir():
        dirs = [DataDir(p) for p in sorted(settings.sessions_dir.iterdir()) if p.is_dir()]
    else:
        dirs = []
    return [(d, live.get(d.path.name)) for d in dirs]


# ------------------------------------------------------------------ stop, logs


def stop(
    settings: Settings,
    refs: list[str],
    stop_all: bool = False,
    progress: Progress = _quiet,
    include_pool: bool = False,
) -> Batch:
    """Remove each session's containers, networks and volumes; keep its data dir
    (recordings finalised first, secrets deleted). Acts on every reference it can resolve
    and reports the others in the Batch's errors. `stop_all` leaves the warm pool's
    sessions that nobody claimed yet, unless `include_pool`."""
    errors: list[VncsessError] = []
    if stop_all:  # with VNCSESS_OWNER set, that owner's sessions only, as `prune`
        found = _owned(settings, list_sessions(settings))
        targets = [s for s in found if include_pool or not s.in_pool]
    else:
        targets, errors = get_many(settings, refs)
    engine = engines.load(settings)
    if not targets:
        return Batch(done=[], errors=errors)
    for s in targets:
        progress(f"stopping {s.id}")
    # Recordings end first, side by side (each waits for its ffmpeg to finish the file).
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda s: recordings.stop_running(engine, s), targets))
    # One removal for all: the engine stops every container at once, where one removal per
    # session queued them (16 sessions: 23 s).
    engine.remove([s.id for s in targets])

    def tidy(s: Session) -> None:
        data = DataDir(s.data_dir)
        if data.path.is_dir():  # what `prune --older-than` measures age from
            with suppress(OSError):
                data.write_json(
                    data.stopped_file,
                    {"at": _now_iso(), "status": s.status, "expired_by": s.expired_by or None},
                )
        data.forget_secrets()
        recordings.finalize_partials(settings, engine, data)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(tidy, targets))
    return Batch(done=[s.id for s in targets], errors=errors)


def prune(settings: Settings, progress: Progress = _quiet) -> list[str]:
    """Remove every session that has ended by itself (expired, or all containers exited),
    as `stop` would: recordings finalised, data dirs kept. With VNCSESS_OWNER set, only
    that owner's: a CI job or a test run prunes what it started, not its neighbours'."""
    ended = [s.id for s in _owned(settings, list_sessions(settings)) if s.status in ENDED]
    return stop(settings, ended, progress=progress).done if ended else []


def _owned(settings: Settings, found: list[Session]) -> list[Session]:
    """The sessions that commands acting on "all" may touch: every one, or with
    VNCSESS_OWNER set, only that owner's (a CI job or a test run on a shared engine)."""
    return [s for s in found if not settings.owner or s.owner == settings.owner]


def logs(
    settings: Settings, ref: str, service: str | None, follow: bool, tail: int | None
) -> Iterator[str]:
    session = get(settings, ref)
    services = [service] if service else []
    return engines.load(settings).logs(session.id, services, follow, tail)


# ------------------------------------------------------------------ results


def result(settings: Settings, ref: str, task: int | None = None) -> Result:
    """The latest result, or task TASK's (each follow-up task keeps its own)."""
    data = data_dir_of(settings, ref)
    if task is not None:
        tasks.resolve(data, task)
    res = tasks.read(data, task)
    if res is None:
        which = f"task {task} of session" if task is not None else "session"
        flag = f" --task {task}" if task is not None else ""
        raise NotFound(
            f"{which} {data.path.name} has no result yet",
            hint=f"`vncsess wait {data.path.name}{flag}` blocks until the agent finishes",
        )
    return res


def add_task(settings: Settings, ref: str, text: str) -> tuple[Session, int]:
    """`vncsess task`: a follow-up task for the session's agent, in the same browser, after
    the task before it; the session and the task's number (for `result --task N`)."""
    tasks.check_text(text)
    session = get(settings, ref)
    return session, tasks.submit(session, text)


def wait_task(session: Session, task: int | None) -> int | None:
    """The task a `wait` waits for: TASK, checked, or the latest the session was given."""
    return tasks.resolve(DataDir(session.data_dir), task)


def wait(
    settings: Settings,
    ref: str,
    timeout: float | None,
    poll: float = 0.25,
    task: int | None = None,
) -> tuple[Session, Result]:
    """Block until the agent writes the result of TASK (default: of the latest task). Fails
    fast if the session dies first."""
    session = get(settings, ref)
    task = wait_task(session, task)
    deadline = None if timeout is None else time.monotonic() + timeout
    checked = time.monotonic()
    while True:
        now = time.monotonic()
        alive = now - checked > 2  # now and then: a dead agent will never write a result
        if alive:
            checked = now
        res = result_now(settings, session, check_alive=alive, task=task)
        if res is not None:
            return session, res
        if deadline is not None and now >= deadline:
            raise wait_timeout(session.id, timeout or 0)
        time.sleep(poll)


def result_now(
    settings: Settings, session: Session, check_alive: bool = True, task: int | None = None
) -> Result | None:
    """One look for `wait` (the CLI's loop, or the API's without a thread per waiter): the
    result (of TASK; see wait_task) if the agent wrote it, else None; SessionFailed when no
    result will ever come."""
    data = DataDir(session.data_dir)
    res = tasks.read(data, task)
    if res is not None:
        return res
    if check_alive:
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
    return None


def wait_timeout(session_id: str, timeout: float) -> WaitTimeout:
    return WaitTimeout(
        f"no result from session {session_id} after {timeout:g}s",
        hint="the session keeps running; wait again or `vncsess stop` it",
    )


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
    engine = engines.load(settings)
    if session.services.get("agent") == "running":
        engine.signal(session.id, "agent", "SIGUSR1" if take else "SIGUSR2")
    # A fresh interactive password each time control is taken, and another at resume, so
    # a control URL handed out earlier no longer opens a new connection.
    engine.push_vnc_passwd(session.id, data.path, data.rotate_control_secret())
    data.write_json(
        data.control_file,
        {"state": "controlled" if take else "watching", "since": datetime.now(UTC).isoformat()},
    )
    # For the idle timeout: a person in control keeps the session alive; handing back is
    # activity too, from which the idle time counts again.
    activity.write(data.activity, activity.CONTROL, f"{'controlled' if take else 'watching'} "
                   f"{int(time.time())}")  # fmt: skip
    return get(settings, session.id)


def url(settings: Settings, ref: str, control: bool = False) -> str:
    """The session's watch URL, or with control its keyboard-and-mouse URL: that one only
    while the agent is paused (`control`), as to_dict shows it, or person and agent would
    fight over the mouse."""
    session = get(settings, ref)
    if session.novnc_port is None:
        raise Conflict(
            f"session {session.id} is {session.status}: it has no viewer URL",
            hint=f"see `vncsess logs {session.id}`, or start another with `vncsess up`",
        )
    if not control:
        return session.novnc_url
    if session.control == "watching" or not session.control_url:
        raise Conflict(
            f"session {session.id} is not under your control (the agent has it)",
            hint=f"`vncsess control {session.id}` pauses the agent and gives you the control URL",
        )
    return session.control_url
