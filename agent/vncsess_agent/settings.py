"""Runner settings: environment variables and the secret files under /run/secrets.

Every input is optional: a missing file or variable falls back to a default, and problems that
must fail the run (an unknown provider, a missing key) are raised later, when the model is made.

The model keys (/run/secrets/llm_env) stay in Settings.llm_env and are handed to the chat model
by llm.make_llm. They never enter os.environ: every Chromium the runner starts inherits the
runner's environment (browser-use's launcher passes no env of its own), and Chromium runs
without its sandbox, so a compromised renderer could read whatever that environment holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vncsess_agent.protocol import SCRIPT_ARGS_FILE, SCRIPT_FILE, SCRIPT_MOUNT

DEMO_PORT = 8765
DEMO_URL = f"http://127.0.0.1:{DEMO_PORT}/"
WAITING_URL = f"http://127.0.0.1:{DEMO_PORT}/waiting.html"

# The task run by `VNCSESS_LLM=demo` (and for a task that is the literal word `demo`). It names
# exactly one URL, so browser-use opens it directly before the first model call.
DEMO_TASK = (
    f"Open {DEMO_URL} and click the button that reveals the demo secret. "
    "Then finish, reporting the exact sentence with the secret that the page shows."
)

DEFAULT_MAX_STEPS = 25
DEFAULT_RESOLUTION = (1280, 800)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Settings:
    display: str
    xauthority: str | None
    width: int
    height: int
    session_id: str
    llm: str
    llm_base_url: str | None
    max_steps: int
    demo_step_delay: float
    display_timeout: float
    ttl: float  # seconds until the session expires; 0 = never
    data_dir: Path
    secrets_dir: Path
    task: str
    task_source: str  # "file", "missing", or "demo" (the task was the word `demo`)
    # KEY=VALUE from /run/secrets/llm_env: in this process's memory only (see above).
    llm_env: dict[str, str] = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list)
    # --idle-timeout: seconds without activity before the session ends itself; 0 = never.
    # The activity dir is shared with the vnc container (see activity.py).
    idle_timeout: float = 0.0
    activity_dir: Path = Path("/activity")
    # `up --script`: where the user's script is mounted (read-only); see protocol.py.
    script_dir: Path = Path(SCRIPT_MOUNT)
    # VNCSESS_POOL=1: started for the warm pool; the claim (protocol.CLAIM_FILE) brings the
    # model, its keys and the limits later.
    pool: bool = False

    @property
    def script_file(self) -> Path | None:
        """The user's script when the session runs one (`up --script`), else None."""
        path = self.script_dir / SCRIPT_FILE
        return path if path.is_file() else None

    @property
    def script_args(self) -> list[str]:
        try:
            args = json.loads((self.script_dir / SCRIPT_ARGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [str(a) for a in args] if isinstance(args, list) else []

    @property
    def llm_env_names(self) -> list[str]:
        return list(self.llm_env)

    @property
    def secret_values(self) -> list[str]:
        """What the logs and the result must never show."""
        return [value for value in self.llm_env.values() if value]

    @property
    def display_number(self) -> int:
        match = re.match(r"^[^:]*:(\d+)", self.display)
        return int(match.group(1)) if match else 0

    @property
    def task_digest(self) -> str:
        data = self.task.encode("utf-8")
        return f"sha256={hashlib.sha256(data).hexdigest()} bytes={len(data)} chars={len(self.task)}"

    @property
    def downloads_dir(self) -> Path:
        return self.data_dir / "downloads"

    @property
    def uploads_dir(self) -> Path:
        """Files vncsess put into the session (a read-only mount)."""
        return self.data_dir / "uploads"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _parse_resolution(value: str, warnings: list[str]) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{2,5})\s*[xX]\s*(\d{2,5})(?:[xX]\d+)?\s*", value or "")
    if not match:
        if value:
            warnings.append(
                f"RESOLUTION={value!r} is not WxH; "
                f"using {DEFAULT_RESOLUTION[0]}x{DEFAULT_RESOLUTION[1]}"
            )
        return DEFAULT_RESOLUTION
    return int(match.group(1)), int(match.group(2))


def _parse_int(name: str, default: int, warnings: list[str]) -> int:
    raw = _env(name)
    if not raw:
        return default
    try:
        value = int(raw)
        if value < 1:
            raise ValueError
        return value
    except ValueError:
        warnings.append(f"{name}={raw!r} is not a positive integer; using {default}")
        return default


def _parse_float(name: str, default: float, warnings: list[str]) -> float:
    raw = _env(name)
    if not raw:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        warnings.append(f"{name}={raw!r} is not a number; using {default}")
        return default


def read_task(secrets_dir: Path, warnings: list[str]) -> tuple[str, bool]:
    """The task text exactly as written (no stripping), and whether the file existed."""
    path = secrets_dir / "task"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "", False
    except OSError as exc:
        warnings.append(f"cannot read the task file: {exc.strerror or exc}")
        return "", False
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        warnings.append("the task file is not valid UTF-8; undecodable bytes were replaced")
        return data.decode("utf-8", errors="replace"), True


def load_llm_env(secrets_dir: Path, warnings: list[str]) -> dict[str, str]:
    """/run/secrets/llm_env as a dict, never put into os.environ; never logs a value."""
    path = secrets_dir / "llm_env"
    if not path.is_file():
        return {}
    try:
        from dotenv import dotenv_values

        entries = dotenv_values(path, interpolate=False, encoding="utf-8")
    except Exception as exc:  # unreadable or undecodable: say so, without content
        warnings.append(f"cannot read llm_env ({type(exc).__name__}); no keys loaded")
        return {}
    return {
        name: value
        for name, value in entries.items()
        if value is not None and _ENV_NAME.match(name or "")
    }


def load() -> Settings:
    warnings: list[str] = []
    secrets_dir = Path(_env("VNCSESS_SECRETS_DIR", "/run/secrets") or "/run/secrets")
    data_dir = Path(_env("VNCSESS_DATA_DIR", "/data") or "/data")
    width, height = _parse_resolution(_env("RESOLUTION"), warnings)
    llm = _env("VNCSESS_LLM", "demo") or "demo"

    task, task_file_exists = read_task(secrets_dir, warnings)
    task_source = "file" if task_file_exists else "missing"
    if task.strip() == "demo":
        task, task_source = DEMO_TASK, "demo"

    xauthority = os.environ.get("XAUTHORITY") or None
    return Settings(
        display=_env("DISPLAY", ":99") or ":99",
        xauthority=xauthority,
        width=width,
        height=height,
        session_id=_env("SESSION_ID"),
        llm=llm,
        llm_base_url=_env("VNCSESS_LLM_BASE_URL") or None,
        max_steps=_parse_int("VNCSESS_MAX_STEPS", DEFAULT_MAX_STEPS, warnings),
        demo_step_delay=_parse_float("VNCSESS_DEMO_STEP_DELAY", 1.0, warnings),
        display_timeout=_parse_float("VNCSESS_DISPLAY_TIMEOUT", 30.0, warnings),
        ttl=_parse_float("VNCSESS_TTL", 0.0, warnings),
        data_dir=data_dir,
        secrets_dir=secrets_dir,
        task=task,
        task_source=task_source,
        llm_env=load_llm_env(secrets_dir, warnings),
        warnings=warnings,
        idle_timeout=_parse_float("VNCSESS_IDLE_TIMEOUT", 0.0, warnings),
        activity_dir=Path(_env("VNCSESS_ACTIVITY_DIR", "/activity") or "/activity"),
        script_dir=Path(_env("VNCSESS_SCRIPT_DIR", SCRIPT_MOUNT) or SCRIPT_MOUNT),
        pool=_env("VNCSESS_POOL") == "1",
    )
