"""The agent container's main program: one browser-use Agent on the session's display.

Contract
--------
Environment
  DISPLAY=:99, XAUTHORITY=/run/secrets/xauth   the vnc container's display and its cookie
  RESOLUTION=WxH                                the Chromium window size (placed at 0,0)
  SESSION_ID                                    shown on the idle page and in the logs
  VNCSESS_LLM                                   "demo" or PROVIDER:MODEL (openai, anthropic,
                                                google, ollama); see llm.py
  VNCSESS_LLM_BASE_URL                          optional; with openai: any compatible server
  VNCSESS_MAX_STEPS                             default 25
  VNCSESS_DEMO_STEP_DELAY                       seconds per demo-model step, default 1.0
  VNCSESS_DISPLAY_TIMEOUT                       seconds to wait for the display, default 30
  VNCSESS_DATA_DIR, VNCSESS_SECRETS_DIR         default /data and /run/secrets (for tests)
  VNCSESS_TTL                                   seconds: then the runner ends itself
  VNCSESS_IDLE_TIMEOUT                          seconds without activity: then it ends
                                                itself (see activity.py)
  VNCSESS_ACTIVITY_DIR                          default /activity, shared with vnc
  VNCSESS_POOL                                  "1": a warm-pool session, idle until claimed
Files (each may be missing)
  /run/secrets/task       the task, UTF-8, passed to the Agent byte for byte. Empty: an idle
                          window until stopped. The single word `demo`: DEMO_TASK.
  /run/secrets/llm_env    KEY=VALUE lines for the chat model, kept in this process's memory
                          (never its environment, which Chromium inherits); values are never
                          logged and are redacted from logs and result.json
  /data/result.json       written once, atomically, when the run succeeds, fails or is stopped
  /data/status.json       {"state", "step", "url", "updated_at"}, rewritten as the run goes
  /data/events.jsonl      one JSON line per step, pause, resume and the end (protocol.py)
  /data/downloads/        the browser's downloads
  /data/uploads/          files vncsess put in (read-only): the agent's available_file_paths
  /data/inbox/N.task      a follow-up task (`vncsess task`), taken in number order once the
                          last task is done (renamed N.taken); it runs in the same browser
  /data/tasks/N.json      each task's own result (result.json is the latest)
  /data/claim.json        a warm-pool session's claim (VNCSESS_POOL=1): the claimer's model,
                          base URL, step limit, TTL and idle timeout, applied once, before
                          the first task; /run/secrets/llm_env is then read again (the
                          claimer's keys were written over it)
  /opt/vncsess-script/    `up --script`: agent_script.py and args.json (read-only). The runner
                          runs the script instead of an Agent, its output in the logs; its exit
                          code and last JSON line on stdout become the result
Signals
  SIGUSR1 pause the agent before its next action (state "paused")
  SIGUSR2 resume it (state "running")
  SIGTERM / SIGINT  write a "cancelled" result if the task is still running, close Chromium,
                    exit 0 within about 2 s
After the task ends (either way) Chromium stays open on its last page and the runner waits for
follow-up tasks, or SIGTERM, with state "done" or "failed".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vncsess_agent import activity, chromium, files, logs, webserver
from vncsess_agent import settings as settings_mod
from vncsess_agent.display import DisplayError, wait_for_display, watch_display
from vncsess_agent.outputs import Outputs, utc_now
from vncsess_agent.protocol import (
    CANCELLED,
    CLAIM_FILE,
    DONE,
    FAILED,
    IDLE,
    INBOX_DIR,
    PAUSED,
    RUNNING,
    STARTING,
    SUCCEEDED,
    TAKEN_SUFFIX,
    TASK_SUFFIX,
    Result,
)

LOG = logging.getLogger("vncsess")

# browser-use would reach the network for telemetry, version checks, cloud sync and extension
# downloads unless told not to; the image sets these too.
OFFLINE_ENV = {
    "ANONYMIZED_TELEMETRY": "false",
    "BROWSER_USE_VERSION_CHECK": "false",
    "BROWSER_USE_DISABLE_EXTENSIONS": "1",
    "BROWSER_USE_CLOUD_SYNC": "false",
    "BROWSER_USE_CLOUD_HINTS": "false",
    "BROWSER_USE_SETUP_LOGGING": "false",
    "SKIP_LLM_API_KEY_VERIFICATION": "true",
}

MAX_FAILURES = 3  # consecutive failed steps before browser-use gives up (its default is 5)
DISPLAY_DIED = "the display died"  # the first error of a result when Xvfb went away
SHUTDOWN_DEADLINE_S = 2.5
INBOX_POLL_S = 0.5  # how often the inbox is looked at while no task runs
SCRIPT_LINE_LIMIT = 4 << 20  # a longer line of a script's output is cut


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, str) else value
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_actions(model_output: Any) -> str:
    parts = []
    for action in getattr(model_output, "action", None) or []:
        data = action.model_dump(exclude_unset=True, exclude_none=True)
        for name, params in data.items():
            if isinstance(params, dict):
                args = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
            else:
                args = _short(params)
            parts.append(f"{name}({args})")
    return "; ".join(parts) or "(no action)"


def _is_page_url(url: str | None) -> bool:
    if not url:
        return False
    return not url.startswith(("about:", "chrome://", "chrome-error://", "data:"))


class Runner:
    def __init__(
        self, settings: settings_mod.Settings, redact: logs.Redactor, t0: float, started_at: str
    ) -> None:
        self.s = settings
        self.redact = redact
        self.t0 = t0
        self.started_at = started_at
        self.outputs = Outputs(settings.data_dir, LOG)
        self.phase = "starting"  # starting, idle, running, finished
        self.agent = None
        self.first_navigation_s: float | None = None
        self.nav_urls: list[str] = []
        self.fatal_llm_error: str | None = None
        self.browser_death: str | None = None
        self.stop_reason: str | None = None
        self.expired_by: str | None = None  # "ttl" or "idle" when a limit ended the session
        self._shutting_down = False
        self._stopped = asyncio.Event()
        self.task_no = 0  # the task running or last run (1, 2, ...); 0: none yet
        self.task_t0 = t0  # when it started (monotonic)
        self._history_start = 0  # where its steps begin in the agent's history
        self._task_started_at = started_at
        self.claimed = False

    # -- entry -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGUSR1, self._on_pause)
        loop.add_signal_handler(signal.SIGUSR2, self._on_resume)
        self.outputs.status(STARTING)
        if self.s.idle_timeout > 0:
            # A thread, not a task: browser-use's imports and set-up block the event loop
            # for seconds, and a task at work must not look idle meanwhile.
            threading.Thread(
                target=self._watch_idle, args=(self.s.idle_timeout, loop), name="idle", daemon=True
            ).start()
        try:
            await self._main()
        except Exception as exc:  # a bug here must still end in a readable failed result
            LOG.exception("runner failed")
            self._finish(FAILED, errors=[f"runner error: {type(exc).__name__}: {exc}"])
        await self._stopped.wait()  # the shutdown path exits the process
        return 0

    async def _main(self) -> None:
        try:
            webserver.start(settings_mod.DEMO_PORT)
        except OSError as exc:
            LOG.warning(
                "cannot serve the local pages on 127.0.0.1:%d: %s", settings_mod.DEMO_PORT, exc
            )

        try:
            waited = await wait_for_display(
                self.s.display_number, self.s.xauthority, self.s.display_timeout, LOG
            )
        except DisplayError as exc:
            LOG.error("%s", exc)
            self._finish(FAILED, errors=[str(exc)])
            return
        LOG.info(
            "display %s ready (waited %.2f s, %.2f s since start)",
            self.s.display,
            waited,
            self._elapsed(),
        )

        self._log_capper = asyncio.create_task(chromium.cap_log())
        if self.s.ttl > 0:
            self._expiry = asyncio.create_task(self._expire(self.s.ttl))
        if self.s.script_file is not None:
            await self._run_script(self.s.script_file)
            return
        if self.s.task.strip():
            await self._run_task(1, self.s.task, at_start=True)
        else:
            first = await self._idle()
            if first is None:
                return
            await self._run_task(*first)
        while self.phase == "finished" and not self._shutting_down:
            await self._run_task(*await self._next_from_inbox())

    # -- follow-up tasks ---------------------------------------------------------------------

    def _take_from_inbox(self) -> tuple[int, str] | None:
        """The lowest-numbered task waiting in the inbox, marked taken; None if none."""
        inbox = self.s.data_dir / INBOX_DIR
        try:
            names = os.listdir(inbox)
        except OSError:
            return None
        numbers = sorted(
            int(name.removesuffix(TASK_SUFFIX))
            for name in names
            if name.endswith(TASK_SUFFIX) and name.removesuffix(TASK_SUFFIX).isdigit()
        )
        for n in numbers:
            path = inbox / f"{n}{TASK_SUFFIX}"
            try:
                text = path.read_bytes().decode("utf-8", errors="replace")
                os.replace(path, inbox / f"{n}{TAKEN_SUFFIX}")
            except OSError as exc:
                LOG.warning("cannot take task %d from the inbox: %s", n, exc)
                continue
            return n, text
        return None

    async def _next_from_inbox(self) -> tuple[int, str]:
        while True:
            if self.s.pool and not self.claimed:
                self._apply_claim()
            found = self._take_from_inbox()
            if found is not None:
                return found
            await asyncio.sleep(INBOX_POLL_S)

    def _apply_claim(self) -> None:
        """A warm-pool session claimed by an `up`: its model, keys and limits from now on.
        Written before the claimer's first task reached the inbox, so it applies first.
        The keys are read into memory, as at start: never logged, never in the env."""
        try:
            raw = json.loads((self.s.data_dir / CLAIM_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            LOG.warning("cannot read the claim: %s", exc)
            return
        self.claimed = True
        claim = raw if isinstance(raw, dict) else {}
        self.s.llm = str(claim.get("llm") or "demo")
        self.s.llm_base_url = str(claim.get("llm_base_url") or "") or None
        steps = claim.get("max_steps")
        if isinstance(steps, int) and steps > 0:
            self.s.max_steps = steps
        delay = claim.get("demo_step_delay")
        if isinstance(delay, (int, float)) and delay >= 0:
            self.s.demo_step_delay = float(delay)
        warnings: list[str] = []
        self.s.llm_env = settings_mod.load_llm_env(self.s.secrets_dir, warnings)
        self.redact.add(self.s.secret_values)
        for warning in warnings:
            LOG.warning("%s", warning)
        ttl, idle = claim.get("ttl_s"), claim.get("idle_timeout_s")
        LOG.info(
            "claimed from the pool: llm=%s max_steps=%d demo_step_delay=%g ttl=%s"
            " idle_timeout=%s%s",
            self.s.llm,
            self.s.max_steps,
            self.s.demo_step_delay,
            ttl or "-",
            idle or "-",
            f"; llm env: loaded {', '.join(self.s.llm_env_names)}" if self.s.llm_env else "",
        )
        if isinstance(ttl, (int, float)) and ttl > 0:
            self.s.ttl = float(ttl)
            self._expiry = asyncio.create_task(self._expire_after(float(ttl)))
        if isinstance(idle, (int, float)) and idle > 0:
            self.s.idle_timeout = float(idle)
            threading.Thread(
                target=self._watch_idle,
                args=(float(idle), asyncio.get_running_loop()),
                name="idle",
                daemon=True,
            ).start()

    async def _expire_after(self, ttl: float) -> None:
        """A claimed pool session's --ttl, counted from its claim."""
        await asyncio.sleep(ttl)
        self._on_stop(f"the session's time limit ({ttl:g} s)", expired_by="ttl")

    async def _run_task(self, n: int, text: str, at_start: bool = False) -> None:
        """Task n in the session's one browser: the first makes the Agent, a follow-up is
        handed to the same Agent (browser-use's add_new_task), so the pages, their history
        and the model's memory of the earlier tasks carry over."""
        if text.strip() == "demo":
            text = settings_mod.DEMO_TASK
        self.outputs.start_task(n)
        self.task_no = n
        # The task given at start is timed from the runner's start, as it always was.
        self.task_t0 = self.t0 if at_start else time.monotonic()
        self._task_started_at = self.started_at if at_start else utc_now()
        data = text.encode("utf-8")
        LOG.info("task %d: sha256=%s bytes=%d", n, hashlib.sha256(data).hexdigest(), len(data))
        if self.agent is None:
            await self._run_agent(text)
            return
        self.agent.add_new_task(text)
        await self._run_current()

    async def _expire(self, ttl: float) -> None:
        """--ttl: the session ends itself, as if stopped (the vnc container does the same)."""
        await asyncio.sleep(max(ttl - self._elapsed(), 0))
        self._on_stop(f"the session's time limit ({ttl:g} s)", expired_by="ttl")

    def _watch_idle(self, timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        """--idle-timeout (in its own thread): the session ends itself after TIMEOUT seconds
        without activity (a task at work, a viewer, a person in control), whichever
        container sees it first."""
        watch = activity.Watch(self.s.activity_dir, timeout, activity.AGENT)
        given = bool(self.s.task.strip()) or self.s.script_file is not None
        while True:
            # A task (or the script) is at work from the runner's start, or a follow-up
            # from when it is taken, to its result, paused included (someone has control).
            working = given or self.task_no > 0
            if watch.check(active=working and self.outputs.result is None):
                why = f"no activity for {timeout:g} s (idle timeout)"
                loop.call_soon_threadsafe(self._on_stop, why, "idle")
                return
            time.sleep(activity.POLL_S)

    def _elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- idle --------------------------------------------------------------------------------

    async def _idle(self) -> tuple[int, str] | None:
        """No task: keep a Chromium window on the "waiting for a task" page until SIGTERM,
        or until a task comes into the inbox (returned, the window closed for the Agent's).

        If the window is closed (say, by someone in noVNC) it is opened again; if Chromium dies
        within seconds of its launch, it cannot start, and the session fails with its output.
        If the display itself went away (Chromium dies with it), the window is opened again
        once the vnc container has made a new display.
        """
        self.phase = "idle"
        url = settings_mod.WAITING_URL + (
            f"?session={quote(self.s.session_id)}" if self.s.session_id else ""
        )
        LOG.info("no task: idle Chromium window on %s until stopped", settings_mod.WAITING_URL)
        self.outputs.status(IDLE, url=settings_mod.WAITING_URL)
        n, xauth = self.s.display_number, self.s.xauthority
        while True:
            launched = time.monotonic()
            watch = asyncio.ensure_future(watch_display(n, xauth))
            try:
                proc = chromium.launch_idle(url, self.s.width, self.s.height)
            except OSError as exc:
                watch.cancel()
                self._finish(FAILED, errors=[f"cannot start Chromium: {exc}"])
                return None
            # Chromium's exit (a thread blocked in waitpid) or the display's death (the X
            # server drops the watch's connection): no polling, an idle session wakes for
            # nothing.
            exited = asyncio.ensure_future(asyncio.to_thread(proc.wait))
            inbox = asyncio.ensure_future(self._next_from_inbox())
            await asyncio.wait({exited, watch, inbox}, return_when=asyncio.FIRST_COMPLETED)
            if inbox.done():
                watch.cancel()
                await asyncio.to_thread(chromium.terminate_tree, proc.pid, 1.0)
                await exited
                return inbox.result()
            inbox.cancel()
            died = watch.done()
            if died:  # and Chromium with it, if it has not gone yet
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exited), 5)
                await asyncio.to_thread(chromium.terminate_tree, proc.pid, 1.0)
            else:
                watch.cancel()
            await exited
            lived = time.monotonic() - launched
            if died:
                LOG.warning(
                    "%s (Chromium exited, code %s); waiting for the next one",
                    DISPLAY_DIED,
                    proc.returncode,
                )
                try:
                    waited = await wait_for_display(n, xauth, self.s.display_timeout, LOG)
                except DisplayError as exc:
                    self._finish(FAILED, errors=[DISPLAY_DIED, str(exc)])
                    return None
                LOG.info("the display is back after %.1f s: opening Chromium again", waited)
                continue
            if lived < 5.0:
                LOG.error(
                    "Chromium exited %.1f s after its launch (code %s)", lived, proc.returncode
                )
                diagnosis = await chromium.diagnose()
                first = f"Chromium exited right after its launch (code {proc.returncode})"
                self._finish(FAILED, errors=[first, diagnosis])
                return None
            LOG.info(
                "the idle Chromium window was closed (code %s); opening it again", proc.returncode
            )

    # -- the agent ---------------------------------------------------------------------------

    async def _run_agent(self, task: str) -> None:
        from vncsess_agent.llm import LLMConfigError, make_llm, watch_errors

        try:
            llm = make_llm(self.s.llm, self.s.llm_base_url, self.s.llm_env, self.s.demo_step_delay)
        except LLMConfigError as exc:
            LOG.error("%s", exc)
            self._finish(FAILED, errors=[str(exc)])
            return
        watch_errors(llm, self.s.llm_base_url, self._on_fatal_llm_error)

        if not self.s.llm.lower().startswith("anthropic:"):
            from vncsess_agent.fastimport import skip_anthropic_import

            skip_anthropic_import()
        from browser_use import Agent, BrowserSession
        from browser_use.browser.events import NavigationCompleteEvent

        chromium.on_browser_exit(self._on_browser_exit)
        session = BrowserSession(
            browser_profile=chromium.browser_profile(
                self.s.width, self.s.height, str(self.s.downloads_dir)
            )
        )
        session.event_bus.on(NavigationCompleteEvent, self._on_navigation)
        self.agent = agent = Agent(
            task=task,
            llm=llm,
            browser_session=session,
            use_judge=False,
            enable_signal_handler=False,  # the runner owns the signals
            max_failures=MAX_FAILURES,
            use_vision=self.s.llm != "demo",  # the demo model reads the DOM, not screenshots
            calculate_cost=False,
            generate_gif=False,
            register_new_step_callback=self._on_step,
            available_file_paths=files.uploads(self.s.uploads_dir),
        )
        if agent.task != task:
            LOG.warning(
                "browser-use changed the task text (%d -> %d chars)",
                len(task),
                len(agent.task),
            )
        LOG.info(
            "agent starting (llm=%s, max_steps=%d, %.2f s since start)",
            self.s.llm,
            self.s.max_steps,
            self._elapsed(),
        )
        await self._run_current()

    async def _run_current(self) -> None:
        """Run the Agent on its current task, and write that task's result."""
        agent = self.agent
        assert agent is not None
        self._history_start = len(agent.history.history)
        self.nav_urls = []
        self.phase = "running"
        if not agent.state.paused:
            self.outputs.status(RUNNING, step=0)

        try:
            history = await self._unless_display_dies(agent.run(max_steps=self.s.max_steps))
        except DisplayError as exc:
            LOG.error("%s (%s): the browser went with it", DISPLAY_DIED, exc)
            self._finish(FAILED, errors=[DISPLAY_DIED, f"{exc}; the browser went with it"])
            return
        except Exception as exc:
            errors = [f"{type(exc).__name__}: {exc}"]
            if self.browser_death:
                errors.insert(0, self.browser_death)
            if self.first_navigation_s is None and not self._agent_steps():
                LOG.error("the agent failed before the browser was usable; checking Chromium")
                errors.append(await chromium.diagnose())
            LOG.error("agent failed: %s", errors[0])
            self._finish(FAILED, errors=errors)
            return

        errors = [e for e in history.errors()[self._history_start :] if e]
        if len(history.history) > self._history_start and history.is_done():
            success = bool(history.is_successful())
            status = SUCCEEDED if success else FAILED
            if not success:
                errors.insert(0, "the agent finished but reported that the task did not succeed")
        else:
            success, status = False, FAILED
            errors.insert(0, self._why_unfinished())
        self._finish(status, success=success, final_text=history.final_result(), errors=errors)

    async def _unless_display_dies(self, run: Coroutine[Any, Any, Any]) -> Any:
        """Await the agent's run, unless the display dies first (DisplayError): Chromium
        dies with it, and browser-use would only find out through its retries."""
        task = asyncio.ensure_future(run)
        watch = asyncio.ensure_future(watch_display(self.s.display_number, self.s.xauthority))
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            watch.cancel()
            return task.result()
        if self.agent is not None:
            self.agent.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise DisplayError(watch.result())

    def _why_unfinished(self) -> str:
        agent = self.agent
        if self.browser_death:
            return self.browser_death
        if self.fatal_llm_error:
            return self.fatal_llm_error
        if agent is not None and agent.state.consecutive_failures >= MAX_FAILURES:
            last = next((e for e in reversed(agent.history.errors()) if e), "")
            # First two lines: pydantic puts the useful part ("Invalid JSON: ...") second.
            lines = [line.strip() for line in last.strip().splitlines() if line.strip()]
            last = ": ".join(lines[:2])[:300] if lines else "unknown error"
            failures = agent.state.consecutive_failures
            return f"stopped after {failures} consecutive failed steps; last error: {last}"
        if agent is not None and agent.state.n_steps > self.s.max_steps:
            return f"reached VNCSESS_MAX_STEPS={self.s.max_steps} without finishing"
        if agent is not None and agent.state.stopped:
            return "the agent was stopped (the browser may have closed)"
        return "the agent ended without finishing the task"

    def _agent_steps(self) -> int:
        if self.agent is None:
            return 0
        # Model steps only: the URL that browser-use opens from the task is recorded as step 0.
        return sum(
            1
            for h in self.agent.history.history[self._history_start :]
            if h.model_output is not None and h.metadata is not None and h.metadata.step_number >= 1
        )

    # -- up --script -------------------------------------------------------------------------

    async def _run_script(self, path: Path) -> None:
        """Run the user's script (`up --script`) in place of an Agent, as task 1.

        It runs with this process's environment, which holds no key: it reads them, like
        this runner, from the secret file (vncsess_agent.script does it for it). Its output
        goes to the logs line by line, keys redacted; its exit code and the last JSON line
        it printed on stdout become the result.
        """
        args = self.s.script_args
        self.outputs.start_task(1)
        self.task_no, self.task_t0 = 1, time.monotonic()
        workdir = self.s.data_dir / "script-output"
        with contextlib.suppress(OSError):
            workdir.mkdir(exist_ok=True)
        LOG.info("script: running %s with %d argument(s) in %s", path, len(args), workdir)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(path),
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir if workdir.is_dir() else None,
                limit=SCRIPT_LINE_LIMIT,
            )
        except OSError as exc:
            self._finish(FAILED, errors=[f"cannot run the script: {exc}"], steps=0, urls=[])
            return
        self.phase = "running"
        self.outputs.status(RUNNING)
        last: list[Any] = []  # the last JSON value on stdout, if any
        tail: list[str] = []  # the last lines on stderr, for the errors of a failure
        await asyncio.gather(
            self._pump(proc.stdout, sys.stdout, last=last),
            self._pump(proc.stderr, sys.stderr, tail=tail),
        )
        code = await proc.wait()
        self._finish_script(code, last[0] if last else None, tail)

    async def _pump(
        self,
        stream: asyncio.StreamReader | None,
        out: Any,
        last: list[Any] | None = None,
        tail: list[str] | None = None,
    ) -> None:
        if stream is None:
            return
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: take what there is of it
                raw = await stream.read(SCRIPT_LINE_LIMIT)
            if not raw:
                return
            line = self.redact(raw.decode("utf-8", errors="replace").rstrip("\n"))
            out.write(line + "\n")
            out.flush()
            if last is not None and line.strip():
                with contextlib.suppress(ValueError):
                    value = json.loads(line)
                    last[:] = [value]
            if tail is not None and line.strip():
                tail.append(line.strip())
                del tail[:-3]

    def _finish_script(self, code: int, output: Any, tail: list[str]) -> None:
        fields = output if isinstance(output, dict) else {}
        success = code == 0 and fields.get("success", True) is not False
        text = fields.get("final_text", fields.get("text")) if fields else output
        if text is not None and not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False)
        errors = [str(e) for e in fields.get("errors") or [] if e] if fields else []
        if code != 0:
            errors.insert(0, f"the script {chromium.describe_exit(code)}")
            errors[1:1] = tail[-1:]  # a traceback's last line says what went wrong
        elif not success:
            errors.insert(0, "the script reported that it did not succeed")
        urls = fields.get("urls")
        steps = fields.get("steps")
        self._finish(
            SUCCEEDED if success else FAILED,
            success=success,
            final_text=text,
            errors=errors,
            exit_code=code,
            output=output,
            steps=steps if isinstance(steps, int) else 0,
            urls=[str(u) for u in urls] if isinstance(urls, list) else [],
        )

    # -- callbacks from browser-use ----------------------------------------------------------

    def _on_step(self, state: Any, model_output: Any, step: int) -> None:
        url = getattr(state, "url", None)
        actions = describe_actions(model_output)
        LOG.info("step %d: %s | %s", step, actions, url or "-")
        if self.agent is not None:
            files.refresh(self.agent, self.s.uploads_dir)
        if self.s.idle_timeout > 0:
            activity.stamp(self.s.activity_dir, activity.AGENT)
        self.outputs.status(step=step, url=url)
        goal = getattr(model_output, "next_goal", None) or ""
        self.outputs.event(
            "agent.step",
            step=step,
            url=self.redact(url) if url else url,
            goal=self.redact(_short(goal, 500)),
            actions=self.redact(_short(actions, 500)),
        )

    async def _on_navigation(self, event: Any) -> None:
        url: str | None = getattr(event, "url", None)
        if not url or not _is_page_url(url) or getattr(event, "error_message", None):
            return
        if self.first_navigation_s is None:
            self.first_navigation_s = round(self._elapsed(), 3)
            LOG.info("first navigation %.2f s after start: %s", self.first_navigation_s, url)
        if url not in self.nav_urls:
            self.nav_urls.append(url)
        self.outputs.status(url=url)

    def _on_fatal_llm_error(self, message: str) -> None:
        message = self.redact(message)
        if self.fatal_llm_error is None:
            self.fatal_llm_error = message
            LOG.error("%s; stopping the agent", message)
        if self.agent is not None:
            self.agent.stop()

    def _on_browser_exit(self, why: str) -> None:
        """Chromium ended while the task ran (a crash, the OOM killer): say so, and how."""
        if self.phase != "running" or self._shutting_down:
            return
        if self.browser_death is None:
            self.browser_death = why
            LOG.error("%s; stopping the agent", why)
        if self.agent is not None:
            self.agent.stop()

    # -- signals -----------------------------------------------------------------------------

    def _on_pause(self) -> None:
        agent = self.agent
        if self.phase != "running" or agent is None or agent.state.paused:
            LOG.info("SIGUSR1 ignored: no running agent to pause")
            return
        with contextlib.redirect_stdout(io.StringIO()):  # agent.pause() prints a console hint
            agent.pause()
        self.outputs.status(PAUSED)
        self.outputs.event("agent.paused")
        LOG.info("paused (SIGUSR1): the agent stops before its next step or action")

    def _on_resume(self) -> None:
        agent = self.agent
        if self.phase != "running" or agent is None or not agent.state.paused:
            LOG.info("SIGUSR2 ignored: the agent is not paused")
            return
        with contextlib.redirect_stdout(io.StringIO()):
            agent.resume()
        self.outputs.status(RUNNING)
        self.outputs.event("agent.resumed")
        LOG.info("resumed (SIGUSR2)")

    def _on_stop(self, name: str, expired_by: str | None = None) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        self.stop_reason = name
        self.expired_by = expired_by
        # Hard deadline: whatever happens below, the process is gone in SHUTDOWN_DEADLINE_S.
        timer = threading.Timer(SHUTDOWN_DEADLINE_S, os._exit, args=(0,))
        timer.daemon = True
        timer.start()
        LOG.info("%s: stopping", name)
        if not self.outputs.has_result():
            if self.phase == "running":
                errors = [f"stopped by {name} before the task finished"]
                if self.fatal_llm_error:
                    errors.append(self.fatal_llm_error)
            else:
                errors = []
            self._finish(CANCELLED, errors=errors, state=DONE)
        chromium.terminate_tree(grace=1.2)
        LOG.info("stopped")
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        os._exit(0)

    # -- results -----------------------------------------------------------------------------

    def _urls(self) -> list[str]:
        urls = list(self.nav_urls)
        if self.agent is not None:
            for h in self.agent.history.history[self._history_start :]:
                url = getattr(getattr(h, "state", None), "url", None)
                if _is_page_url(url) and url not in urls:
                    urls.append(url)
        return urls

    def _finish(
        self,
        status: str,
        success: bool = False,
        final_text: str | None = None,
        errors: list[str] | None = None,
        state: str | None = None,
        exit_code: int | None = None,
        output: Any = None,
        steps: int | None = None,
        urls: list[str] | None = None,
    ) -> None:
        self.phase = "finished"
        clean_errors: list[str] = []
        for raw in errors or []:
            error = self.redact(str(raw)).strip()
            if len(error) > 2000:
                error = error[:2000] + "..."
            # Skip repeats, and errors already quoted inside an earlier, more descriptive one.
            if error and not any(error in earlier for earlier in clean_errors):
                clean_errors.append(error)
        result = Result(
            status=status,
            success=bool(success) and status == SUCCEEDED,
            final_text=self.redact(final_text) if final_text is not None else None,
            steps=self._agent_steps() if steps is None else steps,
            urls=self._urls() if urls is None else urls,
            errors=clean_errors,
            llm=self.s.llm,
            started_at=self.started_at if self.task_no <= 1 else self._task_started_at,
            finished_at=utc_now(),
            duration_s=round(time.monotonic() - self.task_t0, 3),
            first_navigation_s=self.first_navigation_s,
            expired_by=self.expired_by if status == CANCELLED else None,
            task=self.task_no or None,
            exit_code=exit_code,
            output=output,
        ).to_dict()
        if self.outputs.write_result(result):
            LOG.info(
                "result: %s (steps=%d, %.1f s)%s",
                status,
                result["steps"],
                result["duration_s"],
                f": {_short(result['final_text'], 200)}" if result["final_text"] else "",
            )
            for error in clean_errors[:3]:
                LOG.info("  error: %s", _short(error, 300))
            self.outputs.event("agent.finished", result=result)
        if state is None:
            state = DONE if status == SUCCEEDED else FAILED
        self.outputs.status(state)


def _prepare_dirs(s: settings_mod.Settings) -> None:
    for var, mode in (("HOME", 0o700), ("TMPDIR", 0o700), ("XDG_RUNTIME_DIR", 0o700)):
        path = os.environ.get(var)
        if path and path != "/tmp":
            try:
                os.makedirs(path, mode=mode, exist_ok=True)
            except OSError as exc:
                LOG.warning("cannot create %s=%s: %s", var, path, exc)
    for out in (s.data_dir, s.downloads_dir):
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            LOG.error("cannot create %s: %s (results will not be saved)", out, exc)
    home = os.environ.get("HOME")
    if home and home != "/tmp":
        files.show_in_file_dialog(
            Path(home), {"Uploads": s.uploads_dir, "Downloads": s.downloads_dir}
        )


def main() -> int:
    t0 = time.monotonic()
    started_at = utc_now()
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("VNCSESS_CHROMIUM_LOG", str(chromium.CHROMIUM_LOG))

    s = settings_mod.load()
    redact = logs.Redactor(s.secret_values)
    level = logging.DEBUG if os.environ.get("VNCSESS_DEBUG") == "1" else logging.INFO
    logs.setup(redact, level)
    _prepare_dirs(s)
    LOG.info(
        "vncsess agent runner: session=%s llm=%s resolution=%dx%d max_steps=%d",
        s.session_id or "-",
        s.llm,
        s.width,
        s.height,
        s.max_steps,
    )
    if s.script_file is not None:
        LOG.info("script: %s (the task runner is not used)", s.script_file)
    elif s.task.strip():
        LOG.info("task (%s): %s", s.task_source, s.task_digest)
    else:
        LOG.info(
            "task: none (%s)", "task file empty" if s.task_source == "file" else "no task file"
        )
    if s.llm_env_names:
        LOG.info("llm env: loaded %s", ", ".join(s.llm_env_names))
    for warning in s.warnings:
        LOG.warning("%s", warning)

    runner = Runner(s, redact, t0, started_at)
    return asyncio.run(runner.run())
