"""The warm pool: idle sessions started ahead of time, which `up` claims (sessions._claim).

`fill` starts pool sessions through the very path `up` starts a session by
(sessions.start_pool_session -> sessions._start), until N are live; `drain` removes those not
claimed; `Keeper` keeps the pool topped up from inside `serve`. A claimed session leaves the
pool for good: it is never put back, and `fill` starts another in its place.

Pool sessions are counted and claimed per owner (VNCSESS_OWNER, or none) and per
VNCSESS_HOME, so a test run or a CI job fills and drains its own pool only.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

from vncsess import sessions
from vncsess.config import Settings, parse_resolution
from vncsess.engines.base import Progress
from vncsess.errors import BadInput, VncsessError
from vncsess.models import Batch, Session

MAX_POOL = 64
# Pool sessions started side by side by one `fill`: more only queue on 2 cores.
FILL_WORKERS = 4
KEEPER_INTERVAL_S = 5.0


def _quiet(_: str) -> None:
    pass


def _mine(settings: Settings, s: Session) -> bool:
    return s.owner == settings.owner and Path(s.data_dir).parent == settings.sessions_dir


def list_pool(settings: Settings) -> list[Session]:
    """This owner's pool sessions that nobody claimed yet (starting, idle, or ended on
    their own), oldest first."""
    found = [s for s in sessions.list_sessions(settings) if s.in_pool and _mine(settings, s)]
    return sorted(found, key=lambda s: s.created_at)


def _fill_lock(settings: Settings) -> AbstractContextManager[None]:
    """One fill at a time per cache dir (`serve --pool` and a `pool fill` at once would
    each start the missing ones)."""
    return sessions.cache_lock(settings, "pool.lock")


def check_size(n: int) -> int:
    if not 0 <= n <= MAX_POOL:
        raise BadInput(f"a pool of {n} sessions is out of range", hint=f"use 0-{MAX_POOL}")
    return n


def fill(
    settings: Settings, n: int, resolution: str = "", progress: Progress = _quiet
) -> list[Session]:
    """Start pool sessions until N are live (started or starting, not claimed); the live
    pool sessions afterwards. Sessions of the pool that ended on their own are removed."""
    check_size(n)
    if settings.engine != "docker":
        raise BadInput(
            f"the warm pool runs on the docker engine only (this is {settings.engine})",
            hint="leave out VNCSESS_ENGINE / --engine, or start sessions with `up`",
        )
    w, h = parse_resolution(resolution or settings.resolution)
    with _fill_lock(settings):
        pool = list_pool(settings)
        # Ended, broken, or never marked free (its `fill` was killed before it was ready).
        stale = settings.ready_timeout + 30
        dead = [
            s.id
            for s in pool
            if s.status not in ("running", "starting")
            or (s.pool == "starting" and s.age_seconds > stale)
        ]
        if dead:
            progress(f"removing {len(dead)} pool session(s) that ended")
            sessions.stop(settings, dead)
        live = [s for s in pool if s.id not in dead]
        need = n - len(live)
        if need > 0:
            progress(f"starting {need} pool session(s)")
            errors: list[VncsessError] = []

            def one(_: int) -> None:
                try:
                    sessions.start_pool_session(settings, f"{w}x{h}", progress)
                except VncsessError as exc:
                    errors.append(exc)

            with ThreadPoolExecutor(max_workers=min(need, FILL_WORKERS)) as workers:
                list(workers.map(one, range(need)))
            if errors:
                raise errors[0]
        return [s for s in list_pool(settings) if s.status in ("running", "starting")]


def drain(settings: Settings, progress: Progress = _quiet) -> Batch:
    """Remove every pool session nobody claimed (claimed ones are their claimers')."""
    ids = [s.id for s in list_pool(settings)]
    if not ids:
        return Batch(done=[])
    return sessions.stop(settings, ids, progress=progress)


class Keeper:
    """`serve --pool N`: a thread that tops the pool up to N every few seconds (a claim
    takes one out; a failed start is tried again next time). It never blocks a request:
    claims go through `up` as ever, from whatever the pool holds at that moment. stop()
    ends it (serve's shutdown); the pool stays, for the next serve or `pool drain`."""

    def __init__(
        self,
        settings: Settings,
        size: int,
        report: Progress = _quiet,
        interval: float = KEEPER_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self.size = check_size(size)
        self.report = report
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pool-keeper", daemon=True)
        self.last_error = ""

    def start(self) -> Keeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the thread, after the sessions a fill is starting are up (or discarded)."""
        self._stop.set()
        self._thread.join(self.settings.ready_timeout + 15)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fill(self.settings, self.size)
                self.last_error = ""
            except VncsessError as exc:
                if exc.message != self.last_error:  # once, not every few seconds
                    self.report(f"pool: {exc.message}")
                self.last_error = exc.message
            except Exception as exc:  # the thread must outlive a bug in one round
                self.report(f"pool: unexpected {type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)
