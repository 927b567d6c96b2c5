"""`vncsess doctor`: what this machine has and lacks for sessions, each finding with its fix.

Every check returns data (a Check); the CLI renders them. A *problem* is something that
would make `vncsess up` fail; a *warning* is something that makes it slow, limited or
surprising. Docker is reached only through the docker module.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vncsess import config, datadir, images
from vncsess.config import Settings
from vncsess.engines import docker
from vncsess.errors import VncsessError

OK, WARNING, PROBLEM = "ok", "warning", "problem"
GiB = 1024**3
# Docker's built-in default-address-pools (libnetwork): 172.17-31.0.0/16 as /16s and
# 192.168.0.0/16 as /20s, about 30 bridge networks in all.
DEFAULT_POOLS = [(f"172.{n}.0.0/16", 16) for n in range(17, 32)] + [("192.168.0.0/16", 20)]
DAEMON_JSON = (Path("/etc/docker/daemon.json"), Path.home() / ".config/docker/daemon.json")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warning | problem
    summary: str  # what was found
    fix: str = ""  # what to do about a warning or a problem

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "summary": self.summary, "fix": self.fix}


def healthy(checks: list[Check]) -> bool:
    """True when nothing found would make `up` fail (warnings allowed)."""
    return all(c.status != PROBLEM for c in checks)


def run(settings: Settings) -> list[Check]:
    """Every check, in the order a person would fix things. Checks that need the Docker
    engine are left out when it does not answer: the first problem says why."""
    return list(_checks(settings))


def _checks(settings: Settings) -> Iterator[Check]:
    if settings.engine != "docker":
        yield from _other_engine(settings)
        return
    info: dict[str, Any] | None = None
    try:
        info = docker.engine_info()
    except VncsessError as exc:
        yield Check(
            "docker",
            PROBLEM,
            exc.message + "; the image, disk, network and port checks need it",
            exc.hint,
        )
    else:
        where = info.get("OperatingSystem") or "unknown system"
        yield Check("docker", OK, f"Docker Engine {info.get('ServerVersion', '?')} on {where}")
    yield _compose()
    if info is not None:
        yield from _images(settings)
    yield _base(settings, info is not None)
    yield _home_disk(settings)
    if info is not None:
        docker_disk = _docker_disk(info)
        if docker_disk is not None:
            yield docker_disk
        yield _address_pools()
    yield _model(settings)
    yield from _ports(settings, docker_ok=info is not None)
    if info is not None:
        yield _storage_driver(info)


def _other_engine(settings: Settings) -> Iterator[Check]:
    """Another engine (VNCSESS_ENGINE=kubernetes): its own check, then what does not
    depend on Docker. The Docker checks below would only mislead."""
    from vncsess import engines

    name = f"engine {settings.engine}"
    try:
        engines.load(settings).check()
    except VncsessError as exc:
        yield Check(name, PROBLEM, exc.message, exc.hint)
    else:
        yield Check(name, OK, "reachable, and ready to run sessions")
    yield _home_disk(settings)
    yield _model(settings)


def _compose() -> Check:
    try:
        return Check("compose", OK, f"Docker Compose {docker.compose_version()}")
    except VncsessError as exc:
        return Check("compose", PROBLEM, exc.message, exc.hint)


def _images(settings: Settings) -> Iterator[Check]:
    for spec in images.specs(settings):
        labels = docker.image_labels(spec.tag)
        if labels is None:
            yield Check(
                f"image {spec.tag}",
                WARNING,
                "not built yet: the first `vncsess up` builds it (minutes)",
                "run `vncsess build` now",
            )
        elif labels.get(images.HASH_LABEL) != images.context_hash(spec.context):
            yield Check(
                f"image {spec.tag}",
                WARNING,
                "built from other files than these: the next `vncsess up` rebuilds it",
                "run `vncsess build`",
            )
        else:
            yield Check(f"image {spec.tag}", OK, "built and current")


def _base(settings: Settings, docker_ok: bool) -> Check:
    name = f"base {images.BASE_IMAGE}"
    if docker_ok and docker.image_labels(images.BASE_IMAGE) is not None:
        return Check(name, OK, "present")
    can_bootstrap = shutil.which("debootstrap") is not None and os.geteuid() == 0
    if can_bootstrap:
        found = "not present" if docker_ok else "not known (no Docker)"
        return Check(name, OK, f"{found}; `vncsess build` pulls it, or makes it with debootstrap")
    if docker_ok and not images.missing(settings):
        return Check(name, OK, "not present, and not needed until the images are rebuilt")
    why = "debootstrap is not installed" if os.geteuid() == 0 else "bootstrapping needs root"
    return Check(
        name,
        WARNING,
        f"not present: building the images must pull it ({why}, the fallback)",
        "make a registry reachable, or `apt-get install debootstrap` and build as root",
    )


def _home_disk(settings: Settings) -> Check:
    name = "disk (VNCSESS_HOME)"
    try:
        datadir.check_room(settings.sessions_dir)
    except VncsessError as exc:
        return Check(name, PROBLEM, exc.message, exc.hint)
    free = shutil.disk_usage(settings.sessions_dir).free
    summary = f"{_gib(free)} free in {settings.home}"
    if free < GiB:
        return Check(
            name,
            WARNING,
            summary + ": recordings take about 4.4 MB a minute",
            "free some space, or set VNCSESS_HOME to a bigger disk",
        )
    return Check(name, OK, summary)


def _docker_disk(info: dict[str, Any]) -> Check | None:
    root = Path(info.get("DockerRootDir") or "/var/lib/docker")
    if not config.engine_is_local() or not root.exists():
        return None  # a remote engine's disk cannot be seen from here
    free = shutil.disk_usage(root).free
    summary = f"{_gib(free)} free in Docker's data root {root}"
    fix = "free space (`docker image prune` removes unused images) or move data-root"
    if free < GiB:
        return Check("disk (Docker)", PROBLEM, summary + ": containers and builds fail", fix)
    if free < 5 * GiB:
        return Check("disk (Docker)", WARNING, summary + ": building the images needs ~3 GB", fix)
    return Check("disk (Docker)", OK, summary)


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


# ------------------------------------------------------------------ address pools


def _pools() -> tuple[list[tuple[str, int]], str]:
    """The engine's default-address-pools, from daemon.json where it can be read here."""
    for path in DAEMON_JSON if config.engine_is_local() else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pools = data.get("default-address-pools") if isinstance(data, dict) else None
        if pools:
            return [(str(p["base"]), int(p["size"])) for p in pools], str(path)
    return DEFAULT_POOLS, "Docker's defaults"


def pools_left(pools: list[tuple[str, int]], subnets: list[str]) -> int:
    """How many more networks Docker can make from its pools, given the subnets in use."""
    used = [ipaddress.ip_network(s, strict=False) for s in subnets]
    left = 0
    for base_text, size in pools:
        base = ipaddress.ip_network(base_text, strict=False)
        if size < base.prefixlen:
            continue
        taken: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
        wide = 0
        for net in used:
            if net.version != base.version or not net.overlaps(base):
                continue
            if net.prefixlen >= size:
                taken.add(net.supernet(new_prefix=size))
            else:
                wide += 2 ** (size - max(net.prefixlen, base.prefixlen))
        left += max(0, 2 ** (size - base.prefixlen) - wide - len(taken))
    return left


def _address_pools() -> Check:
    """Sessions share vncsess's networks (display, agents, offline agents): only those not
    made yet need a place in Docker's address pools, however many sessions run."""
    pools, source = _pools()
    left = pools_left(pools, docker.network_subnets())
    missing = docker.shared_networks_missing()
    shared = len(docker.SHARED_NETWORKS)
    summary = (
        f"sessions share {shared} networks, {shared - len(missing)} made; "
        f"{left} more can be made ({source})"
    )
    if left < len(missing):
        fix = (
            'remove networks you no longer use (docker network prune), or add "default-address-'
            'pools": [{"base": "10.201.0.0/16", "size": 24}] to /etc/docker/daemon.json and '
            "restart Docker"
        )
        return Check("address pools", PROBLEM, summary, fix)
    return Check("address pools", OK, summary)


# ------------------------------------------------------------------ model, ports, driver


def _model(settings: Settings) -> Check:
    from vncsess.sessions import DEFAULT_MODELS, KEY_NAMES, read_env_file

    where = settings.env_file
    _, values = read_env_file(where, explicit=False)
    keys = [k for k in KEY_NAMES if values.get(k)]
    if keys:
        providers = sorted({DEFAULT_MODELS[k].split(":")[0] for k in keys})
        return Check(
            "model",
            OK,
            f"{', '.join(providers)} key in {where} (default --llm {DEFAULT_MODELS[keys[0]]})",
        )
    found = f"no model key in {where}" if where else "no env file with model keys"
    return Check(
        "model",
        WARNING,
        found + ": only `--task demo` (the offline demo) runs without --llm",
        "put OPENAI_API_KEY=... (or ANTHROPIC_API_KEY, GOOGLE_API_KEY) in agent/.env or "
        "--env-file, or use --llm ollama:MODEL / --llm openai:MODEL --base-url URL",
    )


def _ports(settings: Settings, docker_ok: bool) -> Iterator[Check]:
    try:
        bind = config.parse_bind(settings.bind)
        public = config.parse_public_host(settings.public_host)
    except VncsessError as exc:
        yield Check("ports", PROBLEM, exc.message, exc.hint)
        return
    if public:
        yield _public_host(public)
    if not docker_ok:
        return
    image = next(
        (s.tag for s in images.specs(settings) if docker.image_labels(s.tag) is not None), ""
    )
    if not image:
        yield Check(
            "ports",
            WARNING,
            "not checked: no vncsess image to listen with yet",
            "run `vncsess build`, then `vncsess doctor` again",
        )
        return
    connect = "127.0.0.1" if ipaddress.ip_address(bind).is_unspecified else bind
    failure = docker.probe_published_port(image, bind, connect)
    if failure:
        yield Check(
            "ports",
            PROBLEM,
            f"a port Docker published on {bind} cannot be reached here: {failure}",
            "check the firewall (iptables/nftables) and that dockerd runs with its "
            "userland proxy or iptables rules",
        )
    else:
        yield Check(
            "ports",
            OK,
            f"a port Docker published on {bind} answers at {connect}"
            + (" (every interface: open to the network)" if bind != connect else ""),
        )


def _public_host(host: str) -> Check:
    try:
        socket.getaddrinfo(host.strip("[]"), None)
    except (OSError, UnicodeError):
        return Check(
            "public host",
            WARNING,
            f"{host} (printed in URLs) does not resolve from this machine",
            "check the name, or unset PUBLIC_HOST / --public-host",
        )
    return Check("public host", OK, f"URLs name {host}")


def _storage_driver(info: dict[str, Any]) -> Check:
    driver = str(info.get("Driver") or "unknown")
    slow: dict[str, str] = {
        "fuse-overlayfs": "slower than overlay2: image builds and session starts take longer",
        "vfs": "copies every layer: very slow, and uses much more disk",
    }
    if driver in slow:
        return Check(
            "storage driver",
            WARNING,
            f"{driver}, {slow[driver]}",
            'use overlay2 where the kernel supports it ("storage-driver": "overlay2" in '
            "daemon.json; images must be rebuilt)",
        )
    return Check("storage driver", OK, driver)
