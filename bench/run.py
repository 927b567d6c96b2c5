"""Benchmarks that print figures (not pass/fail). Run with `make bench`; results go in
docs/benchmarks.md. Every figure is a median over several runs on the real engine. Every
session a run starts is stopped at its end, also after a failure or Ctrl-C. The fleet's
figures (many sessions at once, idle CPU, image sizes) are bench/fleet.py's.

    python bench/run.py [--runs N] [--only first-frame,memory,ls,agent,recorder,api,api-events]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vncsess.recordings import mp4_duration
from vncsess.rfb import RfbClient

ENV = dict(os.environ)


def vncsess(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vncsess", *args],
        capture_output=True, text=True, env=ENV, check=check,
    )  # fmt: skip


def up(*args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vncsess("up", "--json", *args).stdout)
    return data


def stop(*ids: str) -> None:
    if ids:
        vncsess("stop", *ids)


def secret(url: str) -> str:
    return url.split("password=", 1)[1].split("&", 1)[0]


def mem_mib(container: str) -> float:
    out = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
        capture_output=True, text=True, check=True,
    ).stdout.split("/")[0].strip()  # fmt: skip
    units = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "B": 1 / 1024 / 1024}
    for unit, factor in units.items():
        if out.endswith(unit):
            return float(out[: -len(unit)]) * factor
    return float("nan")


def first_frame(runs: int) -> list[str]:
    times, ups = [], []
    for _ in range(runs):
        t0 = time.monotonic()
        s = up()
        ups.append(time.monotonic() - t0)
        with RfbClient("127.0.0.1", s["novnc_port"]) as c:
            c.login(secret(s["novnc_url"]))
            c.frame()
        times.append(time.monotonic() - t0)
        stop(s["session_id"])
    return [
        f"| `vncsess up` returns (URL printed) | {statistics.median(ups):.2f} s | {runs} |",
        f"| `vncsess up` to first noVNC framebuffer | {statistics.median(times):.2f} s | {runs} |",
    ]


def memory(runs: int) -> list[str]:
    s = up()
    time.sleep(5)  # settle: the figure is for an idle session
    vnc = [mem_mib(f"vncsess-{s['session_id']}-vnc-1") for _ in range(runs)]
    agent = [mem_mib(f"vncsess-{s['session_id']}-agent-1") for _ in range(runs)]
    stop(s["session_id"])
    return [
        f"| idle vnc container memory | {statistics.median(vnc):.0f} MiB | {runs} |",
        f"| idle agent container (Chromium open) | {statistics.median(agent):.0f} MiB | {runs} |",
    ]


def ls_time(runs: int, sessions: int = 20) -> list[str]:
    ids = []
    try:
        for _ in range(sessions):
            ids.append(up()["session_id"])
        times = []
        for _ in range(runs):
            t0 = time.monotonic()
            out = vncsess("ls", "--json").stdout
            times.append(time.monotonic() - t0)
            assert len(json.loads(out)) >= sessions
    finally:
        stop(*ids)
    return [
        f"| `vncsess ls` with {sessions} sessions | {statistics.median(times):.2f} s | {runs} |"
    ]


def agent(runs: int) -> list[str]:
    navs, mems = [], []
    for _ in range(runs):
        t0 = time.monotonic()
        s = up("--task", "demo")
        status = Path(s["data_dir"]) / "agent" / "status.json"
        nav = None
        while time.monotonic() - t0 < 60:
            try:
                if json.loads(status.read_text()).get("url"):
                    nav = time.monotonic() - t0
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        mems.append(mem_mib(f"vncsess-{s['session_id']}-agent-1"))
        vncsess("wait", s["session_id"], "--timeout", "120", check=False)
        stop(s["session_id"])
        if nav is not None:
            navs.append(nav)
    return [
        f"| `vncsess up --task` to the agent's first navigation | "
        f"{statistics.median(navs):.2f} s | {len(navs)} |",
        f"| agent container while the agent runs | {statistics.median(mems):.0f} MiB | {runs} |",
    ]


def cpu_ticks(container: str, pid: str) -> int:
    """utime + stime of a process in a container, in clock ticks."""
    stat = subprocess.run(
        ["docker", "exec", container, "cat", f"/proc/{pid}/stat"],
        capture_output=True, text=True, check=True,
    ).stdout.rsplit(")", 1)[1].split()  # fmt: skip
    return int(stat[11]) + int(stat[12])


def recorder(runs: int, seconds: int = 30) -> list[str]:
    shares, rates = [], []
    for _ in range(runs):
        # An idle desktop with Chromium open: mostly still, as a paused or thinking agent is.
        s = up("--resolution", "1280x720")
        try:
            vnc = f"vncsess-{s['session_id']}-vnc-1"
            vncsess("record", "start", s["session_id"])
            time.sleep(2)
            pid = subprocess.run(
                ["docker", "exec", vnc, "pgrep", "-o", "ffmpeg"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            c0, t0 = cpu_ticks(vnc, pid), time.monotonic()
            time.sleep(seconds)
            c1, t1 = cpu_ticks(vnc, pid), time.monotonic()
            shares.append((c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0))
            path = Path(vncsess("record", "stop", s["session_id"]).stdout.strip())
            duration = mp4_duration(path) or float("nan")
            rates.append(path.stat().st_size / duration * 60)
        finally:
            stop(s["session_id"])
    return [
        f"| recorder CPU at 1280x720, 15 fps | {statistics.median(shares) * 100:.0f} % of one core"
        f" | {runs} |",
        f"| recording size at 1280x720, 15 fps | {statistics.median(rates) / 1e6:.1f} MB/min"
        f" | {runs} |",
    ]


class Serve:
    """A `vncsess serve` on a free port, for the API's figures."""

    TOKEN = "bench-token-0123456789abcdef"

    def __enter__(self) -> Serve:
        import re

        import httpx

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vncsess", "serve", "--port", "0", "--no-access-log"],
            env={**ENV, "VNCSESS_API_TOKEN": self.TOKEN},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            m = re.search(r"API at (http://[\d.:]+)/v1", line)
            if m:
                self.base = m.group(1)
                break
        self.http = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.TOKEN}"}, timeout=300
        )
        while True:
            try:
                self.http.get("/healthz")
                return self
            except httpx.HTTPError:
                time.sleep(0.1)

    def __exit__(self, *_: object) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def api_create(runs: int) -> list[str]:
    """POST /v1/sessions to its response and to the first frame, beside `vncsess up` (the
    CLI, a process each) measured in the same run, alternating."""
    api_resp, api_frame, cli_resp = [], [], []
    with Serve() as srv:
        for _ in range(runs):
            t0 = time.monotonic()
            up_ = up()
            cli_resp.append(time.monotonic() - t0)
            stop(up_["session_id"])
            t0 = time.monotonic()
            r = srv.http.post("/v1/sessions", json={})
            api_resp.append(time.monotonic() - t0)
            s = r.json()
            with RfbClient("127.0.0.1", s["novnc_port"]) as c:
                c.login(secret(s["novnc_url"]))
                c.frame()
            api_frame.append(time.monotonic() - t0)
            srv.http.delete(f"/v1/sessions/{s['session_id']}")
    ratio = statistics.median(api_resp) / statistics.median(cli_resp)
    return [
        f"| `POST /v1/sessions` answers (URL in the JSON) | {statistics.median(api_resp):.2f} s"
        f" | {runs} |",
        f"| `POST /v1/sessions` to first noVNC framebuffer | {statistics.median(api_frame):.2f} s"
        f" | {runs} |",
        f"| `vncsess up` in the same run (API / CLI = {ratio:.2f}) |"
        f" {statistics.median(cli_resp):.2f} s | {runs} |",
    ]


def api_events(runs: int) -> list[str]:
    """An agent step to its SSE event at a subscriber: the event's own time (the runner
    stamps it as it writes the step) to the moment the client has read it."""
    from datetime import datetime

    lags = []
    with Serve() as srv:
        for _ in range(runs):
            s = srv.http.post("/v1/sessions", json={"task": "demo"}).json()
            url = f"/v1/sessions/{s['session_id']}/events?last_event_id=0"
            t_start = time.time()
            with srv.http.stream("GET", url) as r:
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    e = json.loads(line[5:])
                    happened = datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
                    if e["type"] == "agent.step" and happened > t_start:  # live, not replayed
                        lags.append(time.time() - happened)
                    if e["type"] == "agent.finished":
                        break
            srv.http.delete(f"/v1/sessions/{s['session_id']}")
    lags.sort()
    return [
        f"| agent step to its SSE event at a client | {statistics.median(lags) * 1000:.0f} ms"
        f" (max {lags[-1] * 1000:.0f} ms) | {len(lags)} steps |"
    ]


BENCHES = {
    "first-frame": first_frame,
    "memory": memory,
    "ls": ls_time,
    "agent": agent,
    "recorder": recorder,
    "api": api_create,
    "api-events": api_events,
}


def sweep() -> None:
    """Stop every session this run started (they carry its owner label), whatever
    happened: a failed measure or Ctrl-C leaves nothing running."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=vncsess.owner={ENV['VNCSESS_OWNER']}",
         "--format", '{{.Label "vncsess.session"}}'],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    left = sorted(set(out.split()))
    if left:
        print(f"# cleaning up {len(left)} session(s)", file=sys.stderr, flush=True)
        vncsess("stop", *left, check=False)


def main() -> None:
    import secrets
    import signal

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default=",".join(BENCHES))
    args = ap.parse_args()

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="vncsess-bench-") as home:
        ENV["VNCSESS_HOME"] = home
        ENV["VNCSESS_OWNER"] = f"bench-{os.getpid()}-{secrets.token_hex(3)}"
        ENV.setdefault("VNCSESS_DEMO_STEP_DELAY", "0.5")
        print("| measure | median | runs |\n|---|---|---|", flush=True)
        try:
            for name in args.only.split(","):
                for line in BENCHES[name](args.runs):
                    print(line, flush=True)
        finally:
            sweep()


if __name__ == "__main__":
    main()
