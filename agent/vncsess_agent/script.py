"""Helpers for your own agent script (`vncsess up --script my_agent.py`).

The script runs in the agent container, on the session's display, with the packages of the
image (browser-use and its dependencies; more in an image built `FROM vncsess-agent`, see
examples/Dockerfile). This module hands it what the built-in runner uses, set up the same way:

    import asyncio
    from vncsess_agent import script

    async def main() -> None:
        agent = script.agent("Open https://example.com and report its title")
        history = await agent.run(max_steps=10)
        script.result(success=history.is_successful(), final_text=history.final_result())

    asyncio.run(main())

- `browser_session()`: a browser-use BrowserSession for the session's display: Debian's
  Chromium, the window size of the display, downloads into the session's downloads dir (what
  `vncsess` keeps), the flags Chromium needs in a container (no sandbox, no GPU, small
  /dev/shm), `--no-internet` confinement when the session has it.
- `llm()`: the session's chat model (`--llm`, `--base-url`), with its key read from the
  session's secret file; the key is never put into the environment (which Chromium inherits).
  `demo` is the offline demo model, which does only the demo task.
- `agent(task, **kwargs)`: a browser-use Agent with both; kwargs go to Agent.
- `args()`: the script's arguments (`--script-arg`); also sys.argv[1:].
- `result(...)`: print the script's result as one JSON line on stdout. vncsess takes the last
  JSON line the script prints (and its exit code) as the session's result: `final_text`,
  `success` (false makes the result failed), `urls`, `steps` and `errors` fill the same fields
  as an agent's result; the whole value is kept as `output`.

Anything the script prints goes to `vncsess logs ID --service agent`. Its working directory is
kept with the session (`<data dir>/agent/script-output`).
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

from vncsess_agent import chromium
from vncsess_agent import settings as settings_mod

__all__ = ["agent", "args", "browser_session", "llm", "result", "settings"]


@functools.cache
def settings() -> settings_mod.Settings:
    """The session's settings (display, window size, model, data dir), read once."""
    return settings_mod.load()


def args() -> list[str]:
    return sys.argv[1:]


def browser_session(**profile: Any) -> Any:
    """A BrowserSession on the session's display; `profile` overrides BrowserProfile fields
    (for instance `keep_alive=False`, to close the window when the script ends)."""
    from browser_use import BrowserSession

    s = settings()
    base = chromium.browser_profile(s.width, s.height, str(s.downloads_dir))
    if profile:
        base = base.model_copy(update=profile)
    return BrowserSession(browser_profile=base)


def llm() -> Any:
    """The session's chat model. Raises LLMConfigError (with words) when it is not usable."""
    from vncsess_agent.llm import make_llm

    s = settings()
    return make_llm(s.llm, s.llm_base_url, s.llm_env, s.demo_step_delay)


def agent(task: str, **kwargs: Any) -> Any:
    """A browser-use Agent with the session's model and browser. `demo` is the demo task."""
    from browser_use import Agent

    s = settings()
    if task.strip() == "demo":
        task = settings_mod.DEMO_TASK
    options: dict[str, Any] = {
        "use_judge": False,
        "calculate_cost": False,
        "generate_gif": False,
        "use_vision": s.llm != "demo",  # the demo model reads the DOM, not screenshots
    }
    options.update(kwargs)
    if "llm" not in options:
        options["llm"] = llm()
    if "browser_session" not in options:
        options["browser_session"] = browser_session()
    return Agent(task=task, **options)


def result(final_text: str | None = None, success: bool = True, **fields: Any) -> dict[str, Any]:
    """Print the result as one JSON line on stdout (and return it)."""
    value = {"final_text": final_text, "success": bool(success), **fields}
    print(json.dumps(value, ensure_ascii=False, default=str), flush=True)
    return value
