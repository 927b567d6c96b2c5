"""Chromium: the browser profile for the Agent, the idle window, diagnostics, and shutdown.

browser-use launches Chromium itself, with stdout/stderr on pipes that it never reads. In a
container Chromium logs D-Bus errors about once a second, so such a pipe fills up within minutes
and Chromium then blocks. The executable browser-use is given is bin/chromium-logged, which execs
/usr/bin/chromium with both streams appended to CHROMIUM_LOG instead (kept small by cap_log);
when Chromium fails to start, the tail of that file says why.

Chromium's environment is the runner's own: browser-use's launcher passes none (it ignores
BrowserProfile.env), and launch_idle passes none either. That is why the model keys never enter
the runner's environment (settings.py): Chromium runs without its sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVarTuple

import psutil

_Ts = TypeVarTuple("_Ts")

WRAPPER = str(Path(__file__).resolve().parent.parent / "bin" / "chromium-logged")
CHROMIUM = os.environ.get("VNCSESS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_LOG = Path(os.environ.get("VNCSESS_CHROMIUM_LOG", "/tmp/chromium.log"))
USER_DATA_DIR = "/tmp/chromium-profile"


def confinement_args() -> list[str]:
    """--no-internet. The session's network is internal, so nothing is routed beyond this
    machine; but a container on an internal network can still reach the host's own
    addresses (Docker filters forwarding, not the host's INPUT). So the browser also gets a
    proxy that does not exist, bypassed only for loopback and single-label names (`<local>`:
    the session's own containers, such as `llm`). Every other address fails to load."""
    if os.environ.get("VNCSESS_NO_INTERNET", "").lower() not in ("1", "true", "yes"):
        return []
    return [
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<local>;127.0.0.1;localhost;[::1]",
    ]


# Added to browser-use's own defaults (which already disable background networking,
# component updates, sync, breakpad, ... and add --no-sandbox/--no-xshm in containers).
EXTRA_ARGS = [
    "--test-type",  # no "unsupported command-line flag" bar
    # The display has no GLX (Xvfb runs without it, and the vnc image without Mesa): without
    # this, Chromium starts a GPU process that fails, again and again, before it falls back
    # to the software compositor it ends up with anyway.
    "--disable-gpu",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers
    "--password-store=basic",  # no keyring to wait for
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    *confinement_args(),
]

# For the idle window, which runner.py launches without browser-use. It shows one still
# page for as long as nobody gives the session a task, so it should cost next to nothing:
# no GPU acceleration to emulate in software (a still page composites as well without it;
# --disable-gpu comes with EXTRA_ARGS).
IDLE_ARGS = [
    "--no-sandbox",
    "--no-zygote",
    "--no-xshm",
    "--disable-gpu-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--hide-crash-restore-bubble",
    *EXTRA_ARGS,
]


def browser_profile(width: int, height: int, downloads_dir: str) -> Any:
    from browser_use import BrowserProfile

    return BrowserProfile(
        headless=False,
        executable_path=WRAPPER,
        chromium_sandbox=False,
        user_data_dir=USER_DATA_DIR,
        downloads_path=downloads_dir,
        window_size={"width": width, "height": height},
        window_position={"width": 0, "height": 0},
        screen={"width": width, "height": height},
        enable_default_extensions=False,
        keep_alive=True,  # the window stays up after the task, showing its last page
        args=list(EXTRA_ARGS),
    )


def launch_idle(url: str, width: int, height: int) -> subprocess.Popen[bytes]:
    args = [
        WRAPPER,
        *IDLE_ARGS,
        f"--user-data-dir={USER_DATA_DIR}",
        f"--window-size={width},{height}",
        "--window-position=0,0",
        url,
    ]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=False)


def describe_exit(returncode: int | None) -> str:
    """How a process ended, in words: 'killed by signal SIGKILL', 'exited with code 1'."""
    if returncode is None:
        return "its exit status is unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by signal {name}"
    return f"exited with code {returncode}"


class _ExitWatcher(asyncio.ThreadedChildWatcher):
    """asyncio's own child watcher, which also tells how the agent's browser ended.

    browser-use starts Chromium with asyncio.create_subprocess_exec and keeps only a psutil
    handle: the exit status (the signal that killed it) goes to asyncio's watcher, which reaps
    the process, and nowhere else. This watcher hands it on as well.
    """

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        super().__init__()
        self._on_exit = on_exit

    def add_child_handler(
        self, pid: int, callback: Callable[[int, int, *_Ts], object], *args: *_Ts
    ) -> None:
        if not _is_browser(pid, args):
            super().add_child_handler(pid, callback, *args)
            return

        def exited(pid: int, returncode: int, *args: *_Ts) -> None:
            callback(pid, returncode, *args)
            self._on_exit(returncode)

        super().add_child_handler(pid, exited, *args)


def _is_browser(pid: int, handler_args: tuple[object, ...] = ()) -> bool:
    """The browser process browser-use launched: the one given a CDP port (its helpers
    inherit no such flag, and the runner starts no other Chromium through asyncio).

    The argv asyncio was given decides (its subprocess transport, the handler's argument).
    Reading /proc instead races: the launch goes through two execs (chromium-logged, then
    Debian's /usr/bin/chromium script), and a process in the middle of one has an empty
    command line, so a read there took the browser for something else and its death went
    unreported (seen once in CI, under load). /proc is only the fallback.
    """
    popen = getattr(handler_args[0], "_proc", None) if handler_args else None
    argv = getattr(popen, "args", None)
    if isinstance(argv, list | tuple) and argv:
        return _has_cdp_port(argv)
    try:
        return _has_cdp_port(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def _has_cdp_port(argv: list[str] | tuple[str, ...]) -> bool:
    return any(str(a).startswith("--remote-debugging-port") for a in argv)


def on_browser_exit(callback: Callable[[str], None]) -> None:
    """Call callback(why) whenever the browser browser-use launched ends, with how it ended.

    Call it from a running event loop, before the browser is launched. (asyncio's child
    watchers exist up to Python 3.13; the image's Python is Debian bookworm's 3.11.)
    """

    def exited(returncode: int) -> None:
        why = f"the browser (Chromium) died: {describe_exit(returncode)}"
        if returncode >= 0:  # it exited by itself, so its output says why (a signal is the why)
            tail = log_tail(max_lines=5, max_chars=600)
            why += f"; its last output:\n{tail}" if tail else ""
        callback(why)

    asyncio.set_child_watcher(_ExitWatcher(exited))


async def cap_log(max_bytes: int = 4 << 20, every: float = 30.0) -> None:
    """Keep CHROMIUM_LOG small: Chromium logs D-Bus errors about once a second, forever.

    Chromium holds the file with O_APPEND, so truncating it in place is safe.
    """
    while True:
        await asyncio.sleep(every)
        try:
            if CHROMIUM_LOG.stat().st_size > max_bytes:
                os.truncate(CHROMIUM_LOG, 0)
        except OSError:
            pass


def log_tail(max_lines: int = 15, max_chars: int = 2000) -> str:
    try:
        data = CHROMIUM_LOG.read_bytes()[-16384:]
    except OSError:
        return ""
    lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    text = "\n".join(lines[-max_lines:])
    return text[-max_chars:]


async def preflight(timeout: float = 6.0) -> str:
    """Start Chromium once by hand and report how it exits (called only after a failure)."""
    profile = "/tmp/chromium-preflight"
    args = [CHROMIUM, *IDLE_ARGS, f"--user-data-dir={profile}", "about:blank"]
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return f"preflight: cannot execute {CHROMIUM}: {exc.strerror or exc}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        verdict = f"preflight: {CHROMIUM} exited with code {proc.returncode}"
    except TimeoutError:
        terminate_tree(proc.pid, grace=1.0)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 2.0)
        except (TimeoutError, ProcessLookupError):
            out = b""
        verdict = f"preflight: {CHROMIUM} started and kept running for {timeout:.0f} s"
    lines = [
        line for line in (out or b"").decode("utf-8", errors="replace").splitlines() if line.strip()
    ]
    tail = "\n".join(lines[-10:])[-1500:]
    return verdict + (f"; its output:\n{tail}" if tail else " (no output)")


async def diagnose() -> str:
    """Why Chromium did not start: its stderr tail, or a preflight launch if it left none."""
    tail = log_tail()
    if tail:
        return f"Chromium output (tail of {CHROMIUM_LOG}):\n{tail}"
    return await preflight()


def terminate_tree(pid: int | None = None, grace: float = 1.5) -> None:
    """SIGTERM the children of `pid` (default: this process), then SIGKILL what is left."""
    try:
        parent = psutil.Process(pid or os.getpid())
        procs = parent.children(recursive=True)
        if pid:
            procs.append(parent)
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if alive:
        psutil.wait_procs(alive, timeout=0.5)
