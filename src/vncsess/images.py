"""Building the two session images, including the base image when no registry answers.

Real users pull `debian:bookworm-slim` as usual. Where nothing can be pulled (an offline
machine, or one with no registry), the base is bootstrapped from Debian packages with
debootstrap and `docker import`, and the Dockerfiles stay plain and standard.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from vncsess import commands
from vncsess.config import Settings
from vncsess.engines import docker
from vncsess.errors import BuildFailed

BASE_IMAGE = "debian:bookworm-slim"
HASH_LABEL = "vncsess.build-hash"
# Files that never enter a build context: keys and local leftovers.
_EXCLUDE = shutil.ignore_patterns(".env", ".env.*", "wheels", "__pycache__", "*.pyc", ".venv")

Progress = Callable[[str], None]


@runtime_checkable
class BuildReporter(Protocol):
    """A progress callback that also follows a build: the stage (the base image, the
    wheels, each image), the step inside it (a Dockerfile step) and the finest detail that
    can be read (the package being fetched, unpacked or set up). The CLI's progress view is
    one; a plain callback gets stages and steps as lines (see _Lines)."""

    def __call__(self, message: str) -> None: ...
    def stage(self, name: str) -> None: ...
    def step(self, text: str) -> None: ...
    def detail(self, text: str) -> None: ...


class _Lines:
    """A plain Progress callback seen as a BuildReporter: stages and steps, no details."""

    def __init__(self, say: Progress) -> None:
        self.say = say

    def __call__(self, message: str) -> None:
        self.say(message)

    def stage(self, name: str) -> None:
        self.say(name)

    def step(self, text: str) -> None:
        self.say(text)

    def detail(self, text: str) -> None:
        pass


def reporter(progress: Progress) -> BuildReporter:
    return progress if isinstance(progress, BuildReporter) else _Lines(progress)


def asset_dir(name: str) -> Path:
    """`compose` or `agent`: inside the installed wheel, or the source checkout."""
    packaged = Path(__file__).parent / "_assets" / name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / name


@dataclass(frozen=True)
class ImageSpec:
    tag: str
    context: Path  # directory holding the Dockerfile
    needs_wheels: bool  # the agent image installs browser-use from host-downloaded wheels


def specs(settings: Settings) -> list[ImageSpec]:
    return [
        ImageSpec(settings.vnc_image, asset_dir("compose") / "vnc", needs_wheels=False),
        ImageSpec(settings.agent_image, asset_dir("agent"), needs_wheels=True),
    ]


def context_hash(context: Path) -> str:
    """Hash of every file a build would copy: a changed script means a stale image."""
    h = hashlib.sha256()
    for path in sorted(context.rglob("*")):
        rel = path.relative_to(context)
        if path.is_file() and not _excluded(rel):
            h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _excluded(rel: Path) -> bool:
    """The same rule as _EXCLUDE, for one relative path."""
    return (
        any(part in ("wheels", "__pycache__", ".venv") for part in rel.parts)
        or rel.name.startswith(".env")
        or rel.suffix == ".pyc"
    )


def missing(settings: Settings) -> list[ImageSpec]:
    """Images that are absent or were built from other files than the ones here."""
    out = []
    for spec in specs(settings):
        labels = docker.image_labels(spec.tag)
        if labels is None or labels.get(HASH_LABEL) != context_hash(spec.context):
            out.append(spec)
    return out


def lock_path(settings: Settings) -> Path:
    tags = hashlib.sha256(" ".join(s.tag for s in specs(settings)).encode()).hexdigest()[:12]
    return settings.cache / f"build-{tags}.lock"


@contextmanager
def build_lock(settings: Settings, progress: Progress | None = None) -> Iterator[None]:
    """Ten `vncsess up` at once must not start ten builds: one builds, the rest wait. The
    lock is in the cache dir, not $VNCSESS_HOME (images are per engine, not per home), and
    one per set of tags: a build of other tags never holds up a session."""
    settings.cache.mkdir(parents=True, exist_ok=True)
    with open(lock_path(settings), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Say why nothing moves: the other build can take minutes.
            if progress is not None:
                progress("waiting for another vncsess build of these images to finish")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(
    settings: Settings, progress: Progress, force: bool = False, no_cache: bool = False
) -> list[str]:
    """Build what is missing (or everything with force; no_cache: from scratch, for fresh
    packages). Returns the tags built. Images that are current cost two `docker image
    inspect`s and no lock, so sessions started side by side do not queue here."""
    rebuild = force or no_cache
    if not rebuild and not missing(settings):
        return []
    report = reporter(progress)
    with build_lock(settings, report):
        todo = specs(settings) if rebuild else missing(settings)
        if not todo:
            return []
        ensure_base(settings, report)
        for spec in todo:
            build_one(settings, spec, report, no_cache=no_cache)
        return [s.tag for s in todo]


def log_dir(settings: Settings) -> Path:
    """Where each build step's full output is kept, for when it fails."""
    return settings.cache / "logs"


def ensure_base(settings: Settings, progress: Progress) -> None:
    if docker.image_labels(BASE_IMAGE) is not None:
        return
    report = reporter(progress)
    report.stage(f"pulling {BASE_IMAGE}")
    if docker.try_pull(BASE_IMAGE):
        return
    report(f"no registry answered: bootstrapping {BASE_IMAGE} from Debian packages")
    bootstrap_base(settings.debian_mirror, report, logs=log_dir(settings))


def bootstrap_base(
    mirror: str, progress: Progress, tag: str = BASE_IMAGE, logs: Path | None = None
) -> None:
    if shutil.which("debootstrap") is None:
        raise BuildFailed(
            f"{BASE_IMAGE} cannot be pulled and debootstrap is not installed",
            hint="install debootstrap (`apt-get install debootstrap`) or make a registry reachable",
        )
    if os.geteuid() != 0:
        raise BuildFailed(
            f"{BASE_IMAGE} cannot be pulled, and bootstrapping it needs root",
            hint="run `sudo vncsess build` once, or make a registry reachable",
        )
    report = reporter(progress)
    with tempfile.TemporaryDirectory(prefix="vncsess-base-") as tmp:
        root = Path(tmp) / "root"
        cmd = ["debootstrap", "--variant=minbase", "bookworm", str(root), mirror]
        report.stage(f"bootstrapping {tag}")
        report.step("debootstrap --variant=minbase bookworm (about a minute)")
        hint = f"mirror: {mirror} (VNCSESS_DEBIAN_MIRROR)"
        lines = commands.stream(cmd, "debootstrap", explain=commands.explained(BuildFailed, hint))
        follow(lines, report, logs / "debootstrap.log" if logs else None)
        # apt's caches are a third of a minbase tree and every Dockerfile fetches lists anew.
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (root / cache).glob("*"):
                if f.is_file():
                    f.unlink()
        tarball = Path(tmp) / "root.tar"
        report.step(f"docker import {tag}")
        commands.run(["tar", "-C", str(root), "-cf", str(tarball), "."], "packing the base image")
        docker.import_rootfs(tarball, tag)
    report(f"{tag} imported")


def download_wheels(settings: Settings, requirements: Path, progress: Progress) -> Path:
    """Wheels for the agent image, fetched by the host's pip (its proxy, its CA bundle),
    for the image's Python (Debian bookworm: CPython 3.11, x86_64 manylinux)."""
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    dest = settings.cache / "wheels" / key
    if (dest / ".complete").exists():
        return dest
    report = reporter(progress)
    report.stage("downloading agent wheels")
    report.step(f"pip download -r {requirements.name} (the host's pip)")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--progress-bar", "off",
           "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
           "--abi", "abi3", "--abi", "none",
           "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64",
           "--platform", "any", "-r", str(requirements), "-d", str(dest)]  # fmt: skip
    hint = "check that pip can reach PyPI (proxy, PIP_INDEX_URL, PIP_CERT)"
    doing = "downloading the agent's Python packages"
    lines = commands.stream(cmd, doing, explain=commands.explained(BuildFailed, hint))
    follow(lines, report, log_dir(settings) / "pip-download.log")
    (dest / ".complete").touch()
    return dest


def build_one(
    settings: Settings, spec: ImageSpec, progress: Progress, no_cache: bool = False
) -> None:
    report = reporter(progress)
    digest = context_hash(spec.context)
    replaced = docker.image_id(spec.tag)
    kept = [i for i in (docker.image_id(t) for t in stage_tags(spec.tag, MAX_STAGES)) if i]
    with tempfile.TemporaryDirectory(prefix="vncsess-build-") as tmp:
        ctx = Path(tmp) / "ctx"
        shutil.copytree(spec.context, ctx, ignore=_EXCLUDE)
        if spec.needs_wheels:
            wheels = download_wheels(settings, spec.context / "requirements.txt", report)
            shutil.copytree(wheels, ctx / "wheels")
        report.stage(f"building {spec.tag}")
        lines = docker.build(ctx, spec.tag, {HASH_LABEL: digest}, no_cache=no_cache)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", spec.tag)
        stages = Stages()
        follow(stages.watch(lines), report, log_dir(settings) / f"build-{safe}.log")
    # The classic builder keeps each earlier stage of a multi-stage build as an untagged
    # image, dangling once the build is done. Those stages are the build cache (the vnc
    # image's ffmpeg compile: about 7 minutes here; the agent's venv: 3), so each is kept
    # under a tag of its own (STAGES_SUFFIX) instead of being left dangling or removed.
    # What this build replaced goes: the tag's old image and old stages no tag holds any
    # more, and only if no container holds them (a session on the old image keeps it).
    for tag, image in zip(stage_tags(spec.tag, MAX_STAGES), stages.intermediate(), strict=False):
        docker.tag(image, tag)
    docker.remove_untagged([*kept, *([replaced] if replaced else [])])


MAX_STAGES = 8  # earlier stages kept per image (vnc has 2, agent 1)
STAGES_SUFFIX = "-stages"


def stage_tags(tag: str, count: int) -> list[str]:
    """The tags that keep the earlier stages of the image TAG as its build cache:
    vncsess-vnc:latest -> vncsess-vnc-stages:latest-1, -2 ..."""
    repo, _, version = tag.rpartition(":")
    if not repo or "/" in version:
        repo, version = tag, "latest"
    return [f"{repo}{STAGES_SUFFIX}:{version}-{i}" for i in range(1, count + 1)]


_STAGE_FROM = re.compile(r"^Step \d+/\d+ : FROM\s", re.IGNORECASE)
_LAYER_ID = re.compile(r"^\s*---> ([0-9a-f]{12,64})\s*$")


class Stages:
    """Follows a classic `docker build`'s output for the image each stage ended with: the
    last ` ---> ID` before the next `FROM`."""

    def __init__(self) -> None:
        self.ends: list[str] = []
        self._last = ""

    def watch(self, lines: Iterable[str]) -> Iterator[str]:
        for line in lines:
            if _STAGE_FROM.match(line) and self._last:
                self.ends.append(self._last)
                self._last = ""
            elif m := _LAYER_ID.match(line):
                self._last = m.group(1)
            yield line

    def intermediate(self) -> list[str]:
        """The images of every stage but the last (the last is the tagged image)."""
        return list(self.ends)


# ------------------------------------------------------------------ reading build output


def follow(lines: Iterable[str], report: BuildReporter, log: Path | None = None) -> None:
    """Feed a build's output to the reporter as steps and details, and keep all of it in
    `log`: the live view shows one line at a time, a failure needs the whole story."""
    reader = BuildOutput()
    with contextlib.ExitStack() as stack:
        sink = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(open(log, "w", encoding="utf-8", errors="replace"))
        try:
            for line in lines:
                if sink is not None:
                    sink.write(line + "\n")
                seen = reader.feed(line)
                if seen is not None:
                    kind, text = seen
                    (report.step if kind == "step" else report.detail)(text)
        except BuildFailed as exc:
            if log is None:
                raise
            keep = f"; {exc.hint}" if exc.hint and "full output" not in exc.hint else ""
            raise BuildFailed(exc.message, hint=f"the full output is in {log}{keep}") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Lines that say nothing a person needs while waiting.
_NOISE = (
    "--->",
    "Removing intermediate container",
    "Selecting previously unselected",
    "Preparing to unpack",
    "(Reading database",
    # The classic builder's notice that it is deprecated (we use it on purpose, see docker.py).
    "DEPRECATED: The legacy builder",
    "BuildKit is currently disabled",
    "environment-variable.",
)
_STEP = re.compile(r"^Step (\d+/\d+) : (.*)$")
_APT_TOTAL = re.compile(r"^\d+ upgraded, (\d+) newly installed")
_APT_NEED = re.compile(r"^Need to get ([\d.,]+ [kMG]?B)")
_APT_PKG = re.compile(r"^(Unpacking|Setting up) ([^\s:]+)")
_APT_TRIGGERS = re.compile(r"^Processing triggers for ([^\s:]+)")
_PIP_WHEEL = re.compile(r"^Processing /\S*?/([A-Za-z0-9_.]+?)-\d")
_PIP_INSTALLING = re.compile(r"^Installing collected packages: (.*)$")
_PIP_COLLECT = re.compile(r"^Collecting ([A-Za-z0-9_.\-\[\]]+)")
_PIP_DOWNLOAD = re.compile(r"^\s*Downloading (\S+?)(?: \((.*)\))?$")
_DEBOOTSTRAP_GET = re.compile(r"^I: (Retrieving|Validating) (\S+) \S+$")
_DEBOOTSTRAP_PKG = re.compile(r"^I: (Extracting|Unpacking|Configuring) ([^\s:]+?)(?::\S+?)?\.\.\.$")
_DEBOOTSTRAP_PHASE = re.compile(r"^I: (.*\s.*)\.\.\.$")


class BuildOutput:
    """Reads the output of `docker build` (classic builder), and of the apt-get, pip and
    debootstrap runs inside or beside it, and says what is going on: a step, or a detail
    such as `unpacking 57/243 libgtk-3-0`. Counts are kept per step, so a total read from
    apt's "N newly installed" line turns "Unpacking x" into "unpacking k/N x"."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.total = 0
        self.total_next = 0
        self.counts: dict[str, int] = {}

    def _count(self, verb: str, name: str) -> str:
        n = self.counts[verb] = self.counts.get(verb, 0) + 1
        return f"{verb} {n}/{self.total} {name}" if self.total else f"{verb} {n} {name}"

    def feed(self, raw: str) -> tuple[str, str] | None:
        # The classic builder colours a RUN's stderr (`set -x` lines) with ANSI codes.
        line = _ANSI.sub("", raw.rsplit("\r", 1)[-1]).rstrip()
        if not line.strip():
            return None
        if m := _STEP.match(line):
            self._reset()
            return "step", f"Step {m.group(1)} " + " ".join(m.group(2).split())
        known = self._apt(line) or self._pip(line) or self._debootstrap(line) or self._docker(line)
        if known is not None or line.lstrip().startswith(_NOISE):
            return known
        return "detail", " ".join(line.split())[:120]  # anything else still shows movement

    def _apt(self, line: str) -> tuple[str, str] | None:
        if m := _APT_TOTAL.match(line):
            self.total = int(m.group(1))
            return "detail", f"{self.total} packages to install"
        if m := _APT_NEED.match(line):
            return "detail", f"downloading {m.group(1)}"
        if line.startswith("Get:"):
            # Get:5 http://deb.debian.org/debian bookworm/main amd64 libfoo amd64 1.2-3 [12 kB]
            words = line.split(" [", 1)[0].split()
            if len(words) == 7:
                return "detail", self._count("downloading", words[4])
            return "detail", "fetching package lists"
        if m := _APT_PKG.match(line):
            verb = "unpacking" if m.group(1) == "Unpacking" else "setting up"
            return "detail", self._count(verb, m.group(2))
        if m := _APT_TRIGGERS.match(line):
            return "detail", f"processing triggers for {m.group(1)}"
        if line.startswith("Reading package lists"):
            return "detail", "reading package lists"
        return None

    def _pip(self, line: str) -> tuple[str, str] | None:
        if m := _PIP_INSTALLING.match(line):
            self.total = len(m.group(1).split(","))
            return "detail", f"installing {self.total} Python packages"
        if m := _PIP_WHEEL.match(line):
            return "detail", self._count("unpacking", m.group(1))
        if m := _PIP_COLLECT.match(line):
            return "detail", self._count("collecting", m.group(1))
        if m := _PIP_DOWNLOAD.match(line):
            size = f" ({m.group(2)})" if m.group(2) else ""
            return "detail", f"downloading {m.group(1).rsplit('/', 1)[-1]}{size}"
        if line.startswith(("Successfully installed", "Successfully downloaded")):
            verb = line.split()[1]
            return "detail", f"{verb} {len(line.split()) - 2} Python packages"
        return None

    def _debootstrap(self, line: str) -> tuple[str, str] | None:
        if m := _DEBOOTSTRAP_GET.match(line):
            verb = m.group(1).lower()
            if verb == "retrieving":
                self.total_next += 1  # each package once: the total for the later phases
            n = self.counts[verb] = self.counts.get(verb, 0) + 1
            return "detail", f"{verb} {n} {m.group(2)}"
        if m := _DEBOOTSTRAP_PKG.match(line):
            # Extraction starts before the next phase line: count it against what was fetched.
            self.total = self.total or self.total_next
            return "detail", self._count(m.group(1).lower(), m.group(2))
        if m := _DEBOOTSTRAP_PHASE.match(line):
            self.counts.clear()
            self.total = self.total_next
            return "step", m.group(1)
        if line.startswith("I: "):
            return "detail", line[3:]
        return None

    def _docker(self, line: str) -> tuple[str, str] | None:
        if line.startswith("Sending build context"):
            return "detail", " ".join(line.split()).lower()
        if line.strip() == "---> Using cache":
            return "detail", "cached"
        if line.startswith("Successfully"):
            return "detail", line.lower()
        return None
