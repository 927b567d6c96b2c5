"""Settings: flags > environment (VNCSESS_*) > a .env file in the working directory > defaults.

One object holds every path and default, so tests redirect everything with VNCSESS_HOME.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vncsess.errors import BadInput

DEFAULT_RESOLUTION = "1280x720"
_RESOLUTION = re.compile(r"^(\d{2,5})x(\d{2,5})$")
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
        return "localhost" if self.bind in ("0.0.0.0", "::", "") else self.bind


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


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_duration(value: str) -> int:
    """`90`, `90s`, `30m`, `2h`, `1h30m` -> seconds; 0 or `never` means no limit."""
    text = value.strip().lower()
    if text in ("never", "none", "0"):
        return 0
    m = _DURATION.match(text)
    if not text or not m or not any(m.groups()):
        raise BadInput(
            f"malformed duration {value!r}", hint="use seconds or units: 90s, 30m, 2h, 1h30m"
        )
    h, mi, sec = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + sec


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
        dotenv=dotenv,
    )
