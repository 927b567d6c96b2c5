"""Chromium: the browser profile for the Agent, the idle window, diagnostics, and shutdown.

browser-use launches Chromium itself, with stdout/stderr on pipes that it never reads. In a
container Chromium logs D-Bus errors about once a second, so such a pipe fills up within minutes
and Chromium then blocks. The executable browser-use is given is bin/chromium-logged, which execs
/usr/bin/chromium with both streams appended to CHROMIUM_LOG instead (kept small by cap_log);
when Chromium fails to start, the tail of that file says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil

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
    "--disable-dev-shm-usage",  # /dev/shm is small in containers
    "--password-store=basic",  # no keyring to wait for
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    *confinement_args(),
]

# For the idle window, which runner.py launches without browser-use.
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


def browser_profile(width: int, height: int, downloads_dir: str):
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


def launch_idle(url: str, width: int, height: int) -> subprocess.Popen:
    args = [
        WRAPPER,
        *IDLE_ARGS,
        f"--user-data-dir={USER_DATA_DIR}",
        f"--window-size={width},{height}",
        "--window-position=0,0",
        url,
    ]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=False)


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
