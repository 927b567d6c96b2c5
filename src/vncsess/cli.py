"""The command line. Parses, calls the core, renders. The only module that prints or exits."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.text import Text

from vncsess import __version__, config
from vncsess import console as ui
from vncsess.errors import ExitCode, VncsessError
from vncsess.models import Batch, Result, Session

app = typer.Typer(
    name="vncsess",
    help="Disposable, watchable desktops for AI browser agents.\n\n"
    "Each session is a docker compose project with a display you watch in noVNC and a "
    "browser-use agent working on it.",
    no_args_is_help=True,
    # --install-completion / --show-completion; session ids complete from Docker (below).
    add_completion=True,
    pretty_exceptions_enable=False,  # a traceback must never print a key from a .env file
    context_settings={"help_option_names": ["-h", "--help"]},
)
record_app = typer.Typer(help="Record a session's display to MP4.", no_args_is_help=True)
app.add_typer(record_app, name="record")
pool_app = typer.Typer(
    help="The warm pool: idle sessions started ahead of time, which `up` claims.\n\n"
    "`up` takes a pool session when its request fits one (the same resolution; no --script, "
    "--agent-image, --no-internet, --port, --upload or other --cpus/--memory) and starts "
    "cold otherwise. A claimed session gets new viewer and control passwords, the "
    "claimer's task, model and keys, name, TTL and idle timeout (counted from the claim), "
    "and never returns to the pool.",
    no_args_is_help=True,
)
app.add_typer(pool_app, name="pool")

F = TypeVar("F", bound=Callable[..., Any])


def _complete_session(incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of a session reference: ids and names of the sessions on this
    engine. It runs on every TAB: it gives up after COMPLETION_TIMEOUT seconds (a daemon
    that hangs) and never prints (an error would land in the user's command line)."""
    import threading

    found: list[tuple[str, str]] = []

    def ask() -> None:
        with contextlib.suppress(Exception):  # an error in a thread would print, too
            from vncsess import sessions

            found.extend(sessions.completions(_settings()))

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(COMPLETION_TIMEOUT)
    return [(v, h) for v, h in list(found) if v.startswith(incomplete)]


COMPLETION_TIMEOUT = 2.0


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ScanOpt = Annotated[
    str,
    typer.Option(
        "--scan-command",
        help="Scan every upload with this command, the file's path appended; a non-zero exit "
        "refuses the file. [default: VNCSESS_SCAN_COMMAND or none]",
    ),
]
IdArg = Annotated[
    str,
    typer.Argument(
        help="Session id (or a unique prefix, or its name).", autocompletion=_complete_session
    ),
]
TaskOpt = Annotated[
    int | None,
    typer.Option(
        "--task", min=1, help="Which task of the session (1 = the first). [default: the latest]"
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Plain progress lines, no live display (as in logs)."),
]

# --debug (or VNCSESS_DEBUG=1): unexpected errors also print their traceback.
_flags = {"debug": False}


def _debugging() -> bool:
    env = os.environ.get("VNCSESS_DEBUG", "").lower()
    return _flags["debug"] or env not in ("", "0", "false", "no")


def handled(fn: F) -> F:
    """Expected failures become one line (and a hint) on stderr and an exit code; anything
    else too (see _unexpected)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VncsessError as exc:
            ui.error(exc.message, exc.hint)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            ui.error("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            _unexpected(exc)

    return wrapper  # type: ignore[return-value]


def _unexpected(exc: Exception) -> NoReturn:
    """A failure vncsess did not foresee: one line, the traceback only when debugging.
    The standard traceback shows code, never local variables (a key read from a .env file
    is one), unlike rich's or Typer's pretty ones."""
    if _debugging():
        traceback.print_exception(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        message, code = f"{exc.strerror or exc}{where}", ExitCode.ENVIRONMENT
    else:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        message = f"unexpected {type(exc).__name__}" + (f": {first}" if first else "")
        code = ExitCode.UNEXPECTED
    hint = "" if _debugging() else "run again with --debug (or VNCSESS_DEBUG=1) for the traceback"
    ui.error(message, hint)
    raise typer.Exit(int(code))


def _settings(**flags: Any) -> config.Settings:
    return config.load(**flags)


def _version(value: bool) -> None:
    if value:
        print(f"vncsess {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Print the traceback of unexpected errors (also VNCSESS_DEBUG=1)."
        ),
    ] = False,
) -> None:
    _flags["debug"] = debug


# ------------------------------------------------------------------ build


@app.command()
@handled
def build(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")] = False,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="Rebuild from scratch (fresh Debian packages)."),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Build the vncsess-vnc and vncsess-agent images (bootstraps the Debian base if needed).

    Shows each stage with its elapsed time and the package being fetched or unpacked, then
    the time each stage took.
    """
    from vncsess import images

    settings = _settings()
    with ui.progress("checking images", quiet=quiet) as step:
        built = images.ensure(settings, step, force=force, no_cache=no_cache)
    ui.success(f"built {', '.join(built)}" if built else "images are up to date")


# ------------------------------------------------------------------ up


@app.command()
@handled
def up(
    task: Annotated[
        str, typer.Option("--task", "-t", help="What the agent should do. `demo` runs the demo.")
    ] = "",
    task_file: Annotated[
        Path | None, typer.Option("--task-file", help="Read the task from a file (- for stdin).")
    ] = None,
    llm: Annotated[
        str,
        typer.Option(
            "--llm",
            help="PROVIDER:MODEL (openai, anthropic, google, ollama) or `demo`, the built-in "
            "scripted model. Default: demo, or a provider whose key is in the env file.",
        ),
    ] = "",
    base_url: Annotated[
        str, typer.Option("--base-url", help="OpenAI-compatible server for --llm openai:MODEL.")
    ] = "",
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", help="LLM keys (KEY=VALUE). Default: ./agent/.env if present."),
    ] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Agent step limit.")] = 25,
    wait_: Annotated[
        bool, typer.Option("--wait", help="Wait for the agent's result; exit code tells success.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="With --wait: give up after SECONDS.")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="A name to find the session by.")] = "",
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="Host port for noVNC (default: a free one).")
    ] = None,
    resolution: Annotated[
        str, typer.Option("--resolution", "-r", help="Display size WxH. [default: 1280x720]")
    ] = "",
    bind: Annotated[
        str, typer.Option("--bind", help="Address noVNC listens on. [default: 127.0.0.1]")
    ] = "",
    public_host: Annotated[
        str, typer.Option("--public-host", help="Host printed in the URL (also PUBLIC_HOST).")
    ] = "",
    record: Annotated[bool, typer.Option("--record", help="Record from the first frame.")] = False,
    fps: Annotated[int, typer.Option("--fps", help="Recording frame rate.")] = 15,
    ttl: Annotated[
        str,
        typer.Option(
            "--ttl", help="Time limit (90s, 30m, 2h): then the session ends itself. [default: none]"
        ),
    ] = "",
    idle_timeout: Annotated[
        str,
        typer.Option(
            "--idle-timeout",
            help="End the session after this long (90s, 15m, 2h) without activity: no viewer "
            "connected, no agent step, nobody in control. --ttl still caps it. [default: none]",
        ),
    ] = "",
    no_internet: Annotated[
        bool, typer.Option("--no-internet", help="The browser reaches only the session itself.")
    ] = False,
    cpus: Annotated[str, typer.Option("--cpus", help="CPU limit of the agent container.")] = "1.5",
    memory: Annotated[
        str, typer.Option("--memory", help="Memory limit of the agent container.")
    ] = "2g",
    engine: Annotated[
        str,
        typer.Option("--engine", help="docker or kubernetes. [default: VNCSESS_ENGINE or docker]"),
    ] = "",
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print what would be created (manifests), start nothing."),
    ] = False,
    upload: Annotated[
        list[Path] | None,
        typer.Option(
            "--upload",
            help="A file for the session (repeat the flag for more): the agent can upload it "
            "to a page, and Chromium's file dialog shows it in ~/Uploads.",
        ),
    ] = None,
    no_file_transfer: Annotated[
        bool,
        typer.Option("--no-file-transfer", help="No uploads into the session, no downloads out."),
    ] = False,
    scan_command: ScanOpt = "",
    script: Annotated[
        Path | None,
        typer.Option(
            "--script",
            help="Run your own Python agent script in the agent container, instead of a task "
            "(see vncsess_agent.script); its exit code and last JSON line are the result.",
        ),
    ] = None,
    script_arg: Annotated[
        list[str] | None,
        typer.Option("--script-arg", help="An argument for --script (repeatable, in order)."),
    ] = None,
    agent_image: Annotated[
        str,
        typer.Option(
            "--agent-image", help="An agent image built FROM vncsess-agent, for more packages."
        ),
    ] = "",
    json_: JsonOpt = False,
) -> None:
    """Start a session and print its noVNC URL (the URL carries the viewer secret)."""
    from vncsess import sessions

    if task and task_file:
        raise VncsessError("give --task or --task-file, not both", exit_code=ExitCode.BAD_INPUT)
    if task_file is not None:
        task = _read_task(task_file)
    script_text = _read_script(script) if script is not None else ""
    if timeout is not None and not wait_:
        raise VncsessError("--timeout needs --wait", exit_code=ExitCode.BAD_INPUT)
    settings = _settings(
        bind=bind, public_host=public_host, resolution=resolution, env_file=env_file, engine=engine,
        scan_command=scan_command,
    )  # fmt: skip
    opts = sessions.UpOptions(
        name=name, port=port, resolution=resolution, task=task, llm=llm, llm_base_url=base_url,
        max_steps=max_steps, record=record, record_fps=fps, ttl=ttl, no_internet=no_internet,
        cpus=cpus, memory=memory, uploads=tuple(upload or ()),
        file_transfer=not no_file_transfer, idle_timeout=idle_timeout,
        script=script_text, script_args=tuple(script_arg or ()), agent_image=agent_image,
    )  # fmt: skip
    if dry_run:
        print(sessions.plan(settings, opts, explicit_env=env_file is not None), end="")
        return
    with ui.progress("starting session") as step:
        session = sessions.up(settings, opts, step, explicit_env=env_file is not None)
    if not wait_:
        if json_:
            ui.print_json(session.to_dict(show_secrets=True))
        else:
            _print_started(session, task or script_text)
        return
    if not json_:
        _print_started(session, task or script_text)
        ui.info("waiting for the agent's result...")
    _, res = sessions.wait(settings, session.id, timeout)
    _finish_with_result(session, res, json_)


def _read_task(path: Path) -> str:
    try:
        # Bytes, then decode: text mode would turn \r\n into \n, and the task must arrive intact.
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
        return raw.decode("utf-8")
    except OSError as exc:
        raise VncsessError(
            f"cannot read task file {path}: {exc.strerror}", exit_code=ExitCode.BAD_INPUT
        ) from None
    except UnicodeDecodeError:
        raise VncsessError(
            f"task file {path} is not UTF-8 text", exit_code=ExitCode.BAD_INPUT
        ) from None


def _read_script(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise VncsessError(
            f"cannot read script {path}: {exc.strerror}",
            hint="give the path of a Python file",
            exit_code=ExitCode.BAD_INPUT,
        ) from None
    except UnicodeDecodeError:
        raise VncsessError(
            f"script {path} is not UTF-8 text",
            hint="give the path of a Python file, not a compiled one",
            exit_code=ExitCode.BAD_INPUT,
        ) from None


def _print_started(session: Session, task: str) -> None:
    if session.novnc_url:
        ui.data(session.novnc_url)
    elif session.endpoint:  # Kubernetes: the Pod's noVNC, reachable inside the cluster only
        host, port = session.endpoint
        ui.info(f"noVNC listens at {host}:{port} in the cluster (no URL yet: docs/kubernetes.md)")
    ui.success(f"session {session.id} is up ({session.resolution}, model: {session.llm})")
    if task:
        ui.info(f"the agent is working; `vncsess wait {session.id}` blocks until it is done")
    ui.info(f"stop it with `vncsess stop {session.id}`")


def _finish_with_result(session: Session | None, res: Result, json_: bool) -> None:
    if json_:
        data = session.to_dict(show_secrets=True) if session else {}
        ui.print_json({**data, "result": res.to_dict()})
    else:
        _print_result(res)
    raise typer.Exit(int(ExitCode.OK if res.success else ExitCode.TASK_FAILED))


def _print_result(res: Result) -> None:
    # Everything in a result comes from the agent, and so from the pages it read: literal.
    steps = f"{res.steps} step" + ("" if res.steps == 1 else "s")
    ended = f", expired ({res.expired_by})," if res.expired_by else ""
    ui.err.print(
        Text.assemble(
            ui.literal(res.status, "green" if res.success else "red"),
            f"{ended} after {steps} ({res.duration_s or 0:.1f}s)",
        )
    )
    if res.final_text:
        ui.data(res.final_text)
    for e in res.errors:
        ui.err.print(Text.assemble(("· ", "red"), ui.literal(e)))


# ------------------------------------------------------------------ ls / inspect


@app.command("ls")
@handled
def ls(
    json_: JsonOpt = False,
    show_secrets: Annotated[
        bool, typer.Option("--show-secrets", help="Print URLs with their viewer secret.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only ids.")] = False,
) -> None:
    """List sessions (read from Docker, so sessions from other shells show too)."""
    from vncsess import sessions

    found = sessions.list_sessions(_settings())
    if json_:
        ui.print_json([s.to_dict(show_secrets=show_secrets) for s in found])
    elif quiet:
        for s in found:
            print(s.id)
    elif not found:
        ui.info("no sessions; start one with `vncsess up`")
    else:
        headers = ["ID", "NAME", "STATUS", "POOL", "AGENT", "MODEL", "CONTROL", "AGE",
                   "IDLE LEFT", "SIZE", "URL"]  # fmt: skip
        ui.table(
            headers,
            [
                [
                    s.id,
                    s.name or "-",
                    s.shown_status,
                    s.pool or "-",
                    s.agent_state,
                    s.llm,
                    s.control,
                    ui.human_age(s.age_seconds),
                    "-" if s.idle_left_s is None else ui.human_age(s.idle_left_s),
                    s.resolution,
                    s.to_dict(show_secrets=show_secrets)["novnc_url"] or "-",
                ]
                for s in found
            ],
        )


@app.command()
@handled
def inspect(session_id: IdArg, json_: JsonOpt = False) -> None:
    """Show one session in detail, secrets and data dir included."""
    from vncsess import recordings, sessions

    settings = _settings()
    s = sessions.get(settings, session_id)
    recordings.heal(settings, s)
    d = s.to_dict(show_secrets=True)
    if json_:
        ui.print_json(d)
        return
    d["status"] = s.shown_status
    width = max(map(len, d))
    for key, value in d.items():
        shown = (
            ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
        )
        ui.out.print(Text.assemble((f"{key:>{width}}", "bold"), "  ", ui.literal(shown)))


# ------------------------------------------------------------------ logs / stop


@app.command()
@handled
def logs(
    session_id: IdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following.")] = False,
    service: Annotated[
        str | None, typer.Option("--service", "-s", help="vnc or agent (default: both).")
    ] = None,
    tail: Annotated[int | None, typer.Option("--tail", "-n", help="Last N lines.")] = None,
) -> None:
    """Show (or follow) a session's container logs."""
    from vncsess import sessions

    if service not in (None, "vnc", "agent"):
        raise VncsessError(
            f"unknown service {service!r}", hint="use vnc or agent", exit_code=ExitCode.BAD_INPUT
        )
    if tail is not None and tail < 0:
        raise VncsessError("--tail must be 0 or more", exit_code=ExitCode.BAD_INPUT)
    for line in sessions.logs(_settings(), session_id, service, follow, tail):
        print(line, flush=True)


@app.command()
@handled
def stop(
    session_ids: Annotated[
        list[str] | None, typer.Argument(help="Session ids.", autocompletion=_complete_session)
    ] = None,
    all_: Annotated[
        bool,
        typer.Option(
            "--all",
            "-a",
            help="Stop every session (with VNCSESS_OWNER set, that owner's), except the warm "
            "pool's unclaimed ones.",
        ),
    ] = False,
    pool: Annotated[
        bool, typer.Option("--pool", help="With --all: the warm pool's sessions too.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Remove sessions' containers, networks and volumes; keep their data dirs."""
    from vncsess import sessions

    if all_ and session_ids:
        raise VncsessError("give ids or --all, not both", exit_code=ExitCode.BAD_INPUT)
    if pool and not all_:
        raise VncsessError(
            "--pool goes with --all",
            hint="`vncsess stop --all --pool`, or `vncsess pool drain` for the pool alone",
            exit_code=ExitCode.BAD_INPUT,
        )
    with ui.progress("stopping") as step:
        batch = sessions.stop(
            _settings(), session_ids or [], stop_all=all_, progress=step, include_pool=pool
        )
    _print_stopped(batch.done, json_, "" if batch.errors else "no sessions to stop")
    _fail_batch(batch)


def _print_stopped(ids: list[str], json_: bool, none: str) -> None:
    if json_:
        ui.print_json({"stopped": ids})
    elif ids:
        print("\n".join(ids))
    elif none:
        ui.info(none)


def _fail_batch(batch: Batch) -> None:
    """Like `docker rm a b`: each reference that named no session is reported, and the
    exit code says something was missing, after every other one was acted on."""
    for exc in batch.errors:
        ui.error(exc.message, exc.hint)
    if batch.errors:
        raise typer.Exit(int(batch.errors[0].exit_code))


@app.command()
@handled
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Also delete the data dirs (recordings, results, files) of sessions stopped "
            "longer ago than this: 12h, 7d, 30d.",
        ),
    ] = "",
    json_: JsonOpt = False,
) -> None:
    """Remove sessions that ended by themselves (--ttl or --idle-timeout reached, or every
    container exited); their data dirs stay unless --older-than covers them."""
    from vncsess import retention

    with ui.progress("pruning") as step:
        pruned = retention.prune(_settings(), older_than, progress=step)
    if json_:
        ui.print_json(pruned.to_dict())
        return
    _print_stopped(pruned.stopped, False, "" if older_than else "nothing to prune")
    if older_than:
        for sid in pruned.removed:
            print(sid)
        if pruned.removed:
            ui.success(
                f"deleted the data dirs of {len(pruned.removed)} session(s) stopped more than "
                f"{older_than} ago ({ui.human_size(pruned.freed_bytes)})"
            )
        elif not pruned.stopped:
            ui.info(f"nothing to prune: no session stopped more than {older_than} ago")


@app.command("rm")
@handled
def rm(
    session_ids: Annotated[
        list[str],
        typer.Argument(help="Session ids (or unique prefixes).", autocompletion=_complete_session),
    ],
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Stop a running session first, then delete.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Delete stopped sessions' data dirs: recordings, results, screenshots, downloads.

    A running session is refused unless --force. Like `docker rm`, acts on every id it
    finds and reports the others (exit code 4 when one is missing)."""
    from vncsess import retention

    with ui.progress("removing") as step:
        batch, freed = retention.rm(_settings(), session_ids, force=force, progress=step)
    if json_:
        ui.print_json({"removed": batch.done, "freed_bytes": freed})
    else:
        for sid in batch.done:
            print(sid)
        if batch.done:
            ui.success(f"freed {ui.human_size(freed)}")
    _fail_batch(batch)


@app.command("du")
@handled
def du(json_: JsonOpt = False) -> None:
    """Show what each session keeps on disk (recordings, files, logs), with a total."""
    from vncsess import retention

    usage = retention.du(_settings())
    if json_:
        ui.print_json(usage.to_dict())
        return
    if not usage.sessions:
        ui.info(f"nothing on disk in {usage.home}")
        return
    size = ui.human_size
    rows = [
        [u.session_id, u.status,
         ui.human_age((datetime.now(UTC) - u.ended_at).total_seconds()) if u.ended_at else "-",
         size(u.recordings), size(u.files), size(u.logs), size(u.other), size(u.total)]
        for u in usage.sessions
    ]  # fmt: skip
    t = usage.to_dict()["total"]
    n = len(usage.sessions)
    rows.append(["TOTAL", f"{n} session" + ("" if n == 1 else "s"), "", size(t["recordings_bytes"]),
                 size(t["files_bytes"]), size(t["logs_bytes"]), size(t["other_bytes"]),
                 size(t["total_bytes"])])  # fmt: skip
    headers = ["SESSION", "STATUS", "STOPPED", "RECORDINGS", "FILES", "LOGS", "OTHER", "TOTAL"]
    ui.table(headers, rows)
    ui.info(f"in {usage.home}; `vncsess rm ID` or `vncsess prune --older-than 7d` frees space")


# ------------------------------------------------------------------ results


@app.command()
@handled
def wait(
    session_id: IdArg,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up after SECONDS (exit 5).")
    ] = None,
    task: TaskOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Block until the agent finishes; exit 0 if the task succeeded, 1 if it failed."""
    from vncsess import sessions

    if timeout is not None and timeout <= 0:
        raise VncsessError("--timeout must be positive", exit_code=ExitCode.BAD_INPUT)
    session, res = sessions.wait(_settings(), session_id, timeout, task=task)
    _finish_with_result(session, res, json_)


@app.command()
@handled
def result(session_id: IdArg, task: TaskOpt = None, json_: JsonOpt = False) -> None:
    """Show the agent's result (also after the session was stopped)."""
    from vncsess import sessions

    res = sessions.result(_settings(), session_id, task=task)
    _finish_with_result(None, res, json_)


@app.command("task")
@handled
def task_(
    session_id: IdArg,
    text: Annotated[str, typer.Argument(help="What the agent should do next.", show_default=False)],
    wait_: Annotated[
        bool, typer.Option("--wait", help="Wait for its result; exit code tells success.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="With --wait: give up after SECONDS.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Give a running session a follow-up task, in the same desktop and browser.

    It runs once the task before it is done (at once if the agent is idle). Prints the
    task's number, for `result ID --task N` and `wait ID --task N`.
    """
    from vncsess import sessions

    if timeout is not None and not wait_:
        raise VncsessError("--timeout needs --wait", exit_code=ExitCode.BAD_INPUT)
    if timeout is not None and timeout <= 0:
        raise VncsessError("--timeout must be positive", exit_code=ExitCode.BAD_INPUT)
    settings = _settings()
    session, n = sessions.add_task(settings, session_id, text)
    if not wait_:
        if json_:
            ui.print_json({"session_id": session.id, "task": n})
        else:
            ui.data(str(n))
            ui.info(f"task {n} queued; `vncsess wait {session.id} --task {n}` blocks until done")
        return
    if not json_:
        ui.info(f"task {n} queued; waiting for its result...")
    session, res = sessions.wait(settings, session.id, timeout, task=n)
    _finish_with_result(session, res, json_)


# ------------------------------------------------------------------ recording


@record_app.command("start")
@handled
def record_start(
    session_id: IdArg,
    fps: Annotated[
        int | None, typer.Option("--fps", help="Frames per second [default: 15].")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Start recording the session's display."""
    from vncsess import recordings, sessions

    if fps is not None and not 1 <= fps <= 60:
        raise VncsessError("--fps must be between 1 and 60", exit_code=ExitCode.BAD_INPUT)
    settings = _settings()
    path = recordings.start(settings, sessions.get(settings, session_id), fps)
    final = path.with_name(path.name.replace(".partial.mp4", ".mp4"))
    if json_:
        ui.print_json({"session_id": session_id, "file": str(final), "state": "recording"})
    else:
        ui.success(f"recording to {final}")


@record_app.command("stop")
@handled
def record_stop(session_id: IdArg, json_: JsonOpt = False) -> None:
    """Stop the running recording and make it seekable."""
    from vncsess import recordings, sessions

    settings = _settings()
    path = recordings.stop(settings, sessions.get(settings, session_id))
    if json_:
        ui.print_json({"session_id": session_id, "file": str(path), "state": "complete"})
    else:
        print(path)


@app.command("recordings")
@handled
def recordings_(
    session_id: Annotated[
        str | None, typer.Argument(help="Only this session.", autocompletion=_complete_session)
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """List recordings with duration and size (interrupted ones are repaired first)."""
    from vncsess import recordings, sessions

    settings = _settings()
    found = recordings.list_recordings(settings, sessions.artifacts(settings, session_id))
    if json_:
        ui.print_json([r.to_dict() for r in found])
    elif not found:
        ui.info("no recordings; `vncsess record start ID` or `vncsess up --record`")
    else:
        ui.table(
            ["SESSION", "STATE", "DURATION", "SIZE", "FILE"],
            [
                [
                    r.session_id,
                    r.state,
                    f"{r.duration_s:.1f}s" if r.duration_s else "-",
                    ui.human_size(r.size_bytes),
                    str(r.path),
                ]
                for r in found
            ],
        )


@app.command()
@handled
def screenshot(
    session_id: IdArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="PNG file (default: the data dir).")
    ] = None,
) -> None:
    """Save the session's display as a PNG."""
    from vncsess import recordings, sessions

    settings = _settings()
    print(recordings.screenshot(settings, sessions.get(settings, session_id), output))


# ------------------------------------------------------------------ files


@app.command("files")
@handled
def files_(session_id: IdArg, json_: JsonOpt = False) -> None:
    """List a session's uploads and downloads (also after stop)."""
    from vncsess import files

    found = files.list_files(_settings(), session_id)
    if json_:
        ui.print_json([f.to_dict() for f in found])
    elif not found:
        ui.info(f"no files; `vncsess cp FILE {session_id}:` sends one")
    else:
        ui.table(
            ["FILE", "SIZE", "MODIFIED"],
            [
                [f"{f.area}/{f.name}", ui.human_size(f.size_bytes), f.modified_at.isoformat()]
                for f in found
            ],
        )


@app.command("cp")
@handled
def cp(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="SOURCE... DEST. Send: FILE... ID: (or ID:uploads/NAME). Fetch: "
            "ID:downloads/NAME (or ID:uploads/NAME) DEST (a file or a folder).",
            show_default=False,
        ),
    ],
    scan_command: ScanOpt = "",
    json_: JsonOpt = False,
) -> None:
    """Copy files into a session (its uploads) or out of it (its downloads, also after stop)."""
    from vncsess import files

    if len(paths) < 2:
        raise VncsessError(
            "give a source and a destination",
            hint="`vncsess cp FILE ID:` or `vncsess cp ID:downloads/NAME .`",
            exit_code=ExitCode.BAD_INPUT,
        )
    done = files.copy(_settings(scan_command=scan_command), paths[:-1], paths[-1])
    if isinstance(done, Path):
        if json_:
            ui.print_json({"file": str(done)})
        else:
            ui.data(str(done))
    elif json_:
        ui.print_json([f.to_dict() for f in done])
    else:
        for f in done:
            ui.success(f"sent {f.name} ({ui.human_size(f.size_bytes)}) to {f.ref}")


# ------------------------------------------------------------------ take control


@app.command()
@handled
def control(session_id: IdArg, json_: JsonOpt = False) -> None:
    """Pause the agent and print an interactive URL, to take over (log in, solve a captcha)."""
    from vncsess import sessions

    s = sessions.set_control(_settings(), session_id, take=True)
    if json_:
        ui.print_json({**s.to_dict(show_secrets=True), "control_url": s.control_url})
        return
    ui.data(s.control_url)
    ui.success(f"the agent of {s.id} is paused; this URL has keyboard and mouse")
    ui.info(f"hand back with `vncsess resume {s.id}`")


@app.command()
@handled
def resume(session_id: IdArg, json_: JsonOpt = False) -> None:
    """Hand the session back to the agent, which continues its task."""
    from vncsess import sessions

    s = sessions.set_control(_settings(), session_id, take=False)
    if json_:
        ui.print_json(s.to_dict())
    else:
        ui.success(f"the agent of {s.id} continues")


# ------------------------------------------------------------------ url / open


ControlOpt = Annotated[
    bool,
    typer.Option("--control", help="The URL with keyboard and mouse (after `vncsess control ID`)."),
]


@app.command()
@handled
def url(session_id: IdArg, control: ControlOpt = False) -> None:
    """Print just the session's viewer URL (with its secret), for scripts."""
    from vncsess import sessions

    print(sessions.url(_settings(), session_id, control))


@app.command("open")
@handled
def open_(session_id: IdArg, control: ControlOpt = False) -> None:
    """Open the session's viewer URL in your web browser."""
    import webbrowser

    from vncsess import sessions

    link = sessions.url(_settings(), session_id, control)
    if not webbrowser.open(link):
        raise VncsessError(
            "no web browser could be started here",
            hint="`vncsess url ID` prints the URL to open elsewhere (set BROWSER to choose one)",
        )
    ui.success(f"opened {'the control' if control else 'the viewer'} URL in your browser")


# ------------------------------------------------------------------ doctor


@app.command()
@handled
def doctor(json_: JsonOpt = False) -> None:
    """Check this machine for vncsess, with a fix for each problem.

    Checks Docker, compose, the images, disk, networks, model keys and ports.

    Exits 0 when `up` can work (warnings allowed), 3 when something would stop it."""
    from vncsess import doctor as doc

    settings = _settings()
    if json_:
        checks = doc.run(settings)
        ui.print_json({"ok": doc.healthy(checks), "checks": [c.to_dict() for c in checks]})
    else:
        with ui.progress("checking Docker, images, disk, networks and ports"):
            checks = doc.run(settings)
        ui.checks(checks)
    if not doc.healthy(checks):
        raise typer.Exit(int(ExitCode.ENVIRONMENT))


# ------------------------------------------------------------------ the warm pool


@pool_app.command("fill")
@handled
def pool_fill(
    size: Annotated[int, typer.Argument(help="How many pool sessions to have live.", min=0)],
    resolution: Annotated[
        str,
        typer.Option(
            "--resolution", "-r", help="Display size WxH of new ones. [default: 1280x720]"
        ),
    ] = "",
    json_: JsonOpt = False,
) -> None:
    """Start idle sessions ahead of time until SIZE pool sessions are live.

    Only `up`s asking for the same resolution claim them. Pool sessions belong to your
    VNCSESS_OWNER and VNCSESS_HOME: only `up`s with both the same claim them.
    """
    from vncsess import pool

    settings = _settings(resolution=resolution)
    with ui.progress("filling the pool") as step:
        live = pool.fill(settings, size, resolution, step)
    if json_:
        ui.print_json({"pool": [s.id for s in live]})
    else:
        ui.success(f"{len(live)} pool session(s) live")
        for s in live:
            print(s.id)


@pool_app.command("ls")
@handled
def pool_ls(
    json_: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only ids.")] = False,
) -> None:
    """List the pool sessions nobody claimed yet (claimed ones are in `vncsess ls`)."""
    from vncsess import pool

    found = pool.list_pool(_settings())
    if json_:
        ui.print_json([s.to_dict() for s in found])
    elif quiet:
        for s in found:
            print(s.id)
    elif not found:
        ui.info("the pool is empty; fill it with `vncsess pool fill N`")
    else:
        ui.table(
            ["ID", "STATUS", "POOL", "AGE", "SIZE"],
            [
                [s.id, s.shown_status, s.pool, ui.human_age(s.age_seconds), s.resolution]
                for s in found
            ],
        )


@pool_app.command("drain")
@handled
def pool_drain(json_: JsonOpt = False) -> None:
    """Remove the pool sessions nobody claimed (as `stop` does)."""
    from vncsess import pool

    with ui.progress("draining the pool") as step:
        batch = pool.drain(_settings(), step)
    _print_stopped(batch.done, json_, "" if batch.errors else "the pool is empty")
    _fail_batch(batch)


# ------------------------------------------------------------------ serve


@app.command()
@handled
def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on. 0.0.0.0: every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: a free one).", min=0)] = 8000,
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="VNCSESS_API_TOKEN",
            show_default=False,
            help="The API token. Default: made on first run, kept in $VNCSESS_HOME/api-token.",
        ),
    ] = "",
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log each request.")
    ] = True,
    pool_size: Annotated[
        int,
        typer.Option(
            "--pool",
            min=0,
            help="Keep N warm-pool sessions ready (topped up in the background); creates "
            "claim them. They stay after Ctrl-C: `vncsess pool drain` removes them.",
        ),
    ] = 0,
) -> None:
    """Serve the HTTP API (the seeds' session APIs and /v1) until Ctrl-C."""
    from vncsess import api
    from vncsess import pool as warm

    settings = _settings()
    if pool_size:
        warm.check_size(pool_size)
    secret, path = api.load_token(settings, token)
    sock = api.bind(host, port)
    _images_before_serving(settings)
    bound = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    base = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound}"
    if host in ("0.0.0.0", "", "::"):
        ui.error(
            f"listening on every interface ({host}): anyone who can reach port {bound} "
            "can try the token",
            hint="use --host 127.0.0.1 behind a TLS proxy; the noVNC ports still follow "
            "VNCSESS_BIND",
        )
    ui.success(f"vncsess API at {base}/v1  (schema: {base}/openapi.json)")
    ui.err.print(f"token: {secret}", highlight=False, markup=False)
    where = f"kept in {path}" if path else "from --token / VNCSESS_API_TOKEN"
    ui.info(f"({where}) try:")
    ui.err.print(
        f'  curl -H "Authorization: Bearer {secret}" {base}/v1/sessions',
        highlight=False,
        markup=False,
    )
    ui.info("Ctrl-C stops the server; sessions keep running.")
    keeper = None
    if pool_size:
        ui.info(f"keeping {pool_size} warm-pool session(s) ready")
        keeper = warm.Keeper(settings, pool_size, report=ui.info).start()
    try:
        api.run(sock, settings, secret, access_log=access_log)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: the normal way out
        ui.info("stopped")
    finally:
        if keeper is not None:
            keeper.stop()


def _images_before_serving(settings: config.Settings) -> None:
    """Build stale images now, with progress on this terminal, rather than inside the first
    `POST /v1/sessions` (a request that would hang for minutes). Docker being down is not
    a reason to refuse to serve: the API answers 503 until it is back."""
    from vncsess import engines, images
    from vncsess.errors import DockerUnavailable

    if not engines.load(settings).builds_images:
        return
    try:
        with ui.progress("checking images") as step:
            built = images.ensure(settings, step)
    except DockerUnavailable as exc:
        ui.error(exc.message, "the API answers 503 until Docker is back")
        return
    if built:
        ui.success(f"built {', '.join(built)}")


def main() -> None:
    try:
        app()
    except Exception as exc:  # what escaped the commands' own handling (Typer's parsing...)
        try:
            _unexpected(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)
