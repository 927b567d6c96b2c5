"""Shared fixtures. Docker tests run the real CLI against the real engine, each test run
with its own VNCSESS_HOME, and remove every session they started even when they fail."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The images the tests run, as vncsess itself picks them (a work tree that changes an image
# builds it under its own tag, so it does not rebuild the images another tree is testing).
VNC_IMAGE = os.environ.get("VNCSESS_VNC_IMAGE") or "vncsess-vnc"
AGENT_IMAGE = os.environ.get("VNCSESS_AGENT_IMAGE") or "vncsess-agent"
# Every session this test run starts carries this owner label, which sets them apart from a
# user's sessions (and another run's) on the same engine; the end-of-run sweep uses it.
RUN_OWNER = f"test-{os.getpid()}-{secrets.token_hex(3)}"


if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from vncsess.config import Settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-runtime-skip",
        action="store_true",
        default=IN_CI,
        help="Fail instead of skipping when Docker or the images are missing (default in CI).",
    )


def _docker_problem() -> str:
    if shutil.which("docker") is None:
        return "docker is not installed"
    r = subprocess.run(["docker", "version"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return "the Docker daemon does not answer"
    r = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        return "docker compose v2 is missing (run `make setup`)"
    for image in (VNC_IMAGE, AGENT_IMAGE):
        r = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, text=True, check=False
        )
        if r.returncode != 0:
            return f"image {image} is missing (run `make images`)"
    return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Live-cluster tests run only where a cluster is configured. Unlike Docker's, their
    skip is not turned into a failure in CI: no cluster can be had on these machines, and
    these tests are not counted as proof of anything when skipped."""
    if os.environ.get("KUBECONFIG"):
        return
    skip = pytest.mark.skip(reason="no KUBECONFIG: live Kubernetes tests not run")
    for item in items:
        if item.get_closest_marker("k8s"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_ready(request: pytest.FixtureRequest) -> Iterator[None]:
    problem = _docker_problem()
    if problem:
        if request.config.getoption("--no-runtime-skip"):
            pytest.fail(f"Docker test cannot run: {problem}", pytrace=False)
        pytest.skip(problem)
    yield
    _sweep()
    # vncsess creates its shared networks on first use and keeps them. The tests leave the
    # engine as they found it: remove each that no session (ours or a user's) uses (docker
    # refuses while a container is attached, which is the check).
    for network in ("vncsess-display", "vncsess-agents", "vncsess-agents-offline"):
        subprocess.run(["docker", "network", "rm", network], capture_output=True, check=False)


def _sweep() -> None:
    """Remove whatever this run left: sessions a crashed test never stopped (found by the
    run's owner label, whatever VNCSESS_HOME they used) and helper containers."""
    ps = ["docker", "ps", "-a", "--filter", f"label=vncsess.owner={RUN_OWNER}"]
    ids = subprocess.run(
        [*ps, "--format", '{{.Label "vncsess.session"}}'],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if ids:
        print(f"\nsweeping sessions a test left behind: {sorted(set(ids))}")
        subprocess.run(
            [sys.executable, "-m", "vncsess", "stop", *sorted(set(ids))],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    helpers = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=vncsess.test-helper={RUN_OWNER}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    if helpers:
        subprocess.run(["docker", "rm", "-f", *helpers], capture_output=True, check=False)


@dataclass
class Cli:
    """Runs the real `vncsess` command in a subprocess, in an isolated VNCSESS_HOME, and
    remembers every session it started so the fixture can remove them."""

    home: Path
    started: set[str] = field(default_factory=set)
    env_extra: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "VNCSESS_HOME": str(self.home),
                "VNCSESS_OWNER": RUN_OWNER,
                "COLUMNS": "200",
                "NO_COLOR": "1",
            }
        )
        env.update(self.env_extra)
        env.update(extra)
        return env

    def run(
        self, *args: str, timeout: float = 300, input: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """`vncsess ARGS`; keyword arguments are environment variables (`VNCSESS_X="1"`)."""
        return self.run_with(args, env, timeout=timeout, input=input)

    def run_with(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`vncsess ARGS` with ENV added to the environment (a mapping, for a test that
        has one: `run(**mapping)` could hide `timeout` in it, so mypy refuses that)."""
        proc = subprocess.run(
            [sys.executable, "-m", "vncsess", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**env),
            input=input,
            check=False,
        )
        self._remember(proc.stdout)
        return proc

    def _remember(self, stdout: str) -> None:
        try:
            data = json.loads(stdout)
        except ValueError:
            return
        if isinstance(data, dict) and "session_id" in data:
            self.started.add(data["session_id"])

    def up(self, *args: str, **env: str) -> dict[str, Any]:
        proc = self.run_with(["up", "--json", *args], env)
        assert proc.returncode == 0, f"up failed ({proc.returncode}): {proc.stderr}"
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def json(self, *args: str) -> Any:
        proc = self.run(*args, "--json")
        assert proc.returncode == 0, f"{args} failed ({proc.returncode}): {proc.stderr}"
        return json.loads(proc.stdout)

    def cleanup(self) -> None:
        if self.started:
            self.run("stop", *sorted(self.started), timeout=120)


@pytest.fixture
def cli(docker_ready: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cli]:
    c = Cli(home=tmp_path / "home")
    yield c
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for sid in sorted(c.started):
            print(_diagnose(c, sid))
    c.cleanup()


def _diagnose(c: Cli, sid: str) -> str:
    """What a failed test's session looked like: each container's state as Docker saw it,
    and the last log lines (printed by pytest under the failure)."""
    out = [f"--- session {sid} ---"]
    for svc in ("vnc", "agent"):
        r = subprocess.run(
            ["docker", "inspect", "--format",
             "{{json .State}} {{json .HostConfig.RestartPolicy}}", f"vncsess-{sid}-{svc}-1"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        out.append(f"docker inspect {svc}: {(r.stdout or r.stderr).strip()}")
    logs = c.run("logs", sid, "--tail", "40")
    out.append(f"logs:\n{logs.stdout}{logs.stderr}")
    return "\n".join(out)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def project_leftovers(session_id: str) -> list[str]:
    """Every container, network and volume that still carries the session's project label."""
    label = f"label=com.docker.compose.project=vncsess-{session_id}"
    out = []
    for cmd in (
        ["docker", "ps", "-aq", "--filter", label],
        ["docker", "network", "ls", "-q", "--filter", label],
        ["docker", "volume", "ls", "-q", "--filter", label],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out += r.stdout.split()
    return out


def docker_json(*args: str) -> Any:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


# A session whose agent talks to the scripted OpenAI-compatible server (see scripted_llm),
# which shares the agent's network namespace: its loopback.
LLM_FLAGS = ("--llm", "openai:scripted-model", "--base-url", "http://127.0.0.1:8000/v1")


@pytest.fixture
def scripted_llm(cli: Cli) -> Iterator[Callable[..., dict[str, Any]]]:
    """Start the scripted OpenAI-compatible server in a container of the agent image, in
    the network namespace of a session's agent (the agents' shared network lets no container
    reach another): the agent reaches it on its loopback, as it would a model server a user
    runs the same way. Returns a function that reads /calls."""
    started: list[str] = []

    def start(session_id: str, mode: str = "normal") -> Callable[[], dict[str, Any]]:
        name = f"vncsess-test-llm-{session_id}"
        subprocess.run(
            ["docker", "run", "-d", "--name", name,
             "--network", f"container:vncsess-{session_id}-agent-1",
             "--label", f"vncsess.test-helper={RUN_OWNER}", "--read-only", "--cap-drop", "ALL",
             "-v", f"{ROOT / 'tests' / 'fixtures'}:/fixtures:ro",
             "--entrypoint", "/opt/venv/bin/python", AGENT_IMAGE,
             "/fixtures/scripted_openai_server.py", "8000", mode],
            check=True, capture_output=True,
        )  # fmt: skip
        started.append(name)

        def calls() -> dict[str, Any]:
            out = subprocess.run(
                ["docker", "exec", name, "/opt/venv/bin/python", "-c",
                 "import urllib.request;print(urllib.request.urlopen("
                 "'http://127.0.0.1:8000/calls').read().decode())"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            data: dict[str, Any] = json.loads(out)
            return data

        return calls

    yield start  # type: ignore[misc]
    for name in started:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


CHROMIUM = os.environ.get("VNCSESS_TEST_CHROMIUM") or "/usr/bin/chromium"


def lose_once(page: Any, pattern: str) -> list[str]:
    """Make the first request PAGE sends for PATTERN fail, as when a browser sees its
    network change and aborts what is in flight; the list gets its URL once it happened."""
    lost: list[str] = []

    def route(r: Any) -> None:
        if lost:
            r.continue_()
        else:
            lost.append(r.request.url)
            r.abort("internetdisconnected")

    page.route(pattern, route)
    return lost


@pytest.fixture(scope="session")
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Debian's Chromium driven by Playwright, headless (no browser can be downloaded here:
    `make test` installs Debian's `chromium`). One browser for the run; tests open their
    own contexts."""
    if not Path(CHROMIUM).exists():
        problem = f"no Chromium at {CHROMIUM} (`make browser` installs Debian's)"
        if request.config.getoption("--no-runtime-skip"):
            pytest.fail(f"browser test cannot run: {problem}", pytrace=False)
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


# ------------------------------------------------ the HTTP face in-process, with no Docker


@pytest.fixture
def offline_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of a fresh VNCSESS_HOME, with no env file and no engine behind them."""
    from vncsess import config

    monkeypatch.setenv("VNCSESS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VNCSESS_ENV_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    return config.load()


@contextlib.contextmanager
def offline_client(
    settings: Settings, token: str, monkeypatch: pytest.MonkeyPatch, **client_args: Any
) -> Iterator[TestClient]:
    """The API (and dashboard) driven in-process by Starlette's TestClient, with no Docker on
    purpose: a request that gets past auth to the engine fails with 503, rather than start
    sessions or prune the engine's. That is how tests tell "let in" (503) from "refused"."""
    from fastapi.testclient import TestClient

    from vncsess import api

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    app = api.create_app(settings, token, watch=False)
    with TestClient(app, raise_server_exceptions=False, **client_args) as c:
        yield c
