"""The HTTP face (`vncsess serve`): FastAPI over the same core as the CLI.

Like cli.py it only parses, calls the core (sessions.*, recordings.*) and renders: the JSON
is the CLI's `--json` (the models' to_dict), and the core's errors become RFC 9457 problems.
Blocking core calls run in plain `def` routes (FastAPI runs those in its thread pool); the
long ones that must not hold a thread (wait, logs, events) are `async` and only borrow one
for each short look.

Areas, one router each: health (open), the seeds' two APIs, and /v1 (sessions, results,
control, recordings, logs, events). Every router but health declares `authenticate` once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import (
    APIRouter,
    Body,
    Depends,
    FastAPI,
    File,
    Header,
    Query,
    Request,
    Response,
    UploadFile,
    WebSocket,
)
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vncsess import __version__, files, links, proxy, recordings, retention, sessions, webauth
from vncsess.config import Settings
from vncsess.datadir import DataDir
from vncsess.errors import (
    BadInput,
    Conflict,
    ExitCode,
    NotFound,
    SessionFailed,
    VncsessError,
)
from vncsess.events import EventLog, EventSource
from vncsess.models import Result, Session

LOG = logging.getLogger("vncsess.api")

TOKEN_FILE = "api-token"
MAX_BODY = 1024 * 1024  # bytes of a request body; a task is at most 256 KiB (sessions.py)
KEEPALIVE_S = 15
MAX_WAIT_S = 3600.0
THREADS = 64  # the thread pool for blocking core calls (ten creates at once, and reads)

# ---------------------------------------------------------------- the token


def load_token(settings: Settings, given: str = "") -> tuple[str, Path | None]:
    """The API token and the file it came from: `given` (--token, VNCSESS_API_TOKEN), else
    $VNCSESS_HOME/api-token, made on first run (random, mode 0600)."""
    if given:
        if len(given) < 16:
            raise BadInput("the API token is too short", hint="use at least 16 characters")
        return given, None
    path = settings.home / TOKEN_FILE
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # a token others can read is no token
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise BadInput(
                f"the API token file {path} is empty or too short",
                hint="delete it: `vncsess serve` makes a new one",
            ) from None
        return token, path
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token, path


_bearer = HTTPBearer(
    auto_error=False,
    description="The API token: printed by `vncsess serve`, kept in $VNCSESS_HOME/api-token.",
)


class Unauthorized(Exception):
    pass


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The one place access is decided, declared once on every router but health.

    Two credentials: `Authorization: Bearer TOKEN`, compared in constant time; or, when no
    Authorization header is sent, the dashboard's sign-in cookie (webauth.py), with which a
    state-changing method must also prove it comes from the dashboard's own page (same
    Origin and the CSRF token; a 403 otherwise)."""
    token: str = request.app.state.token
    cookie = request.cookies.get(webauth.SESSION_COOKIE)
    if credentials is None and cookie is not None:
        if not webauth.valid_session(cookie, token):
            raise Unauthorized()
        if request.method not in webauth.SAFE_METHODS:
            webauth.check_forgery(request, cookie, token)
        return
    given = credentials.credentials if credentials is not None else ""
    # Bytes: compare_digest refuses non-ASCII str, and a header may carry any Latin-1.
    if not secrets.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
        raise Unauthorized()


# ---------------------------------------------------------------- problems (RFC 9457)


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An error, as application/problem+json (RFC 9457)."""

    type: str = Field(description="A URN naming the kind of problem, stable for clients.")
    title: str
    status: int
    detail: str = ""
    hint: str = Field("", description="What to do about it, when there is something to do.")
    instance: str = Field("", description="The request path.")
    errors: list[ValidationIssue] | None = None


_STATUS = {
    ExitCode.BAD_INPUT: (400, "bad-input", "Bad input"),
    ExitCode.NOT_FOUND: (404, "not-found", "Not found"),
    ExitCode.CONFLICT: (409, "conflict", "Conflict"),
    ExitCode.SESSION_FAILED: (502, "session-failed", "The session failed"),
    ExitCode.ENVIRONMENT: (503, "engine-unavailable", "The container engine is unavailable"),
    ExitCode.TIMEOUT: (504, "wait-timeout", "Timed out"),
}


def problem_of(exc: VncsessError) -> tuple[int, str, str]:
    """(HTTP status, problem kind, title) of a core error."""
    if isinstance(exc, links.LinkRefused):
        return 403, "link-refused", "Forbidden"
    if isinstance(exc, files.TransferOff):
        return 403, "file-transfer-off", "Forbidden"
    if isinstance(exc, files.TooLarge):
        return 413, "file-too-large", "File too large"
    return _STATUS.get(exc.exit_code, (503, "engine-unavailable", "The engine failed"))


def problem(
    status: int,
    kind: str,
    title: str,
    detail: str = "",
    hint: str = "",
    request: Request | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[ValidationIssue] | None = None,
) -> JSONResponse:
    body = Problem(
        type=f"urn:vncsess:problem:{kind}",
        title=title,
        status=status,
        detail=detail,
        hint=hint,
        instance=request.url.path if request is not None else "",
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )


async def _on_vncsess_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VncsessError)
    status, kind, title = problem_of(exc)
    return problem(status, kind, title, exc.message, exc.hint, request)


async def _on_unauthorized(request: Request, exc: Exception) -> Response:
    return problem(
        401,
        "unauthorized",
        "Unauthorized",
        "a valid API token is required",
        "send `Authorization: Bearer TOKEN`; `vncsess serve` printed the token",
        request,
        headers={"WWW-Authenticate": 'Bearer realm="vncsess"'},
    )


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Only where and what: pydantic's `input` and `ctx` would echo the (maybe hostile) input.
    issues = [
        ValidationIssue(
            loc=[p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            msg=str(e.get("msg", "invalid")),
            type=str(e.get("type", "invalid")),
        )
        for e in exc.errors()
    ]
    if any(i.type == "json_invalid" for i in issues):
        return problem(400, "bad-input", "Bad input", "the body is not valid JSON", "", request)
    first = issues[0] if issues else None
    detail = f"{'.'.join(str(p) for p in first.loc)}: {first.msg}" if first else "invalid request"
    return problem(422, "invalid-request", "Invalid request", detail, "", request, errors=issues)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}.get(
        exc.status_code, "http-error"
    )
    title = {404: "Not found", 405: "Method not allowed", 413: "Body too large"}.get(
        exc.status_code, "HTTP error"
    )
    return problem(exc.status_code, kind, title, str(exc.detail), "", request, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # A bug: log it (the traceback holds no token: auth only compares), say nothing inside.
    LOG.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(
        500,
        "internal-error",
        "Internal error",
        "an unexpected error happened",
        "see the `vncsess serve` log",
        request,
    )


_UPLOAD_PATH = re.compile(r"^/v1/sessions/[^/]+/files/?$")


class BodyLimit:
    """Refuses bodies over `limit` bytes (413), by Content-Length or as they stream in.
    An upload (POST .../files) may carry `upload_limit` bytes: one largest file and its
    multipart framing."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY, upload_limit: int = MAX_BODY) -> None:
        self.app = app
        self._limit = limit
        self._upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope.get("method") == "POST" and _UPLOAD_PATH.match(scope.get("path", ""))
        limit = self._upload_limit if upload else self._limit
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            too_big = length.isdigit()
            response = problem(
                413 if too_big else 400,
                "body-too-large" if too_big else "bad-input",
                "Body too large" if too_big else "Bad input",
                f"a request body is at most {limit} bytes" if too_big else "bad Content-Length",
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise StarletteHTTPException(413, f"a request body is at most {limit} bytes")
            return message

        await self.app(scope, limited, send)


# ---------------------------------------------------------------- the shapes

_REF = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SessionRef = Annotated[
    str,
    PathParam(pattern=_REF, description="Session id, a unique prefix of it, or its name."),
]
Status = Literal["running", "unhealthy", "starting", "degraded", "exited", "expired"]


class Strict(BaseModel):
    """A request body: unknown fields are refused (a typo must not be silently ignored), and
    so is text that is not valid Unicode (lone surrogates cannot be written to a file)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _utf8(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("text must be valid Unicode") from None
        return value


class Open(BaseModel):
    """A response: the fields listed are always there; the core may add more."""

    model_config = ConfigDict(extra="allow")


class SessionOut(Open):
    session_id: str
    name: str
    status: Status
    created_at: str
    age_s: float
    resolution: str
    novnc_port: int | None
    novnc_url: str = Field(description="The view-only noVNC URL, with the viewer secret.")
    data_dir: str
    llm: str
    services: dict[str, str]
    agent_state: str
    control: Literal["watching", "paused", "controlled"]
    no_internet: bool
    recording: str = Field(description="The recording being written now, if any.")
    expires_at: str | None
    expired_by: Literal["ttl", "idle"] | None = Field(
        None, description="Which limit ended an `expired` session: `ttl` or `idle`."
    )
    idle_timeout_s: int | None = Field(None, description="The idle timeout; null: none.")
    idle_expires_at: str | None = Field(
        None, description="When the idle timeout ends the session, if nothing happens."
    )
    idle_left_s: float | None = Field(None, description="Seconds until then.")
    pool: Literal["starting", "idle", "claimed"] | None = Field(
        None,
        description="The warm pool (`pool fill`, `serve --pool`): `starting` or `idle` while"
        " it waits in the pool (nobody's yet), `claimed` once a create took it; null: started"
        " for its own create.",
    )
    control_url: str | None = Field(
        None, description="The interactive URL, while someone has control."
    )


class ResultOut(Open):
    result: Result  # the core's own dataclass: the schema follows it


class WaitOut(SessionOut):
    result: Result  # the core's own dataclass: the schema follows it


class Stopped(Open):
    stopped: list[str]


class PrunedOut(Stopped):
    removed: list[str] = Field(
        default_factory=list, description="Sessions whose data dir `older_than` deleted."
    )
    freed_bytes: int = 0


class RemovedOut(Open):
    removed: list[str]
    freed_bytes: int


class UsageOut(Open):
    session_id: str
    status: str = Field(description="The engine's status, or `stopped`: no container left.")
    data_dir: str
    ended_at: str | None = Field(description="When it was stopped; null while on the engine.")
    recordings_bytes: int
    files_bytes: int = Field(description="Screenshots, downloads, uploads.")
    logs_bytes: int
    other_bytes: int
    total_bytes: int


class DiskOut(Open):
    sessions_dir: str
    sessions: list[UsageOut] = Field(description="Largest first.")
    total: dict[str, int]


class RecordingOut(Open):
    session_id: str
    file: str
    name: str
    size_bytes: int
    duration_s: float | None
    state: Literal["complete", "recording", "partial"]
    download_url: str


class RecordingStarted(Open):
    session_id: str
    file: str
    state: Literal["recording", "complete"]


class Health(Open):
    status: Literal["ok"]
    version: str


class CreateSession(Strict):
    """`vncsess up`, over HTTP: the same options under the same names."""

    task: str = Field(
        "",
        max_length=sessions.MAX_TASK_BYTES,
        description="What the agent should do; `demo` runs the demo; empty: an idle browser.",
    )
    llm: str = Field("", max_length=200, description="PROVIDER:MODEL or `demo`.")
    base_url: str = Field("", max_length=2048, description="OpenAI-compatible server URL.")
    resolution: str = Field(
        "", pattern=r"^(\d{2,5}x\d{2,5})?$", description="WxH, each side 320-7680."
    )
    ttl: str = Field("", max_length=32, description="Time limit: 90s, 30m, 2h; empty: none.")
    idle_timeout: str = Field(
        "",
        max_length=32,
        description="End after this long without activity (a viewer, an agent step, "
        "control): 90s, 15m, 2h; empty: never. `ttl` still caps it.",
    )
    record: bool = False
    no_internet: bool = False
    name: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})?$")
    max_steps: int = Field(25, ge=1, le=500)
    file_transfer: bool = Field(
        True, description="Uploads into the session and its downloads out (/files routes)."
    )
    script: str = Field(
        "",
        max_length=sessions.MAX_SCRIPT_BYTES,
        description="`up --script`: the text of a Python agent script, run instead of a task; "
        "its exit code and last JSON line on stdout are the result.",
    )
    script_args: list[str] = Field(
        default_factory=list,
        max_length=sessions.MAX_SCRIPT_ARGS,
        description="The script's arguments (`--script-arg`).",
    )
    agent_image: str = Field(
        "", max_length=255, description="An agent image built FROM vncsess-agent (`--agent-image`)."
    )


class CreateTask(Strict):
    """`vncsess task`: a follow-up task, in the same desktop and browser."""

    task: str = Field(
        ..., min_length=1, max_length=sessions.MAX_TASK_BYTES, description="What to do next."
    )


class TaskQueued(Open):
    session_id: str
    task: int = Field(description="The task's number: `result?task=N`, `wait?task=N`.")


class ModelsOut(Open):
    default: str = Field(description="What an empty `llm` resolves to: `demo` without a key.")
    configured: list[str] = Field(description="PROVIDER:MODEL of each provider with a key.")
    providers: list[str]


class StartRecording(Strict):
    fps: int | None = Field(None, ge=1, le=60, description="Frames per second (default 15).")


# The seeds' shapes, field for field.


class SeedCreate(Strict):
    """browser-use-vnc's `POST /sessions` body: `{}` (a task may be given)."""

    task: str = Field("", max_length=sessions.MAX_TASK_BYTES)


class SeedSession(Open):
    session_id: str
    novnc_url: str


class SeedSessionDetail(Open):
    session_id: str
    compose_project: str
    novnc_port: int | None
    url: str
    status: str
    started_at: str


class VisualCreate(Strict):
    """OpenHands visual-runtime's `POST /api/visual-sessions` body."""

    resolution: str | None = Field(None, pattern=r"^\d{2,5}x\d{2,5}$", examples=["1600x900"])
    timeout_minutes: int | None = Field(None, ge=1, le=7 * 24 * 60)
    idle_timeout_minutes: int | None = Field(None, ge=1, le=7 * 24 * 60)
    enable_recording: bool = False
    enable_file_transfer: bool = False


class VisualSession(Open):
    session_id: str
    status: str
    resolution: str
    novnc_url: str
    created_at: str
    expires_at: str | None
    timeout_minutes: int | None
    idle_timeout_minutes: int | None
    enable_recording: bool
    enable_file_transfer: bool
    warnings: list[str] = Field(default_factory=list)


class VisualStopped(Open):
    session_id: str
    status: Literal["stopped"]


# ---------------------------------------------------------------- helpers


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _session_json(s: Session, show_secrets: bool = True) -> dict[str, Any]:
    return s.to_dict(show_secrets=show_secrets)


_ERRORS = (400, 401, 404, 409, 413, 422, 502, 503, 504)
_PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": "A problem (RFC 9457)."} for code in _ERRORS
}
_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A stream of Server-Sent Events.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def _router(**kw: Any) -> APIRouter:
    return APIRouter(dependencies=[Depends(authenticate)], responses=_PROBLEM_RESPONSES, **kw)


# ---------------------------------------------------------------- health (open)

health = APIRouter(tags=["health"])


@health.get("/healthz", response_model=Health)
def healthz() -> dict[str, Any]:
    """Liveness, without auth (for a load balancer or a container health check)."""
    return {"status": "ok", "version": __version__}


# ---------------------------------------------------------------- the seeds' APIs

seed = _router(tags=["seed: browser-use-vnc"])


@seed.post("/sessions", response_model=SeedSession)
def seed_create(
    request: Request, body: Annotated[SeedCreate | None, Body()] = None
) -> dict[str, Any]:
    """browser-use-vnc's orchestrator: start a session, get the noVNC URL for an iframe.
    The body is `{}` (or none at all); `task` may be given."""
    s = sessions.up(_settings(request), sessions.UpOptions(task=body.task if body else ""))
    return {"session_id": s.id, "novnc_url": s.novnc_url}


@seed.get("/sessions/{session_id}", response_model=SeedSessionDetail)
def seed_get(request: Request, session_id: SessionRef) -> dict[str, Any]:
    s = sessions.get(_settings(request), session_id)
    return {
        "session_id": s.id,
        "compose_project": s.project,
        "novnc_port": s.novnc_port,
        "url": s.novnc_url,
        "status": s.status,
        "started_at": s.created_at.isoformat(),
    }


visual = _router(prefix="/api/visual-sessions", tags=["seed: OpenHands visual runtime"])


def _visual(s: Session, warnings: list[str] | None = None) -> dict[str, Any]:
    minutes = None
    if s.expires_at is not None:
        minutes = round((s.expires_at - s.created_at).total_seconds() / 60)
    return {
        "session_id": s.id,
        "status": s.status,
        "resolution": s.resolution,
        "novnc_url": s.novnc_url,
        "created_at": s.created_at.isoformat(),
        "expires_at": s.expires_at.isoformat() if s.expires_at else None,
        "timeout_minutes": minutes,
        "idle_timeout_minutes": round(s.idle_timeout_s / 60) if s.idle_timeout_s else None,
        "enable_recording": bool(s.recording),
        "enable_file_transfer": files.enabled(DataDir(s.data_dir)),
        "warnings": warnings or [],
    }


@visual.post("", response_model=VisualSession, status_code=201)
def visual_create(request: Request, body: Annotated[VisualCreate, Body()]) -> dict[str, Any]:
    """Start a desktop session (the visual-runtime seed's body)."""
    opts = sessions.UpOptions(
        resolution=body.resolution or "",
        ttl=f"{body.timeout_minutes}m" if body.timeout_minutes else "",
        idle_timeout=f"{body.idle_timeout_minutes}m" if body.idle_timeout_minutes else "",
        record=body.enable_recording,
        # Off (the seed's default): the session's /v1/sessions/{id}/files routes answer 403.
        file_transfer=body.enable_file_transfer,
    )
    warnings: list[str] = []
    return _visual(sessions.up(_settings(request), opts), warnings)


@visual.get("/{session_id}", response_model=VisualSession)
def visual_get(request: Request, session_id: SessionRef) -> dict[str, Any]:
    return _visual(sessions.get(_settings(request), session_id))


@visual.post("/{session_id}/stop", response_model=VisualStopped)
def visual_stop(request: Request, session_id: SessionRef) -> dict[str, Any]:
    """Stop the session: every Docker object goes; recordings and results stay."""
    return {"session_id": _stop_one(request, session_id), "status": "stopped"}


# ---------------------------------------------------------------- /v1: sessions

v1 = _router(prefix="/v1", tags=["sessions"])


@v1.post("/sessions", response_model=SessionOut, status_code=201, response_model_exclude_unset=True)
def create(request: Request, response: Response, body: CreateSession) -> dict[str, Any]:
    """`vncsess up`: start a session; returns once its display answers. The JSON is
    `up --json`'s, the noVNC URL with its viewer secret.

    A client that leaves before the answer still gets its session started (it shows in
    the list, and DELETE removes it); a failed start leaves nothing behind."""
    opts = sessions.UpOptions(
        task=body.task, llm=body.llm, llm_base_url=body.base_url, resolution=body.resolution,
        ttl=body.ttl, record=body.record, no_internet=body.no_internet, name=body.name,
        max_steps=body.max_steps, file_transfer=body.file_transfer,
        idle_timeout=body.idle_timeout, script=body.script,
        script_args=tuple(body.script_args), agent_image=body.agent_image,
    )  # fmt: skip
    s = sessions.up(_settings(request), opts)
    response.headers["Location"] = f"/v1/sessions/{s.id}"
    return _session_json(s)


@v1.get("/sessions", response_model=list[SessionOut], response_model_exclude_unset=True)
def list_(
    request: Request,
    status: Annotated[Status | None, Query(description="Only sessions in this status.")] = None,
    name: Annotated[
        str | None, Query(max_length=63, description="Only sessions whose name contains this.")
    ] = None,
    show_secrets: Annotated[
        bool, Query(description="URLs with their viewer secret (`ls --show-secrets`).")
    ] = False,
) -> list[dict[str, Any]]:
    """`vncsess ls --json`: every session on the engine, newest first."""
    found = sessions.list_sessions(_settings(request), status=status or "", name=name or "")
    return [_session_json(s, show_secrets) for s in found]


@v1.get("/sessions/{session_id}", response_model=SessionOut, response_model_exclude_unset=True)
def inspect(request: Request, session_id: SessionRef) -> dict[str, Any]:
    """`vncsess inspect --json`: one session, secrets included."""
    return _session_json(sessions.get(_settings(request), session_id))


@v1.delete("/sessions/{session_id}", response_model=Stopped)
def stop(request: Request, session_id: SessionRef) -> dict[str, Any]:
    """`vncsess stop`: containers, networks and volumes go; the data dir stays."""
    return {"stopped": [_stop_one(request, session_id)]}


def _stop_one(request: Request, ref: str) -> str:
    batch = sessions.stop(_settings(request), [ref])
    if batch.errors:
        raise batch.errors[0]
    return batch.done[0]


@v1.post("/prune", response_model=PrunedOut)
def prune(
    request: Request,
    older_than: Annotated[
        str,
        Query(
            max_length=32,
            description="Also delete the data dirs of sessions stopped longer ago: 12h, 7d.",
        ),
    ] = "",
) -> dict[str, Any]:
    """`vncsess prune [--older-than]`: remove the sessions that ended by themselves; with
    `older_than`, also the data dirs of sessions stopped longer ago than that."""
    return retention.prune(_settings(request), older_than).to_dict()


@v1.delete("/sessions/{session_id}/data", response_model=RemovedOut)
def remove_data(
    request: Request,
    session_id: SessionRef,
    force: Annotated[
        bool, Query(description="Stop the session first if it still runs (else 409).")
    ] = False,
) -> dict[str, Any]:
    """`vncsess rm`: delete a stopped session's data dir (recordings, results, files)."""
    batch, freed = retention.rm(_settings(request), [session_id], force=force)
    if batch.errors:
        raise batch.errors[0]
    return {"removed": batch.done, "freed_bytes": freed}


@v1.get("/disk", response_model=DiskOut)
def disk(request: Request) -> dict[str, Any]:
    """`vncsess du --json`: what each session keeps on disk, with a total."""
    return retention.du(_settings(request)).to_dict()


@v1.get("/models", response_model=ModelsOut)
def models(request: Request) -> dict[str, Any]:
    """Which models a new session can use (for the dashboard's form): names, never keys.
    `demo` runs only the demo task."""
    return sessions.models(_settings(request))


TaskQuery = Annotated[
    int | None,
    Query(ge=1, le=1_000_000, description="Which task of the session (1 = the first); "
          "default: the latest."),
]  # fmt: skip


@v1.get("/sessions/{session_id}/result", response_model=ResultOut)
def result(request: Request, session_id: SessionRef, task: TaskQuery = None) -> dict[str, Any]:
    """`vncsess result --json`: the agent's result, also after the session was stopped;
    each task of the session keeps its own (`task`)."""
    return {"result": sessions.result(_settings(request), session_id, task=task).to_dict()}


@v1.post("/sessions/{session_id}/tasks", response_model=TaskQueued, status_code=202)
def add_task(request: Request, session_id: SessionRef, body: CreateTask) -> dict[str, Any]:
    """`vncsess task`: a follow-up task, run in the same desktop and browser once the task
    before it is done. 202: queued; its result comes at `result?task=N` (`wait?task=N`).
    409 when the session is stopped or runs a script."""
    s, n = sessions.add_task(_settings(request), session_id, body.task)
    return {"session_id": s.id, "task": n}


@v1.get("/sessions/{session_id}/wait", response_model=WaitOut, response_model_exclude_unset=True)
async def wait(
    request: Request,
    session_id: SessionRef,
    timeout: Annotated[
        float, Query(gt=0, le=MAX_WAIT_S, description="Seconds; then 504 (wait again).")
    ] = 60.0,
    task: TaskQuery = None,
) -> dict[str, Any]:
    """`vncsess wait --json`: a long poll until the agent's result. It holds no thread while
    it waits, so any number of waiters leave other requests alone. 504 when `timeout` runs
    out (the session keeps running); 502 when the session dies without a result."""
    settings = _settings(request)
    s = await run_in_threadpool(sessions.get, settings, session_id)
    task = await run_in_threadpool(sessions.wait_task, s, task)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    checked = loop.time()
    while True:
        alive = loop.time() - checked > 2
        if alive:
            checked = loop.time()
        res = await run_in_threadpool(sessions.result_now, settings, s, alive, task)
        if res is not None:
            return {**_session_json(s), "result": res.to_dict()}
        if loop.time() >= deadline:
            raise sessions.wait_timeout(s.id, timeout)
        await asyncio.sleep(0.25)


@v1.post(
    "/sessions/{session_id}/control", response_model=SessionOut, response_model_exclude_unset=True
)
def control(request: Request, session_id: SessionRef) -> dict[str, Any]:
    """`vncsess control --json`: pause the agent; `control_url` has keyboard and mouse."""
    s = sessions.set_control(_settings(request), session_id, take=True)
    return {**_session_json(s), "control_url": s.control_url}


@v1.post(
    "/sessions/{session_id}/resume", response_model=SessionOut, response_model_exclude_unset=True
)
def resume(request: Request, session_id: SessionRef) -> dict[str, Any]:
    """`vncsess resume --json`: hand back; the agent continues (the control URL is void)."""
    return sessions.set_control(_settings(request), session_id, take=False).to_dict()


@v1.get(
    "/sessions/{session_id}/screenshot.png",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "The display, now."}},
)
def screenshot(
    request: Request,
    session_id: SessionRef,
    keep: Annotated[
        bool, Query(description="false: not kept in the data dir (a live thumbnail).")
    ] = True,
) -> Response:
    """`vncsess screenshot`: the display as a PNG (also kept in the data dir)."""
    settings = _settings(request)
    if not keep:
        png = recordings.snapshot(settings, sessions.get(settings, session_id))
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
    path = recordings.screenshot(settings, sessions.get(settings, session_id))
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------- /v1: links to the live view


class CreateLink(Strict):
    mode: Literal["view", "control"] = Field(
        "view", description="view: watch only; control: keyboard and mouse (needs control)."
    )
    ttl_s: int = Field(
        links.DEFAULT_TTL_S,
        ge=links.MIN_TTL_S,
        le=links.MAX_TTL_S,
        description="How long the link opens the view. A connection already open stays.",
    )


class LinkOut(Open):
    link_id: str
    session_id: str
    mode: Literal["view", "control"]
    created_at: str
    expires_at: str
    state: Literal["active", "expired", "revoked"]


class MintedLink(LinkOut):
    path: str = Field(description="The link on this server, for an iframe on the same origin.")
    url: str = Field(description="The same, absolute, as this request reached the server.")


live = _router(prefix="/v1", tags=["live view"])


@live.post("/sessions/{session_id}/links", response_model=MintedLink, status_code=201)
def create_link(
    request: Request, session_id: SessionRef, body: Annotated[CreateLink | None, Body()] = None
) -> dict[str, Any]:
    """A signed, expiring link to the session's live view through this server's proxy (one
    port for every session; no VNC password in it). `control` needs the session under
    control (POST .../control) and dies when control is handed back."""
    body = body or CreateLink.model_validate({})
    link, token = links.mint(
        _settings(request), request.app.state.token, session_id, body.mode, body.ttl_s
    )
    path = links.page_path(link.session_id, token, link.mode)
    return {**link.to_dict(), "path": path, "url": str(request.base_url).rstrip("/") + path}


@live.get("/sessions/{session_id}/links", response_model=list[LinkOut])
def list_links(request: Request, session_id: SessionRef) -> list[dict[str, Any]]:
    """The links minted for a session, with their state (their tokens are not kept)."""
    return [x.to_dict() for x in links.list_links(_settings(request), session_id)]


@live.delete("/sessions/{session_id}/links/{link_id}", response_model=LinkOut)
def revoke_link(
    request: Request,
    session_id: SessionRef,
    link_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{12}$")],
) -> dict[str, Any]:
    """Revoke a link: it opens nothing more, and connections through it close within 1 s."""
    return links.revoke(_settings(request), session_id, link_id).to_dict()


# The door itself: no bearer token here, the link in the path is the credential.
door = APIRouter(include_in_schema=False)
_Token = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.-]{20,600}$")]
_SESSION_CACHE_S = 3.0  # noVNC fetches some forty files when a page opens: one lookup


async def _checked(request: Request | WebSocket, session_id: str, token: str) -> Any:
    """The link's (Link, Session). The signature, revocation and password are checked on
    every request; the session itself is looked up at most every few seconds."""
    app = request.app
    payload = links.decode(app.state.token, session_id, token)
    cache: dict[str, tuple[float, Session]] = app.state.link_sessions
    now = asyncio.get_running_loop().time()
    hit = cache.get(session_id)
    if hit is not None and now - hit[0] < _SESSION_CACHE_S:
        session = hit[1]
    else:
        try:
            session = await run_in_threadpool(sessions.get, app.state.settings, session_id)
        except NotFound:
            raise links.LinkRefused(f"session {session_id} is gone") from None
        if len(cache) > 1000:
            cache.clear()
        cache[session_id] = (now, session)
    return await run_in_threadpool(links.check, payload, session), session


@door.get("/sessions/{session_id}/l/{token}/")
async def door_index(session_id: SessionRef, token: _Token, request: Request) -> Response:
    link, _ = await _checked(request, session_id, token)
    return RedirectResponse(links.page_path(session_id, token, link.mode), status_code=303)


@door.get("/sessions/{session_id}/l/{token}/{path:path}")
async def door_file(session_id: SessionRef, token: _Token, path: str, request: Request) -> Response:
    """noVNC's files, from the session's own websockify (the version that speaks to it)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,200}", path) or ".." in path:
        raise NotFound(f"no file {path!r} here")
    _, session = await _checked(request, session_id, token)
    if session.endpoint is None:
        raise Conflict(f"session {session.id} is {session.status}: it has no live view")
    host, port = session.endpoint
    try:
        status, body, kind = await proxy.fetch(request.app.state.http, host, port, path)
    except Exception as exc:  # httpx's errors: the session went away meanwhile
        raise SessionFailed(f"the session's noVNC did not answer: {type(exc).__name__}") from None
    if status == 404:
        raise NotFound(f"no file {path!r} in noVNC")
    headers = {"Cache-Control": "private, max-age=300", "Referrer-Policy": "no-referrer"}
    return Response(body, status_code=status, media_type=kind, headers=headers)


@door.websocket("/sessions/{session_id}/l/{token}/websockify")
async def door_socket(websocket: WebSocket, session_id: str, token: str) -> None:
    """The VNC stream: the proxy logs in with the link's password, the viewer needs none."""
    try:
        link, session = await _checked(websocket, session_id, token)
        if session.endpoint is None:
            raise Conflict(f"session {session.id} has no live view")
    except VncsessError as exc:
        await websocket.close(code=1008, reason=exc.message[:120])
        return
    data = DataDir(session.data_dir)
    password = links.password_of(data, link)
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="binary" if "binary" in offered else None)
    host, port = session.endpoint
    why = ""
    try:
        async with proxy.connect_upstream(host, port) as upstream:

            async def valid() -> bool:
                return await run_in_threadpool(links.still_valid, data, link, password)

            why = await proxy.relay(
                proxy.BrowserSide(websocket), proxy.UpstreamSide(upstream), password, valid
            )
    except Exception as exc:  # the session or the viewer went away; an auth refusal
        why = str(exc) or type(exc).__name__
    LOG.info("live view %s of %s (%s) ended: %s", link.id, session_id, link.mode, why)
    with contextlib.suppress(Exception):
        await websocket.close(code=1000 if "link" not in why else 1008)


# ---------------------------------------------------------------- /v1: recordings

rec = _router(prefix="/v1", tags=["recordings"])


def _recording_json(r: Any) -> dict[str, Any]:
    return {**r.to_dict(), "download_url": f"/v1/sessions/{r.session_id}/recordings/{r.path.name}"}


@rec.get("/recordings", response_model=list[RecordingOut])
def all_recordings(request: Request) -> list[dict[str, Any]]:
    """`vncsess recordings --json`: every session's (interrupted ones are repaired first)."""
    settings = _settings(request)
    found = recordings.list_recordings(settings, sessions.artifacts(settings))
    return [_recording_json(r) for r in found]


@rec.get("/sessions/{session_id}/recordings", response_model=list[RecordingOut])
def session_recordings(request: Request, session_id: SessionRef) -> list[dict[str, Any]]:
    """`vncsess recordings ID --json`, also after the session was stopped."""
    found = recordings.list_recordings(
        _settings(request), sessions.artifacts(_settings(request), session_id)
    )
    return [_recording_json(r) for r in found]


@rec.post("/sessions/{session_id}/record/start", response_model=RecordingStarted, status_code=201)
def record_start(
    request: Request,
    session_id: SessionRef,
    body: Annotated[StartRecording | None, Body()] = None,
) -> dict[str, Any]:
    """`vncsess record start --json`."""
    settings = _settings(request)
    s = sessions.get(settings, session_id)
    path = recordings.start(settings, s, body.fps if body else None)
    final = path.with_name(path.name.replace(".partial.mp4", ".mp4"))
    return {"session_id": s.id, "file": str(final), "state": "recording"}


@rec.post("/sessions/{session_id}/record/stop", response_model=RecordingStarted)
def record_stop(request: Request, session_id: SessionRef) -> dict[str, Any]:
    """`vncsess record stop --json`: stop and make the file seekable."""
    settings = _settings(request)
    s = sessions.get(settings, session_id)
    path = recordings.stop(settings, s)
    return {"session_id": s.id, "file": str(path), "state": "complete"}


@rec.get(
    "/sessions/{session_id}/recordings/{name}",
    response_class=FileResponse,
    responses={
        200: {"content": {"video/mp4": {}}, "description": "The MP4 (Range requests: 206)."},
        206: {"content": {"video/mp4": {}}, "description": "The part asked for with Range."},
        416: {"model": Problem, "description": "A Range outside the file."},
    },
)
def download(
    request: Request,
    session_id: SessionRef,
    name: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.mp4$")],
) -> FileResponse:
    """A recording, with HTTP Range support, so a browser's <video> can seek in it."""
    found = recordings.list_recordings(
        _settings(request), sessions.artifacts(_settings(request), session_id)
    )
    match = next((r for r in found if r.path.name == name), None)
    if match is None:
        raise VncsessError(
            f"no recording {name!r} in session {session_id}",
            hint=f"GET /v1/sessions/{session_id}/recordings lists them",
            exit_code=ExitCode.NOT_FOUND,
        )
    return FileResponse(
        match.path, media_type="video/mp4", filename=name, content_disposition_type="inline"
    )


# ---------------------------------------------------------------- /v1: files

transfer = _router(prefix="/v1", tags=["files"])


class FileOut(Open):
    session_id: str
    area: Literal["uploads", "downloads"]
    name: str
    path: str = Field(description="`area/name`, as `vncsess cp ID:area/name` takes it.")
    size_bytes: int
    modified_at: str
    download_url: str


def _file_json(f: files.FileEntry) -> dict[str, Any]:
    from urllib.parse import quote

    url = f"/v1/sessions/{f.session_id}/files/{f.area}/{quote(f.name, safe='')}"
    return {**f.to_dict(), "download_url": url}


_FILES_403: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "File transfer is off for this session."}
}


@transfer.get("/sessions/{session_id}/files", response_model=list[FileOut], responses=_FILES_403)
def list_files(request: Request, session_id: SessionRef) -> list[dict[str, Any]]:
    """`vncsess files ID --json`: uploads and downloads, also after the session stopped."""
    return [_file_json(f) for f in files.list_files(_settings(request), session_id)]


@transfer.post(
    "/sessions/{session_id}/files",
    response_model=list[FileOut],
    status_code=201,
    responses=_FILES_403,
)
def upload_files(
    request: Request,
    session_id: SessionRef,
    file: Annotated[
        list[UploadFile], File(description="One or more files (multipart field `file`).")
    ],
) -> list[dict[str, Any]]:
    """`vncsess cp FILE... ID:`: into the session's uploads, checked, limited and scanned
    (all the files, or none of them). A request carries at most VNCSESS_UPLOAD_MAX_BYTES."""
    items = [(f.filename or "", f.file) for f in file]
    return [_file_json(f) for f in files.upload(_settings(request), session_id, items)]


@transfer.get(
    "/sessions/{session_id}/files/{area}/{name}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file."},
        **_FILES_403,
    },
)
def download_file(
    request: Request,
    session_id: SessionRef,
    area: Literal["uploads", "downloads"],
    name: Annotated[str, PathParam(max_length=files.MAX_NAME_BYTES)],
) -> StreamingResponse:
    """`vncsess cp ID:downloads/NAME DEST`: a file, as an attachment (also after stop)."""
    from urllib.parse import quote

    entry, fh = files.open_file(_settings(request), session_id, area, name)

    def body() -> Iterator[bytes]:
        with fh:
            while chunk := fh.read(1 << 16):
                yield chunk

    ascii_name = "".join(c if c.isascii() and c not in '"\\' else "_" for c in entry.name)
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(entry.name)}"
    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": disposition,
            "Content-Length": str(entry.size_bytes),
            "X-Content-Type-Options": "nosniff",
        },
    )


# ---------------------------------------------------------------- /v1: logs and events

streams = _router(prefix="/v1", tags=["streams"])


async def _lines(lines: Iterator[str]) -> AsyncIterator[ServerSentEvent]:
    """A blocking line iterator as SSE, read in a thread of its own (a follower may wait
    for hours: it must not hold one of the pool's). When the client leaves, the iterator is
    closed, which ends the docker command behind it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

    def put(item: str | BaseException | None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
            return True
        except RuntimeError:  # the loop is gone
            return False

    def pump() -> None:
        end: BaseException | None = None
        try:
            for line in lines:
                if not put(line):
                    return
        except BaseException as exc:
            end = exc
        put(end)

    threading.Thread(target=pump, daemon=True, name="sse-lines").start()
    try:
        while True:
            item = await queue.get()
            if item is None:
                yield ServerSentEvent(data="", event="end")
                return
            if isinstance(item, BaseException):
                message = item.message if isinstance(item, VncsessError) else "the stream broke"
                yield ServerSentEvent(data=json.dumps({"detail": message}), event="error")
                return
            yield ServerSentEvent(data=item, event="log")
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            # The client left: this generator is being cancelled, and an await in a cancelled
            # scope would raise at once without closing anything. Shielded, it runs.
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(close)


@streams.get("/sessions/{session_id}/logs", response_class=EventSourceResponse, responses=_SSE)
async def logs(
    request: Request,
    session_id: SessionRef,
    follow: bool = False,
    service: Literal["vnc", "agent"] | None = None,
    tail: Annotated[int | None, Query(ge=0, le=100_000)] = None,
) -> EventSourceResponse:
    """`vncsess logs [-f]` as Server-Sent Events: one `log` event per line, then `end`
    (without `follow`, or when the session stops)."""
    lines = await run_in_threadpool(
        sessions.logs, _settings(request), session_id, service, follow, tail
    )
    return EventSourceResponse(_lines(lines), ping=KEEPALIVE_S)


def _events_response(
    request: Request, header: str | None, query: int | None, session_id: str | None
) -> EventSourceResponse:
    """The stream from where the client left (Last-Event-ID, as browsers send it when they
    reconnect, or ?last_event_id=), else from now."""
    log: EventLog = request.app.state.events
    start = log.last_id if query is None else query
    if header is not None:
        if not re.fullmatch(r"\d{1,20}", header.strip()):
            raise BadInput("malformed Last-Event-ID", hint="send back an id this server gave")
        start = int(header)
    return EventSourceResponse(_event_stream(log, start, session_id), ping=KEEPALIVE_S)


async def _event_stream(
    log: EventLog, start: int, session_id: str | None
) -> AsyncIterator[ServerSentEvent]:
    async for e in log.follow(start, session_id):
        yield ServerSentEvent(data=json.dumps(e.to_dict()), event=e.type, id=str(e.id))


_EVENTS_DOC = """Events (SSE `event:` name; the `data:` is JSON with `id`, `type`, `session_id`,
`time` and the fields named): `session.created` (name, resolution, llm, expires_at),
`session.ready` (novnc_port), `session.claimed` (a warm-pool session taken by a create:
its name, resolution, llm, expires_at), `session.stopped`, `session.expired`, `session.failed`
(service, exit_code), `agent.step` (step, url, goal, actions), `agent.paused`,
`agent.resumed`, `agent.finished` (result), `recording.started` (name), `recording.ready`
(name, size_bytes, duration_s).

Each has an increasing `id:`. Reconnecting with `Last-Event-ID` (browsers do it by
themselves) replays what was missed; `last_event_id=0` starts from the oldest event kept.
Without either, the stream starts now. A comment line keeps the connection alive every 15 s."""

LastEventHeader = Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)]
LastEventQuery = Annotated[int | None, Query(ge=0, description="Replay after this id.")]


@streams.get("/events", response_class=EventSourceResponse, responses=_SSE, description=_EVENTS_DOC)
async def events(
    request: Request,
    last_event_id: LastEventQuery = None,
    last_event_header: LastEventHeader = None,
) -> EventSourceResponse:
    """Everything that happens to every session, as Server-Sent Events."""
    return _events_response(request, last_event_header, last_event_id, None)


@streams.get(
    "/sessions/{session_id}/events",
    response_class=EventSourceResponse,
    responses=_SSE,
    description=_EVENTS_DOC,
)
async def session_events(
    request: Request,
    session_id: SessionRef,
    last_event_id: LastEventQuery = None,
    last_event_header: LastEventHeader = None,
) -> EventSourceResponse:
    """What happens to one session (also one that was stopped), as Server-Sent Events."""
    data = await run_in_threadpool(sessions.data_dir_of, _settings(request), session_id)
    return _events_response(request, last_event_header, last_event_id, data.path.name)


# ---------------------------------------------------------------- the app


def create_app(settings: Settings, token: str, watch: bool = True) -> FastAPI:
    """The API. `watch`: feed the event stream from Docker and the data dirs (tests of the
    pure parts turn it off)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from anyio import to_thread

        to_thread.current_default_thread_limiter().total_tokens = THREADS
        import httpx

        source = EventSource(settings, app.state.events) if watch else None
        if source is not None:
            await run_in_threadpool(source.start)
        app.state.http = httpx.AsyncClient(timeout=10)  # the proxy's, to the sessions' noVNC
        try:
            yield
        finally:
            await app.state.http.aclose()
            if source is not None:
                await run_in_threadpool(source.close)

    app = FastAPI(
        title="vncsess",
        version=__version__,
        description="Disposable, watchable desktops for AI browser agents: the CLI's "
        "sessions over HTTP. Every route but /healthz needs `Authorization: Bearer TOKEN`.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN: not here. The schema is served
        # below, behind the token like everything else.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.token = token
    app.state.events = EventLog()
    app.state.link_sessions = {}

    handlers: list[tuple[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]] = [
        (VncsessError, _on_vncsess_error),
        (Unauthorized, _on_unauthorized),
        (RequestValidationError, _on_validation),
        (StarletteHTTPException, _on_http_error),
        (Exception, _on_unexpected),
    ]
    for exc_class, handler in handlers:
        app.add_exception_handler(exc_class, handler)
    app.add_middleware(BodyLimit, upload_limit=settings.upload_max_bytes + MAX_BODY)

    for router in (health, seed, visual, v1, live, rec, transfer, streams, door):
        app.include_router(router)
    from vncsess import dashboard  # it builds on this module: imported once this one is

    dashboard.install(app)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authenticate)])
    def openapi() -> dict[str, Any]:
        return _openapi(app)

    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with errors as what they are: application/problem+json."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in schema.get("paths", {}).values():
            for op in path.values():
                for code, resp in op.get("responses", {}).items():
                    content = resp.get("content") or {}
                    if code[0] in "45" and "application/json" in content:
                        content["application/problem+json"] = content.pop("application/json")
        app.openapi_schema = schema
    return app.openapi_schema


# ---------------------------------------------------------------- serving


class RedactQuery(logging.Filter):
    """The access log keeps paths and query strings, minus anything that may be a secret
    (the dashboard's `?token=` sign-in, a noVNC `password=`)."""

    _SECRET = re.compile(r"(?i)\b((?:access_)?token|password|secret)=[^&\s\"]*")
    _LINK = re.compile(r"(/l/)[A-Za-z0-9_.-]+")  # a live-view link's token, in its path

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact(a) if isinstance(a, str) else a for a in record.args)
        return True

    def _redact(self, text: str) -> str:
        return self._LINK.sub(r"\1***", self._SECRET.sub(r"\1=***", text))


def log_config(access_log: bool = True) -> dict[str, Any]:
    fmt = "%(asctime)s %(levelname)s %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactQuery}},
        "formatters": {
            "plain": {"format": fmt, "datefmt": "%H:%M:%S"},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(asctime)s %(client_addr)s "%(request_line)s" %(status_code)s',
                "datefmt": "%H:%M:%S",
                "use_colors": False,
            },
        },
        "handlers": {
            "plain": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn.error": {"handlers": ["plain"], "level": "INFO", "propagate": False},
            "uvicorn.access": {
                "handlers": ["access"],
                "level": "INFO" if access_log else "WARNING",
                "propagate": False,
            },
            "vncsess": {"handlers": ["plain"], "level": "INFO", "propagate": False},
        },
    }


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, made before anything else so that a taken port is one clear
    error (and `--port 0` gets a free one to print)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE (Linux, BSD)
            raise Conflict(
                f"port {port} is already in use on {host}", hint="choose another --port"
            ) from None
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def run(sock: socket.socket, settings: Settings, token: str, access_log: bool = True) -> None:
    """Serve until Ctrl-C (or SIGTERM)."""
    import uvicorn

    config = uvicorn.Config(
        create_app(settings, token),
        log_config=log_config(access_log),
        access_log=access_log,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])
