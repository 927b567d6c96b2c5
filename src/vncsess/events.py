"""The event source: one numbered stream of what happens to sessions (`serve` streams it as SSE).

Two inputs, neither of them state of our own:
- the engine's own events for session containers (Engine.watch: Docker's event stream):
  `session.created` (the display's container is created), `session.stopped` (removed),
  `session.expired` / `session.failed` (a container ended by itself: at its --ttl, or not).
- each session's data dir: `ready.json`, written by `up` when the display first answered
  (`session.ready`); the runner's append-only `agent/events.jsonl` (`agent.step`,
  `agent.paused`, `agent.resumed`, `agent.finished`); and `recordings/`, where a
  `*.partial.mp4` appears when ffmpeg starts (`recording.started`) and the seekable `*.mp4`
  when it is done (`recording.ready`).

Numbering. Each event gets an id that is strictly greater than the one before: its time in
microseconds since the epoch, or the previous id + 1 if that is not greater. Within one `serve`
process a reconnect with `Last-Event-ID` is exact (a bounded buffer keeps the latest events).
When `serve` starts, it reads back what the sources still hold (Docker remembers recent
events, the data dirs remember everything) and numbers those events by their own times. Those
ids are at most the ids the previous process gave the same events (it numbered them when they
arrived, never earlier), so a client reconnecting across a restart gets what it missed and
nothing twice; the one exception is an event that reached the old process more than a
poll interval after it happened, and only if the client left within that interval.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vncsess.config import Settings
from vncsess.datadir import DataDir
from vncsess.engines.base import Happening
from vncsess.errors import VncsessError

LOG = logging.getLogger("vncsess.events")

SESSION_EVENTS = (
    "session.created",
    "session.ready",
    "session.claimed",
    "session.stopped",
    "session.expired",
    "session.failed",
)
AGENT_EVENTS = ("agent.step", "agent.paused", "agent.resumed", "agent.finished")
RECORDING_EVENTS = ("recording.started", "recording.ready")
EVENT_TYPES = SESSION_EVENTS + AGENT_EVENTS + RECORDING_EVENTS
# Said at most once per session, whatever the sources repeat (a Docker replay, a restart).
_ONCE = frozenset(SESSION_EVENTS)

POLL_S = 0.2  # data dirs are looked at this often: an agent step is out well within 1 s
REPLAY_S = 3600.0  # how far back `serve` asks Docker at start (Docker keeps only the latest)
KEEP_WATCHING_S = 60.0  # after a session is removed, `stop` may still finalise recordings
MAX_READ = 1024 * 1024  # of one events.jsonl per poll: a runaway agent cannot flood serve
_PARTIAL, _FINALIZING = ".partial.mp4", ".finalizing.mp4"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: Any, default: float) -> float:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    session_id: str
    time: float  # when it happened (Unix seconds), as its source says
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "session_id": self.session_id,
            "time": iso(self.time),
            **self.data,
        }


class EventLog:
    """The numbered stream: bounded, thread-safe, and awaitable by any number of readers."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._last = 0
        self._listeners: list[Callable[[], None]] = []

    @property
    def last_id(self) -> int:
        return self._last

    def publish(
        self, kind: str, session_id: str, data: dict[str, Any], at: float, id_floor: float
    ) -> Event:
        """Add an event that happened at `at`. Its id is at least `id_floor` in microseconds:
        the arrival time for a live event, its own time for one read back at start."""
        with self._lock:
            self._last = max(self._last + 1, int(id_floor * 1_000_000))
            event = Event(self._last, kind, session_id, at, data)
            self._events.append(event)
            listeners = list(self._listeners)
        for wake in listeners:
            wake()
        return event

    def after(self, last_id: int, session_id: str | None = None) -> list[Event]:
        """Events with an id above `last_id` (all that are kept), oldest first."""
        with self._lock:
            newer: list[Event] = []
            for event in reversed(self._events):
                if event.id <= last_id:
                    break
                newer.append(event)
        newer.reverse()
        return [e for e in newer if session_id is None or e.session_id == session_id]

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` (from any thread) after each publish; returns the unsubscribe."""
        with self._lock:
            self._listeners.append(wake)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(wake)

        return unsubscribe

    async def follow(self, last_id: int, session_id: str | None = None) -> AsyncIterator[Event]:
        """Every event after `last_id`, then each new one as it is published, forever."""
        import asyncio

        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: serve is going away
                loop.call_soon_threadsafe(woken.set)

        unsubscribe = self.subscribe(wake)
        try:
            while True:
                woken.clear()
                for event in self.after(last_id, session_id):
                    last_id = event.id
                    yield event
                await woken.wait()
        finally:
            unsubscribe()


# ---------------------------------------------------------------- Docker's events


@dataclass(frozen=True)
class Fact:
    """Something a source saw, before it is numbered."""

    type: str
    session_id: str
    at: float
    data: dict[str, Any] = field(default_factory=dict)


class Lifecycle:
    """Turns what the engine saw happen to containers into session events. Pure (no I/O):
    fed in order.

    A container that exits after the engine was asked to end it (`stop`, `docker stop`) is
    being removed; one that exits without that ended by itself: at its expiry (--ttl), or
    because something broke."""

    def __init__(self) -> None:
        self._stopping: set[tuple[str, str]] = set()  # (session, service) asked to end

    def feed(self, h: Happening) -> list[Fact]:
        key = (h.session_id, h.service)
        if h.kind == "created" and h.service == "vnc":
            return [Fact("session.created", h.session_id, h.at, _meta(h.meta))]
        if h.kind == "stopping":
            self._stopping.add(key)
        elif h.kind == "exited" and key not in self._stopping:
            expires = parse_time(h.meta.get("expires"), 0.0)
            if expires and h.at >= expires - 5:
                data = {"service": h.service, "expired_by": "ttl"}
                return [Fact("session.expired", h.session_id, h.at, data)]
            if h.meta.get("idle-timeout") and h.exit_code == 0:
                # Both containers end themselves with 0 at the idle timeout (a failure of
                # either is non-zero; a container killed is 137).
                data = {"service": h.service, "expired_by": "idle"}
                return [Fact("session.expired", h.session_id, h.at, data)]
            failed = {"service": h.service, "exit_code": h.exit_code}
            return [Fact("session.failed", h.session_id, h.at, failed)]
        elif h.kind == "removed":
            self._stopping.discard(key)
            return [Fact("session.stopped", h.session_id, h.at)]
        return []


def _meta(meta: dict[str, str]) -> dict[str, Any]:
    return {
        "name": meta.get("name", ""),
        "resolution": meta.get("resolution", ""),
        "llm": meta.get("llm", ""),
        "expires_at": meta.get("expires") or None,
        # An unclaimed warm-pool session: a face that shows people's sessions leaves it out.
        "pool": meta.get("pool") == "1",
    }


# ---------------------------------------------------------------- data dirs


@dataclass
class _Watched:
    """What has been read of one session's data dir."""

    data: DataDir
    offset: int = 0  # into agent/events.jsonl
    recordings: set[str] = field(default_factory=set)  # file names seen
    removed_at: float | None = None


def _stamp_time(name: str, default: float) -> float:
    """`ID-20260101-120000[-2].mp4` -> the time in its name (when the recording began)."""
    parts = name.split(".", maxsplit=1)[0].split("-")
    try:
        return (
            datetime.strptime("-".join(parts[1:3]), "%Y%m%d-%H%M%S").replace(tzinfo=UTC).timestamp()
        )
    except ValueError:
        return default


def scan(sid: str, w: _Watched, now: float, live: bool) -> list[Fact]:
    """What is new in a session's data dir since the last scan. `live`: things first seen now
    happened now; otherwise (read back at start) they happened when their files say."""
    facts: list[Fact] = []
    facts += _scan_agent(sid, w, now)
    rec = w.data.recordings
    try:
        names = {n for n in os.listdir(rec) if n.endswith(".mp4") and not n.endswith(_FINALIZING)}
    except OSError:
        names = set()
    for name in sorted(names - w.recordings):
        stem = name.removesuffix(_PARTIAL).removesuffix(".mp4")
        final, started = stem + ".mp4", stem + _PARTIAL
        if name.endswith(_PARTIAL) or started not in w.recordings:
            at = now if live else _stamp_time(name, now)
            facts.append(Fact("recording.started", sid, at, {"name": final}))
        if not name.endswith(_PARTIAL):
            facts.append(_ready(sid, rec / name, now if live else None))
    w.recordings |= names
    return facts


def _ready(sid: str, path: Path, at: float | None) -> Fact:
    from vncsess.recordings import mp4_duration

    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime
    except OSError:
        size, mtime = 0, time.time()
    data = {"name": path.name, "size_bytes": size, "duration_s": mp4_duration(path)}
    return Fact("recording.ready", sid, mtime if at is None else at, data)


def _scan_agent(sid: str, w: _Watched, now: float) -> list[Fact]:
    facts: list[Fact] = []
    try:
        with open(w.data.events_file, "rb") as fh:
            fh.seek(w.offset)
            chunk = fh.read(MAX_READ)
    except OSError:
        return facts
    end = chunk.rfind(b"\n")
    if end < 0:
        if len(chunk) >= MAX_READ:  # one line longer than we read at once: skip it
            w.offset += len(chunk)
        return facts
    w.offset += end + 1
    for raw in chunk[: end + 1].splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(line, dict) or line.get("type") not in AGENT_EVENTS:
            continue
        data = {k: v for k, v in line.items() if k not in ("type", "at", "seq", "session_id")}
        facts.append(Fact(str(line["type"]), sid, parse_time(line.get("at"), now), data))
    return facts


def _data_facts(sid: str, data: DataDir, now: float, said: set[tuple[str, str]]) -> list[Fact]:
    """The session events a data dir holds that were not said yet: `session.ready`
    (ready.json, written by `up`) and `session.claimed` (claim.json, written by a claim of
    a warm-pool session, announced as nobody's at its start: its new owner's facts)."""
    found = []
    for kind, path, at_key, facts_of in (
        ("session.ready", data.ready_file, "at", _ready_data),
        ("session.claimed", data.claim_file, "claimed_at", _claimed_data),
    ):
        written = None if (sid, kind) in said else data.read_json(path)
        if written is not None:
            found.append(Fact(kind, sid, parse_time(written.get(at_key), now), facts_of(written)))
    return found


def _ready_data(ready: dict[str, Any]) -> dict[str, Any]:
    return {"novnc_port": ready.get("novnc_port")}


def _claimed_data(claim: dict[str, Any]) -> dict[str, Any]:
    return _meta({k: v for k, v in claim.items() if isinstance(v, str)})


# ---------------------------------------------------------------- the source


class EventSource:
    """Feeds an EventLog from Docker and the data dirs, in two threads, until close()."""

    def __init__(self, settings: Settings, log: EventLog, poll: float = POLL_S) -> None:
        self.settings = settings
        self.log = log
        self.poll = poll
        self._lifecycle = Lifecycle()
        self._watched: dict[str, _Watched] = {}
        self._said: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._stream: Any = None
        self._seen = 0.0
        self._threads: list[threading.Thread] = []

    # -- start and stop --------------------------------------------------------------------

    def start(self) -> None:
        since = self._read_back()
        for target in (self._follow_engine, self._follow_files):
            t = threading.Thread(target=target, args=(since,), daemon=True, name=target.__name__)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._closing.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        for t in self._threads:
            t.join(timeout=5)

    def _read_back(self) -> float:
        """What the sources still hold, numbered by when it happened. Returns the time from
        which the live stream of the engine continues."""
        from vncsess import engines, sessions

        until = time.time()
        facts: list[Fact] = []
        try:
            for happening in engines.load(self.settings).watch(until - REPLAY_S, until):
                facts += self._happened(happening)
            for s in sessions.list_sessions(self.settings):
                self._watch(s.id, s.data_dir)
                meta = {"name": s.name, "resolution": s.resolution, "llm": s.llm}
                meta["expires"] = s.expires_at.isoformat() if s.expires_at else ""
                meta["pool"] = "1" if s.in_pool else ""
                facts.append(Fact("session.created", s.id, s.created_at.timestamp(), _meta(meta)))
        except VncsessError as exc:
            LOG.warning("cannot read back the engine's events: %s", exc.message)
        for sid, w in self._watching():
            facts += _data_facts(sid, w.data, until, set())
            facts += scan(sid, w, until, live=False)
        for fact in sorted(facts, key=lambda f: f.at):
            self._publish(fact, id_floor=fact.at)
        return until

    # -- the engine ------------------------------------------------------------------------

    def _follow_engine(self, since: float) -> None:
        from vncsess import engines

        delay = 1.0
        while not self._closing.is_set():
            began = time.monotonic()
            try:
                self._stream = engines.load(self.settings).watch(self._seen or since)
                if self._closing.is_set():
                    self._stream.close()
                for happening in self._stream:
                    for fact in self._happened(happening):
                        self._publish(fact, id_floor=time.time())
            except VncsessError as exc:
                LOG.warning("the engine's event stream ended: %s; trying again", exc.message)
            except Exception:  # a bug must not silence the stream for good
                LOG.exception("reading the engine's events failed; trying again")
            # Docker down: try again ever more slowly (up to 30 s), without filling the log.
            delay = 1.0 if time.monotonic() - began > 60 else min(delay * 2, 30.0)
            self._closing.wait(delay)

    def _happened(self, h: Happening) -> list[Fact]:
        # A reconnect (Docker restarted) asks again from here; what comes twice is said
        # once (see _publish).
        self._seen = max(self._seen, h.at)
        if h.meta.get("data-dir"):
            self._watch(h.session_id, Path(h.meta["data-dir"]))
        facts = self._lifecycle.feed(h)
        if any(f.type == "session.stopped" for f in facts):
            with self._lock:
                if h.session_id in self._watched:
                    self._watched[h.session_id].removed_at = time.time()
        return facts

    # -- data dirs -------------------------------------------------------------------------

    def _watch(self, sid: str, path: Path) -> None:
        with self._lock:
            self._watched.setdefault(sid, _Watched(DataDir(path)))

    def _watching(self) -> list[tuple[str, _Watched]]:
        with self._lock:
            return list(self._watched.items())

    def _follow_files(self, _since: float) -> None:
        while not self._closing.wait(self.poll):
            now = time.time()
            for sid, w in self._watching():
                try:
                    # A membership test (no lock): _publish says each of these once anyway.
                    facts = _data_facts(sid, w.data, now, self._said)
                    facts += scan(sid, w, now, live=True)
                except Exception:  # one odd data dir must not stop the others
                    LOG.exception("reading the data dir of %s failed", sid)
                    continue
                for fact in facts:
                    self._publish(fact, id_floor=now)
                if w.removed_at is not None and now - w.removed_at > KEEP_WATCHING_S:
                    with self._lock:
                        self._watched.pop(sid, None)

    # -- numbering -------------------------------------------------------------------------

    def _publish(self, fact: Fact, id_floor: float) -> None:
        with self._lock:
            if fact.type in _ONCE:
                # A session ends once: expired or failed, whichever its first container said.
                kind = "ended" if fact.type in ("session.expired", "session.failed") else fact.type
                if (fact.session_id, kind) in self._said:
                    return
                self._said.add((fact.session_id, kind))
            # Under the lock: two sources publishing at once keep their ids in time order.
            self.log.publish(fact.type, fact.session_id, fact.data, fact.at, id_floor)
