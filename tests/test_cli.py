"""The command line as a newcomer meets it: first-run traps, doctor, completion, progress,
url/open. Most run without Docker (in process with CliRunner, or the real command in a
subprocess); the ones marked `docker` use the real engine."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.conftest import Cli
from vncsess import cli, commands, config, console, datadir, doctor, images
from vncsess.errors import BadInput, BuildFailed, ExitCode, VncsessError
from vncsess.models import Result

runner = CliRunner()
VNCSESS = str(Path(sys.executable).with_name("vncsess"))
# An engine that cannot be reached: a command that got as far as Docker would exit 3, so
# exit 2 proves a check refused before anything started.
NO_DOCKER = "unix:///nonexistent/docker.sock"


def run(
    *args: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """The real `vncsess` in a subprocess (stderr not a terminal, as in CI)."""
    full = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [VNCSESS, *args], capture_output=True, text=True, env=full, timeout=120, check=False, **kw
    )


def assert_one_error(stderr: str, *words: str) -> None:
    """A failure a person can act on: one `error:` line, at most one `hint:` line, nothing
    else (no traceback, no stray output)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) in (1, 2), stderr
    assert lines[0].startswith("error: "), stderr
    assert len(lines) == 1 or lines[1].startswith("hint: "), stderr
    for w in words:
        assert w in stderr, (w, stderr)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated VNCSESS_HOME, no model keys, and a working directory without agent/.env."""
    h = tmp_path / "home"
    monkeypatch.setenv("VNCSESS_HOME", str(h))
    monkeypatch.setenv("VNCSESS_CACHE", str(tmp_path / "cache"))  # not another build's lock
    monkeypatch.chdir(tmp_path)
    for name in ("VNCSESS_ENV_FILE", "VNCSESS_BIND", "VNCSESS_PUBLIC_HOST", "PUBLIC_HOST"):
        monkeypatch.delenv(name, raising=False)
    return h


# ------------------------------------------------------------------ first-run traps


def test_a_real_task_without_a_model_is_refused_before_anything_starts(home: Path) -> None:
    proc = run("up", "--task", "find the cheapest flight to Lisbon", env={"DOCKER_HOST": NO_DOCKER})
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    assert_one_error(proc.stderr, "no model is configured", "agent/.env", "--llm", "--base-url")
    assert "`--task demo` runs the offline demo" in proc.stderr
    assert not (home / "sessions").exists() or not any((home / "sessions").iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ["--task", "demo"],  # the demo needs no model
        [],  # an idle desktop needs none either
        ["--task", "do it", "--llm", "ollama:qwen3"],  # a model without a key
        ["--task", "do it", "--env-file", "{keys}"],  # a key in an env file
    ],
)
def test_with_a_model_or_the_demo_up_goes_on_to_docker(
    args: list[str], home: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.env"
    keys.write_text("OPENAI_API_KEY=sk-test-not-real\n")
    args = [a.replace("{keys}", str(keys)) for a in args]
    proc = run("up", *args, env={"DOCKER_HOST": NO_DOCKER})
    # Past the model check, it stops only at the unreachable engine.
    assert proc.returncode == ExitCode.ENVIRONMENT, proc.stderr
    assert_one_error(proc.stderr, "Docker is not running")
    assert "sk-test-not-real" not in proc.stdout + proc.stderr


def test_an_unwritable_data_dir_is_one_line_with_a_hint() -> None:
    proc = run("up", env={"VNCSESS_HOME": "/proc/nope", "DOCKER_HOST": NO_DOCKER})
    assert proc.returncode == ExitCode.ENVIRONMENT, proc.stderr
    assert_one_error(proc.stderr, "cannot write /proc/nope/sessions", "VNCSESS_HOME")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system with no room left: a 1 MiB tmpfs, filled."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "home" / "sessions").mkdir(parents=True)
        with open(mnt / "filler", "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_data_dir_is_one_line_with_a_hint(full_disk: Path) -> None:
    proc = run("up", env={"VNCSESS_HOME": str(full_disk / "home"), "DOCKER_HOST": NO_DOCKER})
    assert proc.returncode == ExitCode.ENVIRONMENT, proc.stderr
    assert_one_error(proc.stderr, "No space left on device", "VNCSESS_HOME")


def test_a_nearly_full_data_dir_is_refused_before_it_fills(tmp_path: Path) -> None:
    """Writable, but with less room than a session needs (4 MiB): refused all the same."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        proc = run("up", env={"VNCSESS_HOME": str(mnt / "home"), "DOCKER_HOST": NO_DOCKER})
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert proc.returncode == ExitCode.ENVIRONMENT, proc.stderr
    assert_one_error(proc.stderr, "No space left on device", "VNCSESS_HOME")


def test_data_dir_creation_failures_are_vncsess_errors(full_disk: Path) -> None:
    """Where the data dir is made (after the early check), a full disk is still one line."""
    d = datadir.DataDir(full_disk / "home" / "sessions" / "abcd1234")
    with pytest.raises(VncsessError) as exc:
        d.create(datadir.new_secrets("task" * 1000, ""))
    assert "No space left on device" in exc.value.message
    with pytest.raises(VncsessError) as exc:
        datadir.DataDir(Path("/proc/nope/x")).create(datadir.new_secrets("", ""))
    assert "cannot write /proc/nope/x" in exc.value.message


BAD_PUBLIC_HOSTS = ["a b", "http://vnc.example.com", "vnc.example.com:8080", "-x.com", "a..b"]
BAD_BINDS = ["999.1.1.1", "localhost", "a b", "192.0.2.1", "::ffff:1:2:3:4:5:6:7"]


@pytest.mark.parametrize("value", BAD_PUBLIC_HOSTS)
def test_public_host_is_validated_before_anything_starts(value: str, home: Path) -> None:
    proc = run("up", "--public-host", value, env={"DOCKER_HOST": NO_DOCKER})
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    assert_one_error(proc.stderr, "not a host name or IP address", repr(value))


@pytest.mark.parametrize("value", BAD_BINDS)
def test_bind_is_validated_before_anything_starts(value: str, home: Path) -> None:
    proc = run("up", "--bind", value, env={"DOCKER_HOST": NO_DOCKER})
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    assert_one_error(proc.stderr, "--bind")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("vnc.example.com", "vnc.example.com"),
        ("vnc.example.com.", "vnc.example.com"),
        ("203.0.113.7", "203.0.113.7"),
        ("::1", "[::1]"),
        ("[2001:db8::1]", "[2001:db8::1]"),
        ("", ""),
    ],
)
def test_good_public_hosts_are_kept_url_ready(value: str, expected: str) -> None:
    assert config.parse_public_host(value) == expected


def test_good_bind_addresses_pass(tmp_path: Path) -> None:
    assert config.parse_bind("127.0.0.1") == "127.0.0.1"
    assert config.parse_bind("0.0.0.0") == "0.0.0.0"
    assert config.parse_bind("[::]") == "::"
    s = config.Settings(home=tmp_path, cache=tmp_path, bind="::1")
    assert s.url_host() == "[::1]", "an IPv6 address in a URL needs brackets"


@pytest.mark.parametrize(("value", "word"), [("100000x100000", "out of range"), ("0x0", "out")])
def test_a_huge_resolution_is_out_of_range_not_malformed(value: str, word: str) -> None:
    proc = run("up", "--resolution", value, env={"DOCKER_HOST": NO_DOCKER})
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    assert_one_error(proc.stderr, word, "between 320 and 7680")
    assert "malformed" not in proc.stderr


# ------------------------------------------------------------------ outside text, literally

MARKUP = "see [/docs] and [note] and [bold red]not bold[/] :thumbs_up: \x1b]0;pwned\x07"


def _result(text: str, steps: int, errors: list[str] | None = None) -> Result:
    return Result(
        status="failed", success=False, final_text=text, steps=steps, urls=[],
        errors=errors or [], llm="demo", started_at=None, finished_at=None, duration_s=1.5,
        first_navigation_s=None,
    )  # fmt: skip


def _capture(monkeypatch: pytest.MonkeyPatch, terminal: bool = False) -> tuple[Console, Console]:
    o = Console(
        record=True, markup=False, emoji=False, highlight=False, width=300, force_terminal=terminal
    )
    e = Console(
        record=True, markup=False, emoji=False, highlight=False, width=300, force_terminal=terminal
    )
    monkeypatch.setattr(console, "out", o)
    monkeypatch.setattr(console, "err", e)
    return o, e


def test_agent_text_and_errors_print_literally(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = _capture(monkeypatch)
    cli._print_result(_result(MARKUP, 1, errors=[f"error from the page: {MARKUP}"]))
    text_out, text_err = out.export_text(), err.export_text()
    for shown in (text_out, text_err):
        assert "[/docs]" in shown and "[note]" in shown and "[bold red]not bold[/]" in shown
        assert ":thumbs_up:" in shown, "emoji codes are not replaced"
        assert "\x1b" not in shown and "\\x1b]0;pwned\\x07" in shown, "control characters shown"


def test_the_consoles_themselves_print_strings_literally(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Defence in depth: even a plain string given to the consoles is not markup."""
    console.err.print("[note] [/docs] :thumbs_up:")
    console.out.print("[bold]x[/]")
    captured = capsys.readouterr()
    assert captured.err.strip() == "[note] [/docs] :thumbs_up:"
    assert captured.out.strip() == "[bold]x[/]"


def test_failed_after_one_step_is_grammatical(monkeypatch: pytest.MonkeyPatch) -> None:
    _, err = _capture(monkeypatch)
    cli._print_result(_result("x", 1))
    cli._print_result(_result("x", 3))
    text = err.export_text()
    assert "failed after 1 step (1.5s)" in text
    assert "failed after 3 steps (1.5s)" in text
    assert "1 steps" not in text


@pytest.mark.parametrize(
    "args", [["up", "--name", "[/docs]"], ["up", "--name", "[note]"], ["up", "--bind", "[/x]"]]
)
def test_errors_quoting_input_print_it_literally(args: list[str], home: Path) -> None:
    proc = run(*args, env={"DOCKER_HOST": NO_DOCKER})
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    assert_one_error(proc.stderr, args[-1])


@pytest.mark.docker
def test_result_with_markup_prints_literally_end_to_end(docker_ready: None, home: Path) -> None:
    """`vncsess result` of a stopped session reads its data dir: the text is the agent's."""
    agent = home / "sessions" / "0badc0de" / "agent"
    agent.mkdir(parents=True)
    (agent / "result.json").write_text(
        json.dumps({"status": "succeeded", "success": True, "final_text": MARKUP, "steps": 1})
    )
    proc = run("result", "0badc0de")
    assert proc.returncode == 0, proc.stderr
    assert "[/docs] and [note] and [bold red]not bold[/]" in proc.stdout
    assert "succeeded after 1 step" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ the catch-all


def _explode(*_: Any, **__: Any) -> Any:
    api_key = "sk-must-never-print-0123"  # a local a traceback with locals would show
    raise RuntimeError(f"boom [/docs] {len(api_key)}")


def test_an_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    from vncsess import sessions

    monkeypatch.setattr(sessions, "list_sessions", _explode)
    monkeypatch.delenv("VNCSESS_DEBUG", raising=False)
    result = runner.invoke(cli.app, ["ls"])
    assert result.exit_code == ExitCode.UNEXPECTED, result.output
    assert_one_error(result.stderr, "unexpected RuntimeError: boom [/docs] 24", "--debug")
    assert "sk-must-never-print" not in result.output


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_but_never_locals(
    how: str, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    from vncsess import sessions

    monkeypatch.setattr(sessions, "list_sessions", _explode)
    if how == "env":
        monkeypatch.setenv("VNCSESS_DEBUG", "1")
    result = runner.invoke(cli.app, ["--debug", "ls"] if how == "flag" else ["ls"])
    assert result.exit_code == ExitCode.UNEXPECTED
    assert "Traceback" in result.stderr and "_explode" in result.stderr
    assert "sk-must-never-print" not in result.output


def test_an_os_error_is_one_line_with_its_file(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    from vncsess import sessions

    def denied(*_: Any, **__: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/shots/x.png")

    monkeypatch.setattr(sessions, "list_sessions", denied)
    monkeypatch.delenv("VNCSESS_DEBUG", raising=False)
    result = runner.invoke(cli.app, ["ls"])
    assert result.exit_code == ExitCode.ENVIRONMENT
    assert_one_error(result.stderr, "Permission denied: /srv/shots/x.png")


# ------------------------------------------------------------------ doctor


def test_doctor_without_docker_says_so_and_how_to_fix_it(home: Path) -> None:
    proc = run("doctor", env={"DOCKER_HOST": NO_DOCKER})
    assert proc.returncode == ExitCode.ENVIRONMENT, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("problem") and "docker" in first and "not running" in first
    assert "fix: start it" in proc.stdout
    data = json.loads(run("doctor", "--json", env={"DOCKER_HOST": NO_DOCKER}).stdout)
    assert data["ok"] is False
    docker_check = data["checks"][0]
    assert docker_check["name"] == "docker" and docker_check["status"] == "problem"
    assert docker_check["fix"]


def test_doctor_names_the_provider_never_the_key(home: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.env"
    keys.write_text("ANTHROPIC_API_KEY=sk-ant-secret-value-42\n")
    proc = run("doctor", "--json", env={"DOCKER_HOST": NO_DOCKER, "VNCSESS_ENV_FILE": str(keys)})
    model = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "model")
    assert model["status"] == "ok" and "anthropic" in model["summary"]
    assert "sk-ant-secret" not in proc.stdout + proc.stderr
    proc = run("doctor", "--json", env={"DOCKER_HOST": NO_DOCKER})
    model = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "model")
    assert model["status"] == "warning" and "--task demo" in model["summary"]


def test_doctor_finds_an_unwritable_home_and_a_bad_bind() -> None:
    proc = run(
        "doctor", "--json",
        env={"DOCKER_HOST": NO_DOCKER, "VNCSESS_HOME": "/proc/nope", "VNCSESS_BIND": "1.2.3.999"},
    )  # fmt: skip
    found = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert found["disk (VNCSESS_HOME)"]["status"] == "problem"
    assert "VNCSESS_HOME" in found["disk (VNCSESS_HOME)"]["fix"]
    assert (
        found["ports"]["status"] == "problem" and "not an IP address" in found["ports"]["summary"]
    )


def test_doctor_with_another_engine_checks_that_engine_not_docker(home: Path) -> None:
    proc = run(
        "doctor", "--json",
        env={"VNCSESS_ENGINE": "kubernetes", "KUBECONFIG": "/nonexistent/kubeconfig",
             "DOCKER_HOST": NO_DOCKER},
    )  # fmt: skip
    checks = json.loads(proc.stdout)["checks"]
    assert checks[0]["name"] == "engine kubernetes", checks
    assert checks[0]["status"] == "problem" and checks[0]["fix"], checks[0]
    assert not any(c["name"] in ("docker", "compose", "storage driver") for c in checks)
    assert proc.returncode == ExitCode.ENVIRONMENT


def test_address_pools_left() -> None:
    # Docker's defaults: 15 /16s and 16 /20s; docker0 takes 172.17.0.0/16.
    assert doctor.pools_left(doctor.DEFAULT_POOLS, []) == 31
    assert doctor.pools_left(doctor.DEFAULT_POOLS, ["172.17.0.0/16"]) == 30
    used = ["172.17.0.0/16", "192.168.0.0/20", "192.168.16.0/20", "fd00::/64"]
    assert doctor.pools_left(doctor.DEFAULT_POOLS, used) == 28
    # Two small networks inside one /24 slot take that one slot.
    pool = [("10.201.0.0/16", 24)]
    assert doctor.pools_left(pool, ["10.201.3.0/26", "10.201.3.64/26", "10.201.0.0/23"]) == 253


def test_doctor_problem_means_nonzero() -> None:
    ok = doctor.Check("a", doctor.OK, "x")
    warn = doctor.Check("b", doctor.WARNING, "y", "fix y")
    bad = doctor.Check("c", doctor.PROBLEM, "z", "fix z")
    assert doctor.healthy([ok, warn]) and not doctor.healthy([ok, bad])


@pytest.mark.docker
def test_doctor_on_this_machine_is_all_ok(docker_ready: None, home: Path) -> None:
    proc = run("doctor", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = json.loads(proc.stdout)["checks"]
    names = [c["name"] for c in checks]
    for expected in ("docker", "compose", "disk (VNCSESS_HOME)", "disk (Docker)",
                     "address pools", "model", "ports", "storage driver"):  # fmt: skip
        assert expected in names, names
    assert any(n.startswith("image ") for n in names) and any(n.startswith("base ") for n in names)
    for c in checks:
        assert c["status"] in ("ok", "warning"), c
        assert c["status"] == "ok" or c["fix"], f"a warning without its fix: {c}"
    ports = next(c for c in checks if c["name"] == "ports")
    assert ports["status"] == "ok", ports
    # The port probe leaves nothing behind.
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=vncsess.doctor"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert left == [], left
    human = run("doctor")
    assert human.returncode == 0 and "no problems" in human.stderr


# ------------------------------------------------------------------ completion


@pytest.mark.parametrize(
    ("shell", "marker"), [("bash", "complete -o default -F"), ("zsh", "#compdef vncsess")]
)
def test_completion_scripts_for_bash_and_zsh(shell: str, marker: str, tmp_path: Path) -> None:
    # Typer detects the running shell; this variable makes it take the shell's name instead.
    proc = run(
        "--show-completion", shell, env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    )
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout and "_VNCSESS_COMPLETE" in proc.stdout
    # --install-completion writes it where the shell reads it.
    proc = run(
        "--install-completion", shell,
        env={"HOME": str(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / (".bash_completions/vncsess.sh" if shell == "bash" else ".zfunc/_vncsess")
    assert marker in script.read_text()
    assert (tmp_path / f".{shell}rc").is_file(), "the shell's rc file loads it"


def complete(words: str, **env: str) -> subprocess.CompletedProcess[str]:
    line = words.split(" ")
    return run(
        env={"_VNCSESS_COMPLETE": "complete_bash", "COMP_WORDS": words,
             "COMP_CWORD": str(len(line) - 1), **env},
    )  # fmt: skip


def test_completion_of_commands_and_quiet_without_docker() -> None:
    proc = complete("vncsess ins")
    assert proc.returncode == 0 and proc.stdout.split() == ["inspect"]
    started = time.monotonic()
    proc = complete("vncsess inspect ", DOCKER_HOST=NO_DOCKER)
    assert proc.returncode == 0
    assert proc.stdout.strip() == "" and proc.stderr == "", "nothing printed into the shell"
    assert time.monotonic() - started < 10


def test_completion_gives_up_on_a_daemon_that_hangs() -> None:
    """A Docker address that accepts the connection and never answers: TAB returns anyway."""
    import socket

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        started = time.monotonic()
        proc = complete("vncsess inspect ", DOCKER_HOST=f"tcp://127.0.0.1:{hung.getsockname()[1]}")
        took = time.monotonic() - started
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr == ""
    assert took < cli.COMPLETION_TIMEOUT + 5, took


@pytest.mark.docker
def test_completion_offers_session_ids_and_names(cli: Cli) -> None:
    s = cli.up("--name", "completeme")
    sid = s["session_id"]
    for words in ("vncsess inspect ", "vncsess stop other ", "vncsess url "):
        proc = complete(words)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert sid in proc.stdout.split() and "completeme" in proc.stdout.split(), proc.stdout
    assert complete(f"vncsess logs {sid[:3]}").stdout.split() == [sid]
    assert complete("vncsess wait complete").stdout.split() == ["completeme"]


# ------------------------------------------------------------------ url / open


@pytest.mark.docker
def test_url_and_open(cli: Cli, tmp_path: Path) -> None:
    s = cli.up()
    sid = s["session_id"]
    proc = cli.run("url", sid)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == s["novnc_url"] + "\n", "just the URL, for scripts"
    refused = cli.run("url", sid, "--control")
    assert refused.returncode == ExitCode.CONFLICT
    assert_one_error(refused.stderr, "not under your control", f"vncsess control {sid}")

    # A browser that writes down what it was asked to open.
    seen = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {seen}\n')
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    proc = cli.run("open", sid, BROWSER=f"{browser} %s")
    assert proc.returncode == 0, proc.stderr
    assert "password=" not in proc.stderr, "open does not print the secret"
    assert cli.run("control", sid).returncode == 0
    control_url = cli.run("url", sid, "--control").stdout.strip()
    assert "view_only" not in control_url and control_url != s["novnc_url"]
    assert cli.run("open", sid, "--control", BROWSER=f"{browser} %s").returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(seen.read_text().splitlines()) < 2:
        time.sleep(0.1)
    assert seen.read_text().splitlines() == [s["novnc_url"], control_url]
    # No browser can be started: one line, and where to get the URL instead.
    proc = cli.run("open", sid, BROWSER=f"{tmp_path / 'no-such-browser'} %s")
    assert proc.returncode == ExitCode.ENVIRONMENT
    assert_one_error(proc.stderr, "no web browser", "vncsess url")


# ------------------------------------------------------------------ build progress

# Output as the build prints it: `docker build` (classic builder) with apt-get and pip
# inside, debootstrap, and the host's `pip download` (lines from real builds on this machine).
DOCKER_BUILD = """\
DEPRECATED: The legacy builder is deprecated and will be removed in a future release.
            BuildKit is currently disabled; enable it by removing the DOCKER_BUILDKIT=0
            environment-variable.
Sending build context to Docker daemon  41.47kB
Step 2/9 : RUN set -eux;     apt-get update;     apt-get install -y xvfb
 ---> Running in 3f1c2a9d8e7b
+ apt-get update
Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 Packages [8792 kB]
Reading package lists...
0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.
Need to get 2315 kB of archives.
Get:1 http://deb.debian.org/debian bookworm/main amd64 libxau6 amd64 1:1.0.9-1 [19.9 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 fonts-dejavu-core all 2.37-6 [1068 kB]
Selecting previously unselected package libxau6:amd64.
(Reading database ... 6090 files and directories currently installed.)
Preparing to unpack .../libxau6_1%3a1.0.9-1_amd64.deb ...
Unpacking libxau6:amd64 (1:1.0.9-1) ...
Unpacking fonts-dejavu-core (2.37-6) ...
Setting up libxau6:amd64 (1:1.0.9-1) ...
Processing triggers for libc-bin (2.36-9+deb12u10) ...
\x1b[0m\x1b[91m+ find /usr/share/doc -type f ! -name copyright -delete
Removing intermediate container 3f1c2a9d8e7b
 ---> 5d1e0c3b2a19
Step 3/4 : RUN python3 -m venv /opt/venv  && pip install --find-links /wheels
 ---> Using cache
Processing /wheels/browser_use-0.13.14-py3-none-any.whl
Installing collected packages: a, b, c, d
Successfully installed a-1 b-2 c-3 d-4
Successfully built 4b2d6f0e9c1a
"""
DOCKER_BUILD_SEEN = [
    ("detail", "sending build context to docker daemon 41.47kb"),
    ("step", "Step 2/9 RUN set -eux; apt-get update; apt-get install -y xvfb"),
    ("detail", "+ apt-get update"),
    ("detail", "fetching package lists"),
    ("detail", "fetching package lists"),
    ("detail", "reading package lists"),
    ("detail", "3 packages to install"),
    ("detail", "downloading 2315 kB"),
    ("detail", "downloading 1/3 libxau6"),
    ("detail", "downloading 2/3 fonts-dejavu-core"),
    ("detail", "unpacking 1/3 libxau6"),
    ("detail", "unpacking 2/3 fonts-dejavu-core"),
    ("detail", "setting up 1/3 libxau6"),
    ("detail", "processing triggers for libc-bin"),
    ("detail", "+ find /usr/share/doc -type f ! -name copyright -delete"),
    ("step", "Step 3/4 RUN python3 -m venv /opt/venv && pip install --find-links /wheels"),
    ("detail", "cached"),
    ("detail", "unpacking 1 browser_use"),
    ("detail", "installing 4 Python packages"),
    ("detail", "installed 4 Python packages"),
    ("detail", "successfully built 4b2d6f0e9c1a"),
]
DEBOOTSTRAP = """\
I: Retrieving InRelease
I: Retrieving libacl1 2.3.1-3
I: Validating libacl1 2.3.1-3
I: Retrieving libc6 2.36-9+deb12u10
I: Validating libc6 2.36-9+deb12u10
I: Extracting libacl1...
I: Unpacking required packages...
I: Unpacking libacl1:amd64...
I: Unpacking libc6:amd64...
I: Configuring required packages...
I: Configuring libc-bin...
I: Base system installed successfully.
"""
DEBOOTSTRAP_SEEN = [
    ("detail", "Retrieving InRelease"),
    ("detail", "retrieving 1 libacl1"),
    ("detail", "validating 1 libacl1"),
    ("detail", "retrieving 2 libc6"),
    ("detail", "validating 2 libc6"),
    ("detail", "extracting 1/2 libacl1"),
    ("step", "Unpacking required packages"),
    ("detail", "unpacking 1/2 libacl1"),
    ("detail", "unpacking 2/2 libc6"),
    ("step", "Configuring required packages"),
    ("detail", "configuring 1/2 libc-bin"),
    ("detail", "Base system installed successfully."),
]
PIP_DOWNLOAD = """\
Collecting browser-use==0.13.14 (from -r requirements.txt (line 1))
  Downloading browser_use-0.13.14-py3-none-any.whl (512 kB)
Collecting anyio>=4 (from browser-use==0.13.14)
  File was already downloaded /root/.cache/anyio-4.9.0-py3-none-any.whl
Successfully downloaded browser-use anyio
"""
PIP_DOWNLOAD_SEEN = [
    ("detail", "collecting 1 browser-use"),
    ("detail", "downloading browser_use-0.13.14-py3-none-any.whl (512 kB)"),
    ("detail", "collecting 2 anyio"),
    ("detail", "File was already downloaded /root/.cache/anyio-4.9.0-py3-none-any.whl"),
    ("detail", "downloaded 2 Python packages"),
]


@pytest.mark.parametrize(
    ("output", "seen"),
    [
        (DOCKER_BUILD, DOCKER_BUILD_SEEN),
        (DEBOOTSTRAP, DEBOOTSTRAP_SEEN),
        (PIP_DOWNLOAD, PIP_DOWNLOAD_SEEN),
    ],
    ids=["docker-build", "debootstrap", "pip-download"],
)
def test_build_output_is_read_into_steps_and_packages(
    output: str, seen: list[tuple[str, str]]
) -> None:
    reader = images.BuildOutput()
    assert [x for x in (reader.feed(line) for line in output.splitlines()) if x] == seen


class Recorder:
    """A BuildReporter that writes down what it is told (for the core's side)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, message: str) -> None:
        self.events.append(("message", message))

    def stage(self, name: str) -> None:
        self.events.append(("stage", name))

    def step(self, text: str) -> None:
        self.events.append(("step", text))

    def detail(self, text: str) -> None:
        self.events.append(("detail", text))


def apt_get(script: str) -> Iterator[str]:
    explain = commands.explained(BuildFailed, "check the mirror")
    return commands.stream(["sh", "-c", script], "apt-get", explain=explain)


def test_a_real_command_streams_into_the_reporter_and_fails_as_one_line(tmp_path: Path) -> None:
    rec = Recorder()
    script = (
        "echo 'Unpacking libxau6:amd64 (1) ...'; sleep 0.1; echo 'E: Unable to fetch'; exit 100"
    )
    with pytest.raises(VncsessError) as exc:
        images.follow(apt_get(script), rec)
    assert rec.events == [("detail", "unpacking 1 libxau6"), ("detail", "E: Unable to fetch")]
    assert exc.value.message == "apt-get failed: E: Unable to fetch"
    assert exc.value.hint == "check the mirror"
    # With a log, the whole output is kept and the hint says where.
    log = tmp_path / "logs" / "build.log"
    with pytest.raises(VncsessError) as exc:
        images.follow(apt_get(script), rec, log)
    assert log.read_text() == "Unpacking libxau6:amd64 (1) ...\nE: Unable to fetch\n"
    assert exc.value.hint == f"the full output is in {log}; check the mirror"
    # A plain callback (as `up` passes) is still a reporter: stages and steps, no details.
    lines: list[str] = []
    images.follow(["Step 1/2 : FROM x", "Unpacking y (1) ..."], images.reporter(lines.append))
    assert lines == ["Step 1/2 FROM x"]
    assert isinstance(rec, images.BuildReporter)


@pytest.mark.docker
def test_a_failing_image_build_is_one_line_and_keeps_its_output(
    docker_ready: None, tmp_path: Path
) -> None:
    """A real docker build that fails in a RUN step: the reporter saw the step, the error
    is its last line, and the whole output waits in the log the hint names."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {images.BASE_IMAGE}\n"
        "RUN echo 'Unpacking fakepkg:amd64 (1) ...' && echo boom && exit 3\n"
    )
    settings = config.Settings(home=tmp_path / "home", cache=tmp_path / "cache")
    spec = images.ImageSpec("vncsess-test-broken:cli", ctx, needs_wheels=False)
    rec = Recorder()
    with pytest.raises(VncsessError) as exc:
        images.build_one(settings, spec, rec)
    assert ("stage", "building vncsess-test-broken:cli") in rec.events
    assert ("detail", "unpacking 1 fakepkg") in rec.events
    assert "building vncsess-test-broken:cli failed" in exc.value.message
    assert "\n" not in exc.value.message, "one line: the output is in the log"
    log = tmp_path / "cache" / "logs" / "build-vncsess-test-broken_cli.log"
    assert exc.value.hint == f"the full output is in {log}"
    assert "\nboom\n" in log.read_text() and "Step 2/3 : RUN" in log.read_text()


@pytest.mark.docker
def test_current_images_do_not_wait_for_another_build(docker_ready: None, tmp_path: Path) -> None:
    """Another build (of any tags) holds the lock: `up` with current images goes on."""
    import fcntl
    import threading

    from tests.conftest import AGENT_IMAGE, VNC_IMAGE

    settings = config.Settings(
        home=tmp_path, cache=tmp_path / "cache", vnc_image=VNC_IMAGE, agent_image=AGENT_IMAGE
    )
    if images.missing(settings):
        pytest.skip("the test images are not current: this would build them")
    settings.cache.mkdir()
    with open(images.lock_path(settings), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done: list[list[str]] = []
        t = threading.Thread(target=lambda: done.append(images.ensure(settings, Recorder())))
        t.start()
        t.join(timeout=20)
        finished_while_locked = not t.is_alive()
        fcntl.flock(held, fcntl.LOCK_UN)
    t.join()
    assert finished_while_locked, "ensure waited for a lock it did not need"
    assert done == [[]]


@pytest.mark.parametrize(
    ("terminal", "quiet", "view"),
    [(True, False, "_LiveView"), (True, True, "_PlainView"), (False, False, "_PlainView")],
)
def test_progress_is_live_only_on_a_terminal_without_quiet(
    monkeypatch: pytest.MonkeyPatch, terminal: bool, quiet: bool, view: str
) -> None:
    _capture(monkeypatch, terminal=terminal)
    with console.progress("checking images", quiet=quiet) as p:
        assert type(p).__name__ == view


def test_plain_progress_has_stages_steps_heartbeats_and_a_summary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console._PlainView, "HEARTBEAT", 0.2)
    with console.progress("checking images", quiet=True) as p:
        p.stage("building vncsess-vnc")
        p.step("Step 2/9 RUN apt-get install")
        p.detail("unpacking 1/3 libxau6")  # right after a line: not printed
        time.sleep(0.25)
        p.detail("unpacking 2/3 fonts-dejavu-core")  # a heartbeat: printed
        p.stage("building vncsess-agent")
        p("a message")
    lines = capsys.readouterr().err.splitlines()
    body = [ln.split("] ", 1)[1] for ln in lines if ln.startswith("· [")]
    assert body == [
        "building vncsess-vnc",
        "building vncsess-vnc: Step 2/9 RUN apt-get install",
        "building vncsess-vnc: unpacking 2/3 fonts-dejavu-core",
        "building vncsess-vnc: done in " + body[3].rsplit(" ", 1)[1],
        "building vncsess-agent",
        "a message",
        "building vncsess-agent: done in " + body[6].rsplit(" ", 1)[1],
    ]
    assert lines[-3].startswith("done in ")
    assert lines[-2].split()[0:2] == ["building", "vncsess-vnc"]
    assert lines[-1].split()[0:2] == ["building", "vncsess-agent"]


def test_live_progress_line_shows_stage_time_step_and_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, err = _capture(monkeypatch, terminal=True)
    with console.progress("checking images") as p:
        assert isinstance(p, console._LiveView)
        p.stage("building vncsess-agent")
        p.step("Step 2/4 RUN apt-get update && apt-get install -y --no-install-recommends chromium")
        p.detail("unpacking 57/243 chromium")
        line = p.line(100).plain
        assert line.split(" ", 1)[1].startswith("building vncsess-agent  0.")
        assert "Step 2/4 RUN apt-get update && apt-get" in line
        assert line.endswith("unpacking 57/243 chromium")
        assert len(line) <= 100, "the step gives way to keep one line"
        narrow = p.line(50).plain
        assert "Step" not in narrow and narrow.endswith("unpacking 57/243 chromium")
        p.last_news -= 65  # a minute without a line from the build
        assert p.line(100).plain.endswith("unpacking 57/243 chromium · quiet for 1m05s")
    text = err.export_text()
    assert "✓ building vncsess-agent" in text
    assert "done in" in text


def test_failed_build_prints_no_summary(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BadInput), console.progress("x", quiet=True) as p:
        p.stage("building vncsess-vnc")
        raise BadInput("stop")
    err = capsys.readouterr().err
    assert "building vncsess-vnc" in err
    assert "done in" not in err, "a failed stage is not reported as done"


def test_human_duration() -> None:
    assert console.human_duration(0.42) == "0.4s"
    assert console.human_duration(35) == "35s"
    assert console.human_duration(125) == "2m05s"
    assert console.human_duration(3720) == "1h02m"


def test_the_stages_a_build_ended_with_are_read_from_its_output() -> None:
    out = """Step 1/6 : FROM debian:bookworm-slim AS base
 ---> 7a93bff3b893
Step 2/6 : RUN apt-get update
 ---> Using cache
 ---> 1111111111aa
Step 3/6 : FROM base AS venv
 ---> 1111111111aa
Step 4/6 : RUN pip install x
 ---> Running in 0123456789ab
Removing intermediate container 0123456789ab
 ---> 2222222222bb
Step 5/6 : from base
 ---> 1111111111aa
Step 6/6 : COPY --from=venv /opt/venv /opt/venv
 ---> 3333333333cc
Successfully built 3333333333cc
Successfully tagged vncsess-agent:latest"""
    stages = images.Stages()
    assert list(stages.watch(out.splitlines())) == out.splitlines(), "lines pass through"
    assert stages.intermediate() == ["1111111111aa", "2222222222bb"]


@pytest.mark.docker
def test_a_multi_stage_build_leaves_no_dangling_images(docker_ready: None, tmp_path: Path) -> None:
    """The classic builder keeps an earlier stage as an untagged image, and a rebuild
    leaves the tag's old image untagged: build_one removes both, and only those (the
    tagged image and its base stay)."""
    from tests.conftest import RUN_OWNER

    def dangling() -> set[str]:
        """Dangling images made by this test (others may be building on the engine)."""
        out = subprocess.run(
            ["docker", "images", "-q", "--no-trunc", "--filter", "dangling=true"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        history = ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}"]
        return {
            image
            for image in out.split()
            if RUN_OWNER
            in subprocess.run([*history, image], capture_output=True, text=True, check=False).stdout
        }

    def dockerfile(version: int) -> None:
        # A stage of its own (RUN with this run's owner: never a cache hit of another run).
        (ctx / "Dockerfile").write_text(
            f"FROM {images.BASE_IMAGE} AS scratchpad\n"
            f"RUN echo {RUN_OWNER} {version} > /made-here\n"
            f"FROM {images.BASE_IMAGE}\n"
            f"COPY --from=scratchpad /made-here /made-by-{RUN_OWNER}\n"
        )

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    tag = f"vncsess-test-stages:{RUN_OWNER}"
    stage_tag = f"vncsess-test-stages-stages:{RUN_OWNER}-1"
    assert images.stage_tags(tag, 1) == [stage_tag]
    settings = config.Settings(home=tmp_path, cache=tmp_path / "cache")
    spec = images.ImageSpec(tag, ctx, needs_wheels=False)
    stages: list[str] = []
    real = images.Stages.intermediate

    def remember(self: images.Stages) -> list[str]:
        stages.extend(real(self))
        return real(self)

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(images.Stages, "intermediate", remember)
            dockerfile(1)
            images.build_one(settings, spec, Recorder())
            assert len(stages) == 1, "one earlier stage, seen in the output"
            assert dangling() == set(), "the build left its stage dangling"
            first = _image_id(tag)
            assert _image_id(stage_tag) == _image_id(stages[0]), "the stage is kept as cache"
            again = Recorder()
            images.build_one(settings, spec, again)  # the same Dockerfile: all from cache
            assert _image_id(tag) == first, "a rebuild of the same context reuses the stage"
            dockerfile(2)
            images.build_one(settings, spec, Recorder())
        assert dangling() == set(), "the rebuild left the old image dangling"
        assert not _image_exists(first) and not _image_exists(stages[0])
        assert _image_id(stage_tag) == _image_id(stages[-1]), "the new stage is the cache now"
        assert _image_exists(tag) and _image_exists(images.BASE_IMAGE)
    finally:
        subprocess.run(["docker", "image", "rm", tag, stage_tag], capture_output=True, check=False)


def _image_id(ref: str) -> str:
    inspect = ["docker", "image", "inspect", "--format", "{{.Id}}", ref]
    return subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip()


def _image_exists(ref: str) -> bool:
    inspect = ["docker", "image", "inspect", ref]
    return subprocess.run(inspect, capture_output=True, check=False).returncode == 0
