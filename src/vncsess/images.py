"""Building the two session images, including the base image when no registry answers.

Real users pull `debian:bookworm-slim` as usual. Where nothing can be pulled (an offline
machine, or one with no registry), the base is bootstrapped from Debian packages with
debootstrap and `docker import`, and the Dockerfiles stay plain and standard.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vncsess import docker
from vncsess.config import Settings
from vncsess.errors import BuildFailed

BASE_IMAGE = "debian:bookworm-slim"
HASH_LABEL = "vncsess.build-hash"
DEBIAN_MIRROR = os.environ.get("VNCSESS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Files that never enter a build context: keys and local leftovers.
_EXCLUDE = shutil.ignore_patterns(".env", ".env.*", "wheels", "__pycache__", "*.pyc", ".venv")

Progress = Callable[[str], None]


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


@contextmanager
def build_lock(settings: Settings) -> Iterator[None]:
    """Ten `vncsess up` at once must not start ten builds: one builds, the rest wait."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / ".build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(settings: Settings, progress: Progress, force: bool = False) -> list[str]:
    """Build what is missing (or everything with force). Returns the tags built."""
    with build_lock(settings):
        todo = specs(settings) if force else missing(settings)
        if not todo:
            return []
        ensure_base(progress)
        for spec in todo:
            build_one(settings, spec, progress)
        return [s.tag for s in todo]


def ensure_base(progress: Progress) -> None:
    if docker.image_labels(BASE_IMAGE) is not None:
        return
    progress(f"pulling {BASE_IMAGE}")
    if docker.try_pull(BASE_IMAGE):
        return
    progress(f"no registry answered: bootstrapping {BASE_IMAGE} from Debian packages")
    bootstrap_base(progress)


def bootstrap_base(progress: Progress) -> None:
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
    with tempfile.TemporaryDirectory(prefix="vncsess-base-") as tmp:
        root = Path(tmp) / "root"
        cmd = ["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR]
        progress("debootstrap --variant=minbase bookworm (about a minute)")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
            raise BuildFailed(f"debootstrap failed: {last[0]}", hint=f"mirror: {DEBIAN_MIRROR}")
        # apt's caches are a third of a minbase tree and every Dockerfile fetches lists anew.
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (root / cache).glob("*"):
                if f.is_file():
                    f.unlink()
        tarball = Path(tmp) / "root.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
        docker.import_rootfs(tarball, BASE_IMAGE)
    progress(f"{BASE_IMAGE} imported")


def download_wheels(settings: Settings, requirements: Path, progress: Progress) -> Path:
    """Wheels for the agent image, fetched by the host's pip (its proxy, its CA bundle),
    for the image's Python (Debian bookworm: CPython 3.11, x86_64 manylinux)."""
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    dest = settings.cache / "wheels" / key
    if (dest / ".complete").exists():
        return dest
    progress(f"downloading agent wheels ({requirements.name}) with the host's pip")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
           "--abi", "abi3", "--abi", "none",
           "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64",
           "--platform", "any", "-r", str(requirements), "-d", str(dest)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        raise BuildFailed(
            f"downloading the agent's Python packages failed: {last[0]}",
            hint="check that pip can reach PyPI (proxy, PIP_INDEX_URL, PIP_CERT)",
        )
    (dest / ".complete").touch()
    return dest


def build_one(settings: Settings, spec: ImageSpec, progress: Progress) -> None:
    digest = context_hash(spec.context)
    with tempfile.TemporaryDirectory(prefix="vncsess-build-") as tmp:
        ctx = Path(tmp) / "ctx"
        shutil.copytree(spec.context, ctx, ignore=_EXCLUDE)
        if spec.needs_wheels:
            wheels = download_wheels(settings, spec.context / "requirements.txt", progress)
            shutil.copytree(wheels, ctx / "wheels")
        progress(f"building {spec.tag}")
        for line in docker.build(ctx, spec.tag, {HASH_LABEL: digest}):
            if line.startswith("Step ") or "Successfully" in line:
                progress(line)
