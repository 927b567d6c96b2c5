"""Settings: flags > environment (VNCSESS_*) > a .env file in the working directory > defaults.

One object holds every path and default, so tests redirect everything with VNCSESS_HOME.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vncsess.errors import BadInput

DEFAULT_RESOLUTION = "1280x720"
_RESOLUTION = re.compile(r"^(\d+)x(\d+)$")
MIN_SIDE, MAX_SIDE = 320, 7680


@dataclass(frozen=True)
class Settings:
    home: Path
    cache: Path
    bind: str = "127.0.0.1"
    public_host: str = ""
    vnc_image: str = "vncsess-vnc"
    agent_image: str = "vncsess-agent"
    resolution: str = DEFAULT_RESOLUTION
    env_file: Path | None = None
    # VNCSESS_OWNER: a label on every session started with these settings, that sets them
    # apart from others on the same engine (a test run, a CI job); "" for none.
    owner: str = ""
    engine: str = "docker"  # VNCSESS_ENGINE: what runs the sessions (docker | kubernetes)
    # The Kubernetes engine (see docs/kubernetes.md). Empty kubeconfig: the in-cluster
    # service account when vncsess runs in a Pod, else KUBECONFIG or ~/.kube/config.
    kube_config: str = ""
    kube_context: str = ""
    kube_namespace: str = "vncsess"
    # The ReadWriteMany claim whose root holds every session's data dir; vncsess itself
    # mounts it at $VNCSESS_HOME/sessions, the Pods mount their own subPaths of it.
    kube_data_claim: str = "vncsess-data"
    # How long `up` waits for the display to answer before it gives up and cleans away.
    ready_timeout: float = 60.0
    # The demo model pauses between steps so people can follow it; tests set 0.
    demo_step_delay: float = 1.0
    # Where debootstrap fetches the base image's packages when no registry answers.
    debian_mirror: str = "http://deb.debian.org/debian"
    # File transfer (files.py): the largest upload, how many a session holds, and the
    # command every upload is scanned with (the file's path appended; "" for none).
    upload_max_bytes: int = 100 * 1024 * 1024
    upload_max_files: int = 50
    scan_command: str = ""
    dotenv: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def sessions_dir(self) -> Path:
        return self.home / "sessions"

    def session_dir(self, session_id: str) -> Path:
        return self.sessions_dir / session_id

    def url_host(self) -> str:
        """The host printed in URLs: PUBLIC_HOST if set, else the bind address itself
        (a wildcard bind gets `localhost`, which at least works on this machine)."""
        if self.public_host:
            return self.public_host
        if self.bind in ("0.0.0.0", "::", ""):
            return "localhost"
        return f"[{self.bind}]" if ":" in self.bind else self.bind


def parse_resolution(value: str) -> tuple[int, int]:
    """`1280x720` -> (1280, 720), or a BadInput that says what is accepted."""
    m = _RESOLUTION.match(value.strip().lower())
    if not m:
        raise BadInput(
            f"malformed resolution {value!r}",
            hint="use WIDTHxHEIGHT, for example 1280x720",
        )
    w, h = int(m.group(1)), int(m.group(2))
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise BadInput(
            f"resolution {value!r} is out of range",
            hint=f"each side must be between {MIN_SIDE} and {MAX_SIDE} pixels",
        )
    return w, h


# One DNS label: letters, digits and inner hyphens (RFC 1123), at most 63 characters.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def parse_bind(value: str) -> str:
    """The address noVNC is published on: an IP address of this machine (v4 or v6).

    Docker accepts only an address here, and an address the machine does not have fails
    deep inside compose; both are bad input, said before anything starts."""
    text = value.strip().removeprefix("[").removesuffix("]")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise BadInput(
            f"--bind {value!r} is not an IP address",
            hint="use 127.0.0.1 (the default), 0.0.0.0 for every interface, or one of this "
            "machine's addresses; --public-host sets the name printed in URLs",
        ) from None
    if engine_is_local() and not addr.is_unspecified:
        import socket  # here, not at the top: every command imports config, few bind

        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((str(addr), 0))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # other failures: compose has its say
                    raise BadInput(
                        f"--bind {value!r} is not an address of this machine",
                        hint="use 127.0.0.1, 0.0.0.0, or an address `ip addr` lists",
                    ) from None
    return str(addr)


def engine_is_local() -> bool:
    """A remote engine (DOCKER_HOST=tcp://...) publishes ports on its own addresses."""
    host = os.environ.get("DOCKER_HOST", "")
    return not host or host.startswith("unix://")


def parse_public_host(value: str) -> str:
    """The host printed in URLs: a DNS name or an IP address (IPv6 comes back in brackets,
    as a URL needs it). Anything else would print a URL that no browser opens."""
    text = value.strip().rstrip(".")
    if not text:
        return ""
    try:
        addr = ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        return f"[{addr}]" if addr.version == 6 else str(addr)
    labels = text.split(".")
    if len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        raise BadInput(
            f"--public-host {value!r} is not a host name or IP address",
            hint="give only the host, for example vnc.example.com or 203.0.113.7 (no scheme, "
            "port, path or spaces)",
        )
    return text


def for_new_session(settings: Settings) -> Settings:
    """Settings checked for starting a session: the bind address and the public host are
    validated (and normalised), so bad input stops `up` before anything starts."""
    return dataclasses.replace(
        settings,
        bind=parse_bind(settings.bind),
        public_host=parse_public_host(settings.public_host),
    )


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_duration(value: str) -> int:
    """`90`, `90s`, `30m`, `2h`, `1h30m`, `7d` -> seconds; 0 or `never` means no limit."""
    text = value.strip().lower()
    if text in ("never", "none", "0"):
        return 0
    m = _DURATION.match(text)
    if not text or not m or not any(m.groups()):
        raise BadInput(
            f"malformed duration {value!r}", hint="use seconds or units: 90s, 30m, 2h, 1h30m, 7d"
        )
    d, h, mi, sec = (int(g) if g else 0 for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + sec


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise BadInput(f"{name}={value!r} is not a number of seconds", hint="for example 60")
    return seconds


_SIZE = re.compile(r"^(\d+)([kmg]i?b?|b)?$")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(name: str, value: str) -> int:
    """`100m`, `2g`, `500k`, `1048576` -> bytes (binary units)."""
    m = _SIZE.match(value.strip().lower())
    if not m or int(m.group(1)) <= 0:
        raise BadInput(f"{name}={value!r} is not a size", hint="for example 100m, 2g or 500k")
    return int(m.group(1)) * _UNITS[(m.group(2) or "")[:1]]


def _count(name: str, value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise BadInput(f"{name}={value!r} is not a positive whole number", hint="for example 50")
    return int(value)


_OWNER = re.compile(r"^[A-Za-z0-9._-]{0,63}$")


def _owner(value: str) -> str:
    if not _OWNER.match(value):
        raise BadInput(
            f"VNCSESS_OWNER={value!r} is not a valid label value",
            hint="use up to 63 letters, digits, '.', '_' or '-'",
        )
    return value


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load(**flags: str | Path | None) -> Settings:
    """Build Settings; keyword arguments are flag values (None = not given)."""
    dotenv = _read_dotenv(Path.cwd() / ".env")

    def pick(flag: str, *names: str, default: str = "") -> str:
        value = flags.get(flag)
        if value not in (None, ""):
            return str(value)
        for source in (os.environ, dotenv):
            for name in names:
                if source.get(name):
                    return source[name]
        return default

    xdg_data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share")
    xdg_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = Path(pick("home", "VNCSESS_HOME", default=str(xdg_data / "vncsess"))).expanduser()
    env_file = pick("env_file", "VNCSESS_ENV_FILE")
    if not env_file and (Path.cwd() / "agent" / ".env").is_file():
        env_file = str(Path.cwd() / "agent" / ".env")  # where the seed keeps LLM keys
    return Settings(
        home=home.resolve(),
        cache=Path(pick("cache", "VNCSESS_CACHE", default=str(xdg_cache / "vncsess"))),
        bind=pick("bind", "VNCSESS_BIND", default="127.0.0.1"),
        public_host=pick("public_host", "VNCSESS_PUBLIC_HOST", "PUBLIC_HOST"),
        vnc_image=pick("vnc_image", "VNCSESS_VNC_IMAGE", default="vncsess-vnc"),
        agent_image=pick("agent_image", "VNCSESS_AGENT_IMAGE", default="vncsess-agent"),
        resolution=pick("resolution", "VNCSESS_RESOLUTION", default=DEFAULT_RESOLUTION),
        env_file=Path(env_file).expanduser() if env_file else None,
        engine=pick("engine", "VNCSESS_ENGINE", default="docker"),
        owner=_owner(pick("owner", "VNCSESS_OWNER")),
        kube_config=pick("kube_config", "VNCSESS_KUBECONFIG"),
        kube_context=pick("kube_context", "VNCSESS_KUBE_CONTEXT"),
        kube_namespace=pick("kube_namespace", "VNCSESS_KUBE_NAMESPACE", default="vncsess"),
        kube_data_claim=pick("kube_data_claim", "VNCSESS_KUBE_DATA_CLAIM", default="vncsess-data"),
        ready_timeout=_seconds(
            "VNCSESS_READY_TIMEOUT", pick("ready_timeout", "VNCSESS_READY_TIMEOUT", default="60")
        ),
        demo_step_delay=_seconds(
            "VNCSESS_DEMO_STEP_DELAY",
            pick("demo_step_delay", "VNCSESS_DEMO_STEP_DELAY", default="1.0"),
        ),
        debian_mirror=pick(
            "debian_mirror", "VNCSESS_DEBIAN_MIRROR", default=Settings.debian_mirror
        ),
        upload_max_bytes=parse_size(
            "VNCSESS_UPLOAD_MAX_BYTES",
            pick("upload_max_bytes", "VNCSESS_UPLOAD_MAX_BYTES", default="100m"),
        ),
        upload_max_files=_count(
            "VNCSESS_UPLOAD_MAX_FILES",
            pick("upload_max_files", "VNCSESS_UPLOAD_MAX_FILES", default="50"),
        ),
        scan_command=pick("scan_command", "VNCSESS_SCAN_COMMAND"),
        dotenv=dotenv,
    )
