"""Fleet figures (issue 12's table): idle CPU of many idle sessions, many `up`s at once,
`stop` of them all, `ls --json`, `up` to the first full frame, memory per session, image
sizes, and how many sessions this machine serves at once. Figures, not a test.

    python bench/fleet.py [--sessions 16] [--rounds 2] [--runs 5] [--before REF]
                          [--only fleet,first-frame,warm,images] [--capacity 40] [--build]

With --before REF the same measures run for REF's code (a temporary git worktree, the same
Python and packages, the images named by --before-images) and for this tree, interleaved
round by round, so both see the same machine load: read the ratios, not the absolute
figures, on a shared machine. Every session the bench starts carries one owner label, and
all of them are stopped at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vncsess.rfb import RfbClient

ROOT = Path(__file__).resolve().parents[1]
OWNER = f"bench-{os.getpid()}-{secrets.token_hex(3)}"

# The figures before issue 12 (docs/benchmarks.md and the issue), for the ratio line.
PREVIOUS = {
    "idle CPU": 158.0,  # % of one core, 16 idle sessions
    "idle CPU each": 158.0 / 16,
    "up at once": 45.8,  # s, 16 `vncsess up` at once
    "stop all": 22.9,  # s, `stop --all` with 16 sessions
    "first frame": 2.07,  # s, `up` to the first full frame (docs/benchmarks.md)
    "ls": 0.60,  # s, `ls --json` with 20 sessions (docs/benchmarks.md)
    "memory": 285.0,  # MiB per idle session
    "vnc image": 749.0,  # MB
    "agent image": 1180.0,  # MB
    "dangling": 1500.0,  # MB after one `vncsess build`
}


@dataclass
class Tree:
    """One version of vncsess: its source dir and the environment its CLI runs with."""

    label: str
    src: Path
    env: dict[str, str]
    figures: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.figures.setdefault(key, []).append(value)

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vncsess", *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cli(*args), capture_output=True, text=True, env=self.env, check=check
        )

    def image(self, which: str) -> str:
        default = {"vnc": "vncsess-vnc", "agent": "vncsess-agent"}[which]
        return self.env.get(f"VNCSESS_{which.upper()}_IMAGE") or default


def secret(url: str) -> str:
    return url.split("password=", 1)[1].split("&", 1)[0]


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


# ------------------------------------------------------------------ cleanup


def owned_sessions() -> list[str]:
    out = docker(
        "ps", "-a", "--filter", f"label=vncsess.owner={OWNER}",
        "--format", '{{.Label "vncsess.session"}}',
    )  # fmt: skip
    return sorted({ln.strip() for ln in out.splitlines() if ln.strip()})


def sweep(tree: Tree) -> None:
    """Stop every session this bench started (by its owner label), whatever happened."""
    left = owned_sessions()
    if left:
        print(f"# cleaning up {len(left)} session(s)", file=sys.stderr, flush=True)
        tree.run("stop", *left, check=False)
    for sid in owned_sessions():  # stop failed: take the containers away by force
        subprocess.run(
            ["docker", "compose", "-p", f"vncsess-{sid}", "down", "-v", "-t", "1"],
            capture_output=True, check=False,
        )  # fmt: skip


@contextlib.contextmanager
def interrupts_as_errors() -> Iterator[None]:
    """SIGTERM ends the bench through the same `finally` as Ctrl-C."""

    def raise_interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# ------------------------------------------------------------------ measures


def cgroup_cpu_ns(container_id: str) -> int | None:
    """CPU time used by a container so far (cgroup v1 or v2), or None if not readable."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat")
    with contextlib.suppress(OSError, ValueError):
        return int(v1.read_text())
    with contextlib.suppress(OSError, ValueError):
        for line in v2.read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * 1000
    return None


def host_cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def containers_of(sessions: list[str]) -> dict[str, tuple[str, str]]:
    """container id -> (session id, service) of the given sessions."""
    out = docker(
        "ps", "--no-trunc", "--filter", f"label=vncsess.owner={OWNER}",
        "--format", '{{.ID}} {{.Label "vncsess.session"}} {{.Label "vncsess.service"}}',
    )  # fmt: skip
    found = {}
    for line in out.splitlines():
        cid, sid, service = line.split()
        if sid in sessions:
            found[cid] = (sid, service)
    return found


def to_mib(text: str) -> float:
    units = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "kB": 1 / 1024, "MB": 1, "GB": 1024}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text.rstrip("B")) / 1024 / 1024


def docker_stats(ids: list[str]) -> dict[str, tuple[float, float]]:
    """container id prefix -> (CPU %, memory MiB), one `docker stats --no-stream`."""
    out = docker("stats", "--no-stream", "--format", "{{.ID}} {{.CPUPerc}} {{.MemUsage}}", *ids)
    stats = {}
    for line in out.splitlines():
        cid, cpu, mem = line.split(" ", 2)
        stats[cid] = (float(cpu.rstrip("%")), to_mib(mem.split("/")[0].strip()))
    return stats


def full_frames(sessions: list[dict[str, Any]]) -> int:
    """How many of the sessions serve a whole framebuffer through noVNC's websockify."""
    served = 0
    for s in sessions:
        try:
            with RfbClient("127.0.0.1", s["novnc_port"], timeout=20) as c:
                init = c.login(secret(s["novnc_url"]))
                if len(c.frame()) == init.width * init.height * init.bits_per_pixel // 8:
                    served += 1
        except Exception as exc:
            print(f"# {s['session_id']}: no full frame: {exc}", file=sys.stderr, flush=True)
    return served


def fleet(tree: Tree, n: int, settle: float, window: float, ls_runs: int) -> None:
    """N `up`s at once, then their idle CPU and memory, `ls --json`, and one `stop` of all."""
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(tree.cli("up", "--json"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=tree.env)
        for _ in range(n)
    ]  # fmt: skip
    sessions = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode == 0:
            sessions.append(json.loads(out))
        else:
            print(f"# {tree.label}: up failed: {err.strip()[-300:]}", file=sys.stderr, flush=True)
    tree.add("up at once", time.monotonic() - t0)
    tree.add("up failures", n - len(sessions))
    ids = [s["session_id"] for s in sessions]
    try:
        tree.add("full frames", full_frames(sessions))
        time.sleep(settle)  # the figure is for sessions nobody works in
        by_id = containers_of(ids)
        start = {cid: cgroup_cpu_ns(cid) for cid in by_id}
        busy0, total0 = host_cpu_busy()
        w0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - w0
        busy1, total1 = host_cpu_busy()
        used = [
            (end - begin)
            for cid in by_id
            if (begin := start[cid]) is not None and (end := cgroup_cpu_ns(cid)) is not None
        ]
        if used:
            tree.add("idle CPU", sum(used) / 1e9 / elapsed * 100)
            tree.add("idle CPU each", sum(used) / 1e9 / elapsed * 100 / len(ids))
        tree.add("machine busy", (busy1 - busy0) / (total1 - total0) * 100)
        stats = docker_stats(list(by_id))
        tree.add("idle CPU (docker stats)", sum(cpu for cpu, _ in stats.values()))
        per_session: dict[str, float] = {}
        for cid, (_, mem) in stats.items():
            found = [v for k, v in by_id.items() if k.startswith(cid)]
            if not found:  # gone meanwhile (a session that died)
                continue
            sid, service = found[0]
            per_session[sid] = per_session.get(sid, 0) + mem
            tree.add(f"memory {service}", mem)
        if per_session:
            tree.add("memory", statistics.median(per_session.values()))
        tree.add("load", os.getloadavg()[0])
        for _ in range(ls_runs):
            t = time.monotonic()
            listed = json.loads(tree.run("ls", "--json").stdout)
            tree.add("ls", time.monotonic() - t)
            assert len(listed) >= len(ids)
    finally:
        t = time.monotonic()
        if ids:
            tree.run("stop", *ids, check=False)
        tree.add("stop all", time.monotonic() - t)


def images_current(tree: Tree) -> bool:
    """Whether the tree's images were built from its own files (else `up` builds them)."""
    check = "from vncsess import config, images; print(len(images.missing(config.load())))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         env=tree.env, check=False).stdout  # fmt: skip
    return out.strip() == "0"


def first_frame(tree: Tree) -> None:
    t0 = time.monotonic()
    up = tree.run("up", "--json", check=False)
    if up.returncode != 0:
        print(f"# {tree.label}: up failed: {up.stderr.strip()[-300:]}", file=sys.stderr)
        tree.add("first frame failures", 1)
        return
    s = json.loads(up.stdout)
    try:
        tree.add("up returns", time.monotonic() - t0)
        with RfbClient("127.0.0.1", s["novnc_port"]) as c:
            c.login(secret(s["novnc_url"]))
            c.frame()
        tree.add("first frame", time.monotonic() - t0)
    finally:
        tree.run("stop", s["session_id"], check=False)


def warm_first_frame(tree: Tree, settle: float = 5.0) -> None:
    """`up` to the first full frame when a warm-pool session is there to claim: one pool
    session filled (and left SETTLE seconds, as a pool filled ahead of time would be), then
    the same `up` and frame as first_frame, which ran just before with no pool (the cold
    figure, under the same load)."""
    fill = tree.run("pool", "fill", "1", "--json", check=False)
    if fill.returncode != 0:
        print(f"# {tree.label}: pool fill failed: {fill.stderr.strip()[-300:]}", file=sys.stderr)
        tree.add("warm failures", 1)
        return
    time.sleep(settle)
    t0 = time.monotonic()
    up = tree.run("up", "--json", check=False)
    if up.returncode != 0:
        print(f"# {tree.label}: up failed: {up.stderr.strip()[-300:]}", file=sys.stderr)
        tree.add("warm failures", 1)
        tree.run("pool", "drain", check=False)
        return
    s = json.loads(up.stdout)
    try:
        tree.add("warm up returns", time.monotonic() - t0)
        with RfbClient("127.0.0.1", s["novnc_port"]) as c:
            init = c.login(secret(s["novnc_url"]))
            full = init.width * init.height * init.bits_per_pixel // 8
            if len(c.frame()) != full:
                tree.add("warm failures", 1)
        t = time.monotonic() - t0
        if s.get("pool") == "claimed":
            tree.add("warm first frame", t)
        else:  # the pool session was not claimed: a cold start after all
            print(f"# {tree.label}: up did not claim the pool session", file=sys.stderr)
            tree.add("warm failures", 1)
    finally:
        tree.run("stop", s["session_id"], check=False)
        tree.run("pool", "drain", check=False)


def image_mb(tag: str) -> float:
    try:
        return int(docker("image", "inspect", "--format", "{{.Size}}", tag)) / 1e6
    except subprocess.CalledProcessError:
        return float("nan")


def images(tree: Tree) -> None:
    tree.add("vnc image", image_mb(tree.image("vnc")))
    tree.add("agent image", image_mb(tree.image("agent")))


def dangling_ids() -> set[str]:
    return set(docker("images", "-q", "--no-trunc", "--filter", "dangling=true").split())


def dangling_after_build(tree: Tree) -> None:
    """`vncsess build --no-cache` of the tree's images (its own tags: never another's), and
    the dangling images it left. Another build on the engine at the same time would count."""
    before = dangling_ids()
    tree.run("build", "--quiet", "--no-cache")
    new = dangling_ids() - before
    size = sum(int(docker("image", "inspect", "--format", "{{.Size}}", i)) for i in new)
    tree.add("dangling", size / 1e6)


def capacity(tree: Tree, target: int, batch: int = 8) -> None:
    """Start sessions in batches until TARGET or the first failure; then check that each
    serves full frames and take the memory of each."""
    sessions: list[dict[str, Any]] = []
    try:
        while len(sessions) < target:
            k = min(batch, target - len(sessions))
            procs = [
                subprocess.Popen(tree.cli("up", "--json"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=tree.env)
                for _ in range(k)
            ]  # fmt: skip
            failed = ""
            for p in procs:
                out, err = p.communicate()
                if p.returncode == 0:
                    sessions.append(json.loads(out))
                else:
                    failed = err.strip().splitlines()[-1] if err.strip() else "up failed"
            print(f"# {len(sessions)} sessions up", file=sys.stderr, flush=True)
            if failed:
                print(f"# stopped at {len(sessions)}: {failed}", file=sys.stderr, flush=True)
                break
        time.sleep(10)
        tree.add("capacity", full_frames(sessions))
        by_id = containers_of([s["session_id"] for s in sessions])
        stats = docker_stats(list(by_id))
        per: dict[str, float] = {}
        for cid, (_, mem) in stats.items():
            for sid, _service in [v for k, v in by_id.items() if k.startswith(cid)][:1]:
                per[sid] = per.get(sid, 0) + mem
        for mem in per.values():
            tree.add("capacity memory", mem)
        tree.add("capacity load", os.getloadavg()[0])
    finally:
        t = time.monotonic()
        if sessions:
            tree.run("stop", *[s["session_id"] for s in sessions], check=False)
            tree.add("capacity stop", time.monotonic() - t)


# ------------------------------------------------------------------ report

ROWS = [  # (figure key, what, unit, format)
    ("idle CPU", "CPU of {n} idle sessions (cgroup time, summed)", "% of one core", "{:.1f}"),
    ("idle CPU (docker stats)", "the same, one `docker stats` summed", "%", "{:.1f}"),
    ("idle CPU each", "  per idle session (of those that started)", "% of one core", "{:.2f}"),
    ("capacity", "concurrent sessions serving full frames", "", "{:.0f}"),
    ("capacity memory", "memory of each of those sessions (median)", "MiB", "{:.0f}"),
    ("capacity stop", "`vncsess stop` of all of them", "s", "{:.1f}"),
    ("memory", "memory of each of {n} idle sessions (vnc + agent, median)", "MiB", "{:.0f}"),
    ("memory vnc", "  of which the vnc container", "MiB", "{:.0f}"),
    ("memory agent", "  of which the agent container", "MiB", "{:.0f}"),
    ("up at once", "{n} `vncsess up` at once, until all return", "s", "{:.1f}"),
    ("up failures", "  of which failed", "", "{:.0f}"),
    ("full frames", "  then serving a full frame", "", "{:.0f}"),
    ("stop all", "`vncsess stop` of the sessions that started", "s", "{:.1f}"),
    ("up returns", "`vncsess up` returns (URL printed)", "s", "{:.2f}"),
    ("first frame", "`vncsess up` to the first full noVNC frame, cold", "s", "{:.2f}"),
    ("warm up returns", "`vncsess up` returns, claiming a warm-pool session", "s", "{:.2f}"),
    ("warm first frame", "`up` to the first full frame from a warm pool", "s", "{:.2f}"),
    ("warm failures", "  of which failed or were not claimed", "", "{:.0f}"),
    ("ls", "`vncsess ls --json` with {n} sessions", "s", "{:.2f}"),
    ("vnc image", "vncsess-vnc image", "MB", "{:.0f}"),
    ("agent image", "vncsess-agent image", "MB", "{:.0f}"),
    ("dangling", "dangling images after one `vncsess build`", "MB", "{:.0f}"),
    ("load", "load average while idle (1 min)", "", "{:.1f}"),
    ("machine busy", "the whole machine's CPU busy while idle", "% of all cores", "{:.0f}"),
]


def cell(tree: Tree, key: str, fmt: str) -> str:
    values = tree.figures.get(key)
    if not values or not fmt:
        return "-"
    text = fmt.format(statistics.median(values))
    return text + (f" ({len(values)})" if len(values) > 1 else "")


def median(tree: Tree | None, key: str) -> float | None:
    values = tree.figures.get(key) if tree else None
    return statistics.median(values) if values else None


def report(trees: list[Tree], n: int) -> None:
    after = trees[-1]
    before = trees[0] if len(trees) > 1 else None
    head = "| what | " + " | ".join(t.label for t in trees) + " | unit |"
    head += " after / before |" if before else ""
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for key, what, unit, fmt in ROWS:
        if not any(key in t.figures for t in trees):
            continue
        cells = " | ".join(cell(t, key, fmt) for t in trees)
        row = f"| {what.format(n=n)} | {cells} | {unit} |"
        if before:
            a, b = median(after, key), median(before, key)
            row += f" {a / b:.2f} |" if a is not None and b else " - |"
        print(row)
    ratios = []
    for key, prev in PREVIOUS.items():
        now = median(after, key)
        if now is not None:
            ratios.append(f"{key} {now / prev:.2f}")
    print(f"\nratios of {after.label} to the previous figures: " + ", ".join(ratios))
    warm, cold = median(after, "warm first frame"), median(after, "first frame")
    if warm is not None and cold:
        runs = len(after.figures["warm first frame"])
        print(
            f"warm pool vs cold, `up` to the first full frame (median of {runs}): "
            f"{warm:.2f} s vs {cold:.2f} s, warm / cold {warm / cold:.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="fleet rounds per tree")
    ap.add_argument("--runs", type=int, default=5, help="first-frame and ls runs")
    ap.add_argument("--settle", type=float, default=60.0, help="seconds before idle CPU")
    ap.add_argument("--window", type=float, default=30.0, help="seconds of idle CPU measured")
    ap.add_argument("--before", help="a git ref to compare with (e.g. main)")
    ap.add_argument("--before-images", default="vncsess-vnc,vncsess-agent",
                    help="VNC,AGENT image tags the --before tree runs")  # fmt: skip
    ap.add_argument("--only", default="fleet,first-frame,warm,images")
    ap.add_argument("--capacity", type=int, default=0, help="also: how many sessions at once")
    ap.add_argument("--build", action="store_true", help="also: dangling images of a build")
    args = ap.parse_args()
    only = set(args.only.split(","))

    home = Path(tempfile.mkdtemp(prefix="vncsess-fleet-"))
    base = {**os.environ, "VNCSESS_HOME": str(home), "VNCSESS_OWNER": OWNER}
    after = Tree("after" if args.before else "this tree", ROOT / "src", base)
    after.env = {**base, "PYTHONPATH": str(after.src)}
    trees = [after]
    worktree = None
    if args.before:
        worktree = Path(tempfile.mkdtemp(prefix="vncsess-before-")) / "wt"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before],
            check=True, capture_output=True,
        )  # fmt: skip
        vnc, agent = args.before_images.split(",")
        env = {**base, "PYTHONPATH": str(worktree / "src")}
        env.update(VNCSESS_VNC_IMAGE=vnc, VNCSESS_AGENT_IMAGE=agent)
        trees.insert(0, Tree(f"before ({args.before})", worktree / "src", env))
    stale = [t.label for t in trees if not images_current(t)]
    if stale:
        # `up` would build them, under tags another tree or person may be using.
        sys.exit(
            f"the images of {', '.join(stale)} are not current for its files: build "
            "them first under tags of your own (VNCSESS_*_IMAGE, --before-images)"
        )
    try:
        with interrupts_as_errors():
            for tree in trees:
                if "images" in only:
                    images(tree)
            for r in range(args.rounds if "fleet" in only else 0):
                for tree in trees if r % 2 == 0 else trees[::-1]:
                    print(f"# round {r + 1}: {tree.label}", file=sys.stderr, flush=True)
                    fleet(tree, args.sessions, args.settle, args.window, args.runs)
            for _ in range(args.runs if only & {"first-frame", "warm"} else 0):
                for tree in trees:
                    first_frame(tree)  # cold: no pool session is there to claim
                    if "warm" in only and tree is after:
                        warm_first_frame(tree)
            if args.capacity:
                capacity(after, args.capacity)
            if args.build:
                dangling_after_build(after)
    finally:
        sweep(after)
        shutil.rmtree(home, ignore_errors=True)
        if worktree is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                capture_output=True, check=False,
            )  # fmt: skip
    report(trees, args.sessions)


if __name__ == "__main__":
    main()
