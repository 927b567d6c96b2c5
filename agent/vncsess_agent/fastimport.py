"""Keep the anthropic SDK out of runs that do not use it: it costs 1.4-2.4 s of start-up.

browser-use 0.13.14's Agent.__init__ does `from browser_use.llm.anthropic.chat import
ChatAnthropic` only to test `isinstance(llm, ChatAnthropic)`, and that module imports the whole
anthropic SDK. For any other provider the runner registers a stand-in module whose class no
model is an instance of, so the check is still answered correctly, just without the import.
This roughly halves the time from container start to the first navigation.
"""

from __future__ import annotations

import sys
import types

ANTHROPIC_CHAT = "browser_use.llm.anthropic.chat"


class _NotAnthropic:
    """Stands in for ChatAnthropic in isinstance() checks; never instantiated."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("ChatAnthropic was stubbed out by vncsess_agent.fastimport")


def skip_anthropic_import() -> None:
    if ANTHROPIC_CHAT in sys.modules:
        return
    module = types.ModuleType(ANTHROPIC_CHAT, "vncsess stand-in: anthropic is not used in this run")
    module.ChatAnthropic = _NotAnthropic  # type: ignore[attr-defined]
    sys.modules[ANTHROPIC_CHAT] = module
