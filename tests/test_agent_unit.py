"""The agent runner's parts that need no container: how it learns that its Chromium died.

browser-use launches Chromium with asyncio.create_subprocess_exec; the runner's child watcher
(chromium._ExitWatcher) reports how the browser process ended. These tests start real child
processes through asyncio and kill them.
"""

from __future__ import annotations

import asyncio
import signal
import warnings
from collections.abc import Iterator

import psutil
import pytest
from vncsess_agent import chromium

# A stand-in browser: any process whose argv carries a CDP port counts as the browser.
BROWSER_ARGV = ["sh", "-c", "exec sleep 30", "sh", "--remote-debugging-port=0"]
OTHER_ARGV = ["sh", "-c", "exec sleep 30"]


@pytest.fixture(autouse=True)
def _restore_child_watcher() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)  # a fresh policy: the process's default watcher


def _kill_child(argv: list[str]) -> list[int]:
    """Start argv through asyncio under the runner's watcher, SIGKILL it; what was reported."""
    reported: list[int] = []

    async def main() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(chromium._ExitWatcher(reported.append))
        proc = await asyncio.create_subprocess_exec(*argv)
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL

    asyncio.run(main())
    return reported


def test_the_browser_killed_is_reported_with_its_signal() -> None:
    assert _kill_child(BROWSER_ARGV) == [-signal.SIGKILL]
    assert chromium.describe_exit(-signal.SIGKILL) == "killed by signal SIGKILL"


def test_other_children_are_not_taken_for_the_browser() -> None:
    assert _kill_child(OTHER_ARGV) == []


def test_the_browser_is_known_even_when_proc_is_read_mid_exec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chromium's launch goes through two execs; /proc/PID/cmdline is empty in the middle of
    one. A watcher that decided from /proc missed the browser's death (seen in CI)."""

    class MidExec:
        def __init__(self, pid: int) -> None:
            pass

        def cmdline(self) -> list[str]:
            return []

    monkeypatch.setattr(psutil, "Process", MidExec)
    assert _kill_child(BROWSER_ARGV) == [-signal.SIGKILL]
